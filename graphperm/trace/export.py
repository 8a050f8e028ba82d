"""Capture a model as an ATen graph with ``torch.export`` (non-strict).

A model whose Python code branches on the values of its inputs (Longformer: "is any token
global?") cannot be captured in general. The coupling of its axes does not depend on those
values, so graphperm then captures it with ``torch.export.draft_export``, which takes each such
branch the way the example inputs take it: the graph is specialised to them
(:attr:`Traced.specialised`), and ``verify`` on those inputs is the proof that it is right.

Where that fails too (EnCodec computes its padding from tensors, and its LSTM then runs over a
length export cannot bound), any model is traced concretely: the ops it runs on the example
inputs are recorded with real tensors (``make_fx``), every number read out of a tensor is taken
as the value it had, and that graph is exported again, with the model's parameters, buffers and
module paths as export gives them. The result is specialised to the example inputs the same way.

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
from torch.utils import _pytree as pytree

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
        program, how = None, ""
        if dynamic_shapes is None:  # specialised to the inputs only when no axis may vary
            if _data_dependent(err):
                program, how = _specialised(module, inputs), "torch.export.draft_export"
            if program is None:
                program, how = _concrete(module, inputs), "the ops it ran on them, concretely"
        if program is None:
            raise TraceError(
                f"torch.export could not capture {type(module).__name__} from "
                f"'{loaded.source}': {_first_line(err)}; check that the model runs on these "
                "inputs ("
                + ", ".join(f"{k}{tuple(v.shape)}" for k, v in inputs.items())
                + ") or pass other ones with --inputs"
            ) from err
        specialised = True
        unread = _unread_inputs(program)
        log.warning(
            "torch.export could not capture %s (%s): traced specialised to the example inputs "
            "(%s); its groups hold for inputs like them, and verify checks them on those%s",
            type(module).__name__,
            _first_line(err),
            how,
            f"; the graph does not read {', '.join(unread)}: taken as they were" if unread else "",
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
    quiet = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # draft_export logs every branch it specialised, at length
    try:
        with warnings.catch_warnings(), torch.no_grad(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.export.draft_export(module, (), dict(inputs))
    except Exception:  # draft_export fails in as many ways as export: report export's error
        return None
    finally:
        logging.disable(quiet)


def _unread_inputs(program: ExportedProgram) -> list[str]:
    """The user inputs no node of ``program`` reads (Nystromformer, traced concretely on an
    all-ones attention mask, skips the mask: the graph holds for unpadded inputs only)."""
    users = {n.name: len(n.users) for n in program.graph.nodes if n.op == "placeholder"}
    return [name for name in program.graph_signature.user_inputs if not users.get(name)]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _concrete(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> ExportedProgram | None:
    """``module`` exported from the ops it runs on ``inputs``, or None.

    ``make_fx`` records the ATen ops (pre-dispatch, as export writes them) on real tensors, the
    parameters and buffers passed in by name so that they stay inputs of the graph; a number read
    out of a tensor (``.item()``, a padding computed from buffers) is the value it had, so every
    shape is concrete. The recorded graph, rerun node by node with each node's module path, is
    then exported as a module that holds ``module``'s own parameters and buffers under their own
    names: the program has the parameters, buffers and module paths that export gives.
    """
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    state = {
        **dict(module.named_parameters(remove_duplicate=False)),
        **dict(module.named_buffers(remove_duplicate=False)),
    }

    def run(state: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]):
        return functional_call(module, state, (), inputs, tie_weights=False)

    run._orig_mod = module  # make_fx records module paths relative to this module
    quiet = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), torch.no_grad(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            graph = make_fx(
                run,
                tracing_mode="real",
                pre_dispatch=True,
                record_module_stack=True,
                _error_on_data_dependent_ops=False,  # read numbers out of tensors as they are
            )(state, dict(inputs))
            graph.graph.eliminate_dead_code()  # the reads themselves: their values are in
            graph.recompile()
            replay = _Replay(module, graph, list(state))
            program = torch.export.export(replay, (), dict(inputs), strict=False)
            if not _follows_inputs(module, program, inputs):
                log.debug("the concrete trace of %s took an input as a constant", module)
                return None
            return program
    except Exception as err:  # make_fx and export fail in many ways: report export's error
        log.debug("the concrete trace of %s failed: %s", type(module).__name__, err)
        return None
    finally:
        logging.disable(quiet)


def _follows_inputs(
    module: torch.nn.Module, program: ExportedProgram, inputs: dict[str, torch.Tensor]
) -> bool:
    """Whether ``program`` computes what ``module`` computes on inputs near ``inputs`` (the
    floating-point ones moved by 0.1 %): a concrete trace takes what the model read out of its
    inputs as constants, which is right for a length or a branch, but not for the values
    themselves (a model that copies its input through NumPy): that graph would ignore them."""
    g = torch.Generator().manual_seed(0)
    near = {
        k: v + 1e-3 * v.abs().mean() * torch.randn(v.shape, generator=g, dtype=v.dtype)
        if v.is_floating_point()
        else v
        for k, v in inputs.items()
    }
    want = pytree.tree_leaves(module(**near))
    got = pytree.tree_leaves(program.module()(**near))
    if len(want) != len(got):
        return False
    for a, b in zip(want, got):
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        if a.shape != b.shape:
            return False
        if a.is_floating_point():
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (a.abs().max().item() + 1e-12)):
                return False
        elif not torch.equal(a, b):
            return False
    return True


class _Replay(torch.nn.Module):
    """Runs a recorded graph on the parameters and buffers of ``module``, which it holds under
    their own names (its children and its own tensors), so that export lifts them as the model's
    and names them as the model's state dict does."""

    def __init__(self, module: torch.nn.Module, graph: torch.fx.GraphModule, names: list[str]):
        super().__init__()
        for name, child in module.named_children():
            self.add_module(name, child)
        for name, p in module.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in module.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in module._non_persistent_buffers_set)
        self._graph = [graph]  # in a list: not a child module (its state is not the model's)
        self._names = names
        self.train(module.training)

    def forward(self, **inputs: torch.Tensor):
        import torch.fx.traceback as fx_traceback

        graph = self._graph[0]
        have = {
            **dict(self.named_parameters(remove_duplicate=False)),
            **dict(self.named_buffers(remove_duplicate=False)),
        }
        state = {n: have[n] for n in self._names}
        with fx_traceback.preserve_node_meta():  # each node keeps the module path it had
            return torch.fx.Interpreter(graph).run(state, inputs)
