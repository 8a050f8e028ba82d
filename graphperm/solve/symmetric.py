"""``symmetric``: the paper code's ``match_tensors_permute_symmetric``, read for what it does.

It solves two assignments on the absolute correlations: ``P`` matching B's units to A's (the
A × B block) and ``Q`` matching A's units to B's (the B × A block), and merges with
``(P + Qᵀ) / 2`` ("both models moved toward a common midpoint"). The B × A block is the A × B
block transposed, so ``Q`` solves the same problem transposed: whenever the optimum is unique,
``Qᵀ = P`` and the "midpoint" is B → A's permutation itself (moving both models to a midpoint
basis only relabels the merged units). They differ only where two assignments tie exactly; the
paper's average is then no permutation (half of one unit, half of another), which is not an
exact transform: here P is kept and the disagreement is logged.

What does differ from ``activations`` is the cost: the paper code matches on ``|corr|`` (its
default ``no_absval=False``), so a strongly anti-correlated pair can be matched; graphperm's
``activations`` matches on the signed correlation. ``symmetric`` follows the paper code.

Example:
    >>> import torch
    >>> c = torch.tensor([[0.1, -0.9], [0.8, 0.2]])
    >>> symmetric_match(c).tolist()  # |corr|: A's unit 0 takes B's anti-correlated unit 1
    [1, 0]
"""

from __future__ import annotations

import logging

import torch

from graphperm.solve.assignment import match
from graphperm.solve.methods import ActivationMatching, register_method

__all__ = ["symmetric_match"]

log = logging.getLogger(__name__)


def symmetric_match(corr: torch.Tensor) -> torch.Tensor:
    """``p`` (B's unit ``p[i]`` for A's unit ``i``) from both directions of ``|corr|``; where
    B → A and A → B disagree (exact ties), B → A's (logged)."""
    cost = torch.nan_to_num(corr.double()).abs()
    p = match(cost)  # B -> A: rows A, columns B
    q = match(cost.T)  # A -> B: rows B, columns A
    if not torch.equal(q[p], torch.arange(len(p))):
        log.info("symmetric: B->A and A->B assignments differ (tied); B->A kept")
    return p


@register_method
class SymmetricMatching(ActivationMatching):
    """The paper code's symmetric matching: both directions of ``|corr|`` solved; heads first,
    as ``activations``."""

    name = "symmetric"
    needs = frozenset({"correlation"})
    description = "paper code's symmetric matching: |corr|, B->A and A->B assignments averaged"

    assign = staticmethod(symmetric_match)
