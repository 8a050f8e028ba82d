"""Input adapters: what a model eats, for tracing and calibration, chosen by its main input.

Example:
    >>> from graphperm.trace import load_model
    >>> adapter_for(load_model("builtin:whisper-tiny")).kind
    'log-mel'
"""

from __future__ import annotations

# Importing the families registers their adapters.
from graphperm.inputs import audio, pixels, tensors, tokens  # noqa: F401
from graphperm.inputs.audio import AudioAdapter, LogMelAdapter, WaveformAdapter
from graphperm.inputs.base import (
    ADAPTERS,
    DECODER_TOKENS,
    CalibrationData,
    InputAdapter,
    ModelBatch,
    adapter_for,
    decoder_inputs,
    main_input_name,
    register_adapter,
    step_mask,
)
from graphperm.inputs.tensors import (
    TensorAdapter,
    calibration_adapter,
    is_tensor_source,
    tensor_calibration,
)

__all__ = [
    "ADAPTERS",
    "DECODER_TOKENS",
    "AudioAdapter",
    "CalibrationData",
    "InputAdapter",
    "LogMelAdapter",
    "ModelBatch",
    "TensorAdapter",
    "WaveformAdapter",
    "adapter_for",
    "calibration_adapter",
    "decoder_inputs",
    "is_tensor_source",
    "main_input_name",
    "register_adapter",
    "step_mask",
    "tensor_calibration",
]
