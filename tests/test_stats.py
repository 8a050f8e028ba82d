"""Streaming statistics: exact correlations, mergeable shards, padding and NaN handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphperm.data.synth import write_clips
from graphperm.errors import CalibrationError
from graphperm.merge import align
from graphperm.stats import SiteStats
from graphperm.trace import load_model


def _stats(a: torch.Tensor, b: torch.Tensor, chunks: int = 1, dtype=torch.float32) -> SiteStats:
    s = SiteStats.empty(a.shape[1], dtype)
    for ca, cb in zip(a.chunk(chunks), b.chunk(chunks)):
        s.update(ca, cb)
    return s


def test_correlation_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g) * 3 + 100  # a large offset: the shift must handle it
    b = a[:, [3, 1, 0, 5, 4, 2]] * 2 + torch.randn(500, 6, generator=g) * 0.5
    got = _stats(a, b, chunks=7).correlation()
    want = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:6, 6:]
    assert np.allclose(got.numpy(), want, atol=1e-5)


def test_shards_merge_to_the_whole() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 5, generator=g) + 5, torch.randn(300, 5, generator=g) - 3
    whole = _stats(a, b, dtype=torch.float64)
    parts = _stats(a[:120], b[:120], dtype=torch.float64).merge(
        _stats(a[120:], b[120:], dtype=torch.float64)
    )
    assert parts.n == whole.n
    assert torch.allclose(parts.correlation(), whole.correlation(), atol=1e-10)


def test_dead_channels_give_zero_not_nan() -> None:
    a = torch.randn(50, 3)
    a[:, 1] = 0.0
    corr = _stats(a, a.clone()).correlation()
    assert torch.isfinite(corr).all() and float(corr[1].abs().max()) == 0.0


def test_padded_frames_never_enter_the_statistics(tmp_path) -> None:
    """Adding padding (a short clip in a batch) must not change a lone full clip's statistics."""
    import soundfile as sf

    from graphperm.data import CalibrationSet
    from graphperm.stats import AudioAdapter, collect
    from tests.helpers import analysis_of

    analysis = analysis_of("hubert-tiny")
    site = next(s for g in analysis.groups if g.kind == "ffn" for s in g.sites if s.role == "post")
    wave = np.random.default_rng(0).normal(size=16000).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", wave, 16000)
    sf.write(tmp_path / "short.wav", wave[:9000], 16000)
    loaded = analysis.traced.loaded
    adapter = AudioAdapter.for_model(loaded, clip_seconds=1.0)
    state = loaded.state_dict()

    def run(files, batch_size):
        data = CalibrationSet(files, clip_seconds=1.0)
        batches = [adapter(b, batch_size) for b in data.batches(batch_size)]
        # the analysis was traced with batch 1 x 16000; reuse it for both runs at batch 1
        return collect(analysis, [site], state, state, batches)

    alone = run([tmp_path / "a.wav"], 1)
    with_pad = run([tmp_path / "a.wav", tmp_path / "short.wav"], 1)
    s1, s2 = alone.site((site.key, site.dim)), with_pad.site((site.key, site.dim))
    steps = analysis.coupling.tensors[site.key].shape[1]  # (batch, time, channels)
    assert s1.n == steps
    assert s2.n == steps + int(9000 / 16000 * steps)  # the short clip's padding was dropped


def test_nan_activations_name_the_site(tmp_path) -> None:
    write_clips(tmp_path, count=2, seconds=1.0)
    a = load_model("builtin:hubert-tiny")
    b = load_model("builtin:hubert-tiny", seed=1)
    with torch.no_grad():
        b.module.encoder.layers[1].feed_forward.intermediate_dense.weight.fill_(float("nan"))
    policy = {"align": [{"kind": "ffn"}], "calibration": {"clip_seconds": 1.0}}
    with pytest.raises(CalibrationError, match=r"model B produced NaN.*encoder\.layers\.1"):
        align(a, b, policy, [tmp_path])


def test_frames_keep_every_strided_unpadded_step() -> None:
    from graphperm.stats.collect import _frames, _Layout

    t = torch.arange(2 * 3 * 12, dtype=torch.float32).reshape(2, 3, 12)  # (batch, channels, time)
    strided = t[:, :, ::4]  # what the runner returns for stride 4
    frames = _frames(strided, _Layout(channel=1, batch=0, time=2), torch.tensor([1.0, 0.5]), 4, 12)
    # row 0: steps 0, 4, 8; row 1 has 6 real steps: 0, 4
    want = torch.stack([t[0, :, 0], t[0, :, 4], t[0, :, 8], t[1, :, 0], t[1, :, 4]])
    assert torch.equal(frames, want)


def test_halves_sum_to_the_whole() -> None:
    from graphperm.stats import Statistics

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    halves = Statistics([{("x", 0): _stats(a[:90], b[:90])}, {("x", 0): _stats(a[90:], b[90:])}])
    whole = _stats(a, b, dtype=torch.float64)
    assert torch.allclose(halves.correlation(("x", 0)), whole.correlation(), atol=1e-5)
    assert halves.half(1).site(("x", 0)).n == 110
