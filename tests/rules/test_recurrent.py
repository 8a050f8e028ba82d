"""Recurrent rules (LSTM, GRU, RNN as one op): the hidden units move with every gate's block of
rows, the recurrent columns and the stacked states; time is blocked."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node


class Recurrent(nn.Module):
    """Linear(6, 8) -> recurrent layer(s) of 5 hidden units -> Linear(5 · directions, 3)."""

    def __init__(self, kind: type = nn.LSTM, layers: int = 1, bidirectional: bool = False):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.rnn = kind(8, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.b = nn.Linear(5 * (2 if bidirectional else 1), 3)

    def forward(self, x):
        return self.b(self.rnn(self.a(x))[0])


@functools.cache
def recurrent(kind: str = "LSTM", layers: int = 1, bidirectional: bool = False):
    torch.manual_seed(0)
    model = Recurrent(getattr(nn, kind), layers, bidirectional)
    return analysed(model, x=torch.randn(2, 7, 6))


def test_lstm_golden_axis_map():
    a = recurrent("LSTM", layers=2)
    ax = Axes(a)
    lstm = node(a, "lstm")
    hidden = ax.p("rnn.weight_hh_l0", 1)
    assert ax.size(hidden) == 5 and ax.movable(hidden)
    for layer in (0, 1):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            rows = ax.p(f"rnn.{name}_l{layer}", 0)
            assert ax.segments(rows) == [5, 5, 5, 5], name  # the four gates i, f, g, o
            assert {ax.t.find(s) for s in ax.t.decomp(rows).segments} == {hidden}
        assert ax.p(f"rnn.weight_hh_l{layer}", 1) == hidden
    assert ax.p("rnn.weight_ih_l1", 1) == hidden  # layer 1 reads layer 0's units
    assert ax.p("rnn.weight_ih_l0", 1) == ax.p("a.weight", 0)  # the input features
    assert ax.out(lstm, -1, element=0) == hidden == ax.p("b.weight", 1)
    assert_fixed_by(ax, ax.out(lstm, 1, element=0), "recurrence along it")  # time
    assert ax.out(lstm, 0, element=0) == ax.arg(lstm, 0, 0)  # batch (batch_first)
    assert {"weight_in", "linear_out"} <= ax.tags(hidden)


def test_bidirectional_output_is_two_copies_of_the_hidden_units():
    a = recurrent("LSTM", layers=2, bidirectional=True)
    ax = Axes(a)
    hidden = ax.p("rnn.weight_hh_l0", 1)
    for key in ("rnn.weight_ih_l1", "b.weight"):
        c = ax.p(key, 1)
        assert ax.segments(c) == [5, 5]
        assert {ax.t.find(s) for s in ax.t.decomp(c).segments} == {hidden}
    assert ax.p("rnn.weight_hh_l0_reverse", 1) == hidden


def test_gru_has_three_gate_blocks_and_an_rnn_one():
    ax = Axes(recurrent("GRU"))
    assert ax.segments(ax.p("rnn.weight_ih_l0", 0)) == [5, 5, 5]
    ax = Axes(recurrent("RNN"))
    assert ax.p("rnn.weight_ih_l0", 0) == ax.p("rnn.weight_hh_l0", 1)


def test_lstm_hidden_units_form_one_group():
    a = recurrent("LSTM", layers=2)
    g = group_of(a, "rnn.weight_hh_l1", 1)
    assert g is not None and g.size == 5
    assert ("rnn.weight_ih_l0", 0) in g.tensors and ("b.weight", 1) in g.tensors


@pytest.mark.parametrize(
    ("kind", "layers", "bidirectional"),
    [("LSTM", 1, False), ("LSTM", 2, True), ("GRU", 2, False), ("RNN", 1, True)],
)
def test_recurrent_layers_verify_under_permutations(kind: str, layers: int, bidirectional: bool):
    assert_verifies(recurrent(kind, layers, bidirectional))


def test_lstm_projections_are_left_fixed():
    """``proj_size`` adds a projection weight per layer that the rule does not read: the rule
    fails, and every axis of the op stays fixed (nothing wrong can move)."""
    model = nn.Sequential(nn.Linear(6, 8), nn.LSTM(8, 5, proj_size=3))
    a = analysed(model, input=torch.randn(7, 2, 6))
    assert any("proj_size" in why for why in a.coupling.failed.values())
    assert group_of(a, "1.weight_hh_l0", 1) is None
