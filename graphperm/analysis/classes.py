"""Axis classes: a union-find over tensor axes that also knows block structure.

Every tensor axis in the traced graph gets a class id. Two axes that must be permuted identically
are *tied* (``union``). An axis can also be *composed* of other classes:

- ``Product((o, i))``: the flat index is ``o_index * size(i) + i_index`` (a view that splits 768
  into 12 heads × 64, a grouped convolution's 16 groups × 48 channels). A permutation of the flat
  axis must then permute whole blocks and, inside them, the inner class.
- ``Concat((s1, s2, ...))``: the axis is segments laid end to end (cat/chunk along channels);
  segments never mix.

When two composed classes are tied, their structures are unified the way a type checker unifies
types: equal structures tie part by part, nested ones are refined to the finer structure, and
incompatible ones (blocks of 48 against blocks of 64) make the class fixed, which is always safe.

Example:
    >>> t = ClassTable()
    >>> flat, heads, dim = t.new(768), t.new(12), t.new(64)
    >>> t.product(flat, [heads, dim])
    >>> other = t.new(768)
    >>> t.product(other, [t.new(12), t.new(64)])
    >>> t.union(flat, other)
    >>> [t.size(c) for c in t.factors(flat)]
    [12, 64]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ClassTable", "Concat", "Product"]


@dataclass(frozen=True)
class Product:
    """The class is the row-major product of ``factors`` (outermost first)."""

    factors: tuple[int, ...]


@dataclass(frozen=True)
class Concat:
    """The class is ``segments`` laid end to end; segments never mix."""

    segments: tuple[int, ...]


Decomp = Product | Concat


class SizeMismatch(ValueError):
    """Two axes of different sizes were tied: the rule that asked for it is wrong."""


class ClassTable:
    """Union-find over axis classes with sizes, block structure and fixed flags."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._decomp: dict[int, Decomp] = {}
        self._fixed: dict[int, list[str]] = {}

    # ------------------------------------------------------------------ basics
    def new(self, size: int) -> int:
        """A fresh class of ``size`` elements."""
        self._parent.append(len(self._parent))
        self._size.append(int(size))
        return len(self._parent) - 1

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, c: int) -> int:
        parent = self._parent
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    def size(self, c: int) -> int:
        return self._size[self.find(c)]

    def roots(self) -> list[int]:
        return [c for c in range(len(self._parent)) if self._parent[c] == c]

    def decomp(self, c: int) -> Decomp | None:
        """The structure of ``c`` with every part resolved to its current root."""
        d = self._decomp.get(self.find(c))
        if isinstance(d, Product):
            return Product(tuple(self.find(f) for f in d.factors))
        if isinstance(d, Concat):
            return Concat(tuple(self.find(s) for s in d.segments))
        return None

    def fixed_reasons(self, c: int) -> list[str]:
        return self._fixed.get(self.find(c), [])

    def fix(self, c: int, reason: str) -> None:
        """Mark ``c`` (and so everything composed into it) as not permutable."""
        reasons = self._fixed.setdefault(self.find(c), [])
        if reason not in reasons:
            reasons.append(reason)

    # ------------------------------------------------------------- structure
    def factors(self, c: int) -> list[int]:
        """``c`` as a flat list of factor classes (products expanded recursively)."""
        d = self.decomp(c)
        if not isinstance(d, Product):
            return [self.find(c)]
        out: list[int] = []
        for f in d.factors:
            out.extend(self.factors(f))
        return out

    def union(self, a: int, b: int) -> None:
        """Tie ``a`` and ``b``: they must be permuted identically."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            raise SizeMismatch(f"cannot tie axes of sizes {self._size[ra]} and {self._size[rb]}")
        da, db = self._decomp.pop(ra, None), self._decomp.pop(rb, None)
        self._parent[rb] = ra
        for reason in self._fixed.pop(rb, []):
            self.fix(ra, reason)
        if da is None or db is None:
            if da or db:
                self._decomp[ra] = da or db  # type: ignore[assignment]
            return
        self._decomp[ra] = da
        self._unify(ra, da, db)

    def product(self, c: int, factors: list[int]) -> None:
        """Declare ``c`` = ``factors[0] ⊗ factors[1] ⊗ ...`` (outermost first)."""
        factors = [f for f in factors if self.size(f) != 1]
        total = math.prod(self.size(f) for f in factors)
        if total != self.size(c):
            raise SizeMismatch(
                f"factors of sizes {[self.size(f) for f in factors]} "
                f"do not make an axis of size {self.size(c)}"
            )
        if not factors:
            return
        if len(factors) == 1:
            self.union(c, factors[0])
            return
        self._compose(c, Product(tuple(factors)))

    def concat(self, c: int, segments: list[int]) -> None:
        """Declare ``c`` = ``segments`` laid end to end."""
        segments = [s for s in segments if self.size(s) != 0]
        if sum(self.size(s) for s in segments) != self.size(c):
            raise SizeMismatch(
                f"segments of sizes {[self.size(s) for s in segments]} "
                f"do not make an axis of size {self.size(c)}"
            )
        if len(segments) == 1:
            self.union(c, segments[0])
            return
        self._compose(c, Concat(tuple(segments)))

    def _compose(self, c: int, new: Decomp) -> None:
        r = self.find(c)
        old = self._decomp.get(r)
        if old is None:
            self._decomp[r] = new
        else:
            self._unify(r, old, new)

    # ------------------------------------------------------------ unification
    def _unify(self, root: int, da: Decomp, db: Decomp) -> None:
        if isinstance(da, Product) and isinstance(db, Product):
            self._unify_products(root, da, db)
        elif isinstance(da, Concat) and isinstance(db, Concat):
            self._unify_concats(root, da, db)
        else:
            self._conflict(root, db, "it is both split into blocks and concatenated from segments")

    def _conflict(self, root: int, dropped: Decomp, reason: str) -> None:
        """Fix ``root``; the structure it does not keep is fixed too, or its parts would float."""
        self.fix(root, reason)
        for part in _parts(dropped):
            self.fix(part, reason)

    def _unify_products(self, root: int, da: Product, db: Product) -> None:
        fa = [f for x in da.factors for f in self.factors(x)]
        fb = [f for x in db.factors for f in self.factors(x)]
        sa, sb = [self.size(f) for f in fa], [self.size(f) for f in fb]
        if sa == sb:
            for x, y in zip(fa, fb):
                self.union(x, y)
            self._decomp[self.find(root)] = Product(tuple(self.find(f) for f in fa))
            return
        strides = sorted(set(_strides(sa)) | set(_strides(sb)), reverse=True)
        if any(big % small for big, small in zip(strides, strides[1:])):
            self._conflict(root, db, f"its block structures {_fmt(sa)} and {_fmt(sb)} clash")
            return
        ra, rb = self._refine(fa, strides), self._refine(fb, strides)
        for x, y in zip(ra, rb):
            self.union(x, y)
        self._decomp[self.find(root)] = Product(tuple(self.find(f) for f in ra))

    def _refine(self, factors: list[int], strides: list[int]) -> list[int]:
        """Split factors so that their block strides are exactly ``strides``."""
        out: list[int] = []
        total = math.prod(self.size(f) for f in factors)
        for f, (hi, lo) in zip(factors, _spans([self.size(f) for f in factors], total)):
            cuts = [s for s in strides if lo <= s <= hi]  # hi = outer stride, lo = inner stride
            sizes = [a // b for a, b in zip(cuts, cuts[1:])]
            if len(sizes) == 1:
                out.append(f)
                continue
            pieces = [self.new(s) for s in sizes]
            self._decomp[self.find(f)] = Product(tuple(pieces))
            out.extend(pieces)
        return out

    def _unify_concats(self, root: int, da: Concat, db: Concat) -> None:
        sa = [self.size(s) for s in da.segments]
        sb = [self.size(s) for s in db.segments]
        if sa == sb:
            for x, y in zip(da.segments, db.segments):
                self.union(x, y)
            self._decomp[self.find(root)] = Concat(tuple(self.find(s) for s in da.segments))
            return
        cuts = sorted(set(_offsets(sa)) | set(_offsets(sb)))
        ra, rb = self._split_segments(da.segments, cuts), self._split_segments(db.segments, cuts)
        for x, y in zip(ra, rb):
            self.union(x, y)
        self._decomp[self.find(root)] = Concat(tuple(self.find(s) for s in ra))

    def _split_segments(self, segments: tuple[int, ...], cuts: list[int]) -> list[int]:
        out: list[int] = []
        start = 0
        for s in segments:
            end = start + self.size(s)
            inner = [c for c in cuts if start <= c <= end]
            sizes = [b - a for a, b in zip(inner, inner[1:])]
            if len(sizes) == 1:
                out.append(s)
            else:
                pieces = [self.new(n) for n in sizes]
                if self.find(s) in self._decomp:
                    for c in (s, *pieces):
                        self.fix(c, "it is split at different points in different places")
                else:
                    self._decomp[self.find(s)] = Concat(tuple(pieces))
                out.extend(pieces)
            start = end
        return out


def _parts(d: Decomp) -> tuple[int, ...]:
    return d.factors if isinstance(d, Product) else d.segments


def _strides(sizes: list[int]) -> list[int]:
    """Block strides of a row-major product: [12, 64] -> [768, 64, 1]."""
    out, acc = [1], 1
    for s in reversed(sizes):
        acc *= s
        out.append(acc)
    return out[::-1]


def _spans(sizes: list[int], total: int) -> list[tuple[int, int]]:
    """For each factor, (stride of the block it indexes into, its own stride)."""
    strides = _strides(sizes)
    return list(zip(strides[:-1], strides[1:]))


def _offsets(sizes: list[int]) -> list[int]:
    out, acc = [0], 0
    for s in sizes:
        acc += s
        out.append(acc)
    return out


def _fmt(sizes: list[int]) -> str:
    return "×".join(str(s) for s in sizes)
