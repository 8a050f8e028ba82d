"""Run an exported graph with any weights and return the activations at chosen sites.

The exported program's graph takes parameters as inputs, so one graph serves model A and model B:
:class:`SiteRunner` copies it, makes the site values its outputs (everything after the last site
is dropped as dead code), and calls it with a state dict and model inputs.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> traced = trace(load_model("builtin:hubert-tiny"))
    >>> runner = SiteRunner(traced.program, ["gelu"])
    >>> [tuple(t.shape) for t in runner(traced.loaded.state_dict(), traced.inputs)]
    [(1, 32, 3199)]
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

__all__ = ["InterleavedRunner", "SiteRunner", "match_values"]


class SiteRunner:
    """Calls ``program``'s graph on a state dict and inputs; returns the values named ``keys``."""

    def __init__(
        self,
        program: ExportedProgram,
        keys: list[str],
        strides: dict[str, tuple[int, int]] | None = None,
        device: torch.device | str = "cpu",
        float_dtype: torch.dtype | None = None,
    ) -> None:
        """``strides[key] = (dim, step)`` keeps every ``step``-th element of that value along
        ``dim`` inside the graph, so the full activation is freed as soon as it is consumed.
        ``float_dtype``: see :class:`InterleavedRunner`."""
        self._float = float_dtype
        graph = copy.deepcopy(program.graph)
        nodes = {n.name: n for n in graph.nodes}
        missing = [k for k in keys if k not in nodes]
        if missing:
            raise KeyError(f"no graph values named {missing}")
        output = next(n for n in graph.nodes if n.op == "output")
        outs = []
        for k in keys:
            dim, step = (strides or {}).get(k, (0, 1))
            if step > 1:  # a copy of the kept steps, not a view that would keep them all
                with graph.inserting_before(output):
                    kept = graph.call_function(
                        torch.ops.aten.slice.Tensor, (nodes[k], dim, 0, 2**62, step)
                    )
                    outs.append(graph.call_function(torch.ops.aten.clone.default, (kept,)))
            else:
                outs.append(nodes[k])
        output.args = (tuple(outs),)
        for node in list(graph.nodes):  # export-time metadata checks: they would refuse bf16
            if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
                graph.erase_node(node)
        graph.eliminate_dead_code()
        device = _retarget(graph, device, self._float)
        self.module = fx.GraphModule(torch.nn.Module(), graph)
        self.keys = list(keys)
        self._specs = list(program.graph_signature.input_specs)
        self._constants = _constants(program, device, getattr(self, "_float", None))

    @property
    def input_names(self) -> list[str]:
        """The model inputs the graph takes."""
        return [s.arg.name for s in self._specs if s.kind == InputKind.USER_INPUT]

    def __call__(
        self, state: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], *, grad: bool = False
    ) -> list[torch.Tensor]:
        """The values named ``keys``; with ``grad``, differentiable in ``state``."""
        args = []
        for spec in self._specs:
            if spec.kind == InputKind.USER_INPUT:
                args.append(inputs[spec.arg.name])
            elif spec.target in state:
                args.append(state[spec.target])
            else:
                args.append(self._constants[spec.target])
        with torch.set_grad_enabled(grad):
            return list(self.module(*args))


class InterleavedRunner:
    """Every model's forward in one graph, interleaved site by site, handing each site's values
    to ``visit`` as soon as every model has computed them.

    Model 0 runs up to the first site, then model 1 up to the same site, ..., then
    ``visit(i, values)`` gets ``keys[i]``'s value of every model; then on to the next site. A
    site's values are freed once visited (unless the forward still needs them), so memory holds
    about one site's activations per model instead of every site's: the same operations on the
    same inputs as :class:`SiteRunner` called once per model, in another order.

    Example:
        >>> from graphperm.trace import load_model, trace
        >>> traced = trace(load_model("builtin:hubert-tiny"))
        >>> seen = []
        >>> runner = InterleavedRunner(traced.program, ["gelu"], models=2)
        >>> state = traced.loaded.state_dict()
        >>> runner([state, state], traced.inputs, lambda i, v: seen.append(torch.equal(*v)))
        >>> seen
        [True]
    """

    def __init__(
        self,
        program: ExportedProgram,
        keys: list[str],
        models: int,
        strides: dict[str, tuple[int, int]] | None = None,
        device: torch.device | str = "cpu",
        float_dtype: torch.dtype | None = None,
    ) -> None:
        """``float_dtype``: the float dtype the graph's own casts and factories produce (the
        traced float32 kept when None; float64 for forwards in float64)."""
        self._float = float_dtype
        graph = copy.deepcopy(program.graph)
        _cast_put_values(graph)
        nodes = {n.name: n for n in graph.nodes}
        missing = [k for k in keys if k not in nodes]
        if missing:
            raise KeyError(f"no graph values named {missing}")
        sites = []
        for k in keys:
            dim, step = (strides or {}).get(k, (0, 1))
            node = nodes[k]
            if step > 1:  # a copy of the kept steps, right after the value (see SiteRunner)
                with graph.inserting_after(node):
                    kept = graph.call_function(
                        torch.ops.aten.slice.Tensor, (node, dim, 0, 2**62, step)
                    )
                with graph.inserting_after(kept):
                    node = graph.call_function(torch.ops.aten.clone.default, (kept,))
            sites.append(node)
        output = next(n for n in graph.nodes if n.op == "output")
        output.args = (tuple(sites),)
        for node in list(graph.nodes):
            if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
                graph.erase_node(node)
        graph.eliminate_dead_code()
        specs = list(program.graph_signature.input_specs)
        own = {  # placeholders each model has its own of (weights), the rest shared
            s.arg.name
            for s in specs
            if s.kind in (InputKind.PARAMETER, InputKind.BUFFER) and s.target is not None
        }
        order = {n: i for i, n in enumerate(graph.nodes)}
        new = fx.Graph()
        envs: list[dict[fx.Node, fx.Node]] = [{} for _ in range(models)]
        self._args: list[tuple[int | None, object]] = []  # (model or None: shared, spec)
        by_name = {s.arg.name: s for s in specs}
        body = []
        for node in graph.nodes:
            if node.op == "placeholder":
                spec = by_name[node.name]
                if node.name in own:
                    for m in range(models):
                        envs[m][node] = new.placeholder(f"{node.name}_m{m}")
                        self._args.append((m, spec))
                else:
                    shared = new.placeholder(node.name)
                    for m in range(models):
                        envs[m][node] = shared
                    self._args.append((None, spec))
            elif node.op != "output":
                body.append(node)
        self._visit: Callable[[int, list[torch.Tensor]], None] | None = None
        start = 0
        for site in sorted(set(sites), key=order.__getitem__):
            end = body.index(site) + 1
            for m in range(models):
                for node in body[start:end]:
                    envs[m][node] = new.node_copy(node, lambda n, m=m: envs[m][n])
            start = end
            for i, s in enumerate(sites):
                if s is site:
                    new.call_function(self._call_visit, (i, [envs[m][site] for m in range(models)]))
        new.output(())
        device = _retarget(new, device, self._float)
        self.module = fx.GraphModule(torch.nn.Module(), new)
        self.keys = list(keys)
        self._constants = _constants(program, device, getattr(self, "_float", None))

    def _call_visit(self, i: int, values: list[torch.Tensor]) -> None:
        assert self._visit is not None
        self._visit(i, values)

    def __call__(
        self,
        states: list[dict[str, torch.Tensor]],
        inputs: dict[str, torch.Tensor],
        visit: Callable[[int, list[torch.Tensor]], None],
    ) -> None:
        args = []
        for model, spec in self._args:
            if spec.kind == InputKind.USER_INPUT:
                args.append(inputs[spec.arg.name])
            elif model is not None and spec.target in states[model]:
                args.append(states[model][spec.target])
            else:
                args.append(self._constants[spec.target])
        self._visit = visit
        try:
            with torch.no_grad():
                self.module(*args)
        finally:
            self._visit = None


_PUTS = (torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default)


def _cast_put_values(graph: fx.Graph) -> None:
    """Cast every ``index_put``'s values to the dtype of the tensor they go into.

    Eager ``x[mask] = 0`` under bf16 autocast writes a Python scalar into a bf16 tensor; the
    traced graph holds that scalar as a float32 tensor, which ``index_put`` refuses to put into
    bf16 (a no-op when the dtypes already agree: fp32 and fp64 forwards).
    """
    for node in list(graph.nodes):
        if node.target in _PUTS and len(node.args) >= 3:
            with graph.inserting_before(node):
                cast = graph.call_function(
                    torch.ops.aten.type_as.default, (node.args[2], node.args[0])
                )
            node.args = (*node.args[:2], cast, *node.args[3:])


def _retarget(
    graph: fx.Graph, device: str | torch.device, float_dtype: torch.dtype | None = None
) -> torch.device:
    """Point the graph's tensor factories at ``device`` (it was exported on the CPU), and its
    casts to and factories of float32 at ``float_dtype`` when given (a traced
    ``x.to(hidden.dtype)`` holds the float32 of the export)."""
    if float_dtype is not None:
        for node in graph.nodes:
            if node.kwargs.get("dtype") is torch.float32:
                node.kwargs = {**node.kwargs, "dtype": float_dtype}
            node.args = tuple(float_dtype if a is torch.float32 else a for a in node.args)
    device = torch.device(device)
    if device.type != "cpu":
        for node in graph.nodes:
            node.args = tuple(device if isinstance(a, torch.device) else a for a in node.args)
            if isinstance(node.kwargs.get("device"), torch.device):
                node.kwargs = {**node.kwargs, "device": device}
    return device


def _constants(program, device: torch.device, float_dtype: torch.dtype | None = None) -> dict:
    """The exported program's constants (lifted tensors) on ``device`` (floats in
    ``float_dtype`` when given)."""
    out = {}
    for k, v in program.constants.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if float_dtype is not None and v.is_floating_point():
                v = v.to(float_dtype)
        out[k] = v
    return out


def match_values(static: fx.Graph, dynamic: fx.Graph) -> dict[str, str]:
    """Node names of ``dynamic`` (the same model exported with dynamic shapes) for the ATen
    values of ``static``: both run the same ops in the same order, but the dynamic graph has
    shape arithmetic (and a few slices) in between, which shifts the numbering of names. Only
    runs of equal ops are matched; callers check the values agree.

    Example:
        >>> from graphperm.trace import load_model, trace
        >>> from torch.export import Dim
        >>> m = load_model("builtin:hubert-tiny")
        >>> a = trace(m).program.graph
        >>> axes = {"input_values": {1: Dim.AUTO}, "mask_time_indices": {1: Dim.AUTO}}
        >>> b = trace(m, dynamic_shapes=axes).program.graph
        >>> names = match_values(a, b)
        >>> names["gelu"], all(names[k] == k for k in ("conv1d", "layer_norm"))
        ('gelu', True)
    """

    def ops(graph: fx.Graph) -> list[fx.Node]:
        return [
            n
            for n in graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
        ]

    a, b = ops(static), ops(dynamic)
    matcher = difflib.SequenceMatcher(None, [str(n.target) for n in a], [str(n.target) for n in b])
    names = {}
    for i, j, size in matcher.get_matching_blocks():
        for k in range(size):
            names[a[i + k].name] = b[j + k].name
    return names
