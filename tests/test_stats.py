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
    """The mask keeps exactly the frames it marks: a full clip and a short one padded to the
    clip length in one batch (as fixed-shape batches are) against the same frames by hand.
    (Waveform calibration itself runs clips at their own length: test_reference.py.)"""
    import soundfile as sf

    from graphperm.analysis import analyse
    from graphperm.inputs import adapter_for
    from graphperm.policy import Calibration
    from graphperm.stats import SiteRunner, collect
    from graphperm.trace import trace

    loaded = load_model("builtin:hubert-tiny")
    b = load_model("builtin:hubert-tiny", seed=1)
    adapter = adapter_for(loaded, Calibration(clip_seconds=1.0, batch_size=2))
    analysis = analyse(trace(loaded, adapter.example(2)))
    site = next(s for g in analysis.groups if g.kind == "ffn" for s in g.sites if s.role == "post")
    wave = np.random.default_rng(0).normal(size=16000).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", wave, 16000)
    sf.write(tmp_path / "b.wav", wave[:9000], 16000)
    from graphperm.data import CalibrationSet

    calib = CalibrationSet([tmp_path / "a.wav", tmp_path / "b.wav"], clip_seconds=1.0)
    (audio,) = list(calib.batches(2))  # padded the way Whisper's windows and the fallback are
    batch = adapter.batch(audio, 2)
    assert batch.items == 2 and batch.positions == 16000 + 9000
    stats = collect(analysis, [site], [loaded.state_dict(), b.state_dict()], [batch])
    got = stats.site((site.key, site.dim))

    runner = SiteRunner(analysis.traced.program, [site.key])
    (x,) = runner(loaded.state_dict(), batch.inputs)  # (batch, time, channels)
    (y,) = runner(b.state_dict(), batch.inputs)
    steps = x.shape[1]
    keep = 9000 * steps // 16000  # steps of the short clip that see no padding
    real_x = torch.cat([x[0], x[1, :keep]]).double()
    real_y = torch.cat([y[0], y[1, :keep]]).double()
    assert got.n == steps + keep
    n = got.n
    assert torch.allclose(got.sums[0] + n * got.shift[0], real_x.sum(0), rtol=1e-5, atol=1e-4)
    assert torch.allclose(got.sums[1] + n * got.shift[1], real_y.sum(0), rtol=1e-5, atol=1e-4)
    cx, cy = real_x - got.shift[0], real_y - got.shift[1]
    assert torch.allclose(got.squares[0], cx.square().sum(0), rtol=1e-5, atol=1e-4)
    assert torch.allclose(got.cross[0].double(), cx.T @ cy, rtol=1e-4, atol=1e-3)
    # and the padded frames would have changed them: they are not the same frames
    padded_x = torch.cat([x[0], x[1]]).double()
    assert not torch.allclose(got.sums[0] + n * got.shift[0], padded_x.sum(0), atol=1e-3)


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
    from graphperm.inputs import step_mask
    from graphperm.stats import FrameLayout, valid_frames

    t = torch.arange(2 * 3 * 12, dtype=torch.float32).reshape(2, 3, 12)  # (batch, channels, time)
    strided = t[:, :, ::4]  # what the runner returns for stride 4
    mask = torch.arange(24)[None, :] < torch.tensor([24, 12])[:, None]  # input positions
    ok = step_mask(mask, 12)
    frames = valid_frames(strided, FrameLayout(channel=1, batch=0, time=2), ok, 4)
    # row 0: steps 0, 4, 8; row 1 has 6 real steps: 0, 4
    want = torch.stack([t[0, :, 0], t[0, :, 4], t[0, :, 8], t[1, :, 0], t[1, :, 4]])
    assert torch.equal(frames, want)
    # nothing padded (the fast path, no mask): every strided step, in the same order
    full = valid_frames(
        strided, FrameLayout(channel=1, batch=0, time=2), step_mask(mask[:1].expand(2, -1), 12), 4
    )
    want = torch.stack([t[r, :, s] for r in range(2) for s in (0, 4, 8)])
    assert torch.equal(full, want)
    layout = FrameLayout(channel=2, batch=1, time=0)  # (time, batch, channels)
    tbc = t.permute(2, 0, 1)
    whole = valid_frames(tbc, layout, torch.ones(2, 12, dtype=torch.bool))
    assert torch.equal(whole, torch.stack([t[r, :, s] for s in range(12) for r in range(2)]))


def test_halves_sum_to_the_whole() -> None:
    from graphperm.stats import Statistics

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    halves = Statistics([{("x", 0): _stats(a[:90], b[:90])}, {("x", 0): _stats(a[90:], b[90:])}])
    whole = _stats(a, b, dtype=torch.float64)
    assert torch.allclose(halves.correlation(("x", 0)), whole.correlation(), atol=1e-5)
    assert halves.half(1).site(("x", 0)).n == 110


def test_whisper_packs_clips_into_its_window(tmp_path) -> None:
    """Four 0.25-s clips share builtin:whisper-tiny's 1-s window; boundaries stay out."""
    from graphperm.inputs import adapter_for
    from graphperm.inputs.audio import GUARD
    from graphperm.policy import Calibration

    write_clips(tmp_path, count=4, seconds=1.0)
    a = load_model("builtin:whisper-tiny")
    packed = adapter_for(a, Calibration(clip_seconds=0.25, num_clips=8, batch_size=2))
    assert packed.per_window == 4
    (batch,) = list(packed.calibration([tmp_path]).batches(2))
    assert batch.items == 8 and batch.inputs["input_features"].shape[0] == 2
    row = batch.mask[0]
    assert row[: 4000 - GUARD].all() and not row[4000 - GUARD : 4000 + GUARD].any()
    assert int(batch.mask.sum()) == 2 * (16000 - 6 * GUARD)
    alone = adapter_for(a, Calibration(clip_seconds=0.25, num_clips=8, batch_size=2, pack=False))
    assert alone.per_window == 1
    assert sum(b.items for b in alone.calibration([tmp_path]).batches(2)) == 8
