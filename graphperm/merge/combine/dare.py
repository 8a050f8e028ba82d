"""``dare``: drop and rescale (Yu et al., 2024).

Every model's difference from the reference (the base with task arithmetic, A after alignment)
loses each entry with probability ``drop``; the rest is divided by ``1 − drop`` so that its
expectation is unchanged; then the differences are added with the weights:
``ref + scale · Σ_m w_m · dare(θ_m − ref)`` (after alignment A's own difference is zero and
``scale`` is 1, so ``drop: 0`` is plain interpolation up to rounding). The masks are seeded per
tensor and model (``seed``), so a merge is reproducible.

Example:
    >>> import torch
    >>> from graphperm.policy import Combine
    >>> a, b = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    >>> Dare().tensor("x", [a, b], [0.5, 0.5], None, Combine(method="dare", drop=0.0))
    tensor([0.5000, 0.5000, 0.5000, 0.5000], dtype=torch.float64)
"""

from __future__ import annotations

import torch

from graphperm.merge.combine.registry import Combination, register_combination, tensor_generator
from graphperm.policy import Combine

__all__ = ["Dare", "drop_and_rescale"]


def drop_and_rescale(delta: torch.Tensor, drop: float, generator: torch.Generator) -> torch.Tensor:
    """``delta`` with each entry zeroed with probability ``drop``, the rest divided by
    ``1 − drop``."""
    if drop == 0.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float64) >= drop
    return torch.where(keep, delta / (1.0 - drop), torch.zeros_like(delta))


@register_combination
class Dare(Combination):
    """DARE: random drop of difference entries, rescaled, then a weighted sum."""

    name = "dare"
    description = "drop each difference entry with probability p, rescale by 1/(1 − p)"

    def tensor(self, key, values, weights, base, settings: Combine) -> torch.Tensor:
        if base is None:
            ref, models = values[0], list(enumerate(zip(values, weights)))[1:]
        else:
            ref, models = base, list(enumerate(zip(values, weights)))
        acc = ref.clone()
        total = torch.zeros_like(ref)
        for m, (v, w) in models:
            g = tensor_generator(settings.seed, key, m)
            total.add_(drop_and_rescale(v - ref, settings.drop, g), alpha=w)
        return acc.add_(total, alpha=settings.scale)
