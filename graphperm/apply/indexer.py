"""Turn part permutations into gathers on concrete tensors (weights, activations, outputs).

An axis's class may be a leaf (one part's permutation), a product (blocks: the flat index is
split into digits, each digit is permuted by its factor's permutation, possibly chosen by the
outer digit's new value), or a concatenation (each segment permuted on its own). When an inner
part's permutation depends on an outer part that lives on another axis of the same tensor (a
grouped convolution's weight), the gather indexes both axes at once.

Example:
    >>> from graphperm.trace import load_model, trace        # doctest: +SKIP
    >>> from graphperm.analysis import analyse                # doctest: +SKIP
    >>> a = analyse(trace(load_model("builtin:hubert-tiny")))  # doctest: +SKIP
    >>> ix = Indexer(a)                                      # doctest: +SKIP
    >>> ix.shapes()["encoder.layers.0.feed_forward"]         # doctest: +SKIP
    {'channels': (128,)}
"""

from __future__ import annotations

import torch

from graphperm.analysis.analysis import Analysis
from graphperm.analysis.classes import Concat, Product
from graphperm.apply.permutation import Permutation

__all__ = ["Indexer"]


class Indexer:
    """Applies a :class:`Permutation` to any value of an analysed model."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.table = analysis.coupling.table
        self.deps = analysis.deps
        self._part_of: dict[int, tuple[str, str]] = {}
        for g in analysis.groups:
            for p in g.parts:
                self._part_of[self.table.find(p.cls)] = (g.name, p.name)

    def shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Expected shape of every part's permutation tensor."""
        out: dict[str, dict[str, tuple[int, ...]]] = {}
        for g in self.analysis.groups:
            sizes = {p.name: p.size for p in g.parts}
            out[g.name] = {
                p.name: ((sizes[p.outer], p.size) if p.outer else (p.size,)) for p in g.parts
            }
        return out

    # ------------------------------------------------------------------ apply
    def permute_value(self, key: str, tensor: torch.Tensor, perm: Permutation) -> torch.Tensor:
        """Permute graph value ``key`` (a placeholder or activation) held in ``tensor``."""
        return self.permute(tensor, self.analysis.coupling.classes(key), perm)

    def permute(self, tensor: torch.Tensor, classes: list[int], perm: Permutation) -> torch.Tensor:
        """Transform ``tensor`` whose dim ``d`` has axis class ``classes[d]`` (``None``: an axis
        nothing moves): gather along the permuted parts, then multiply by the rotated parts'
        matrices."""
        if tensor.ndim != len(classes):
            raise ValueError(f"tensor has {tensor.ndim} dims, classes given for {len(classes)}")
        out = self._gather(tensor, classes, perm)
        if perm.rotated:
            for d, c in enumerate(classes):
                if c is not None:
                    out = self._rotate(out, d, c, classes, perm)
        return out

    def mix(
        self, tensor: torch.Tensor, classes: list[int], perm: Permutation, dim: int
    ) -> torch.Tensor:
        """Multiply axis ``dim`` of ``tensor`` (whose dim ``d`` has class ``classes[d]``) by
        the matrices ``perm`` holds for the parts in it (``new[j] = Σ_i old[i] T[i, j]``),
        leaving every other axis and every index permutation alone: one side of a merge/unmerge
        pair (:mod:`graphperm.apply.zip`), where an axis's matrix depends on whether the
        tensor writes or reads the units."""
        c = classes[dim]
        if c is None or not perm.rotated:
            return tensor
        return self._rotate(tensor, dim, c, classes, perm)

    def touches(self, cls: int | None, groups: set[str]) -> bool:
        """Whether an axis of class ``cls`` holds a part of one of ``groups``."""
        if cls is None:
            return False
        return any(self._part_of.get(leaf, ("",))[0] in groups for leaf in self._leaves(cls))

    def matrix(self, cls: int, perm: Permutation) -> torch.Tensor:
        """The ``n × n`` float64 matrix ``T`` of ``perm`` on an axis of class ``cls``:
        ``new = old @ T`` (a permutation's ``T`` has ``T[p[j], j] = 1``)."""
        eye = torch.eye(self.table.size(cls), dtype=torch.float64)
        return self.permute(eye, [None, cls], perm)

    def _gather(self, tensor: torch.Tensor, classes: list[int], perm: Permutation) -> torch.Tensor:
        ndim = tensor.ndim
        news = [self._arange(n, d, ndim, tensor.device) for d, n in enumerate(tensor.shape)]
        env: dict[int, torch.Tensor] = {}
        for c, idx in zip(classes, news):
            if c is not None:
                self._digits(c, idx, env)
        olds = [
            None if c is None else self._old(c, idx, env, perm) for c, idx in zip(classes, news)
        ]
        if all(o is None for o in olds):
            return tensor
        if all(o is None or o.numel() == o.shape[d] for d, o in enumerate(olds)):
            out = tensor
            for d, o in enumerate(olds):
                if o is not None:
                    out = out.index_select(d, o.reshape(-1))
            return out
        full = [news[d] if o is None else o for d, o in enumerate(olds)]
        return tensor[tuple(torch.broadcast_tensors(*full))]

    @staticmethod
    def _arange(n: int, d: int, ndim: int, device: torch.device) -> torch.Tensor:
        shape = [1] * ndim
        shape[d] = n
        return torch.arange(n, device=device).reshape(shape)

    def _digits(self, c: int, idx: torch.Tensor, env: dict[int, torch.Tensor]) -> None:
        """Record the new index of every leaf reachable through products of ``c``."""
        c = self.table.find(c)
        d = self.table.decomp(c)
        if d is None:
            env.setdefault(c, idx)
        elif isinstance(d, Product):
            for f, digit in zip(d.factors, self._split(d.factors, idx)):
                self._digits(f, digit, env)

    def _split(self, factors: tuple[int, ...], idx: torch.Tensor) -> list[torch.Tensor]:
        sizes = [self.table.size(f) for f in factors]
        digits = []
        stride = 1
        for s in reversed(sizes):
            digits.append((idx // stride) % s)
            stride *= s
        return digits[::-1]

    def _old(
        self, c: int, idx: torch.Tensor, env: dict[int, torch.Tensor], perm: Permutation
    ) -> torch.Tensor | None:
        """Old index for each new index ``idx`` along an axis of class ``c`` (None: identity)."""
        c = self.table.find(c)
        d = self.table.decomp(c)
        if d is None:
            return self._leaf(c, idx, env, perm)
        if isinstance(d, Product):
            digits = self._split(d.factors, idx)
            local = dict(env)
            for f, digit in zip(d.factors, digits):
                if self.table.decomp(f) is None:
                    local[self.table.find(f)] = digit
            olds = [self._old(f, g, local, perm) for f, g in zip(d.factors, digits)]
            if all(o is None for o in olds):
                return None
            out = torch.zeros((), dtype=torch.long, device=idx.device)
            for f, g, o in zip(d.factors, digits, olds):
                out = out * self.table.size(f) + (g if o is None else o)
            return out
        assert isinstance(d, Concat)
        out, offset, moved = idx, 0, False
        for s in d.segments:
            n = self.table.size(s)
            local_idx = (idx - offset).clamp(0, n - 1)
            o = self._old(s, local_idx, env, perm)
            if o is not None:
                inside = (idx >= offset) & (idx < offset + n)
                out = torch.where(inside, o + offset, out)
                moved = True
            offset += n
        return out if moved else None

    def _leaf(
        self, c: int, idx: torch.Tensor, env: dict[int, torch.Tensor], perm: Permutation
    ) -> torch.Tensor | None:
        where = self._part_of.get(c)
        p = perm.get(*where) if where else None
        if p is None or p.is_floating_point():  # rotations are applied after the gathers
            return None
        p = p.to(idx.device)
        if p.ndim == 1:
            return p[idx]
        outer = env.get(self.deps[c])
        if outer is None:
            raise RuntimeError(f"part {where} depends on a part this tensor does not hold")
        return p[outer, idx]

    # ------------------------------------------------------------ rotations
    def _rotate(
        self, x: torch.Tensor, d: int, c: int, classes: list[int], perm: Permutation
    ) -> torch.Tensor:
        """Multiply axis ``d`` (class ``c``) of ``x`` by the matrices of the rotated leaves in it.

        A per-block rotation (shape ``(outer, n, n)``) is picked by the outer part's new index:
        a sibling factor of the same product, or another axis of the tensor of that class.
        """
        c = self.table.find(c)
        dec = self.table.decomp(c)
        if dec is None:
            r = self._matrix(c, perm)
            if r is None:
                return x
            if r.ndim == 2:
                return _times(x, d, r)
            outer = self.table.find(self.deps[c])
            axes = [
                e for e, k in enumerate(classes) if k is not None and self.table.find(k) == outer
            ]
            if not axes:
                raise RuntimeError(
                    f"part {self._part_of[c]} rotates per block of a part this tensor does not hold"
                )
            return _times(x, d, r, batch=axes[0])
        if not any(self._matrix(f, perm) is not None for f in self._leaves(c)):
            return x
        if isinstance(dec, Concat):
            pieces, offset = [], 0
            for s in dec.segments:
                n = self.table.size(s)
                piece = x.narrow(d, offset, n)
                pieces.append(self._rotate(piece, d, s, [*classes[:d], s, *classes[d + 1 :]], perm))
                offset += n
            return torch.cat(pieces, dim=d)
        assert isinstance(dec, Product)
        sizes = [self.table.size(f) for f in dec.factors]
        shape = list(x.shape)
        y = x.reshape(*shape[:d], *sizes, *shape[d + 1 :])
        inner = [*classes[:d], *dec.factors, *classes[d + 1 :]]
        for k, f in enumerate(dec.factors):
            y = self._rotate(y, d + k, f, inner, perm)
        return y.reshape(shape)

    def _matrix(self, c: int, perm: Permutation) -> torch.Tensor | None:
        where = self._part_of.get(self.table.find(c))
        p = perm.get(*where) if where else None
        return p if p is not None and p.is_floating_point() else None

    def _leaves(self, c: int) -> list[int]:
        c = self.table.find(c)
        dec = self.table.decomp(c)
        if dec is None:
            return [c]
        kids = dec.factors if isinstance(dec, Product) else dec.segments
        return [leaf for k in kids for leaf in self._leaves(k)]


def _times(x: torch.Tensor, d: int, r: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """``x`` with axis ``d`` multiplied by ``r`` (``new[j] = Σ_i old[i] r[i, j]``), in ``r``'s
    dtype or ``x``'s, whichever is wider (float64 for the exact transforms, whose matrices are
    float64; learning's soft transforms are float32, at half the cost); with ``batch``,
    ``r[k]`` acts where axis ``batch`` is ``k``."""
    if not x.is_floating_point():
        raise TypeError(f"cannot rotate a {x.dtype} tensor")
    wide = torch.promote_types(x.dtype, r.dtype)
    r = r.to(device=x.device, dtype=wide)
    if batch is None:
        y = x.movedim(d, -1).to(wide) @ r
        return y.movedim(-1, d).to(x.dtype)
    y = x.movedim((batch, d), (0, -1))
    shape = y.shape
    out = torch.bmm(y.reshape(shape[0], -1, shape[-1]).to(wide), r).reshape(shape)
    return out.movedim((0, -1), (batch, d)).to(x.dtype)
