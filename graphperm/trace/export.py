"""Capture a model as an ATen graph with ``torch.export`` (non-strict).

Example:
    >>> from graphperm.trace import load_model
    >>> traced = trace(load_model("builtin:hubert-tiny"))
    >>> list(traced.program.graph_signature.user_inputs)
    ['input_values']
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
from torch.export import ExportedProgram

from graphperm.errors import TraceError
from graphperm.trace.inputs import example_inputs
from graphperm.trace.loading import LoadedModel

__all__ = ["Traced", "trace"]

log = logging.getLogger(__name__)


@dataclass
class Traced:
    """An exported program and what it was exported from."""

    loaded: LoadedModel
    program: ExportedProgram
    inputs: dict[str, torch.Tensor]
    seconds: float


def trace(
    loaded: LoadedModel,
    inputs: dict[str, torch.Tensor] | None = None,
    *,
    dynamic_shapes: dict | None = None,
) -> Traced:
    """Export ``loaded.module`` on ``inputs`` (default: :func:`example_inputs`);
    ``dynamic_shapes`` (as :func:`torch.export.export` takes it) lets axes vary."""
    inputs = inputs if inputs is not None else example_inputs(loaded)
    module = loaded.module.eval()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                module, (), dict(inputs), dynamic_shapes=dynamic_shapes, strict=False
            )
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TraceError(
            f"torch.export could not capture {type(module).__name__} from '{loaded.source}': "
            f"{first}; check that the model runs on these inputs ("
            + ", ".join(f"{k}{tuple(v.shape)}" for k, v in inputs.items())
            + ") or pass other ones with --inputs"
        ) from err
    seconds = time.perf_counter() - start
    log.info("exported %s in %.2f s", type(module).__name__, seconds)
    return Traced(loaded=loaded, program=program, inputs=dict(inputs), seconds=seconds)
