"""Loading models, building example inputs, and capturing them with torch.export."""

from __future__ import annotations

from graphperm.trace.builtin import BUILTINS
from graphperm.trace.export import Traced, trace
from graphperm.trace.inputs import example_inputs, main_input_name
from graphperm.trace.loading import SCOPES, LoadedModel, load_model, with_scope
from graphperm.trace.ties import same_tensor, tie_groups, tied_keys

__all__ = [
    "BUILTINS",
    "SCOPES",
    "LoadedModel",
    "Traced",
    "example_inputs",
    "load_model",
    "main_input_name",
    "same_tensor",
    "tie_groups",
    "tied_keys",
    "trace",
    "with_scope",
]
