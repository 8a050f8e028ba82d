"""A permutation (or rotation) for every part of every group, and its file format.

Convention: applying a permutation ``p`` to an axis gathers along it, ``new = old[p]``, so
``new[i]`` is old unit ``p[i]``. A part whose permutation may differ per block of an outer part
(per-head channel orders) holds one row per *new* outer index: shape ``(outer, size)``.

A part whose family is ``orth`` (:mod:`graphperm.analysis.symmetry`) may instead hold an
orthogonal matrix ``R`` (float64, shape ``(size, size)`` or ``(outer, size, size)``): applying it
mixes the units, ``new[..., j] = Σ_i old[..., i] R[i, j]``. A permutation ``p`` is the matrix with
``R[p[j], j] = 1``, so both conventions agree.

Example:
    >>> import torch
    >>> p = Permutation({"g": {"channels": torch.tensor([2, 0, 1])}})
    >>> p.moved_fraction("g")
    1.0
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from graphperm.errors import MismatchError

__all__ = ["Permutation", "ones_basis", "random_orthogonal", "random_permutation"]


@dataclass
class Permutation:
    """``perms[group][part]`` is a LongTensor of shape ``(size,)`` or ``(outer, size)``, or a
    float64 orthogonal matrix of shape ``(size, size)`` or ``(outer, size, size)``."""

    perms: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        for g, parts in self.perms.items():
            for p, t in parts.items():
                yield g, p, t

    def get(self, group: str, part: str) -> torch.Tensor | None:
        return self.perms.get(group, {}).get(part)

    def set(self, group: str, part: str, perm: torch.Tensor) -> None:
        dtype = torch.float64 if perm.is_floating_point() else torch.long
        self.perms.setdefault(group, {})[part] = perm.to(dtype)

    def to(self, device: torch.device | str) -> Permutation:
        """A copy with every tensor on ``device`` (learned alignment on a GPU)."""
        return Permutation(
            {g: {p: t.to(device) for p, t in parts.items()} for g, parts in self.perms.items()}
        )

    @property
    def rotated(self) -> set[tuple[str, str]]:
        """The ``(group, part)`` entries that hold orthogonal matrices."""
        return {(g, p) for g, p, t in self if t.is_floating_point()}

    def moved_fraction(self, group: str) -> float:
        """Fraction of the group's units that leave their place (the paper's Table II); a
        rotated unit counts as moved unless it maps onto itself."""
        moved = total = 0
        for t in self.perms.get(group, {}).values():
            if t.is_floating_point():
                diag = t.diagonal(dim1=-2, dim2=-1)
                moved += int((diag < 1 - 1e-9).sum())
                total += diag.numel()
                continue
            ident = torch.arange(t.shape[-1]).expand_as(t)
            moved += int((t != ident).sum())
            total += t.numel()
        return moved / total if total else 0.0

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write one index tensor per group and part (``"group/part"``) to a safetensors file."""
        tensors = {f"{g}/{p}": t.contiguous() for g, p, t in self}
        save_file(tensors, str(path), metadata=metadata or {})

    @classmethod
    def load(cls, path: str | Path) -> Permutation:
        out = cls()
        for key, t in load_file(str(path)).items():
            group, _, part = key.rpartition("/")
            out.set(group, part, t)
        return out

    def check(self, groups: dict[str, dict[str, tuple[int, ...]]]) -> None:
        """Raise :class:`MismatchError` unless every entry names a known part of the right shape
        and holds valid permutations. ``groups`` maps group -> part -> expected shape."""
        for g, p, t in self:
            if g not in groups or p not in groups[g]:
                raise MismatchError(
                    f"permutation '{g}/{p}' names no group part of this model; "
                    "was it made for another architecture?"
                )
            want = groups[g][p]
            if t.is_floating_point():
                want = (*want, want[-1])
            if tuple(t.shape) != want:
                raise MismatchError(
                    f"permutation '{g}/{p}' has shape {tuple(t.shape)}, the model needs {want}"
                )
            if t.is_floating_point():
                eye = torch.eye(t.shape[-1], dtype=t.dtype)
                if not torch.allclose(t.transpose(-1, -2) @ t, eye.expand_as(t), atol=1e-6):
                    raise MismatchError(f"'{g}/{p}' is not an orthogonal matrix")
                continue
            rows = t.reshape(-1, t.shape[-1])
            if not torch.equal(rows.sort(dim=1).values, torch.arange(t.shape[-1]).expand_as(rows)):
                raise MismatchError(f"'{g}/{p}' is not a permutation")


def random_permutation(
    shapes: dict[str, dict[str, tuple[int, ...]]],
    seed: int = 0,
    *,
    rotate: dict[tuple[str, str], bool] | None = None,
) -> Permutation:
    """A uniformly random permutation of every part (``shapes`` as in :meth:`Permutation.check`);
    the parts in ``rotate`` get a random orthogonal matrix instead (``rotate[(group, part)]``:
    whether it must keep the all-ones direction).

    Example:
        >>> p = random_permutation({"g": {"a": (3,), "b": (4,)}}, rotate={("g", "b"): True})
        >>> sorted(p.rotated), p.get("g", "b").sum(0)  # columns of R sum to 1: R keeps 1
        ([('g', 'b')], tensor([1.0000, 1.0000, 1.0000, 1.0000], dtype=torch.float64))
    """
    g = torch.Generator().manual_seed(seed)
    rotate = rotate or {}
    out = Permutation()
    for group, parts in shapes.items():
        for part, shape in parts.items():
            n = _rows(shape)
            if (group, part) in rotate:
                keep = rotate[(group, part)]
                mats = [random_orthogonal(shape[-1], g, keeps_ones=keep) for _ in range(n)]
                out.set(group, part, torch.stack(mats).reshape(*shape, shape[-1]))
                continue
            rows = [torch.randperm(shape[-1], generator=g) for _ in range(n)]
            out.set(group, part, torch.stack(rows).reshape(shape))
    return out


def random_orthogonal(
    n: int, generator: torch.Generator | None = None, *, keeps_ones: bool = False
) -> torch.Tensor:
    """A Haar-random ``n × n`` orthogonal matrix (float64); with ``keeps_ones``, uniform among
    those with ``R @ 1 = 1`` (a rotation of the directions orthogonal to the all-ones vector).

    Example:
        >>> r = random_orthogonal(5, torch.Generator().manual_seed(0), keeps_ones=True)
        >>> torch.allclose(r @ torch.ones(5, dtype=r.dtype), torch.ones(5, dtype=r.dtype))
        True
    """
    if keeps_ones:
        if n == 1:
            return torch.ones(1, 1, dtype=torch.float64)
        basis = ones_basis(n)
        inner = random_orthogonal(n - 1, generator)
        return torch.full((n, n), 1.0 / n, dtype=torch.float64) + basis @ inner @ basis.T
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)


def ones_basis(n: int) -> torch.Tensor:
    """An orthonormal basis (``n × (n − 1)``, float64) of the directions orthogonal to the
    all-ones vector."""
    a = torch.eye(n, dtype=torch.float64)
    a[:, 0] = 1.0
    q, _ = torch.linalg.qr(a)
    return q[:, 1:]


def _rows(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) == 2 else 1
