"""Weight interpolation: ``merged = Σ_m w_m · model_m`` (for two: ``w · A + (1 − w) · B′``).

The one implementation every command uses: each tensor is computed in float64 and rounded once
to its own dtype; integer buffers (counters, ids) come from A. With ``inplace`` the result
overwrites A's tensors one at a time, so a merge holds no third copy of the model. Keys that
are one tensor in A (tied embeddings, :mod:`graphperm.trace.ties`) are interpolated once and
all get that value.

Example:
    >>> import torch
    >>> interpolate([{"x": torch.ones(2)}, {"x": torch.zeros(2)}], lambda k: [0.9, 0.1])["x"]
    tensor([0.9000, 0.9000])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from graphperm.trace.ties import tied_keys

__all__ = ["interpolate"]


def interpolate(
    states: Sequence[dict[str, torch.Tensor]],
    weights: Callable[[str], Sequence[float]],
    *,
    inplace: bool = False,
) -> dict[str, torch.Tensor]:
    """Interpolate floating-point tensors of ``states`` (A first) with ``weights(key)``."""
    first = states[0]
    ties = tied_keys(first)
    out = {}
    with torch.no_grad():
        for key, a in first.items():
            if key in ties:  # another name of a tensor interpolated already
                out[key] = out[ties[key]]
                continue
            if not a.is_floating_point():
                out[key] = a if inplace else a.clone()
                continue
            w = [float(x) for x in weights(key)]
            if len(w) != len(states):
                raise ValueError(f"{len(w)} weights for {len(states)} models at {key}")
            acc = a.double() * w[0]
            for s, wm in zip(states[1:], w[1:]):
                acc.add_(s[key].double(), alpha=wm)
            if inplace:
                a.copy_(acc)
                out[key] = a
            else:
                out[key] = acc.to(a.dtype)
    return out
