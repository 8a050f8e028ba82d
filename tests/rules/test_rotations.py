"""Rotation kinds of the op families (``rotates(...)`` next to the rules): golden families of
tiny modules, random rotations that keep their function, and rotations the analysis refuses
that would indeed break it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphperm.apply import Indexer, random_permutation, verify
from graphperm.apply.verify import random_rotations

from .helpers import analysed, group_of


class Chain(nn.Module):
    """Linear -> (something along the hidden axis) -> Linear."""

    def __init__(self, middle) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 4)
        self.gain = nn.Parameter(torch.randn(8))
        self.middle = middle

    def forward(self, x):
        return self.b(self.middle(self, self.a(x)))


class PreNorm(nn.Module):
    """x -> x + W2(LN(x)) with LN's gain and bias far from 1 and 0; ``head``: read by a linear
    layer through a LayerNorm, else the stream is returned after its final norm."""

    def __init__(self, head: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.n1, self.n2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.w = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3) if head else None
        with torch.no_grad():
            for n in (self.n1, self.n2):
                n.weight.normal_()
                n.bias.normal_()

    def forward(self, x):
        h = self.inp(x)
        h = h + self.w(self.n1(h))
        h = self.n2(h)
        return self.out(h) if self.out is not None else h


X = {"x": torch.randn(2, 5, 6)}
CASES = {
    # name: (middle, family, keeps_ones)
    "identity": (lambda m, h: h, "orth", False),
    "gelu": (lambda m, h: torch.nn.functional.gelu(h), "perm", False),
    "plus_one": (lambda m, h: h + 1.0, "orth", True),
    "scaled": (lambda m, h: h * 0.5 - h / 3.0, "orth", False),
    "gain": (lambda m, h: h * m.gain, "perm", False),
    "mean_removed": (lambda m, h: h - h.mean(-1, keepdim=True), "orth", True),
    "softmax": (lambda m, h: h.softmax(-1), "perm", False),
    "rms": (lambda m, h: torch.nn.functional.rms_norm(h, (8,)), "orth", True),
}


def _hidden(a):
    return group_of(a, "a.weight", 0)


@pytest.mark.parametrize("name", list(CASES))
def test_family_of_the_hidden_axis(name: str) -> None:
    middle, family, ones = CASES[name]
    a = analysed(Chain(middle), **X)
    g = _hidden(a)
    s = a.symmetry(g.name, g.parts[0].name)
    assert (s.family, s.keeps_ones if s.family == "orth" else False) == (family, ones), s
    if family == "perm":
        assert s.why


@pytest.mark.parametrize("name", list(CASES))
def test_random_rotations_keep_the_function(name: str) -> None:
    a = analysed(Chain(CASES[name][0]), **X)
    for seed in (0, 1):
        report = verify(a, seed=seed)
        assert report.ok, report.outputs
    assert report.rotated_parts == (1 if CASES[name][1] == "orth" else 0) + 1  # + the output


@pytest.mark.parametrize("name", ["gelu", "gain", "softmax"])
def test_rotating_a_permutation_only_axis_breaks_the_function(name: str) -> None:
    a = analysed(Chain(CASES[name][0]), **X)
    g = _hidden(a)
    rotate = {**random_rotations(a), (g.name, g.parts[0].name): False}
    perm = random_permutation(Indexer(a).shapes(), seed=0, rotate=rotate)
    assert not verify(a, perm=perm).ok


def test_plus_one_needs_the_ones_direction_kept() -> None:
    a = analysed(Chain(CASES["plus_one"][0]), **X)
    g = _hidden(a)
    perm = random_permutation(
        Indexer(a).shapes(), seed=0, rotate={(g.name, g.parts[0].name): False}
    )
    assert not verify(a, perm=perm).ok


def test_a_pre_norm_stream_rotates_once_its_norms_fold() -> None:
    a = analysed(PreNorm(head=True), **X)
    g = group_of(a, "inp.weight", 0)
    s = a.symmetry(g.name, g.parts[0].name)
    assert s.family == "orth" and s.keeps_ones
    assert {f.weight for f in s.folds} == {"n1.weight", "n2.weight"}
    assert {r.weight for f in s.folds for r in f.readers} == {"w.weight", "out.weight"}
    for seed in (0, 1, 2):
        assert verify(a, seed=seed).ok


def test_a_returned_norm_output_keeps_the_stream_permutation_only() -> None:
    a = analysed(PreNorm(head=False), **X)
    g = group_of(a, "inp.weight", 0)
    s = a.symmetry(g.name, g.parts[0].name)
    assert s.family == "perm" and "returned" in s.why
    assert verify(a, seed=0).ok
