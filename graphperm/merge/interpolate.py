"""Weight interpolation: ``merged = w · A + (1 − w) · B′``, with per-tensor weights.

Example:
    >>> import torch
    >>> interpolate({"x": torch.ones(2)}, {"x": torch.zeros(2)}, lambda k: 0.9)["x"].tolist()
    [0.8999999761581421, 0.8999999761581421]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["interpolate"]


def interpolate(
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    weight_a: Callable[[str], float],
) -> dict[str, torch.Tensor]:
    """Interpolate floating-point tensors; integer buffers (counters, ids) come from A."""
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        if not a.is_floating_point():
            out[key] = a.clone()
            continue
        w = float(weight_a(key))
        out[key] = (a.double() * w + b.double() * (1.0 - w)).to(a.dtype)
    return out
