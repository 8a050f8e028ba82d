"""A permutation for every part of every group, and its file format.

Convention: applying a permutation ``p`` to an axis gathers along it, ``new = old[p]``, so
``new[i]`` is old unit ``p[i]``. A part whose permutation may differ per block of an outer part
(per-head channel orders) holds one row per *new* outer index: shape ``(outer, size)``.

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

__all__ = ["Permutation", "random_permutation"]


@dataclass
class Permutation:
    """``perms[group][part]`` is a LongTensor of shape ``(size,)`` or ``(outer, size)``."""

    perms: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        for g, parts in self.perms.items():
            for p, t in parts.items():
                yield g, p, t

    def get(self, group: str, part: str) -> torch.Tensor | None:
        return self.perms.get(group, {}).get(part)

    def set(self, group: str, part: str, perm: torch.Tensor) -> None:
        self.perms.setdefault(group, {})[part] = perm.to(torch.long)

    def moved_fraction(self, group: str) -> float:
        """Fraction of the group's units that leave their place (the paper's Table II)."""
        moved = total = 0
        for t in self.perms.get(group, {}).values():
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
            if tuple(t.shape) != want:
                raise MismatchError(
                    f"permutation '{g}/{p}' has shape {tuple(t.shape)}, the model needs {want}"
                )
            rows = t.reshape(-1, t.shape[-1])
            if not torch.equal(rows.sort(dim=1).values, torch.arange(t.shape[-1]).expand_as(rows)):
                raise MismatchError(f"'{g}/{p}' is not a permutation")


def random_permutation(shapes: dict[str, dict[str, tuple[int, ...]]], seed: int = 0) -> Permutation:
    """A uniformly random permutation of every part (``shapes`` as in :meth:`Permutation.check`)."""
    g = torch.Generator().manual_seed(seed)
    out = Permutation()
    for group, parts in shapes.items():
        for part, shape in parts.items():
            rows = [torch.randperm(shape[-1], generator=g) for _ in range(_rows(shape))]
            out.set(group, part, torch.stack(rows).reshape(shape))
    return out


def _rows(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) == 2 else 1
