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


def _token_batches(n: int = 6) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 90, (2, 12), generator=g)} for _ in range(n)]


def test_learned_alignment_on_cuda_matches_cpu_and_comes_back_to_the_cpu() -> None:
    from graphperm.learn import learn_alignment
    from graphperm.policy import Learn

    a, b = load_model("builtin:bert-tiny"), load_model("builtin:bert-tiny", seed=1)
    start = align(a, b, "weights", device="cpu")
    settings = Learn(steps=6, lr=0.5, eval_every=2, seed=4)
    runs = {
        device: learn_alignment(
            start.analysis, [a, b], start.perm, _token_batches(), settings, weight_a=0.5,
            device=device,
        )
        for device in ("cpu", "cuda")
    }  # fmt: skip
    (p_cpu, r_cpu), (p_gpu, r_gpu) = runs["cpu"], runs["cuda"]
    assert r_gpu.heldout_before == pytest.approx(r_cpu.heldout_before, rel=1e-4)
    assert r_gpu.heldout_after <= r_gpu.heldout_before
    assert r_gpu.peak_gpu_mb and r_gpu.peak_gpu_mb > 0 and r_cpu.peak_gpu_mb is None
    assert all(t.device.type == "cpu" for _, _, t in p_gpu)
    same = [
        float(torch.allclose(p_cpu.get(g, q), t, atol=1e-4))
        if t.is_floating_point()
        else float((p_cpu.get(g, q) == t).double().mean())
        for g, q, t in p_gpu
    ]
    assert min(same) >= 0.9, same  # float rounding may break a near tie, not the answer
    assert next(a.module.parameters()).device.type == "cpu"  # A's module moved back


def test_learned_merge_on_cuda_gives_back_a_from_an_exact_start(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tests.helpers import function_oracle

    g = torch.Generator().manual_seed(0)
    calib = tmp_path / "x.safetensors"
    save_file({"pixel_values": torch.randn(8, 3, 32, 32, generator=g)}, str(calib))
    policy = {
        "align": [{"transform": "orth"}],
        "method": "learned",
        "learn": {"steps": 4, "items": 8, "eval_every": 2, "lr": 0.1, "objective": "sites"},
        "weight_a": 0.5,
        "calibration": {"batch_size": 2},
    }
    worst, alignment = function_oracle(load_model("builtin:vit-tiny"), policy, [str(calib)])
    assert worst <= 1e-4
    assert alignment.method_reports[0]["learn"]["peak_gpu_mb"] > 0  # it ran on the GPU
