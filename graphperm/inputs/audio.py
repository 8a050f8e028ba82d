"""Audio adapters: waveforms (HuBERT, wav2vec2, MERT) and Whisper's log-mel window.

Calibration audio is cut into clips by :class:`~graphperm.data.CalibrationSet`.

- Waveform encoders (HuBERT, wav2vec2, MERT) run every clip at its own length: a batch holds
  clips of one length only (the plan puts equal lengths next to each other), and the graph is
  exported with a dynamic batch and time axis, so no real frame ever sees padding (their
  GroupNorm, positional convolution and attention would mix it in) and every frame counts.
- Whisper's log-mel encoder takes a fixed window (30 s), as it does in transformers: a clip
  alone is padded to the window, or several are packed end to end into it
  (``calibration.pack``); packing is decided per window before sharding, so any ``--shard``
  split packs exactly as one process does.

Example:
    >>> from graphperm.trace import load_model
    >>> from graphperm.policy import Calibration
    >>> adapter = adapter_for(load_model("builtin:hubert-tiny"), Calibration(clip_seconds=1.0))
    >>> {k: tuple(v.shape) for k, v in adapter.example(batch_size=2).items()}
    {'input_values': (2, 16000), 'mask_time_indices': (2, 799)}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from graphperm.data import AudioBatch, CalibrationSet
from graphperm.errors import CalibrationError
from graphperm.inputs.base import (
    CalibrationData,
    InputAdapter,
    ModelBatch,
    adapter_for,
    register_adapter,
)
from graphperm.inputs.tokens import takes_argument

__all__ = ["AudioAdapter", "LogMelAdapter", "SpectrogramAdapter", "WaveformAdapter", "adapter_for"]

log = logging.getLogger(__name__)

#: File endings that are surely not audio, named in the error when one is given to an audio model.
NOT_AUDIO = {
    **dict.fromkeys((".txt", ".jsonl", ".json", ".md"), "a text file"),
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"), "an image"),
}

#: Samples kept out of the statistics on each side of a boundary between two packed clips (two
#: mel frames of STFT window plus the receptive field of Whisper's two convolutions).
GUARD = 640


class AudioAdapter(InputAdapter):
    """Shared by waveform and log-mel adapters: sample rate, clips, the audio calibration set."""

    item = "clips"
    unit = "s"
    #: Each clip runs at its own length (batches of equal-length clips, a dynamic-shape graph)
    #: instead of padded to :attr:`span`.
    own_length: ClassVar[bool] = False

    def __init__(self, loaded, settings=None) -> None:
        super().__init__(loaded, settings)
        prep = preprocessor_config(loaded.source)
        config_rate = getattr(loaded.config, "sampling_rate", None) or 16000
        wanted = settings.sample_rate if settings is not None else None
        self.sample_rate = int(wanted or prep.get("sampling_rate", config_rate))
        self.per_unit = float(self.sample_rate)
        self.prep = prep
        self.clip_seconds = settings.clip_seconds if settings is not None else None

    @property
    def clip_samples(self) -> int:
        seconds = self.clip_seconds if self.clip_seconds is not None else 1.0
        return round(seconds * self.sample_rate)

    @property
    def span(self) -> int:
        """Samples one batch row holds (the mask's length)."""
        return self.clip_samples

    def max_steps(self, rate: float | None) -> int | None:
        if rate is None:
            return None
        return max(1, round(rate * self.span / self.sample_rate))

    def calibration(
        self, sources: Sequence[str | Path], *, shard: tuple[int, int] | None = None
    ) -> CalibrationData:
        cal = self.settings
        if cal is None:
            raise CalibrationError("calibration needs the policy's calibration settings")
        for source in sources:
            kind = NOT_AUDIO.get(Path(source).suffix.lower())
            if kind is not None and Path(source).is_file():
                raise CalibrationError(
                    f"--calib '{source}' is {kind}, but {self.describe_model()} reads audio; "
                    "pass audio files or folders"
                )
        data = self.plan(sources, shard)
        summary: dict[str, Any] = {"sample_rate": self.sample_rate}

        def describe() -> None:  # again after reading: a file may fail only then
            summary["files"] = len(data.files)
            summary["skipped_files"] = [f"{p}: {why}" for p, why in data.skipped]
            summary["description"] = data.describe() + self.packing_note(data)
            if data.short_sources:
                summary["short_sources"] = [
                    f"{root}: {n} of its share of {share} clips"
                    for root, n, share in data.short_sources
                ]

        def stream(batch_size: int) -> Iterator[ModelBatch]:
            yield from self.stream(data, batch_size)
            describe()

        describe()
        dynamic = self.dynamic_shapes() if self.own_length else None
        return CalibrationData(stream, len(data), summary, dynamic)

    def plan(self, sources: Sequence[str | Path], shard: tuple[int, int] | None) -> CalibrationSet:
        """The clips this process reads."""
        cal = self.settings
        assert cal is not None
        return CalibrationSet(
            sources,
            sample_rate=self.sample_rate,
            clip_seconds=cal.clip_seconds,
            num_clips=cal.num_clips,
            seed=cal.seed,
            shard=shard,
            by_length=self.own_length,
        )

    def packing_note(self, data: CalibrationSet) -> str:
        return ""

    def dynamic_shapes(self) -> dict[str, Any]:
        """Batch and time axes of the main input may vary (see :attr:`own_length`)."""
        from torch.export import Dim

        axes = {self.input_name: {0: Dim.AUTO, 1: Dim.AUTO}}
        if "mask_time_indices" in self.masking({self.input_name: torch.zeros(1, 16000)}):
            axes["mask_time_indices"] = {0: Dim.AUTO, 1: Dim.AUTO}
        return axes

    def stream(self, data: CalibrationSet, batch_size: int) -> Iterator[ModelBatch]:
        """Model batches of ``batch_size`` clips: of one length each (:attr:`own_length`),
        else padded to :attr:`span`."""
        if self.own_length:
            for batch in data.batches(batch_size, equal_length=True):
                yield self.own_length_batch(batch, batch_size)
            return
        for batch in data.batches(batch_size):
            yield self.batch(batch, batch_size)

    def own_length_batch(self, batch: AudioBatch, batch_size: int) -> ModelBatch:
        """``batch`` (clips of one length) as it is: nothing padded."""
        rows, n = batch.waveforms.shape
        lengths = torch.full((rows,), n, dtype=torch.long)
        mask = torch.ones(rows, n, dtype=torch.bool)
        return ModelBatch(self.features(batch.waveforms, lengths), mask, rows)

    def padded(self, batch: ModelBatch, batch_size: int) -> ModelBatch:
        """An own-length ``batch`` zero-padded to :meth:`example`'s shape (``batch_size`` rows
        of :attr:`span` samples): the fallback when the model cannot be exported with a dynamic
        length. The padding then reaches the real frames through the model (see the README)."""
        name, x = self.input_name, batch.inputs[self.input_name]
        wave = torch.zeros(batch_size, self.span, dtype=x.dtype)
        rows, n = min(batch_size, x.shape[0]), min(self.span, x.shape[1])
        wave[:rows, :n] = x[:rows, :n]
        mask = torch.zeros(batch_size, self.span, dtype=torch.bool)
        mask[:rows, :n] = batch.mask[:rows, :n]
        return ModelBatch(self.masking({name: wave}), mask, batch.items)

    def batch(self, batch: AudioBatch, batch_size: int) -> ModelBatch:
        """Pad ``batch`` to ``batch_size`` rows of :attr:`span` samples."""
        rows = batch.waveforms.shape[0]
        wave = torch.zeros(batch_size, self.clip_samples)
        n = min(self.clip_samples, batch.waveforms.shape[1])
        wave[:rows, :n] = batch.waveforms[:, :n]
        lengths = torch.zeros(batch_size, dtype=torch.long)
        lengths[:rows] = batch.lengths.clamp(max=self.clip_samples)
        mask = torch.arange(self.span)[None, :] < lengths[:, None]
        return ModelBatch(self.features(wave, lengths), mask, rows)

    def features(self, wave: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _is_waveform(loaded) -> bool:
    return hasattr(loaded.config, "conv_dim") or not hasattr(loaded.config, "num_mel_bins")


@register_adapter("input_values", when=_is_waveform)
class WaveformAdapter(AudioAdapter):
    """Raw waveforms, normalised per clip when the feature extractor says so; each clip at its
    own length."""

    kind = "waveform"
    own_length = True

    def __init__(self, loaded, settings=None) -> None:
        super().__init__(loaded, settings)
        self.normalize = bool(self.prep.get("do_normalize", False))

    def example(self, batch_size=1, length=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = length or self.clip_samples
        return self.masking({self.input_name: torch.randn(batch_size, n, generator=g) * 0.1})

    def features(self, wave, lengths):
        if self.normalize:
            mask = torch.arange(wave.shape[1]) < lengths[:, None]
            count = mask.sum(1, keepdim=True).clamp_min(1)
            mean = (wave * mask).sum(1, keepdim=True) / count
            var = (((wave - mean) * mask) ** 2).sum(1, keepdim=True) / count
            wave = ((wave - mean) / (var + 1e-7).sqrt()) * mask
        return self.masking({self.input_name: wave})

    def masking(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` with an all-False ``mask_time_indices`` when the model's ``forward``
        takes one (HuBERT, wav2vec 2.0): nothing is masked, but the traced graph then holds the
        masking path, so the embedding it writes into the stream (``masked_spec_embed``, used
        when fine-tuning) moves with that stream."""
        frames_of = getattr(self.loaded.module, "_get_feat_extract_output_lengths", None)
        if not callable(frames_of) or not takes_argument(self.loaded, "mask_time_indices"):
            return inputs
        wave = inputs[self.input_name]
        frames = int(frames_of(torch.tensor(wave.shape[1])))
        return {**inputs, "mask_time_indices": torch.zeros(wave.shape[0], frames, dtype=torch.bool)}


@register_adapter("input_values", when=lambda m: not _is_waveform(m))
class SpectrogramAdapter(InputAdapter):
    """Spectrogram transformers (AST): ``(batch, frames, mel bins)``; tracing only."""

    kind = "spectrogram"

    def example(self, batch_size=1, length=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        config = self.loaded.config
        frames = length or getattr(config, "max_length", 1024)
        return {self.input_name: torch.randn(batch_size, frames, config.num_mel_bins, generator=g)}


@register_adapter("input_features")
class LogMelAdapter(AudioAdapter):
    """Whisper-style encoders: log-mel features of a fixed window (Whisper: 30 s)."""

    kind = "log-mel"

    def __init__(self, loaded, settings=None) -> None:
        super().__init__(loaded, settings)
        config = loaded.config
        self.hop = int(self.prep.get("hop_length", 160))
        self.frames = 2 * int(getattr(config, "max_source_positions", 1500))
        self.mel_bins = int(getattr(config, "num_mel_bins", 80))
        self.window_samples = self.frames * self.hop
        if self.clip_samples > self.window_samples:
            raise CalibrationError(
                f"clip_seconds {self.clip_seconds} is longer than the model's "
                f"{self.window_samples / self.sample_rate:.0f} s window; lower "
                "calibration.clip_seconds in the policy"
            )

    @property
    def span(self) -> int:
        return self.window_samples

    @property
    def per_window(self) -> int:
        """Clips laid end to end in one window (1: one padded clip per window)."""
        if self.settings is None or not self.settings.pack:
            return 1
        return max(1, self.window_samples // self.clip_samples)

    def plan(self, sources: Sequence[str | Path], shard: tuple[int, int] | None) -> CalibrationSet:
        """The whole plan is cut into windows of :attr:`per_window` clips first, then a shard
        takes every n-th window: each window holds the same clips whatever the sharding."""
        data = super().plan(sources, None)
        if shard is not None:
            rank, size = shard
            k = self.per_window
            windows = [data.clips[i : i + k] for i in range(0, len(data.clips), k)]
            if rank >= len(windows):
                raise CalibrationError(
                    f"calibration shard {rank} of {size} gets no window (the plan fills only "
                    f"{len(windows)}); use fewer processes or more calibration audio"
                )
            data.clips = [clip for window in windows[rank::size] for clip in window]
        return data

    def packing_note(self, data: CalibrationSet) -> str:
        """How much of what a clip's frames attend to is other clips (packing shares context:
        Whisper's encoder has no attention mask, and the log-mel scale is set per window)."""
        k = self.per_window
        if k == 1:
            return "; one clip per window"
        shared, total = 0.0, 0.0
        for i in range(0, len(data.clips), k):
            window = [c.seconds for c in data.clips[i : i + k]]
            for own in window:
                shared += own * (sum(window) - own) / sum(window)
                total += own
        frac = shared / total if total else 0.0
        return (
            f"; packed {k} clips per window: {100 * frac:.0f} % of the audio a clip's frames "
            "attend to is other clips' (calibration.pack: false runs each clip alone)"
        )

    def stream(self, data: CalibrationSet, batch_size: int) -> Iterator[ModelBatch]:
        """With packing, each batch row is one window holding up to :attr:`per_window` clips
        end to end; ``GUARD`` samples on each side of every boundary between two clips stay out
        of the statistics (the frames there see both clips)."""
        k = self.per_window
        if k == 1:
            yield from super().stream(data, batch_size)
            return
        rows: list[AudioBatch] = []
        for clips in data.batches(k):
            rows.append(clips)
            if len(rows) == batch_size:
                yield self._windows(rows, batch_size)
                rows = []
        if rows:
            yield self._windows(rows, batch_size)

    def _windows(self, rows: list[AudioBatch], batch_size: int) -> ModelBatch:
        wave = torch.zeros(batch_size, self.window_samples)
        mask = torch.zeros(batch_size, self.window_samples, dtype=torch.bool)
        lengths = torch.zeros(batch_size, dtype=torch.long)
        items = 0
        for r, clips in enumerate(rows):
            at = 0
            for c in range(clips.waveforms.shape[0]):
                n = int(clips.lengths[c].clamp(max=self.clip_samples))
                wave[r, at : at + n] = clips.waveforms[c, :n]
                lo = at + (GUARD if at > 0 else 0)
                hi = at + n - (GUARD if c < clips.waveforms.shape[0] - 1 else 0)
                mask[r, lo : max(lo, hi)] = True
                at += n
                items += 1
            lengths[r] = at
        return ModelBatch(self.features(wave, lengths), mask, items)

    def example(self, batch_size=1, length=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        frames = length or self.frames
        return {self.input_name: torch.randn(batch_size, self.mel_bins, frames, generator=g)}

    def features(self, wave, lengths):
        from transformers import WhisperFeatureExtractor

        fe = WhisperFeatureExtractor(
            feature_size=self.mel_bins, sampling_rate=self.sample_rate, hop_length=self.hop
        )
        fe.n_samples = self.window_samples
        fe.nb_max_frames = self.window_samples // self.hop
        feats = fe([w.numpy() for w in wave], sampling_rate=self.sample_rate, return_tensors="pt")
        return {self.input_name: feats["input_features"].float()}


def preprocessor_config(source: str) -> dict:
    """The model folder's ``preprocessor_config.json`` (empty when there is none)."""
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("cannot read %s; using default audio settings", path)
    return {}
