"""Loading, example inputs and export, and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphperm.errors import ModelLoadError, TraceError
from graphperm.trace import example_inputs, load_model, trace


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [
        ("hubert-tiny", "input_values", (1, 16000)),
        ("whisper-tiny", "input_features", (1, 16, 100)),
        ("bert-tiny", "input_ids", (1, 16)),
        ("vit-tiny", "pixel_values", (1, 3, 32, 32)),
    ],
)
def test_example_inputs_follow_the_config(name: str, key: str, shape: tuple) -> None:
    inputs = example_inputs(load_model(f"builtin:{name}"))
    assert list(inputs) == [key] and tuple(inputs[key].shape) == shape


def test_encoder_decoder_models_trace_their_encoder() -> None:
    loaded = load_model("builtin:whisper-tiny")
    assert loaded.prefix == "encoder." and type(loaded.module).__name__ == "WhisperEncoder"
    assert all(k.startswith("encoder.") is False for k in loaded.state_dict())


def test_parameters_map_to_state_dict_names() -> None:
    traced = trace(load_model("builtin:hubert-tiny"))
    targets = {s.target for s in traced.program.graph_signature.input_specs if s.target}
    assert "encoder.layers.0.attention.q_proj.weight" in targets
    assert targets <= set(traced.loaded.state_dict())


class _NoRecipe(nn.Module):
    main_input_name = "mystery"

    def forward(self, mystery: torch.Tensor) -> torch.Tensor:
        return mystery


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:  # data-dependent control flow on a value export cannot see
            return self.lin(x)
        return x


def test_missing_recipe_is_a_user_error() -> None:
    with pytest.raises(ModelLoadError, match=r"no example-input recipe.*--inputs"):
        example_inputs(load_model(_NoRecipe()))


def test_unexportable_model_is_a_user_error() -> None:
    with pytest.raises(TraceError, match=r"torch\.export could not capture _Unexportable"):
        trace(load_model(_Unexportable()), {"x": torch.randn(2, 4)})
