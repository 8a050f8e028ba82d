"""Example inputs for tracing, from the model's input adapter (:mod:`graphperm.inputs`).

Example:
    >>> from graphperm.trace import load_model
    >>> {k: tuple(v.shape) for k, v in example_inputs(load_model("builtin:hubert-tiny")).items()}
    {'input_values': (1, 16000), 'mask_time_indices': (1, 799)}
"""

from __future__ import annotations

import torch

from graphperm.inputs import adapter_for, main_input_name
from graphperm.trace.loading import LoadedModel

__all__ = ["example_inputs", "main_input_name"]


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
    return adapter_for(loaded).example(batch_size, length=length, seed=seed)
