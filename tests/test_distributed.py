"""Scale-out: shards solved together, and torchrun, give the single-process permutations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphperm.data.synth import write_clips

POLICY = """align: [{kind: conv}, {kind: attn, parts: [heads, vo]}, {kind: ffn}]
calibration: {clip_seconds: 1.0, batch_size: 2, precision: fp64}
"""
MODELS = ["builtin:hubert-tiny", "builtin:hubert-tiny", "--random-init"]


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("job")
    write_clips(root / "audio", count=12, seconds=1.0)
    (root / "p.yaml").write_text(POLICY)
    run(root, "align", *MODELS, "--policy", "p.yaml", "--calib", "audio", "--out", "single")
    return root


def run(cwd: Path, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = launcher or [sys.executable, "-m", "graphperm"]
    proc = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def same_permutations(a: Path, b: Path) -> bool:
    x, y = (
        load_file(str(a / "permutations.safetensors")),
        load_file(str(b / "permutations.safetensors")),
    )
    return sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


def stats(job: Path, policy: str, shard: str, out: str) -> None:
    """`graphperm stats` of one shard of the job's audio."""
    cmd = ["stats", *MODELS, "--policy", policy, "--calib", "audio", "--shard", shard]
    run(job, *cmd, "--out", out)


def test_shards_solved_together_match_one_process(job: Path) -> None:
    for i in range(3):
        stats(job, "p.yaml", f"{i}/3", f"s{i}.safetensors")
    out = run(job, "solve", "s0.safetensors", "s1.safetensors", "s2.safetensors", "--out", "solved")
    assert "12 clips" in out.stdout
    assert same_permutations(job / "single", job / "solved")


def test_solve_refuses_mismatched_shards(job: Path) -> None:
    other = job / "other.yaml"
    other.write_text(POLICY.replace("batch_size: 2", "batch_size: 3"))
    stats(job, "other.yaml", "0/2", "x0.safetensors")
    stats(job, "p.yaml", "1/2", "x1.safetensors")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphperm",
            "solve",
            "x0.safetensors",
            "x1.safetensors",
            "--out",
            "bad",
        ],
        cwd=job,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "another policy" in proc.stderr
    assert not (job / "bad").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_torchrun_matches_one_process(job: Path) -> None:
    run(
        job,
        "align",
        *MODELS,
        "--policy",
        "p.yaml",
        "--calib",
        "audio",
        "--out",
        "dist",
        launcher=["torchrun", "--standalone", "--nproc-per-node", "2", "--no-python", "graphperm"],
    )
    assert same_permutations(job / "single", job / "dist")
    report = json.loads((job / "dist" / "merge_report.json").read_text())
    assert report["calibration"]["processes"] == 2 and report["calibration"]["clips"] == 12
