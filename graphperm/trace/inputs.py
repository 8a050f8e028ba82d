"""Example inputs for tracing, built from a model's config and main input name.

This is the only place that knows what kind of data a model family eats: a waveform for
HuBERT/wav2vec2/MERT-style models, log-mel features for Whisper's encoder, token ids for text
encoders, pixels for vision encoders.

Example:
    >>> from graphperm.trace import load_model
    >>> {k: tuple(v.shape) for k, v in example_inputs(load_model("builtin:hubert-tiny")).items()}
    {'input_values': (1, 16000)}
"""

from __future__ import annotations

import torch

from graphperm.errors import ModelLoadError
from graphperm.trace.loading import LoadedModel

__all__ = ["example_inputs", "main_input_name"]


def main_input_name(loaded: LoadedModel) -> str:
    return getattr(loaded.module, "main_input_name", None) or getattr(
        loaded.model, "main_input_name", "input_ids"
    )


def example_inputs(
    loaded: LoadedModel,
    *,
    batch_size: int = 1,
    length: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs for one forward pass: ``{main_input_name: tensor}``.

    ``length`` is the number of samples (audio), frames (features) or tokens (text); the default
    is one second of audio, Whisper's fixed 30 s window, or 16 tokens.
    """
    config = loaded.config
    name = main_input_name(loaded)
    if config is None:
        raise _no_recipe(loaded, name)
    g = torch.Generator().manual_seed(seed)
    if (
        name == "input_values"
        and hasattr(config, "num_mel_bins")
        and not hasattr(config, "conv_dim")
    ):  # spectrogram transformers (AST): (batch, frames, mel bins)
        frames = length or getattr(config, "max_length", 1024)
        return {name: torch.randn(batch_size, frames, config.num_mel_bins, generator=g)}
    if name == "input_values":
        rate = getattr(config, "sampling_rate", 16000) or 16000
        return {name: torch.randn(batch_size, length or rate, generator=g) * 0.1}
    if name == "input_features":
        frames = length or 2 * getattr(config, "max_source_positions", 1500)
        bins = getattr(config, "num_mel_bins", 80)
        return {name: torch.randn(batch_size, bins, frames, generator=g)}
    if name == "input_ids":
        vocab = getattr(config, "vocab_size", None)
        if vocab is None:
            raise _no_recipe(loaded, name)
        return {name: torch.randint(0, vocab, (batch_size, length or 16), generator=g)}
    if name == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        channels = getattr(config, "num_channels", 3)
        return {name: torch.randn(batch_size, channels, size, size, generator=g)}
    raise _no_recipe(loaded, name)


def _no_recipe(loaded: LoadedModel, name: str) -> ModelLoadError:
    return ModelLoadError(
        f"no example-input recipe for {type(loaded.module).__name__} (main input '{name}'); "
        "pass --inputs FILE.safetensors with one tensor per forward() argument"
    )
