"""Attention and softmax.

``scaled_dot_product_attention(q, k, v)`` on (..., L, E) tensors: batch dims (the heads among
them) are shared by q, k, v and the output; q and k are contracted over E (the ``qk`` channels of
each head); v's feature dim is the output's (the ``vo`` channels). The head permutation is one
axis class, and the channels inside each head may be permuted differently per head.
"""

from __future__ import annotations

from graphperm.analysis.context import RuleContext
from graphperm.analysis.rules import register, rotates


@register("aten.scaled_dot_product_attention")
def sdpa(ctx: RuleContext) -> None:
    q, k, v, mask, out = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3, "attn_mask"), ctx.out
    ctx.tie(q[-1], k[-1], tag="qk")
    ctx.tie(v[-1], out[-1], tag="vo")
    ctx.tie(q[-2], out[-2])
    ctx.tie(k[-2], v[-2])
    if ctx.raw(5, "is_causal", False):  # query i sees keys <= i: positions matter
        ctx.block(q[-2], k[-2], reason="causal attention depends on positions along it")
    for i in range(3, out.ndim + 1):
        o = out[-i]
        for t in (q, k, v):
            if t.ndim >= i and t.shape[-i] == o.size:
                ctx.tie(t[-i], o, tag="heads" if i == 3 else None)
            elif t.ndim >= i:
                ctx.block(t[-i], o, reason="grouped-query attention shares heads unevenly")
    if mask is not None:
        logical = [*(out[-i] for i in range(out.ndim, 2, -1)), q[-2], k[-2]]
        for i in range(1, mask.ndim + 1):
            m = mask[-i]
            if m.size == 1:
                ctx.free(m)
            elif i <= len(logical) and logical[-i].size == m.size:
                ctx.tie(m, logical[-i])
            else:
                ctx.block(m, reason="attention mask does not broadcast along it")


@register(
    "aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax", "aten.special_softmax"
)
def softmax(ctx: RuleContext) -> None:
    """Softmax along a dim is equivariant to permuting that dim (and maps the others through)."""
    ctx.same(ctx.arg(0), ctx.out)


rotates("linear", "aten.scaled_dot_product_attention")
