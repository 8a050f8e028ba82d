"""``interpolate``: Σ_m w_m·θ_m, or with a base (task arithmetic) θ_base + scale·Σ_m w_m·τ_m.

Example:
    >>> import torch
    >>> from graphperm.policy import Combine
    >>> base, a = torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> Interpolation().tensor("x", [a], [1.0], base, Combine())
    tensor([1., 2.], dtype=torch.float64)
"""

from __future__ import annotations

import torch

from graphperm.merge.combine.registry import Combination, register_combination
from graphperm.policy import Combine

__all__ = ["Interpolation", "weighted_sum"]


def weighted_sum(values: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ_m w_m·values_m, in the order :func:`graphperm.merge.interpolate` adds them."""
    acc = values[0] * weights[0]
    for v, w in zip(values[1:], weights[1:]):
        acc.add_(v, alpha=w)
    return acc


@register_combination
class Interpolation(Combination):
    """Plain weighted average (the default); around a base, task arithmetic."""

    name = "interpolate"
    description = "Σ w·θ; with a base: θ_base + scale·Σ w·(θ − θ_base)"

    def tensor(self, key, values, weights, base, settings: Combine) -> torch.Tensor:
        if base is None:
            return weighted_sum(values, weights)
        tau = weighted_sum([v - base for v in values], weights)
        return base + settings.scale * tau
