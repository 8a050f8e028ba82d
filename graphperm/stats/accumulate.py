"""Streaming sufficient statistics of several models' activations at one site.

For the channels of models ``0 .. M-1`` observed on the same frames, keep the count, the sums, the
sums of squares and, for each pair ``(i, j)`` asked for, the cross-product sum ``Σ x_i x_jᵀ`` —
never the activations — so memory is O(pairs · C²) whatever the amount of data, and statistics
from different batches, shards or processes simply add (:meth:`SiteStats.merge`). Model 0 is the
reference (A); by default only the pairs ``(0, k)`` are kept, so memory grows with the number of
models, not with its square. Sums are taken around a fixed shift (the first batch's mean) so that
float32 accumulation does not lose the correlation to cancellation.

Example:
    >>> import torch
    >>> s = SiteStats.empty(3)
    >>> a = torch.randn(100, 3)
    >>> s.update(a, a[:, [2, 0, 1]])
    >>> s.correlation().argmax(dim=1).tolist()
    [1, 2, 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["NonFinite", "SiteStats", "reference_pairs"]

Pair = tuple[int, int]


#: A channel whose standard deviation is below this fraction of its site's largest is dead.
DEAD = 1e-5

#: Rows of a correlation's denominator computed at a time (bounds its extra memory).
_ROWS = 256


class NonFinite(ValueError):
    """Activations held NaN or inf (the message is the model's index)."""


def reference_pairs(models: int, every: bool = False, within: bool = False) -> tuple[Pair, ...]:
    """``(0, k)`` for every other model (or every pair ``i < j`` when ``every``), and with
    ``within`` each model with itself ``(i, i)`` too (ZipIt! pools the units of all models).

    Example:
        >>> reference_pairs(3), reference_pairs(3, every=True)
        (((0, 1), (0, 2)), ((0, 1), (0, 2), (1, 2)))
        >>> reference_pairs(2, within=True)
        ((0, 1), (0, 0), (1, 1))
    """
    if every:
        pairs = tuple((i, j) for i in range(models) for j in range(i + 1, models))
    else:
        pairs = tuple((0, k) for k in range(1, models))
    return pairs + (tuple((i, i) for i in range(models)) if within else ())


@dataclass
class SiteStats:
    """Sufficient statistics for the cross-correlations of M models' channels at a site."""

    n: float
    shift: torch.Tensor  # (M, C) float64
    sums: torch.Tensor  # (M, C) float64, of (x - shift)
    squares: torch.Tensor  # (M, C) float64, of (x - shift)²
    cross: torch.Tensor  # (P, C, C), of (x_i - shift_i)(x_j - shift_j)ᵀ, float32 or float64
    pairs: tuple[Pair, ...] = ((0, 1),)

    @classmethod
    def empty(
        cls,
        channels: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        models: int = 2,
        pairs: Sequence[Pair] | None = None,
    ) -> SiteStats:
        pairs = tuple(pairs) if pairs is not None else reference_pairs(models)
        z = torch.zeros(models, channels, dtype=torch.float64, device=device)
        cross = torch.zeros(len(pairs), channels, channels, dtype=dtype, device=device)
        return cls(0.0, z.clone(), z.clone(), z.clone(), cross, pairs)

    @property
    def channels(self) -> int:
        return self.sums.shape[1]

    @property
    def models(self) -> int:
        return self.sums.shape[0]

    def update(self, *acts: torch.Tensor, product: torch.dtype | None = None) -> None:
        """Add frames: ``acts[m]`` is (frames, C), model ``m``'s activations on the same input.

        ``product`` is the dtype of the cross-product matmul (default: the accumulator's);
        ``torch.bfloat16`` nearly doubles its speed on CPUs with bf16 units, but rounds each
        batch's products to 8 bits of mantissa (enough to move a few percent of near-tied units).
        Raises :class:`NonFinite` (and adds nothing) if any input holds NaN or inf.
        """
        if len(acts) != self.models:
            raise ValueError(f"expected activations of {self.models} models, got {len(acts)}")
        if acts[0].shape[0] == 0:
            return
        if self.n == 0:
            self.shift = torch.stack([x.double().mean(0) for x in acts])
        dtype = self.cross.dtype
        centred = [x.to(dtype) - self.shift[m].to(dtype) for m, x in enumerate(acts)]
        sums = [x.sum(0) for x in centred]  # per batch in the working dtype, then float64
        for m, s in enumerate(sums):
            if not torch.isfinite(s).all():
                raise NonFinite(str(m))
        self.n += acts[0].shape[0]
        for m, x in enumerate(centred):
            self.sums[m] += sums[m].double()
            self.squares[m] += x.square().sum(0).double()
        for p, (i, j) in enumerate(self.pairs):
            if product is None or product == dtype:
                self.cross[p].addmm_(centred[i].T, centred[j])
            else:
                self.cross[p] += (centred[i].T.to(product) @ centred[j].to(product)).to(dtype)

    def to(self, device: torch.device | str) -> SiteStats:
        """The same statistics on another device."""
        return SiteStats(
            self.n,
            self.shift.to(device),
            self.sums.to(device),
            self.squares.to(device),
            self.cross.to(device),
            self.pairs,
        )

    def rebased(self, shift: torch.Tensor) -> SiteStats:
        """The same statistics, as sums around other shifts (exact algebra, in float64)."""
        d = (self.shift - shift).double()  # (x - new) = (x - old) + (old - new)
        m = self.n
        cross = self.cross.to(torch.float64, copy=True)
        for p, (i, j) in enumerate(self.pairs):
            # in place on one float64 copy: a 3072-channel site is 75 MB per matrix
            cross[p].addr_(self.sums[i], d[j]).addr_(d[i], self.sums[j]).addr_(d[i], d[j], alpha=m)
        return SiteStats(
            m,
            shift.double().clone(),
            self.sums + m * d,
            self.squares + 2 * d * self.sums + m * d.square(),
            cross,
            self.pairs,
        )

    def merge(self, other: SiteStats) -> SiteStats:
        """Statistics of the union of both sets of frames (shifts reconciled exactly)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        if other.pairs != self.pairs:
            raise ValueError("cannot merge statistics of different model pairs")
        o = other.rebased(self.shift)
        return SiteStats(
            self.n + o.n,
            self.shift,
            self.sums + o.sums,
            self.squares + o.squares,
            o.cross.add_(self.cross).to(self.cross.dtype),  # o is a fresh float64 copy
            self.pairs,
        )

    def std(self, model: int) -> torch.Tensor:
        """Per-channel standard deviation of model ``model``'s activations."""
        n = max(self.n, 1.0)
        mean = self.sums[model] / n
        return (self.squares[model] / n - mean.square()).clamp_min(0).sqrt()

    def covariance(self, pair: Pair = (0, 1)) -> torch.Tensor:
        """Cross-covariance of model ``i``'s channel r with model ``j``'s channel c, float64,
        (C, C), for ``pair = (i, j)`` (what an orthogonal Procrustes solve needs)."""
        i, j = pair
        if pair not in self.pairs:
            if (j, i) in self.pairs:
                return self.covariance((j, i)).T.contiguous()
            raise KeyError(f"no cross statistics of models {pair} (have {self.pairs})")
        n = max(self.n, 1.0)
        p = self.pairs.index(pair)
        cov = self.cross[p].to(torch.float64, copy=True).div_(n)
        return cov.addr_(self.sums[i] / n, self.sums[j] / n, alpha=-1.0)

    def live(self, model: int) -> torch.Tensor:
        """Bool (C,): model ``model``'s channels that are not dead (see :meth:`correlation`)."""
        s = self.std(model)
        return s > DEAD * float(s.max()) if s.numel() else s.bool()

    def correlation(self, pair: Pair = (0, 1)) -> torch.Tensor:
        """Pearson correlation of model ``i``'s channel r with model ``j``'s channel c, float64,
        (C, C), for ``pair = (i, j)``. Dead channels (constant, or varying less than
        ``DEAD`` times the site's liveliest channel: their correlations would be rounding noise)
        and empty statistics give 0, never NaN."""
        i, j = pair
        if pair not in self.pairs:
            if (j, i) in self.pairs:
                return self.correlation((j, i)).T.contiguous()
            raise KeyError(f"no cross statistics of models {pair} (have {self.pairs})")
        n = max(self.n, 1.0)
        ma, mb = self.sums[i] / n, self.sums[j] / n
        # in place on one float64 copy; the denominator a block of rows at a time
        p = self.pairs.index(pair)
        corr = self.cross[p].to(torch.float64, copy=True).div_(n).addr_(ma, mb, alpha=-1.0)
        sa, sb = self.std(i), self.std(j)
        dead_a = sa <= DEAD * float(sa.max()) if sa.numel() else sa.bool()
        dead_b = sb <= DEAD * float(sb.max()) if sb.numel() else sb.bool()
        top = float(sa.max()) * float(sb.max()) if sa.numel() else 0.0
        tiny = max(1e-12 * top, 1e-30)
        for r in range(0, corr.shape[0], _ROWS):
            rows = corr[r : r + _ROWS]
            denom = torch.outer(sa[r : r + _ROWS], sb)
            dead = (denom <= tiny) | dead_a[r : r + _ROWS, None] | dead_b[None, :]
            rows.div_(denom.clamp_min_(tiny)).masked_fill_(dead, 0.0)
        return corr.clamp_(-1.0, 1.0).nan_to_num_(nan=0.0)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}/n": torch.tensor([self.n], dtype=torch.float64),
            f"{prefix}/shift": self.shift,
            f"{prefix}/sums": self.sums,
            f"{prefix}/squares": self.squares,
            f"{prefix}/cross": self.cross,
            f"{prefix}/pairs": torch.tensor(self.pairs, dtype=torch.long).reshape(-1, 2),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> SiteStats:
        g = lambda k: tensors[f"{prefix}/{k}"]  # noqa: E731
        pairs = tuple((int(i), int(j)) for i, j in g("pairs").tolist())
        return cls(float(g("n")[0]), g("shift"), g("sums"), g("squares"), g("cross"), pairs)
