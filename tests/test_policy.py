"""Policies: the Table I specs, validation messages, resolution against a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphperm.cli import main
from graphperm.errors import PolicyError
from graphperm.policy import SPECS, load_policy, policy_names, resolve
from tests.helpers import analysis_of

TABLE_I = {
    "average": 3,
    "linear": 4,
    "paper": 5,
    "cnn": 6,
    "cnn-ff-only": 7,
    "cnn-all": 8,
    "fnn-attn": 9,
}
BEYOND_THE_PAPER = [  # specs that are no row of Table I
    "weights",
    "orth",
    "pre-ln",
    "all",
    "orth-no-data",
    "sinkhorn",
    "learned",
    "learned-lm",
    "zipit",
    "zipit-cnn",
    "symmetric",
]


@pytest.mark.parametrize("name", sorted(TABLE_I))
def test_specs_load_and_name_their_table_row(name: str) -> None:
    policy = load_policy(name)
    text = (SPECS / f"{name}.yaml").read_text()
    assert f"Table I, ID {TABLE_I[name]}" in text.splitlines()[0]
    assert policy.weight_a == (0.5 if name == "average" else 0.9)


def test_specs_folder_is_the_packaged_one() -> None:
    names = [*TABLE_I, *BEYOND_THE_PAPER]
    assert sorted(policy_names()) == sorted(names)
    top = Path(__file__).resolve().parents[1] / "specs"
    assert sorted(p.name for p in top.glob("*.yaml")) == sorted(f"{n}.yaml" for n in names)


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("allign: []\n", ["p.yaml", "allign", "did you mean 'align'"]),
        ("align: [{kind: atn}]\n", ["align.0.kind", "'atn'", "did you mean 'attn'"]),
        ("align: [{kind: attn, parts: [head]}]\n", ["align.0.parts", "'head' is not a part"]),
        ("align: [{kind: ffn, rol: post}]\n", ["align.0.rol", "did you mean 'role'"]),
        ("weight_a: 1.5\n", ["weight_a", "less than or equal to 1"]),
        ("calibration: {clips: 3}\n", ["calibration.clips", "did you mean"]),
        ("align: [\n", ["p.yaml", "not valid"]),
        ("- a\n- b\n", ["p.yaml", "mapping"]),
    ],
)
def test_bad_policies_name_file_field_and_reason(tmp_path, text, needles) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_json_policies_load(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"align": [{"kind": "ffn"}], "weight_a": 0.7}), "p.json")
    assert load_policy(path).weight_a == 0.7


def test_unknown_policy_name_suggests_a_builtin() -> None:
    with pytest.raises(PolicyError, match="did you mean 'paper'"):
        load_policy("papr")


def test_per_module_weights_override_the_global_weight() -> None:
    policy = load_policy(
        {
            "weight_a": 0.9,
            "weights": [
                {"modules": "encoder.layers.*", "weight_a": 0.7},
                {"modules": ["encoder.layers.1.*"], "weight_a": 0.6},
            ],
        }
    )
    assert policy.weight_for("feature_projection.projection.weight") == 0.9
    assert policy.weight_for("encoder.layers.0.attention.q_proj.weight") == 0.7
    assert policy.weight_for("encoder.layers.1.attention.q_proj.weight") == 0.6


def test_paper_policy_measures_where_the_paper_does() -> None:
    plan = resolve(load_policy("paper"), analysis_of("hubert-tiny"))
    got = {(t.group, t.part): (t.role, [s.module for s in t.sites]) for t in plan.targets}
    assert got[("feature_extractor.conv_layers.0.conv", "channels")] == (
        "pre",
        ["feature_extractor.conv_layers.0.layer_norm"],
    )
    assert got[("feature_extractor.conv_layers.1.conv", "channels")] == (
        "pre",
        ["feature_extractor.conv_layers.1.conv"],
    )
    for part in ("heads", "vo"):
        assert got[("encoder.layers.0.attention", part)] == (
            "post",
            ["encoder.layers.0.attention.out_proj"],
        )
    assert ("encoder.layers.0.attention", "qk") not in got
    assert got[("encoder.layers.1.feed_forward", "channels")] == (
        "post",
        ["encoder.layers.1.feed_forward.output_dense"],
    )


def test_cnn_all_also_measures_query_and_key() -> None:
    plan = resolve(load_policy("cnn-all"), analysis_of("hubert-tiny"))
    qk = next(t for t in plan.targets if t.part == "qk")
    assert qk.role == "pre"
    assert sorted(s.module for s in qk.sites) == [
        "encoder.layers.0.attention.k_proj",
        "encoder.layers.0.attention.q_proj",
    ]


@pytest.mark.parametrize("at", ["all", "first", "last"])
def test_at_picks_the_sites_in_graph_order(at: str) -> None:
    analysis = analysis_of("hubert-tiny")
    every = resolve(load_policy({"align": [{"kind": "residual"}]}), analysis)
    plan = resolve(load_policy({"align": [{"kind": "residual", "at": at}]}), analysis)
    for full, got in zip(every.targets, plan.targets, strict=True):
        assert len(full.sites) == 5  # the positional conv's input, then 4 linear layers'
        want = {"all": full.sites, "first": full.sites[:1], "last": full.sites[-1:]}[at]
        assert got.sites == want
    assert plan.targets[0].sites[0].module == (
        "encoder.pos_conv_embed.conv"
        if at != "last"
        else "encoder.layers.1.feed_forward.intermediate_dense"
    )


def test_at_rejects_other_values() -> None:
    with pytest.raises(PolicyError, match="at"):
        load_policy({"align": [{"kind": "residual", "at": "middle"}]})


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"groups": "encoder.layer.*.attention"}, "did you mean 'encoder.layers.*.attention'"),
        ({"kind": "other"}, "has no 'other' groups"),
        ({"kind": "ffn", "groups": "nothing*"}, "selects no group"),
    ],
)
def test_rules_that_select_nothing_are_errors(rule: dict, needle: str) -> None:
    with pytest.raises(PolicyError, match="align\\[0\\] selects no group") as err:
        resolve(load_policy({"align": [rule]}), analysis_of("hubert-tiny"), where="x.yaml")
    assert needle in str(err.value) and str(err.value).startswith("x.yaml:")


def test_schema_command_prints_the_json_schema(capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"align", "weight_a", "calibration", "version"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_site_is_still_read_as_role(tmp_path) -> None:
    """Policies written before ``site`` was renamed ``role`` keep working."""
    policy = load_policy(_write(tmp_path, "align: [{kind: ffn, site: pre}]\n"))
    assert policy.align[0].role == "pre"
