"""Turning calibration audio into a model's inputs (the only model-specific step of calibration).

A waveform model (HuBERT, wav2vec2, MERT) gets the waveform, normalised when its feature
extractor says so; Whisper's encoder gets log-mel features of its fixed 30 s window. Every batch
is padded to one fixed shape (batch size × clip length) so that one exported graph serves all of
them, and each row's valid fraction tells the statistics which frames to keep.

Example:
    >>> from graphperm.trace import load_model
    >>> adapter = AudioAdapter.for_model(load_model("builtin:hubert-tiny"), clip_seconds=1.0)
    >>> {k: tuple(v.shape) for k, v in adapter.example(batch_size=2).items()}
    {'input_values': (2, 16000)}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from graphperm.data import AudioBatch
from graphperm.errors import CalibrationError
from graphperm.trace import LoadedModel, main_input_name

__all__ = ["AudioAdapter", "ModelBatch"]

log = logging.getLogger(__name__)


@dataclass
class ModelBatch:
    """Model inputs for one batch, and the fraction of each row that is real audio."""

    inputs: dict[str, torch.Tensor]
    valid: torch.Tensor  # (batch,) float in [0, 1]
    seconds: float
    clips: int = 0  # real (not padding) rows


@dataclass
class AudioAdapter:
    """Builds fixed-shape model inputs from :class:`~graphperm.data.AudioBatch` es."""

    input_name: str
    sample_rate: int
    clip_samples: int
    normalize: bool = False
    mel_bins: int = 0  # > 0: log-mel features (Whisper)
    window_samples: int = 0  # the features' fixed window (Whisper: 30 s)
    hop: int = 160

    @classmethod
    def for_model(
        cls, loaded: LoadedModel, *, clip_seconds: float, sample_rate: int | None = None
    ) -> AudioAdapter:
        config = loaded.config
        name = main_input_name(loaded)
        rate = sample_rate or getattr(config, "sampling_rate", None) or 16000
        prep = _preprocessor_config(loaded.source)
        rate = sample_rate or prep.get("sampling_rate", rate)
        clip = round(clip_seconds * rate)
        if name == "input_values" and hasattr(config, "conv_dim"):
            return cls(name, rate, clip, normalize=bool(prep.get("do_normalize", False)))
        if name == "input_features":
            hop = int(prep.get("hop_length", 160))
            frames = 2 * int(getattr(config, "max_source_positions", 1500))
            window = frames * hop  # Whisper's encoder takes exactly this many samples (30 s)
            if clip > window:
                raise CalibrationError(
                    f"clip_seconds {clip_seconds} is longer than the model's {window / rate:.0f} s "
                    "window; lower calibration.clip_seconds in the policy"
                )
            return cls(
                name,
                rate,
                clip,
                mel_bins=int(getattr(config, "num_mel_bins", 80)),
                window_samples=window,
                hop=hop,
            )
        raise CalibrationError(
            f"{type(loaded.module).__name__} reads '{name}', not audio: calibration from audio "
            "files works for waveform encoders (HuBERT, wav2vec2, MERT) and Whisper encoders"
        )

    def max_frames(self, rate: float | None) -> int | None:
        """Frames per batch row that ``rate`` frames per second of audio allow (None: all)."""
        if rate is None:
            return None
        span = (self.window_samples or self.clip_samples) / self.sample_rate
        return max(1, round(rate * span))

    def example(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Inputs of the fixed shape every batch is padded to (used for export)."""
        wave = torch.randn(batch_size, self.clip_samples) * 0.1
        return self._inputs(wave, torch.full((batch_size,), self.clip_samples))

    def __call__(self, batch: AudioBatch, batch_size: int) -> ModelBatch:
        rows = batch.waveforms.shape[0]
        wave = torch.zeros(batch_size, self.clip_samples)
        n = min(self.clip_samples, batch.waveforms.shape[1])
        wave[:rows, :n] = batch.waveforms[:, :n]
        lengths = torch.zeros(batch_size, dtype=torch.long)
        lengths[:rows] = batch.lengths.clamp(max=self.clip_samples)
        span = self.window_samples or self.clip_samples
        return ModelBatch(self._inputs(wave, lengths), lengths.double() / span, batch.seconds, rows)

    def _inputs(self, wave: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mel_bins:
            return {self.input_name: self._log_mel(wave)}
        if self.normalize:
            mask = torch.arange(wave.shape[1]) < lengths[:, None]
            count = mask.sum(1, keepdim=True).clamp_min(1)
            mean = (wave * mask).sum(1, keepdim=True) / count
            var = (((wave - mean) * mask) ** 2).sum(1, keepdim=True) / count
            wave = ((wave - mean) / (var + 1e-7).sqrt()) * mask
        return {self.input_name: wave}

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        from transformers import WhisperFeatureExtractor

        fe = WhisperFeatureExtractor(
            feature_size=self.mel_bins, sampling_rate=self.sample_rate, hop_length=self.hop
        )
        fe.n_samples = self.window_samples
        fe.nb_max_frames = self.window_samples // self.hop
        feats = fe([w.numpy() for w in wave], sampling_rate=self.sample_rate, return_tensors="pt")
        return feats["input_features"].float()


def _preprocessor_config(source: str) -> dict:
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("cannot read %s; using default audio settings", path)
    return {}
