"""Merging end to end: oracle recovery, the output folder, and every bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphperm.apply import Indexer, permute_state, random_permutation
from graphperm.data.synth import write_clips
from graphperm.errors import VerificationError
from graphperm.merge import align, merge_models, prepare
from graphperm.policy import load_policy
from graphperm.trace import load_model
from tests.helpers import graphperm_cli, merge_oracle


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, count=16, seconds=1.0)
    return folder


def _oracle(name: str, policy, audio: Path) -> float:
    """The merge oracle (tests/helpers.py) on builtin:NAME: distance of the merge to A."""
    return merge_oracle(load_model(f"builtin:{name}"), policy, [audio])[0]


ONE_SECOND = {"calibration": {"clip_seconds": 1.0, "num_clips": 16}}


@pytest.mark.parametrize("spec", ["paper", "cnn-all"])
def test_merging_a_with_a_permuted_copy_gives_back_a(spec: str, audio: Path) -> None:
    policy = load_policy(spec).model_dump()
    policy.update(ONE_SECOND)
    assert _oracle("hubert-tiny", policy, audio) < 1e-4


def test_oracle_recovery_for_a_whisper_encoder(audio: Path) -> None:
    policy = load_policy("cnn-all").model_dump()
    policy.update(ONE_SECOND)  # builtin:whisper-tiny's window is 1 s
    assert _oracle("whisper-tiny", policy, audio) < 1e-4


def test_oracle_recovery_of_the_residual_stream(audio: Path) -> None:
    """Blocks (the positional conv's groups) and the channels inside them, through every layer."""
    policy = {"align": [{"kind": "residual"}], **ONE_SECOND}
    assert _oracle("hubert-tiny", policy, audio) < 1e-4


@pytest.fixture(scope="module")
def merged(tmp_path_factory, audio: Path) -> Path:
    """`graphperm merge` of two random HuBERTs (A: seed 0, B: seed 1) with the paper policy."""
    from graphperm.cli import main

    root = tmp_path_factory.mktemp("m")
    policy = load_policy("paper").model_dump(mode="json")
    policy.update(ONE_SECOND)
    (root / "paper.json").write_text(json.dumps(policy))
    out = root / "merged"
    args = ["merge", "builtin:hubert-tiny", "builtin:hubert-tiny", "--policy"]
    args += [str(root / "paper.json"), "--calib", str(audio), "--out", str(out), "-q"]
    assert main(args) == 0
    return out


def test_library_merge_matches_the_command(merged: Path, audio: Path) -> None:
    """merge_models (copies) and `graphperm merge` (in place) do the same arithmetic."""
    a = load_model("builtin:hubert-tiny")
    b = load_model("builtin:hubert-tiny", seed=1)
    policy = load_policy("paper").model_dump()
    policy.update(ONE_SECOND)
    result = merge_models(align(a, b, policy, [audio]), a, b)
    on_disk = load_file(str(merged / "model.safetensors"))
    assert all(torch.equal(v, on_disk[k]) for k, v in result.state.items())


def test_merged_folder_reloads_with_transformers(merged: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(merged)
    assert type(model).__name__ == "HubertModel"
    with torch.no_grad():
        out = model(torch.randn(1, 16000)).last_hidden_state
    assert torch.isfinite(out).all()


def test_merged_folder_holds_permutations_policy_and_report(merged: Path) -> None:
    perms = load_file(str(merged / "permutations.safetensors"))
    assert "encoder.layers.0.attention/heads" in perms
    assert perms["encoder.layers.0.attention/vo"].shape == (4, 16)
    assert "version: 1" in (merged / "policy.yaml").read_text()
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["weight_a"] == 0.9 and report["verification"]["ok"] is True
    rows = {g["name"]: g for g in report["groups"]}
    ffn = rows["encoder.layers.0.feed_forward"]
    assert {"name", "kind", "size", "moved_fraction", "corr_before", "corr_after"} <= set(ffn)
    assert ffn["corr_after"] > ffn["corr_before"] and 0 < ffn["moved_fraction"] <= 1


def test_apply_reproduces_the_merge(merged: Path, tmp_path: Path) -> None:
    from graphperm.cli import main

    out = tmp_path / "again"
    code = main(
        [
            "apply",
            "builtin:hubert-tiny",
            "--perms",
            str(merged / "permutations.safetensors"),
            "--merge-into",
            "builtin:hubert-tiny",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    first = load_file(str(merged / "model.safetensors"))
    again = load_file(str(out / "model.safetensors"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)  # one interpolation, bit for bit


def test_a_wrong_rule_stops_the_merge_before_any_output(monkeypatch, audio, tmp_path) -> None:
    from graphperm.analysis import rules

    def careless_layer_norm(ctx):  # pretends the affine weight does not follow the channels
        ctx.same(ctx.arg(0), ctx.out)
        for p in (ctx.arg(2), ctx.arg(3)):
            if p is not None:
                ctx.reduce(*p.axes())

    monkeypatch.setitem(rules.RULES, "aten.layer_norm", careless_layer_norm)
    a = load_model("builtin:hubert-tiny")
    b = load_model("builtin:hubert-tiny", seed=1)
    with torch.no_grad():  # non-trivial LayerNorm weights, or the mistake would be harmless
        for m in b.module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
    policy = {"align": [{"kind": "residual"}], **ONE_SECOND}
    with pytest.raises(VerificationError, match="no output was written"):
        merge_models(align(a, b, policy, [audio]), a, b)


# ---------------------------------------------------------------------------- bad inputs (CLI)
def cli(*args: str) -> subprocess.CompletedProcess:
    return graphperm_cli("merge", *args)


@pytest.fixture(scope="module")
def other_arch(tmp_path_factory) -> tuple[Path, Path]:
    """Two config folders: a different hidden size, and a different layout (stable layer norm)."""
    from graphperm.trace.builtin import builtin_config

    root = tmp_path_factory.mktemp("arch")
    wide = builtin_config("hubert-tiny")
    wide.intermediate_size = 96
    wide.save_pretrained(root / "wide")
    builtin_config("hubert-stable-tiny").save_pretrained(root / "stable")
    return root / "wide", root / "stable"


def _bad(args: list[str], needle: str, out: Path) -> None:
    proc = cli(*args, "--out", str(out), "--random-init")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # earlier lines may be warnings (skipped files)
    assert last.startswith("graphperm: error: ") and needle in last, proc.stderr
    assert proc.stderr.count("graphperm: error") == 1
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_models_of_different_shapes(other_arch, audio, tmp_path) -> None:
    wide, _ = other_arch
    _bad(
        ["builtin:hubert-tiny", str(wide), "--calib", str(audio)],
        "feed_forward.intermediate_dense.weight is (128, 64) in A and (96, 64) in B",
        tmp_path / "o",
    )


def test_models_of_different_architectures(other_arch, audio, tmp_path) -> None:
    _, stable = other_arch
    _bad(
        ["builtin:hubert-tiny", str(stable), "--calib", str(audio)],
        "differ in architecture",
        tmp_path / "o",
    )


@pytest.mark.parametrize(
    ("policy_text", "message"),
    [
        ("align: [{kind: ffn}]\nweight_b: 0.1\n", "unknown field 'weight_b'"),
        ("align: [{groups: 'encoder.layer.*'}]\n", "selects no group"),
    ],
    ids=["unknown-field", "selects-nothing"],
)
def test_bad_policy_file(policy_text, message, audio, tmp_path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(policy_text)
    argv = ["builtin:hubert-tiny", "builtin:hubert-tiny", "--policy", str(policy)]
    _bad([*argv, "--calib", str(audio)], message, tmp_path / "o")


def test_empty_calibration_folder(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    _bad(
        ["builtin:hubert-tiny", "builtin:hubert-tiny", "--calib", str(tmp_path / "empty")],
        "no audio files",
        tmp_path / "o",
    )


def test_calibration_with_no_readable_file(tmp_path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.wav").write_text("not audio")
    (junk / "b.flac").write_bytes(b"")
    _bad(
        ["builtin:hubert-tiny", "builtin:hubert-tiny", "--calib", str(junk)],
        "unreadable",
        tmp_path / "o",
    )


def test_missing_calibration(tmp_path) -> None:
    """A policy that measures activations needs --calib (without --policy the default is then
    the data-free one: tests/test_user.py)."""
    args = ["builtin:hubert-tiny", "builtin:hubert-tiny", "--policy", "paper"]
    _bad(args, "--calib", tmp_path / "o")


def test_existing_output_needs_force(audio, tmp_path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli(
        "builtin:hubert-tiny",
        "builtin:hubert-tiny",
        "--calib",
        str(audio),
        "--out",
        str(out),
        "--random-init",
    )
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_unreadable_files_are_skipped_and_counted(audio, tmp_path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted(audio.iterdir())[:4]:
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "broken.wav").write_text("not audio")
    out = tmp_path / "o"
    policy = tmp_path / "cnn.yaml"
    policy.write_text("align: [{kind: conv}]\ncalibration: {clip_seconds: 1.0}\n")
    proc = cli(
        "builtin:hubert-tiny",
        "builtin:hubert-tiny",
        "--calib",
        str(mixed),
        "--out",
        str(out),
        "--random-init",
        "--policy",
        str(policy),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert len(report["calibration"]["skipped_files"]) == 1
    assert "1 unreadable" in proc.stdout


def test_split_half_agreement_is_reported_and_perfect_for_an_oracle(audio: Path) -> None:
    a = load_model("builtin:hubert-tiny")
    halves = {"calibration": {**ONE_SECOND["calibration"], "split_half": True}}
    policy = load_policy({"align": [{"kind": "ffn"}], **halves})
    _, analysis, _ = prepare(a, policy)
    indexer = Indexer(analysis)
    b = load_model("builtin:hubert-tiny")
    b.module.load_state_dict(
        permute_state(indexer, a.state_dict(), random_permutation(indexer.shapes(), seed=2))
    )
    alignment = align(a, b, policy, [audio])
    assert [r.split_half_agreement for r in alignment.reports] == [1.0, 1.0]
    unasked = align(a, b, load_policy({"align": [{"kind": "ffn"}], **ONE_SECOND}), [audio])
    assert [r.split_half_agreement for r in unasked.reports] == [None, None]
    assert "split_half_s" not in unasked.timings


def test_enough_data_stops_calibration_early(audio: Path) -> None:
    a = load_model("builtin:hubert-tiny")
    b = load_model("builtin:hubert-tiny")  # identical models: every half agrees at once
    policy = load_policy(
        {
            "align": [{"kind": "ffn"}],
            "calibration": {
                "clip_seconds": 1.0,
                "num_clips": 16,
                "batch_size": 2,
                "stop_agreement": 0.9,
                "check_every": 2,
            },
        }
    )
    alignment = align(a, b, policy, [audio])
    assert alignment.calibration["clips_planned"] == 16
    assert alignment.calibration["clips"] == 4  # two checks in a row, after 2 and 4 clips


def test_oracle_recovery_with_clips_packed_into_whispers_window(audio: Path) -> None:
    policy = load_policy("cnn-all").model_dump()
    policy["calibration"].update(clip_seconds=0.25, num_clips=32)  # four clips per 1-s window
    assert _oracle("whisper-tiny", policy, audio) < 1e-4
