"""The GPU path (runs only where CUDA is available): same permutations as the CPU path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphperm.data.synth import write_clips
from graphperm.merge import align
from graphperm.solve import agreement
from graphperm.trace import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_cuda_statistics_agree_with_cpu(tmp_path: Path) -> None:
    write_clips(tmp_path, count=16, seconds=1.0)
    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    policy = {
        "align": [{"kind": "conv"}, {"kind": "attn"}, {"kind": "ffn"}],
        "calibration": {"clip_seconds": 1.0, "batch_size": 4, "split_half": False},
    }
    cpu = align(a, b, policy, [tmp_path], device="cpu")
    gpu = align(a, b, policy, [tmp_path], device="cuda")
    assert gpu.calibration["device"] == "cuda"
    assert cpu.stats.site_keys() == gpu.stats.site_keys()
    for key in cpu.stats.site_keys():
        c, g = cpu.stats.site(key), gpu.stats.site(key)
        assert c.n == g.n, key
        assert torch.allclose(c.correlation(), g.correlation(), atol=1e-3), key
    agree = agreement(cpu.plan, cpu.analysis, cpu.perm, gpu.perm)
    assert min(agree.values()) >= 0.99, agree
