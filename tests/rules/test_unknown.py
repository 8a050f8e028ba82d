"""An op without a rule blocks every axis it touches, and the analysis says which op it was."""

from __future__ import annotations

import torch
from torch import nn

from graphperm.analysis.rules import rule_for

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node

OP = "aten.fft_rfft.default"


class Spectrum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(7, 4)

    def forward(self, x):
        return self.b(torch.fft.rfft(self.a(x), dim=-1).abs())


def test_op_without_a_rule_blocks_its_axes_and_warns():
    assert rule_for(OP) is None, f"{OP} has a rule now: pick another op for this test"
    torch.manual_seed(0)
    a = analysed(Spectrum(), x=torch.randn(2, 3, 8))
    ax = Axes(a)
    fft = node(a, "fft_rfft")
    assert a.coupling.unknown == {OP: [fft.name]}
    for c in (ax.arg(fft, 0, 2), ax.out(fft, 2), ax.p("a.weight", 0)):
        assert_fixed_by(ax, c, f"no rule for {OP}")
    # the batch and token axes are blocked by it too (they are model-input axes anyway)
    assert any(f"no rule for {OP}" in r for r in ax.fixed(ax.out(fft, 1)))
    assert group_of(a, "a.weight", 0) is None
    (warning,) = [w for w in a.warnings if OP in w]
    assert warning.startswith(f"no rule for {OP}") and "add a rule" in warning
    # what does not touch the op still moves, and the model still computes the same
    assert group_of(a, "b.weight", 0) is not None
    assert_verifies(a)
