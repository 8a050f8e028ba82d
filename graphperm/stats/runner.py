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

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

__all__ = ["SiteRunner"]


class SiteRunner:
    """Calls ``program``'s graph on a state dict and inputs; returns the values named ``keys``."""

    def __init__(
        self,
        program: ExportedProgram,
        keys: list[str],
        strides: dict[str, tuple[int, int]] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        """``strides[key] = (dim, step)`` keeps every ``step``-th element of that value along
        ``dim`` inside the graph, so the full activation is freed as soon as it is consumed."""
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
        device = torch.device(device)
        if device.type != "cpu":  # the graph was exported on the CPU: retarget its factories
            for node in graph.nodes:
                node.args = tuple(device if isinstance(a, torch.device) else a for a in node.args)
                if isinstance(node.kwargs.get("device"), torch.device):
                    node.kwargs = {**node.kwargs, "device": device}
        self.module = fx.GraphModule(torch.nn.Module(), graph)
        self.keys = list(keys)
        self._specs = list(program.graph_signature.input_specs)
        self._constants = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in program.constants.items()
        }

    def __call__(
        self, state: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        args = []
        for spec in self._specs:
            if spec.kind == InputKind.USER_INPUT:
                args.append(inputs[spec.arg.name])
            elif spec.target in state:
                args.append(state[spec.target])
            else:
                args.append(self._constants[spec.target])
        with torch.no_grad():
            return list(self.module(*args))
