"""Activation sites: where a group's channels can be measured on calibration data.

Two roles, read off the tags the op rules left on activation axes:

- ``pre``: the output of an op that produces the channels from weights (a linear or conv layer, an
  embedding), followed through per-channel maps (normalisations, dropout, transposes) up to the
  first nonlinearity. HuBERT's first conv layer is measured after its GroupNorm, the others right
  after the convolution, as in the paper.
- ``post``: an activation entering an op that consumes the channels with weights (the input of a
  linear or conv layer): the FFN's second linear layer's input, the attention output before W_O.

Each site records which of the group's parts it covers (``heads``, ``vo``, ...).
"""

from __future__ import annotations

import dataclasses

from torch import fx

from graphperm.analysis.context import op_name
from graphperm.analysis.coupling import Coupling
from graphperm.analysis.groups import PermutationGroup, Site
from graphperm.analysis.rules.pointwise import NONLINEAR

__all__ = ["find_sites"]

#: Ops that keep each channel's identity (per-channel statistics or affine maps, copies, moves).
_FOLLOW = (
    "aten.layer_norm",
    "aten.group_norm",
    "aten.batch_norm",
    "aten.rms_norm",
    "aten.instance_norm",
    "aten._native_batch_norm_legit_no_training",
    "aten.dropout",
    "aten.to",
    "aten._to_copy",
    "aten.clone",
    "aten.contiguous",
    "aten.alias",
    "aten.transpose",
    "aten.permute",
)


def find_sites(coupling: Coupling, group: PermutationGroup) -> PermutationGroup:
    """``group`` with its activation sites filled in (in graph order)."""
    nodes = {n.name: n for n in coupling.program.graph.nodes}
    order = {name: i for i, name in enumerate(nodes)}
    leaves = _part_leaves(coupling, group)
    sites: dict[tuple[str, int, str], Site] = {}
    for (key, dim, virtual), tags in coupling.axis_tags.items():
        if virtual or key not in coupling.module_of or key not in coupling.tensors:
            continue
        cls = coupling.cls(key, dim)
        if cls not in group.classes:
            continue
        parts = _covered(coupling, cls, leaves)
        if not parts:
            continue
        consumer = tags.get("linear_in") or tags.get("conv_in")
        if consumer:
            module = coupling.module_of.get(consumer, "")
            sites[(key, dim, "post")] = Site(key, dim, module, "post", ",".join(parts))
        if "linear_out" in tags or "conv_out" in tags:
            end, end_dim = _follow(coupling, nodes[key], dim)
            module = coupling.module_of.get(end, "")
            sites[(end, end_dim, "pre")] = Site(end, end_dim, module, "pre", ",".join(parts))
    ordered = sorted(sites.values(), key=lambda s: (order[s.key], s.role))
    return dataclasses.replace(group, sites=tuple(ordered))


def _part_leaves(coupling: Coupling, group: PermutationGroup) -> dict[int, str]:
    return {coupling.table.find(p.cls): p.name for p in group.parts}


def _covered(coupling: Coupling, cls: int, leaves: dict[int, str]) -> tuple[str, ...]:
    """Names of the group's parts found inside class ``cls`` (it may be a composite)."""
    table = coupling.table
    found: list[str] = []
    stack = [table.find(cls)]
    while stack:
        c = stack.pop()
        if c in leaves:
            found.append(leaves[c])
        d = table.decomp(c)
        if d is not None:
            stack.extend(getattr(d, "factors", None) or getattr(d, "segments", ()))
    return tuple(sorted(found))


def _follow(coupling: Coupling, node: fx.Node, dim: int) -> tuple[str, int]:
    """Walk from a producer's output through channel-preserving ops; stop at a nonlinearity."""
    cls = coupling.cls(node.name, dim)
    while len(node.users) == 1:
        (user,) = node.users
        op = op_name(user.target)
        packet = op.rsplit(".", 1)[0]
        if packet in NONLINEAR or packet not in _FOLLOW or user.name not in coupling.tensors:
            break
        dims = [d for d, c in enumerate(coupling.classes(user.name)) if c == cls]
        if len(dims) != 1:
            break
        node, dim = user, dims[0]
    return node.name, dim
