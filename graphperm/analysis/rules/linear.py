"""Contractions: linear layers, matrix products, einsum.

Tags used downstream: ``linear_in``/``linear_out`` on the feature axes a weight consumes and
produces (they mark where activation sites are), ``weight_in`` on the saved weight's own axis
that reads them (where a ZipIt! unmerge acts: :mod:`graphperm.apply.zip`), and, for a product
of two activations,
``heads`` on batch dims, ``qk`` on the contracted dim and ``vo`` on the right operand's free dim
(what eager attention's ``q @ k.T`` and ``p @ v`` look like).
"""

from __future__ import annotations

from torch import fx

from graphperm.analysis.context import Axis, RuleContext, TensorArg, op_name
from graphperm.analysis.rules import register, rotates

#: Ops after which a saved weight is still that weight (``x @ W.t()``, ``x @ W.to(dtype)``).
_SAME_WEIGHT = frozenset(
    f"aten.{n}" for n in "t transpose permute mT numpy_T _to_copy to contiguous clone alias".split()
)
#: Ops that pick whole slices of a saved weight along its leading axes (a mixture of experts'
#: ``experts.down_proj[expert_ids]``): each picked slice is still a weight matrix.
_PICKED_WEIGHT = frozenset(("aten.index", "aten.index_select"))


@register("aten.linear")
def linear(ctx: RuleContext) -> None:
    """``y = x @ W.T + b`` with ``W`` of shape (out, in)."""
    x, w, b, out = ctx.arg(0), ctx.arg(1), ctx.arg(2, "bias"), ctx.out
    ctx.tie(x[-1], w[1], tag="linear_in")
    tag_weight_in(ctx, w, 1)
    ctx.tie(out[-1], w[0], tag="linear_out")
    if b is not None:
        ctx.tie(b[-1], w[0])
    for d in range(x.ndim - 1):
        ctx.tie(x[d], out[d])


@register("aten.addmm")
def addmm(ctx: RuleContext) -> None:
    """``y = bias + x @ W`` with ``W`` of shape (in, out)."""
    bias, x, w, out = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.out
    _matmul(ctx, x, w, out)
    ctx.elementwise([bias], out)


@register("aten.mm", "aten.matmul", "aten.bmm")
def matmul(ctx: RuleContext) -> None:
    _matmul(ctx, ctx.arg(0), ctx.arg(1), ctx.out)


@register("aten.baddbmm", "aten.addbmm")
def baddbmm(ctx: RuleContext) -> None:
    """``bias + a @ b`` (batched)."""
    bias, a, b, out = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.out
    if ctx.op.startswith("aten.addbmm"):  # sums over the batch: the batch dim is reduced
        ctx.tie(a[0], b[0])
        _matmul(ctx, a, b, out, summed_batch=True)
    else:
        _matmul(ctx, a, b, out)
    ctx.elementwise([bias], out)


def _matmul(
    ctx: RuleContext, a: TensorArg, b: TensorArg, out: TensorArg, summed_batch: bool = False
) -> None:
    """torch.matmul semantics, including 1-D operands and broadcast batch dims."""
    a_axes, b_axes = a.axes(), b.axes()
    if summed_batch:  # addbmm: the batch of products is summed away
        a_axes, b_axes = a_axes[1:], b_axes[1:]
    o_axes = out.axes()
    a_vec, b_vec = len(a_axes) == 1, len(b_axes) == 1
    ka, kb = a_axes[-1], (b_axes[0] if b_vec else b_axes[-2])
    wa, wb = _is_weight(ctx, a), _is_weight(ctx, b)
    one_param = wa != wb
    ctx.tie(ka, kb, tag=None if one_param else "qk")
    o = list(o_axes)
    if not b_vec:
        n_out = o.pop()
        ctx.tie(b_axes[-1], n_out, tag=None if one_param else "vo")
        if one_param and wb:
            ctx.tag(n_out, "linear_out")
    if not a_vec:
        m_out = o.pop()
        ctx.tie(a_axes[-2], m_out)
        if one_param and wa:  # W @ x: the weight's rows are the produced features
            ctx.tag(m_out, "linear_out")
    if one_param:
        ctx.tag(ka if wb else kb, "linear_in")
        tag_weight_in(ctx, *((b, b.ndim - 2 if not b_vec else 0) if wb else (a, a.ndim - 1)))
    # broadcast batch dims, aligned from the right
    a_batch = a_axes[:-2] if not a_vec else []
    b_batch = b_axes[:-2] if not b_vec else []
    for i, ob in enumerate(reversed(o)):
        for batch in (a_batch, b_batch):
            if i < len(batch):
                src = batch[-1 - i]
                if src.size == ob.size:
                    ctx.tie(src, ob, tag=None if one_param or ob.size == 1 else "heads")
                else:
                    ctx.free(src)


def _is_weight(ctx: RuleContext, t: TensorArg) -> bool:
    """Whether ``t`` is a saved tensor, possibly transposed or cast on the way (``x @ W.t()``),
    or slices of one picked by index along its leading axes (experts' weights gathered per
    token)."""
    node = next((n for n in ctx.node.all_input_nodes if n.name == t.key), None)
    while node is not None and op_name(node.target).rsplit(".", 1)[0] in (
        _SAME_WEIGHT | _PICKED_WEIGHT
    ):
        node = node.args[0] if isinstance(node.args[0], fx.Node) else None
    return node is not None and node.name in ctx.builder.state


def tag_weight_in(ctx: RuleContext, t: TensorArg, dim: int) -> None:
    """Tag ``weight_in`` on the saved weight's axis that axis ``dim`` of ``t`` is (``t`` the
    weight itself, or the weight seen through transposes and casts); nothing when ``t`` is
    not a saved weight seen that way."""
    node = next((n for n in ctx.node.all_input_nodes if n.name == t.key), None)
    while node is not None and node.name not in ctx.builder.state:
        op = op_name(node.target).rsplit(".", 1)[0]
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if src is None or op not in _SAME_WEIGHT:
            return
        ndim = len(src.meta["val"].shape) if "val" in src.meta else 0
        if op in ("aten.t", "aten.numpy_T") or (op == "aten.mT" and ndim >= 2):
            dim = {ndim - 1: ndim - 2, ndim - 2: ndim - 1}.get(dim, dim) if ndim >= 2 else dim
        elif op == "aten.transpose":
            i, j = (int(x) % ndim for x in node.args[1:3])
            dim = {i: j, j: i}.get(dim, dim)
        elif op == "aten.permute":
            dim = [int(x) % ndim for x in node.args[1]][dim]
        node = src
    w = ctx.builder.tensor(node) if node is not None else None
    if w is not None and dim < w.ndim:
        ctx.tag(w[dim], "weight_in")


@register("aten.einsum")
def einsum(ctx: RuleContext) -> None:
    """Every letter ties its axes across operands and output; a repeated letter is a diagonal."""
    equation = ctx.raw(0).replace(" ", "")
    operands = ctx.tensors(1)
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if not rhs and "->" not in equation:
        rhs = "".join(sorted(c for c in set(lhs) if c.isalpha() and lhs.count(c) == 1))
    by_letter: dict[str, list[Axis]] = {}
    for term, t in [*zip(terms, operands), (rhs, ctx.out)]:
        letters = _expand_ellipsis(term, t.ndim)
        for letter, d in zip(letters, range(t.ndim)):
            by_letter.setdefault(letter, []).append(t[d])
        for letter in set(letters):
            if letters.count(letter) > 1:
                ctx.block(
                    *(t[d] for d, c in enumerate(letters) if c == letter),
                    reason="einsum takes a diagonal along it",
                )
    for axes in by_letter.values():
        sized = [a for a in axes if a.size > 1]
        for a in sized[1:]:
            ctx.tie(sized[0], a)
        ctx.free(*(a for a in axes if a.size == 1))
    if len(operands) == 2:
        _tag_product(ctx, terms, operands, rhs)


def _tag_product(ctx: RuleContext, terms: list[str], operands: list[TensorArg], rhs: str) -> None:
    """Roles of a two-operand einsum, as for matmul: with one weight, the contracted axes are
    read (``linear_in``) and the weight's own axes made (``linear_out``); with two activations
    (attention's ``bind,bjnd->bnij`` and ``bnij,bjnd->bind``), letters shared by both and the
    output are ``heads``, contracted ones ``qk``, the right operand's own ones ``vo``."""
    a, b = operands
    la, lb = (_expand_ellipsis(t, o.ndim) for t, o in zip(terms, operands))
    lo = _expand_ellipsis(rhs, ctx.out.ndim)
    wa, wb = _is_weight(ctx, a), _is_weight(ctx, b)
    if wa and wb:
        return
    if wa or wb:
        x, lx, lw = (b, lb, la) if wa else (a, la, lb)
        for d, letter in enumerate(lx):
            if letter in lw and letter not in lo:
                ctx.tag(x[d], "linear_in")
                tag_weight_in(ctx, a if wa else b, lw.index(letter))
        for d, letter in enumerate(lo):
            if letter in lw and letter not in lx:
                ctx.tag(ctx.out[d], "linear_out")
        return
    for d, letter in enumerate(lo):
        if ctx.out.shape[d] == 1:
            continue
        if letter in la and letter in lb:
            ctx.tag(ctx.out[d], "heads")
        elif letter in lb:
            ctx.tag(ctx.out[d], "vo")
    for d, letter in enumerate(la):
        if letter in lb and letter not in lo and a.shape[d] > 1:
            ctx.tag(a[d], "qk")


def _expand_ellipsis(term: str, ndim: int) -> list[str]:
    if "..." not in term:
        return list(term)
    head, tail = term.split("...")
    n = ndim - len(head) - len(tail)
    return [*head, *(f"...{i}" for i in range(n)), *tail]


rotates(
    "linear",
    "aten.linear",
    "aten.addmm",
    "aten.mm",
    "aten.matmul",
    "aten.bmm",
    "aten.baddbmm",
    "aten.addbmm",
    "aten.einsum",
)
