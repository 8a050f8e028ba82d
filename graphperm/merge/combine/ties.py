"""``ties``: trim small differences, keep signs consistent.

After alignment (no base) it is the paper code's rule (``--use_ties --quantile
--maintain_hubert_behavior``): an entry is averaged only where every model's difference from A is
at least the ``quantile`` of that difference's magnitudes in its tensor and its sign agrees with
A's; elsewhere it keeps A's value (``disagree: a``) or the value of larger magnitude
(``disagree: larger``). Around a base it is TIES-merging (Yadav et al., 2023) of the task vectors
τ_m = θ_m − θ_base: trim each below its quantile, elect the sign of Σ_m w_m τ̂_m, average (with
the weights) the entries that agree with it, and add ``scale`` times that to the base.

Example:
    >>> import torch
    >>> from graphperm.policy import Combine
    >>> a = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    >>> b = torch.tensor([3.0, 2.0, 3.5], dtype=torch.float64)
    >>> Ties().tensor("x", [a, b], [0.5, 0.5], None, Combine(method="ties", quantile=0.5))
    tensor([ 2., -2.,  3.], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

from graphperm.merge.combine.interpolation import weighted_sum
from graphperm.merge.combine.registry import Combination, register_combination
from graphperm.policy import Combine

__all__ = ["Ties", "magnitude_threshold", "trim_mask"]


def magnitude_threshold(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of ``|x|`` with linear interpolation, as ``torch.quantile`` computes
    it, for tensors of any size (``torch.quantile`` refuses more than 16M elements).

    Example:
        >>> magnitude_threshold(torch.tensor([-4.0, 1.0, 2.0, -3.0]), 0.5)
        tensor(2.5000)
    """
    flat = x.abs().flatten()
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, flat.numel() - 1)
    v_lo = flat.kthvalue(lo + 1).values
    if hi == lo:
        return v_lo
    return torch.lerp(v_lo, flat.kthvalue(hi + 1).values, pos - lo)


def trim_mask(delta: torch.Tensor, q: float) -> torch.Tensor:
    """True where ``|delta|`` is at least its ``q`` quantile (the entries TIES keeps)."""
    if delta.numel() == 0:
        return torch.ones_like(delta, dtype=torch.bool)
    return delta.abs() >= magnitude_threshold(delta, q)


@register_combination
class Ties(Combination):
    """TIES: the paper code's rule after alignment; TIES-merging of task vectors with a base."""

    name = "ties"
    description = "trim by magnitude quantile, keep signs consistent (A's value where not)"

    def tensor(self, key, values, weights, base, settings: Combine) -> torch.Tensor:
        q = settings.quantile
        if base is None:
            a = values[0]
            keep = torch.ones_like(a, dtype=torch.bool)
            for v in values[1:]:
                keep &= trim_mask(v - a, q) & (torch.sign(v) == torch.sign(a))
            if settings.disagree == "a":
                ref = a
            else:
                ref = a.clone()
                for v in values[1:]:
                    ref = torch.where(v.abs() > ref.abs(), v, ref)
            return torch.where(keep, weighted_sum(values, weights), ref)
        taus = []
        for v in values:
            tau = v - base
            taus.append(torch.where(trim_mask(tau, q), tau, torch.zeros_like(tau)))
        elected = torch.sign(weighted_sum([t.clone() for t in taus], weights))
        total = torch.zeros_like(base)
        mass = torch.zeros_like(base)
        for tau, w in zip(taus, weights):
            agree = (torch.sign(tau) == elected) & (tau != 0)
            total += torch.where(agree, w * tau, torch.zeros_like(tau))
            mass += agree.double() * w
        merged = torch.where(mass > 0, total / torch.where(mass > 0, mass, 1.0), 0.0)
        return base + settings.scale * merged
