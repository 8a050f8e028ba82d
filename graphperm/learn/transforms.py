"""Exact transforms with parameters that gradient descent can move.

A permuted part holds a score matrix ``W`` (one per block for per-head parts); the forward pass
uses the permutation that maximises ``Σ_i W[p[i], i]`` (a linear assignment), and gradients
reach ``W`` straight through it (git re-basin's and Theus et al.'s straight-through estimator).
A rotated part holds ``R₀ · exp(S − Sᵀ)`` (restricted to the directions orthogonal to the
all-ones vector when the part must keep it), orthogonal at every step. Either way, what the
forward pass applies is a member of the part's exact family.

Example:
    >>> import torch
    >>> from graphperm.apply import Permutation
    >>> start = Permutation({"g": {"channels": torch.tensor([2, 0, 1])}})
    >>> t = LearnedTransforms(start, keeps_ones={})
    >>> t.hard().get("g", "channels")
    tensor([2, 0, 1])
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from graphperm.apply import Permutation, ones_basis
from graphperm.errors import PolicyError

__all__ = ["LearnedTransforms", "as_matrix"]


def as_matrix(p: torch.Tensor) -> torch.Tensor:
    """The float64 matrix ``T`` of index permutation ``p`` (``T[p[j], j] = 1``), per row of a
    2-d ``p``.

    Example:
        >>> as_matrix(torch.tensor([1, 0]))
        tensor([[0., 1.],
                [1., 0.]], dtype=torch.float64)
    """
    n = p.shape[-1]
    rows = p.reshape(-1, n)
    out = torch.zeros(rows.shape[0], n, n, dtype=torch.float64, device=p.device)
    cols = torch.arange(n, device=p.device).expand_as(rows)
    out[torch.arange(rows.shape[0], device=p.device)[:, None], rows, cols] = 1.0
    return out.reshape(*p.shape, n)


def _assign(w: torch.Tensor) -> torch.Tensor:
    """Index permutation ``p`` maximising ``Σ_j w[p[j], j]``, per block (solved on the CPU,
    returned on ``w``'s device)."""
    n = w.shape[-1]
    blocks = w.detach().reshape(-1, n, n).cpu().numpy()
    rows = []
    for b in blocks:
        r, c = linear_sum_assignment(b, maximize=True)
        p = np.empty(n, dtype=np.int64)
        p[c] = r
        rows.append(torch.from_numpy(p))
    return torch.stack(rows).reshape(w.shape[:-1]).to(w.device)


def _orthogonal(r: torch.Tensor, name: str) -> torch.Tensor:
    """The orthogonal matrix nearest ``r`` (``U·Vᵀ`` of its SVD). ``r`` is a matrix
    exponential of a skew-symmetric matrix, orthogonal up to rounding; where LAPACK's SVD does
    not converge on it, the Q of its QR decomposition (signs set so R's diagonal is positive),
    which is orthogonal and, for such an ``r``, equal to it up to the same rounding."""
    if not torch.isfinite(r).all():
        raise PolicyError(
            f"learned rotation of {name} is not finite: lower learn.lr (or use "
            "learn.schedule: cosine)"
        )
    try:
        u, _, vh = torch.linalg.svd(r)  # back onto the orthogonal group exactly
        return u @ vh
    except torch.linalg.LinAlgError:
        q, rr = torch.linalg.qr(r)
        sign = torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1))
        return q * torch.where(sign == 0, torch.ones_like(sign), sign).unsqueeze(-2)


class LearnedTransforms(torch.nn.Module):
    """One parameter per part of ``start``; :meth:`soft` gives the transforms the forward pass
    applies (differentiable), :meth:`hard` the exact transforms they stand for."""

    def __init__(
        self,
        start: Permutation,
        keeps_ones: dict[tuple[str, str], bool],
        *,
        frozen: set[tuple[str, str]] = frozenset(),
    ) -> None:
        super().__init__()
        self.start = start
        self.frozen = set(frozen)
        self.names: list[tuple[str, str]] = []
        self.scores = torch.nn.ParameterList()
        self.angles = torch.nn.ParameterList()
        self._kind: dict[tuple[str, str], tuple[str, int]] = {}
        self._bases: dict[tuple[str, str], torch.Tensor] = {}
        for g, p, t in start:
            if (g, p) in self.frozen:
                continue
            if t.is_floating_point():
                n = t.shape[-1]
                keep = keeps_ones.get((g, p), False) and n > 1
                m = n - 1 if keep else n
                if keep:
                    self._bases[(g, p)] = ones_basis(n).to(t.device)
                self._kind[(g, p)] = ("orth", len(self.angles))
                self.angles.append(
                    torch.nn.Parameter(torch.zeros(*t.shape[:-2], m, m, device=t.device))
                )
            else:
                self._kind[(g, p)] = ("perm", len(self.scores))
                self.scores.append(torch.nn.Parameter(as_matrix(t).float()))
            self.names.append((g, p))

    def _rotation(self, key: tuple[str, str]) -> torch.Tensor:
        s = self.angles[self._kind[key][1]].double()
        q = torch.linalg.matrix_exp(s - s.transpose(-1, -2))
        if key in self._bases:
            u = self._bases[key]
            n = u.shape[0]
            q = torch.full((n, n), 1.0 / n, dtype=torch.float64, device=u.device) + u @ q @ u.T
        return self.start.get(*key) @ q

    def both(self) -> tuple[Permutation, Permutation]:
        """:meth:`soft` and :meth:`hard` from one assignment per part."""
        assigned = {
            key: _assign(self.scores[i]) for key, (k, i) in self._kind.items() if k == "perm"
        }
        return self.soft(assigned), self.hard(assigned)

    def soft(self, assigned: dict | None = None) -> Permutation:
        """Every part as a float32 matrix (B's weights are moved by them at every step, and
        float64 products took twice the time and memory): the hard permutation with the
        score's gradient (straight through), or the current rotation."""
        assigned = assigned or {}
        out = Permutation()
        for g, p, t in self.start:
            key = (g, p)
            if key not in self._kind:  # kept as it started (gathered, not multiplied)
                out.perms.setdefault(g, {})[p] = t
                continue
            kind, i = self._kind[key]
            if kind == "orth":
                out.perms.setdefault(g, {})[p] = self._rotation(key).float()
                continue
            w = self.scores[i]
            hard = as_matrix(assigned[key] if key in assigned else _assign(w)).float()
            out.perms.setdefault(g, {})[p] = hard + (w - w.detach())
        return out

    def hard(self, assigned: dict | None = None) -> Permutation:
        """The exact transforms: index permutations and orthogonal matrices (float64)."""
        assigned = assigned or {}
        out = Permutation()
        with torch.no_grad():
            for g, p, t in self.start:
                key = (g, p)
                if key not in self._kind:
                    out.set(g, p, t.clone())
                elif self._kind[key][0] == "orth":
                    out.set(g, p, _orthogonal(self._rotation(key), f"{g}/{p}"))
                elif key in assigned:
                    out.set(g, p, assigned[key])
                else:
                    out.set(g, p, _assign(self.scores[self._kind[key][1]]))
        return out
