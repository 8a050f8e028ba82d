"""Recurrent layers as one op each: ``aten.lstm``, ``aten.gru``, ``aten.rnn_tanh``/``rnn_relu``.

``torch.export`` keeps ``nn.LSTM`` (and GRU, RNN) as one call that takes the input, the initial
state and every layer's weights as a list: per layer (and direction) ``w_ih`` of shape
(gates · H, in), ``w_hh`` (gates · H, H) and, with biases, ``b_ih`` and ``b_hh`` (gates · H),
with 4 gates for an LSTM (i, f, g, o), 3 for a GRU (r, z, n), 1 for a plain RNN. Every gate acts
unit by unit on the hidden state (sigmoid, tanh, products of gate values), so the hidden units
may be permuted as long as each gate's block of rows moves with them: the rows of ``w_ih``,
``w_hh`` and the biases are a concatenation of ``gates`` segments, each the hidden axis, and the
columns of ``w_hh`` are the hidden axis too (the recurrence reads the units it writes). The
initial and final states stack every layer and direction along their first axis and carry the
hidden units on their last, so one hidden permutation serves every layer. The time axis is
blocked (a recurrence is not equivariant along time); the batch axis passes through.

Not declared with :func:`~graphperm.analysis.rules.rotates`: the gates' nonlinearities act unit by
unit, so a rotation of the hidden units changes what the layer computes.

Example:
    >>> from graphperm.analysis.rules import rule_for
    >>> rule_for("aten.lstm.input").__name__
    'recurrent'
"""

from __future__ import annotations

from graphperm.analysis.context import Axis, RuleContext
from graphperm.analysis.rules import register

#: Gate blocks per recurrent op: the rows of each weight are this many copies of the hidden axis.
GATES = {"aten.lstm": 4, "aten.gru": 3, "aten.rnn_tanh": 1, "aten.rnn_relu": 1}


@register("aten.lstm.input", "aten.gru.input", "aten.rnn_tanh.input", "aten.rnn_relu.input")
def recurrent(ctx: RuleContext) -> None:
    """``(output, h_n[, c_n]) = op(input, hx, params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first)``; ``hx`` is a list ``[h0, c0]`` for an LSTM, one tensor else."""
    gates = GATES[ctx.op.rsplit(".", 1)[0]]
    x = ctx.arg(0)
    states = ctx.tensors(1)  # h0 (and c0): (layers · directions, batch, H)
    params = ctx.tensors(2)
    has_biases, layers = bool(ctx.raw(3)), int(ctx.raw(4))
    directions = 2 if ctx.raw(7) else 1
    batch_first = bool(ctx.raw(8))
    per = 4 if has_biases else 2
    if len(params) != layers * directions * per:  # an LSTM with proj_size adds w_hr
        raise ValueError(
            f"{len(params)} weights for {layers} layer(s) × {directions} direction(s): "
            "projections (proj_size) are not handled"
        )
    out, finals = ctx.outputs[0], ctx.outputs[1:]
    hidden = states[0][-1]
    for s in (*states[1:], *finals):
        ctx.tie(s[-1], hidden)
    time, batch = (1, 0) if batch_first else (0, 1)
    ctx.block(x[time], out[time], reason=f"{ctx.op} runs a recurrence along it")
    ctx.tie(x[batch], out[batch])
    for s in (*states, *finals):
        ctx.block(s[0], reason=f"{ctx.op} stacks its layers and directions along it")
        ctx.tie(s[1], x[batch])
    _stack(ctx, out[-1], hidden, directions, "direction")
    for layer in range(layers):
        for d in range(directions):
            w_ih, w_hh, *biases = params[(layer * directions + d) * per :][:per]
            if layer == 0:
                ctx.tie(x[-1], w_ih[1], tag="linear_in")
            else:
                _stack(ctx, w_ih[1], hidden, directions, "input")
            ctx.tag(w_ih[1], "weight_in")
            ctx.tie(w_hh[1], hidden)
            ctx.tag(w_hh[1], "weight_in")
            for t in (w_ih, w_hh, *biases):
                _stack(ctx, t[0], hidden, gates, "gate")
    ctx.tag(hidden, "linear_out")


def _stack(ctx: RuleContext, flat: Axis, unit: Axis, copies: int, name: str) -> None:
    """``flat`` is ``copies`` blocks laid end to end, each one the axis ``unit``."""
    if copies == 1:
        ctx.tie(flat, unit)
        return
    size = flat.size // copies
    segments = [Axis(flat.tensor, flat.dim, f"{name}{i}", size) for i in range(copies)]
    ctx.concat(flat, segments)
    for s in segments:
        ctx.tie(s, unit)
