"""What a first user meets (issue 19): a safe and complete output folder, defaults that work
for every model, a config that reproduces a merge, an `eval` command. Through the CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from graphperm.cli import main
from tests.helpers import graphperm_cli
from tests.textmodels import save_tiny_bert, words_of

DATA = Path(__file__).parent / "data"
TEXT = DATA / "text.txt"


@pytest.fixture(scope="module")
def berts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("berts")
    words = words_of(TEXT)
    return save_tiny_bert(root / "a", words, seed=0), save_tiny_bert(root / "b", words, seed=1)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- 1. nothing a user passes is modified ---------------------------------------------------


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_out_that_touches_an_input_model_is_refused_even_with_force(berts, where, tmp_path):
    a, b = berts
    before = _snapshot(b.parent)
    out = {"is": b, "inside": b / "merged", "contains": b.parent}[where]
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", "weights", "--out", str(out), "--force"
    )
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "an input" in run.stderr and "model" in run.stderr
    assert _snapshot(b.parent) == before
    assert not (b / "merged").exists()


def test_out_that_contains_a_calibration_source_is_refused(berts, tmp_path):
    a, b = berts
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "text.txt").write_text(TEXT.read_text())
    before = _snapshot(corpus)
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", "fnn-attn", "--calib", str(corpus / "text.txt"),
        "--out", str(corpus), "--force",
    )  # fmt: skip
    assert run.returncode == 2 and "--calib source" in run.stderr, run.stderr
    assert _snapshot(corpus) == before


def test_output_permissions_follow_the_umask(berts, tmp_path):
    a, b = berts
    old = os.umask(0o022)
    try:
        run = graphperm_cli(
            "merge", str(a), str(b), "--policy", "weights", "--out", str(tmp_path / "m")
        )
    finally:
        os.umask(old)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "m"
    assert out.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_ctrl_c_exits_130_and_writes_nothing(berts, tmp_path, monkeypatch, capsys):
    import graphperm.output.save as save

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(save, "write_model", interrupted)
    a, b = berts
    code = main(
        ["merge", str(a), str(b), "--policy", "weights", "-q", "--out", str(tmp_path / "m")]
    )
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder


# --- 2. a complete output folder --------------------------------------------------------------


def test_merged_text_model_has_a_s_tokenizer(berts, tmp_path):
    from transformers import AutoTokenizer

    a, b = berts
    out = tmp_path / "m"
    run = graphperm_cli("merge", str(a), str(b), "--policy", "weights", "-q", "--out", str(out))
    assert run.returncode == 0, run.stderr
    want, got = AutoTokenizer.from_pretrained(a), AutoTokenizer.from_pretrained(out)
    assert got.get_vocab() == want.get_vocab() and len(got) > 5
    text = TEXT.read_text().splitlines()[0]
    assert got(text)["input_ids"] == want(text)["input_ids"]
    assert got.unk_token_id not in got(text)["input_ids"]


@pytest.fixture(scope="module")
def fp16_berts(tmp_path_factory, berts) -> tuple[Path, Path]:
    import transformers as tf

    root = tmp_path_factory.mktemp("fp16")
    out = []
    for src in berts:
        model = tf.AutoModel.from_pretrained(src).half()
        model.save_pretrained(root / src.name)
        out.append(root / src.name)
    return out[0], out[1]


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_merge_keeps_a_s_dtype_unless_told(fp16_berts, dtype, tmp_path):
    import json

    import torch
    import transformers as tf
    from safetensors import safe_open

    a, b = fp16_berts
    out = tmp_path / "m"
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", "weights", "-q", "--dtype", dtype, "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    want = {"auto": "float16"}.get(dtype, dtype)
    codes = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        floats = {f.get_slice(k).get_dtype() for k in f.keys()} - {"I64"}  # noqa: SIM118
    assert floats == {codes[want]}
    assert json.loads((out / "config.json").read_text())["dtype"] == want
    model = tf.AutoModel.from_pretrained(out)
    assert next(model.parameters()).dtype == getattr(torch, want)
    if dtype == "auto":  # half the size of the float32 weights
        size = (out / "model.safetensors").stat().st_size
        assert size < 0.6 * sum(p.numel() * 4 for p in model.parameters())


# --- 3. a default policy chosen from the model -------------------------------------------------


def _report(out: Path) -> dict:
    import json

    return json.loads((out / "merge_report.json").read_text())


def test_default_policy_for_text_is_chosen_and_printed(berts, tmp_path):
    from graphperm.policy import load_policy

    a, b = berts
    out = tmp_path / "m"
    run = graphperm_cli("merge", str(a), str(b), "--calib", str(TEXT), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("policy: orth (the default for this model"), run.stdout
    assert _report(out)["policy"] == load_policy("orth").description
    assert any(g["kind"] == "residual" for g in _report(out)["groups"])


def test_default_policy_for_speech_without_data(tmp_path):
    out = tmp_path / "m"
    tiny = "builtin:hubert-tiny"
    run = graphperm_cli("merge", tiny, tiny, "--random-init", "-q", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("policy: weights (the default for this model: a convolutional")
    assert _report(out)["method"] == "weights"


def test_missing_calibration_file_is_what_the_error_says(berts, tmp_path):
    a, b = berts
    missing = tmp_path / "corpus.txt"
    run = graphperm_cli(
        "merge", str(a), str(b), "--calib", str(missing), "--out", str(tmp_path / "m")
    )
    assert run.returncode == 2
    assert "corpus.txt" in run.stderr and "conv" not in run.stderr, run.stderr
    assert not (tmp_path / "m").exists()


def test_recommended_settings_have_built_in_names(berts, tmp_path):
    from graphperm.policy import policy_names

    assert {"all", "orth", "orth-no-data", "pre-ln", "weights", "paper"} <= set(policy_names())
    a, b = berts
    out = tmp_path / "m"
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", "all", "--calib", str(TEXT), "-q", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    kinds = {g["kind"] for g in _report(out)["groups"]}
    assert {"attn", "ffn", "residual"} <= kinds


# --- 4. the output reproduces the merge ---------------------------------------------------------


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def merged(berts, tmp_path_factory) -> Path:
    a, b = berts
    out = tmp_path_factory.mktemp("merged") / "m"
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", "fnn-attn", "--calib", str(TEXT), "--weight-a", "0.7",
        "--num-clips", "8", "--dtype", "bfloat16", "-q", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


def test_written_policy_is_accepted_back(berts, merged, tmp_path):
    a, b = berts
    out = tmp_path / "again"
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", str(merged / "policy.yaml"), "--calib", str(TEXT),
        "--dtype", "bfloat16", "-q", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (
        _tensors(out / "permutations.safetensors").keys()
        == _tensors(merged / "permutations.safetensors").keys()
    )
    first, again = _tensors(merged / "model.safetensors"), _tensors(out / "model.safetensors")
    assert all(v.equal(again[k]) for k, v in first.items())  # weights 0.7/0.3 and 8 texts kept


def test_merge_config_reruns_the_whole_merge(merged, tmp_path):
    import yaml

    config = yaml.safe_load((merged / "merge.yaml").read_text())
    assert config["weights"] == [0.7, pytest.approx(0.3)] and config["dtype"] == "bfloat16"
    assert (
        config["calib"] == [str(TEXT.resolve())]
        and config["policy"]["calibration"]["num_clips"] == 8
    )
    out = tmp_path / "again"
    run = graphperm_cli("merge", "--config", str(merged / "merge.yaml"), "-q", "--out", str(out))
    assert run.returncode == 0, run.stderr
    first, again = _tensors(merged / "model.safetensors"), _tensors(out / "model.safetensors")
    assert first.keys() == again.keys() and all(v.equal(again[k]) for k, v in first.items())
    assert "graphperm merge --config merge.yaml" in (merged / "README.md").read_text()


def test_merge_config_with_models_too_is_one_line(merged, berts, tmp_path):
    a, b = berts
    out = tmp_path / "x"
    run = graphperm_cli(
        "merge", str(a), str(b), "--config", str(merged / "merge.yaml"), "--out", str(out)
    )
    assert run.returncode == 2 and "do not pass MODEL_A too" in run.stderr, run.stderr
    run = graphperm_cli("merge", "--out", str(out))
    assert run.returncode == 2 and "needs MODEL_A and MODEL_B" in run.stderr
    assert not out.exists()


# --- 13. the model card says what happened ------------------------------------------------------


def test_card_of_a_plain_average_names_no_alignment_method(berts, tmp_path):
    a, b = berts
    out = tmp_path / "m"
    run = graphperm_cli("merge", str(a), str(b), "--policy", "average", "-q", "--out", str(out))
    assert run.returncode == 0, run.stderr
    card = (out / "README.md").read_text()
    assert "- alignment method: none (plain interpolation)" in card
    assert "base_model:" not in card and str(a) not in card.split("---")[1]  # local paths
    assert "pypi.org" not in card


# --- 7. apply -----------------------------------------------------------------------------------


def test_apply_weight_without_a_model_to_merge_into_is_refused(berts, merged, tmp_path):
    _, b = berts
    out = tmp_path / "x"
    perms = str(merged / "permutations.safetensors")
    run = graphperm_cli("apply", str(b), "--perms", perms, "--weight-a", "0.5", "--out", str(out))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "--merge-into" in run.stderr and not out.exists()


def test_apply_writes_a_report_and_a_card(berts, merged, tmp_path):
    import json

    a, b = berts
    perms = str(merged / "permutations.safetensors")
    out = tmp_path / "merged"
    run = graphperm_cli(
        "apply",
        str(b),
        "--perms",
        perms,
        "--merge-into",
        str(a),
        "--dtype",
        "bfloat16",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["weight_a"] == 0.7  # the policy.yaml next to --perms
    assert report["verification"]["ok"] and "permutations read from" in report["method"]
    assert "| 0.7 |" in (out / "README.md").read_text()
    first, again = _tensors(merged / "model.safetensors"), _tensors(out / "model.safetensors")
    bad = [k for k, v in first.items() if not v.equal(again[k])]
    assert not bad, (bad, [(first[k].dtype, again[k].dtype) for k in bad])  # bit for bit
    out = tmp_path / "permuted"
    run = graphperm_cli("apply", str(b), "--perms", perms, "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "apply_report.json").read_text())["verification"]["ok"]
    assert "with its units permuted" in (out / "README.md").read_text()


# --- 12, 14, 15. smaller things ----------------------------------------------------------------


def test_did_you_mean_never_suggests_what_was_typed(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text('align:\n  - kind: ffn\n    groups: "encoder.layer.*.attention"\n')
    tiny = "builtin:bert-tiny"
    run = graphperm_cli(
        "merge", tiny, tiny, "--random-init", "--policy", str(policy), "--out", str(tmp_path / "m")
    )
    assert run.returncode == 2
    assert "did you mean 'encoder.layer.*.attention'" not in run.stderr
    assert "matches only attn groups, not ffn ones" in run.stderr, run.stderr


def test_verify_names_outputs_as_the_model_does():
    run = graphperm_cli("verify", "builtin:bert-tiny")
    assert run.returncode == 0, run.stderr
    rows = [line.split()[0] for line in run.stdout.splitlines()[4:6]]
    assert rows == ["last_hidden_state", "pooler_output"], run.stdout


def test_help_says_what_calib_reads_and_where_the_demo_encoders_are():
    from graphperm.demo import ENCODERS

    merge = graphperm_cli("merge", "--help").stdout
    assert ".jsonl" in merge and "images" in merge
    demo = " ".join(graphperm_cli("demo", "--help").stdout.split())
    assert "speech" in demo and ENCODERS["speech"].name in demo and "encoders" in demo


def test_models_lists_the_zoo_and_the_policies():
    from graphperm.trace.builtin import ZOO

    run = graphperm_cli("models")
    assert run.returncode == 0, run.stderr
    listed = {w for line in run.stdout.splitlines() for w in line.split()[:1]}
    assert {f"builtin:zoo/{name}" for name in ZOO} <= listed
    assert {"builtin:bert-tiny", "paper", "orth", "all"} <= listed


@pytest.mark.parametrize("policy", ["weights", "orth-no-data"])
def test_every_method_shows_a_quality_figure(berts, policy, tmp_path):
    a, b = berts
    out = tmp_path / "m"
    run = graphperm_cli("merge", str(a), str(b), "--policy", policy, "--out", str(out))
    assert run.returncode == 0, run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("weights of B against A"))
    figure = _report(out)["weight_agreement"]
    assert f"{figure['before']:.3f} before, {figure['after']:.3f} after" in line
    assert figure["after"] > figure["before"] + 0.05  # alignment made the weights agree
    assert f"{figure['after']:.3f} after" in (out / "README.md").read_text()


# --- eval ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_berts(tmp_path_factory, berts) -> tuple[Path, Path]:
    """The two BERTs with a masked-LM head and their tokenizer."""
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("mlm")
    out = []
    for seed, src in enumerate(berts):
        torch.manual_seed(seed)
        model = tf.BertForMaskedLM.from_pretrained(src)
        model.save_pretrained(root / src.name)
        tf.AutoTokenizer.from_pretrained(src).save_pretrained(root / src.name)
        out.append(root / src.name)
    return out[0], out[1]


def test_eval_scores_merges_against_their_parents(mlm_berts, tmp_path):
    import json

    a, b = mlm_berts
    out = tmp_path / "m"
    run = graphperm_cli(
        "merge", str(a), str(b), "--policy", "weights", "--weight-a", "0.9", "-q", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    run = graphperm_cli("eval", str(a), str(b), str(out), str(a), "--calib", str(TEXT), "--json")
    assert run.returncode == 0, run.stderr
    scores = json.loads(run.stdout)
    cka = scores["cka"]
    assert cka["0-3"] == pytest.approx(1.0)  # A against itself
    assert cka["0-2"] > cka["1-2"] and cka["0-2"] > cka["0-1"]  # 0.9·A + 0.1·B' is near A
    loss = scores["mlm_loss"]
    assert len(loss) == 4 and all(v > 0 for v in loss) and loss[3] == pytest.approx(loss[0])
    table = graphperm_cli("eval", str(a), str(b), str(out), "--calib", str(TEXT))
    assert (
        table.returncode == 0 and "masked-LM loss" in table.stdout and "CKA with B" in table.stdout
    )


def test_eval_of_models_of_other_architectures_is_one_line(berts, tmp_path):
    a, _ = berts
    run = graphperm_cli("eval", str(a), str(a), "builtin:hubert-tiny", "--calib", str(TEXT))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
