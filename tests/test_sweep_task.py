"""Weight sweeps (one folder per weight, each equal to its own run, one calibration) and task
arithmetic on the command line; every bad input is one line, exit code 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphperm.cli import main
from graphperm.data.synth import write_clips
from graphperm.policy import load_policy
from graphperm.trace import load_model

PAIR = ["merge", "builtin:hubert-tiny", "builtin:hubert-tiny"]


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, count=8, seconds=1.0)
    return folder


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    policy = load_policy("paper").model_dump(mode="json")
    policy["calibration"].update(clip_seconds=1.0, num_clips=8)
    path = tmp_path_factory.mktemp("p") / "paper.json"
    path.write_text(json.dumps(policy))
    return path


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_sweep_folders_equal_single_runs_bit_for_bit_from_one_calibration(
    tmp_path: Path, audio: Path, policy_file: Path, monkeypatch
) -> None:
    import graphperm.merge.pipeline as pipeline

    calls = []
    real = pipeline.calibrate
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = ["--policy", str(policy_file), "--calib", str(audio), "-q"]
    sweep = tmp_path / "sweep"
    assert main([*PAIR, *common, "--weight-a", "0.9", "0.2", "--out", str(sweep)]) == 0
    assert len(calls) == 1  # one statistics pass for the whole sweep
    assert sorted(p.name for p in sweep.iterdir()) == ["weight-0.2", "weight-0.9"]
    for w in ("0.9", "0.2"):
        single = tmp_path / f"single-{w}"
        assert main([*PAIR, *common, "--weight-a", w, "--out", str(single)]) == 0
        got, want = _tensors(sweep / f"weight-{w}"), _tensors(single)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), w
        report = json.loads((sweep / f"weight-{w}" / "merge_report.json").read_text())
        assert report["weight_a"] == float(w)
    a, b = _tensors(sweep / "weight-0.9"), _tensors(sweep / "weight-0.2")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the weights did change the merge


def test_sweep_with_ties_equals_the_single_run(
    tmp_path: Path, audio: Path, policy_file: Path
) -> None:
    common = ["--policy", str(policy_file), "--calib", str(audio), "-q", "--combine", "ties"]
    assert main([*PAIR, *common, "--weight-a", "0.8", "0.5", "--out", str(tmp_path / "s")]) == 0
    assert main([*PAIR, *common, "--weight-a", "0.5", "--out", str(tmp_path / "one")]) == 0
    got, want = _tensors(tmp_path / "s" / "weight-0.5"), _tensors(tmp_path / "one")
    assert all(torch.equal(got[k], want[k]) for k in want)
    card = (tmp_path / "one" / "README.md").read_text()
    assert "combination: ties" in card


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """A base, two fine-tunings of it (small changes), and an unrelated model."""
    root = tmp_path_factory.mktemp("family")
    base = load_model("builtin:hubert-tiny")
    folders = {"base": root / "base"}
    base.model.save_pretrained(folders["base"])
    g = torch.Generator().manual_seed(0)
    for name in ("x", "y"):
        tuned = load_model("builtin:hubert-tiny")
        with torch.no_grad():
            for v in tuned.model.state_dict().values():
                if v.is_floating_point():
                    v.add_(0.01 * torch.randn(v.shape, generator=g))
        folders[name] = root / name
        tuned.model.save_pretrained(folders[name])
    folders["other"] = root / "other"
    load_model("builtin:hubert-tiny", seed=1).model.save_pretrained(folders["other"])
    return folders


def test_task_arithmetic_combines_task_vectors_around_the_base(
    tmp_path: Path, family: dict[str, Path], capsys
) -> None:
    out = tmp_path / "ta"
    args = ["merge", str(family["x"]), str(family["y"]), "--base", str(family["base"])]
    assert main([*args, "--weights", "0.7", "0.3", "--scale", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "warning" not in printed and "relative distance" in printed
    base, x, y = (_tensors(family[k]) for k in ("base", "x", "y"))
    got = _tensors(out)
    key = "encoder.layers.0.attention.q_proj.weight"
    b64 = base[key].double()
    want = b64 + 2.0 * (0.7 * (x[key].double() - b64) + 0.3 * (y[key].double() - b64))
    assert torch.allclose(got[key].double(), want, atol=1e-6)
    report = json.loads((out / "merge_report.json").read_text())
    assert report["kind"] == "task_arithmetic" and report["weights"] == [0.7, 0.3]
    assert all(d["from_base"] for d in report["distance_from_base"])
    assert 0 < report["distance_from_base"][0]["relative_distance"] < 0.5


def test_task_arithmetic_with_all_weight_on_one_model_gives_that_model(
    tmp_path: Path, family: dict[str, Path]
) -> None:
    out = tmp_path / "ta"
    args = ["merge", str(family["x"]), str(family["y"]), "--base", str(family["base"])]
    assert main([*args, "--weights", "1", "0", "--out", str(out), "-q"]) == 0
    got, want = _tensors(out), _tensors(family["x"])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_task_arithmetic_sweep_with_ties(tmp_path: Path, family: dict[str, Path]) -> None:
    out = tmp_path / "ta"
    args = ["merge", str(family["x"]), str(family["y"]), "--base", str(family["base"])]
    args += ["--combine", "ties", "--quantile", "0.5", "--weight-a", "0.9", "0.1"]
    assert main([*args, "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["weight-0.1", "weight-0.9"]
    report = json.loads((out / "weight-0.1" / "merge_report.json").read_text())
    assert report["combine"]["method"] == "ties" and report["weights"] == [0.1, 0.9]


def test_a_model_not_from_the_base_gets_a_one_line_warning(
    tmp_path: Path, family: dict[str, Path], capsys
) -> None:
    args = ["merge", str(family["x"]), str(family["other"]), "--base", str(family["base"])]
    assert main([*args, "--out", str(tmp_path / "ta")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "does not seem to come from the base" in warnings[0]
    assert str(family["other"]) in warnings[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--weight-a", "0.9", "1.5"], "every --weight-a must be in [0, 1]"),
        (["--weight-a", "0.9", "0.9"], "repeats a weight"),
        (["--combine", "ties", "--quantile", "1.5"], "combine.quantile"),
        (["--combine", "dare", "--drop", "1"], "combine.drop"),
        (["--combine", "tie"], "did you mean 'ties'"),
        (["--scale", "2"], "give --base"),
        (["--base", "builtin:bert-tiny"], "differ in architecture"),
        (["--base", "builtin:hubert-tiny", "--scale", "0"], "combine.scale"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, extra: list[str], needle: str | None, capsys
) -> None:
    out = tmp_path / "out"
    assert main([*PAIR, *extra, "--out", str(out), "--calib", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
