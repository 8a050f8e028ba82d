"""Fold normalisation gains and biases into the linear layers that read them.

A rotated axis passes through a LayerNorm (or RMSNorm) exactly only once the norm's per-unit
gain and bias are gone: ``((x − μ)/σ ⊙ g + b) Wᵀ + c = ((x − μ)/σ) (W diag(g))ᵀ + (W b + c)``.
The analysis records which norms a rotated part needs folded and which layers read each
(:class:`graphperm.analysis.symmetry.Fold`); folding leaves the function unchanged and the model
of the same class (gain 1, bias 0). Every model of a merge is folded the same way, so their
weights still line up for interpolation.

Example:
    >>> import torch
    >>> from graphperm.analysis.symmetry import Fold
    >>> state = {"n.weight": torch.tensor([2.0, 3.0]), "n.bias": torch.tensor([1.0, 0.0]),
    ...          "l.weight": torch.tensor([[1.0, 1.0]]), "l.bias": torch.tensor([0.5])}
    >>> out = fold_state(state, [Fold("n", "n.weight", "n.bias", (("l.weight", "l.bias"),))])
    >>> out["l.weight"], out["l.bias"], out["n.weight"]
    (tensor([[2., 3.]]), tensor([1.5000]), tensor([1., 1.]))
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from graphperm.analysis import Analysis
from graphperm.analysis.symmetry import Fold, Reader
from graphperm.errors import GraphpermError
from graphperm.trace.ties import tie_groups

__all__ = ["fold_state", "folds_for"]


def folds_for(analysis: Analysis, parts: Iterable[tuple[str, str]]) -> list[Fold]:
    """The norms to fold before rotating ``parts`` (``(group, part)`` pairs), each once."""
    seen: dict[str, Fold] = {}
    for group, part in parts:
        for fold in analysis.symmetry(group, part).folds:
            seen.setdefault(fold.node, fold)
    return list(seen.values())


def fold_state(
    state: dict[str, torch.Tensor], folds: Iterable[Fold], *, inplace: bool = False
) -> dict[str, torch.Tensor]:
    """``state`` with every norm in ``folds`` folded into its readers (float64 arithmetic, one
    rounding). A new dict sharing the untouched tensors, or, with ``inplace``, the same
    tensors overwritten. Keys that are one tensor (:mod:`graphperm.trace.ties`) keep one
    value."""
    out = dict(state)
    groups = tie_groups(state)
    with torch.no_grad():
        for fold in folds:
            gain = state[fold.weight].double() if fold.weight else None
            shift = state[fold.bias].double() if fold.bias else None
            if fold.keep_bias and shift is not None:  # (x̂ ⊙ g + b) = (x̂ + b / g) ⊙ g
                if gain is not None:
                    if bool((gain == 0).any()):
                        raise GraphpermError(
                            f"cannot fold the norm {fold.node}: a gain of 0 with a bias, read by "
                            "a layer without a bias; align that part with permutations "
                            "(transform: perm)"
                        )
                    _put(out, fold.bias, shift / gain, inplace)
                shift = None
            for reader in fold.readers:
                w_key, b_key, dim = Reader(*reader)
                w = state[w_key].double().movedim(dim, -1)  # (..., in)
                if shift is not None:
                    _put(out, b_key, state[b_key].double() + w @ shift, inplace)
                if gain is not None:
                    _put(out, w_key, (w * gain).movedim(-1, dim), inplace)
            if fold.weight:
                _put(out, fold.weight, torch.ones_like(gain), inplace)
            if fold.bias and shift is not None:
                _put(out, fold.bias, torch.zeros_like(shift), inplace)
    for keys in groups:
        changed = [k for k in keys if out[k] is not state[k]]
        if changed:
            out.update({k: out[changed[0]] for k in keys})
    return out


def _put(out: dict[str, torch.Tensor], key: str, value: torch.Tensor, inplace: bool) -> None:
    old = out[key]
    if inplace:
        old.copy_(value.to(old.dtype))
    else:
        out[key] = value.to(old.dtype)
