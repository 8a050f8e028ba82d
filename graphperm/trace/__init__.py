"""Loading models, building example inputs, and capturing them with torch.export."""

from __future__ import annotations

from graphperm.trace.builtin import BUILTINS
from graphperm.trace.export import Traced, trace
from graphperm.trace.inputs import example_inputs, main_input_name
from graphperm.trace.loading import LoadedModel, load_model
from graphperm.trace.ties import same_tensor, tie_groups, tied_keys

__all__ = [
    "BUILTINS",
    "LoadedModel",
    "Traced",
    "example_inputs",
    "load_model",
    "main_input_name",
    "same_tensor",
    "tie_groups",
    "tied_keys",
    "trace",
]
