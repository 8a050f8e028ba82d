"""Capture a model as an ATen graph with ``torch.export`` (non-strict).

A model whose Python code branches on the values of its inputs (Longformer: "is any token
global?") cannot be captured in general. The coupling of its axes does not depend on those
values, so graphperm then captures it with ``torch.export.draft_export``, which takes each such
branch the way the example inputs take it: the graph is specialised to them
(:attr:`Traced.specialised`), and ``verify`` on those inputs is the proof that it is right.

Example:
    >>> from graphperm.trace import load_model
    >>> traced = trace(load_model("builtin:hubert-tiny"))
    >>> list(traced.program.graph_signature.user_inputs)
    ['input_values', 'mask_time_indices']
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from contextlib import redirect_stderr
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
    #: the graph takes data-dependent branches as ``inputs`` take them (``draft_export``)
    specialised: bool = False


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
    specialised = False
    try:
        # on failure export prints the partial graph: the error below says what went wrong
        with warnings.catch_warnings(), torch.no_grad(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.export.export(
                module, (), dict(inputs), dynamic_shapes=dynamic_shapes, strict=False
            )
    except Exception as err:
        # specialised to the inputs' values (and so their shapes) only when no axis may vary
        specialise = _data_dependent(err) and dynamic_shapes is None
        program = _specialised(module, inputs) if specialise else None
        if program is None:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise TraceError(
                f"torch.export could not capture {type(module).__name__} from "
                f"'{loaded.source}': {first}; check that the model runs on these inputs ("
                + ", ".join(f"{k}{tuple(v.shape)}" for k, v in inputs.items())
                + ") or pass other ones with --inputs"
            ) from err
        specialised = True
        log.warning(
            "%s branches on the values of its inputs: traced specialised to the example inputs "
            "(torch.export.draft_export); verify checks the graph on them",
            type(module).__name__,
        )
    seconds = time.perf_counter() - start
    log.info("exported %s in %.2f s", type(module).__name__, seconds)
    return Traced(
        loaded=loaded,
        program=program,
        inputs=dict(inputs),
        seconds=seconds,
        specialised=specialised,
    )


def _data_dependent(err: BaseException) -> bool:
    """Whether export failed on a branch on input values (a guard on a data-dependent value)."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    while err is not None:
        if isinstance(err, GuardOnDataDependentSymNode) or "data-dependent" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _specialised(module: torch.nn.Module, inputs: dict[str, torch.Tensor]):
    """``module`` exported with data-dependent branches taken as ``inputs`` take them, or None."""
    logging.disable(logging.CRITICAL)  # draft_export logs every branch it specialised, at length
    try:
        with warnings.catch_warnings(), torch.no_grad(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.export.draft_export(module, (), dict(inputs))
    except Exception:  # draft_export fails in as many ways as export: report export's error
        return None
    finally:
        logging.disable(logging.NOTSET)
