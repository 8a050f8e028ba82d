"""Three or more models: one pass, every model aligned into A's basis, N-way interpolation,
the command line with --weights, and the model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
from graphperm.data.synth import write_clips
from graphperm.merge import align_models, merge_all, prepare
from graphperm.policy import load_policy
from graphperm.trace import load_model

ONE_SECOND = {"calibration": {"clip_seconds": 1.0, "num_clips": 16}}


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, count=16, seconds=1.0)
    return folder


def _scrambled(a, plan, indexer, seed: int):
    every = random_permutation(indexer.shapes(), seed=seed)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    b = load_model("builtin:hubert-tiny")
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    return b


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3]])
def test_a_and_two_permuted_copies_merge_back_to_a(audio: Path, weights) -> None:
    policy = load_policy("paper").model_dump()
    policy.update(ONE_SECOND)
    policy = load_policy(policy)
    a = load_model("builtin:hubert-tiny")
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    models = [a, _scrambled(a, plan, indexer, 5), _scrambled(a, plan, indexer, 6)]
    alignment = align_models(models, policy, [audio])
    assert len(alignment.perms) == 2
    result = merge_all(alignment, models, weights=weights)
    assert result.weights == pytest.approx(weights)
    assert all(c.ok for c in result.checks) and len(result.checks) == 2
    err = max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())
    assert err < 1e-4


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graphperm", "merge", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


TINY = ["builtin:hubert-tiny"] * 3


def test_three_models_on_the_command_line(audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "m3"
    policy = load_policy("paper").model_dump()
    policy.update(ONE_SECOND)
    (tmp_path / "p.json").write_text(json.dumps(policy))
    args = [*TINY, "--random-init", "--calib", str(audio), "--num-clips", "8"]
    args += ["--policy", str(tmp_path / "p.json")]
    proc = cli(*args, "--weights", "0.5", "0.25", "0.25", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["weights"] == [0.5, 0.25, 0.25] and len(report["models"]) == 3
    for name in ("permutations.safetensors", "permutations_2.safetensors"):
        assert load_file(str(out / name))  # one set per model after A
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "- graphperm" in card and "base_model:" in card
    assert "--weights 0.5 0.25 0.25" in card  # the command that made it
    assert card.count("| builtin:hubert-tiny |") == 3
    assert "mean moved fraction" in card


def _bad(args: list[str], needle: str, out: Path) -> None:
    proc = cli(*args, "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graphperm: error: ") and needle in last, proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_wrong_number_of_weights(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY, "--random-init", "--calib", str(audio), "--weights", "0.5", "0.5"],
        "--weights has 2 weights for 3 models",
        tmp_path / "o",
    )


def test_weights_that_do_not_sum_to_one(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY, "--random-init", "--calib", str(audio), "--weights", "0.5", "0.5", "0.5"],
        "sum to 1",
        tmp_path / "o",
    )


def test_different_architectures_among_three(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY[:2], "builtin:hubert-stable-tiny", "--random-init", "--calib", str(audio)],
        "differ in architecture",
        tmp_path / "o",
    )
