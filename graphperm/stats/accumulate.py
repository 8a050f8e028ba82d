"""Streaming sufficient statistics of two models' activations at one site.

For channels ``a`` (model A) and ``b`` (model B) observed on the same frames, keep the count, the
sums, the sums of squares and the cross-product sum ``Σ a bᵀ`` — never the activations — so memory
is O(C²) whatever the amount of data, and statistics from different batches, shards or processes
simply add (:meth:`SiteStats.merge`). Sums are taken around a fixed shift (the first batch's
mean) so that float32 accumulation does not lose the correlation to cancellation.

Example:
    >>> import torch
    >>> s = SiteStats.empty(3)
    >>> a = torch.randn(100, 3)
    >>> s.update(a, a[:, [2, 0, 1]])
    >>> s.correlation().argmax(dim=1).tolist()
    [1, 2, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NonFinite", "SiteStats"]


class NonFinite(ValueError):
    """Activations held NaN or inf (the message is the model: "A" or "B")."""


@dataclass
class SiteStats:
    """Sufficient statistics for the cross-correlation of A's and B's channels at a site."""

    n: float
    shift_a: torch.Tensor  # (C,) float64
    shift_b: torch.Tensor
    sum_a: torch.Tensor  # (C,) float64, of (a - shift_a)
    sum_b: torch.Tensor
    sq_a: torch.Tensor  # (C,) float64, of (a - shift_a)²
    sq_b: torch.Tensor
    cross: torch.Tensor  # (C, C), of (a - shift_a)(b - shift_b)ᵀ, float32 or float64

    @classmethod
    def empty(
        cls, channels: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> SiteStats:
        z = torch.zeros(channels, dtype=torch.float64, device=device)
        return cls(
            0.0,
            z.clone(),
            z.clone(),
            z.clone(),
            z.clone(),
            z.clone(),
            z.clone(),
            torch.zeros(channels, channels, dtype=dtype, device=device),
        )

    @property
    def channels(self) -> int:
        return self.sum_a.numel()

    def update(
        self, a: torch.Tensor, b: torch.Tensor, *, product: torch.dtype | None = None
    ) -> None:
        """Add frames: ``a`` and ``b`` are (frames, C) activations of A and B on the same input.

        ``product`` is the dtype of the cross-product matmul (default: the accumulator's);
        ``torch.bfloat16`` nearly doubles its speed on CPUs with bf16 units, but rounds each
        batch's products to 8 bits of mantissa (enough to move a few percent of near-tied units).
        Raises :class:`NonFinite` (and adds nothing) if either input holds NaN or inf.
        """
        if a.shape[0] == 0:
            return
        if self.n == 0:
            self.shift_a = a.double().mean(0)
            self.shift_b = b.double().mean(0)
        dtype = self.cross.dtype
        a = a.to(dtype) - self.shift_a.to(dtype)
        b = b.to(dtype) - self.shift_b.to(dtype)
        sum_a, sum_b = a.sum(0), b.sum(0)  # per batch in the working dtype, then float64
        if not (torch.isfinite(sum_a).all() and torch.isfinite(sum_b).all()):
            raise NonFinite("A" if not torch.isfinite(sum_a).all() else "B")
        self.n += a.shape[0]
        self.sum_a += sum_a.double()
        self.sum_b += sum_b.double()
        self.sq_a += a.square().sum(0).double()
        self.sq_b += b.square().sum(0).double()
        if product is None or product == dtype:
            self.cross.addmm_(a.T, b)
        else:
            self.cross += (a.T.to(product) @ b.to(product)).to(dtype)

    def to(self, device: torch.device | str) -> SiteStats:
        """The same statistics on another device."""
        return SiteStats(
            self.n,
            *(
                getattr(self, f).to(device)
                for f in ("shift_a", "shift_b", "sum_a", "sum_b", "sq_a", "sq_b", "cross")
            ),
        )

    def rebased(self, shift_a: torch.Tensor, shift_b: torch.Tensor) -> SiteStats:
        """The same statistics, as sums around other shifts (exact algebra, in float64)."""
        da = (self.shift_a - shift_a).double()  # (a - new) = (a - old) + (old - new)
        db = (self.shift_b - shift_b).double()
        m = self.n
        return SiteStats(
            m,
            shift_a.double().clone(),
            shift_b.double().clone(),
            self.sum_a + m * da,
            self.sum_b + m * db,
            self.sq_a + 2 * da * self.sum_a + m * da.square(),
            self.sq_b + 2 * db * self.sum_b + m * db.square(),
            # in place on one float64 copy: a 3072-channel site is 75 MB per matrix
            self.cross.to(torch.float64, copy=True)
            .addr_(self.sum_a, db)
            .addr_(da, self.sum_b)
            .addr_(da, db, alpha=m),
        )

    def merge(self, other: SiteStats) -> SiteStats:
        """Statistics of the union of both sets of frames (shifts reconciled exactly)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        o = other.rebased(self.shift_a, self.shift_b)
        return SiteStats(
            self.n + o.n,
            self.shift_a,
            self.shift_b,
            self.sum_a + o.sum_a,
            self.sum_b + o.sum_b,
            self.sq_a + o.sq_a,
            self.sq_b + o.sq_b,
            o.cross.add_(self.cross).to(self.cross.dtype),  # o is a fresh float64 copy
        )

    def std(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(self.n, 1.0)
        ma, mb = self.sum_a / n, self.sum_b / n
        va = (self.sq_a / n - ma.square()).clamp_min(0)
        vb = (self.sq_b / n - mb.square()).clamp_min(0)
        return va.sqrt(), vb.sqrt()

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of A's channel i with B's channel j, float64, (C, C).

        Dead (constant) channels and empty statistics give 0, never NaN.
        """
        n = max(self.n, 1.0)
        ma, mb = self.sum_a / n, self.sum_b / n
        # in place on one float64 copy (plus the denominator): two (C, C) matrices at a time
        corr = self.cross.to(torch.float64, copy=True).div_(n).addr_(ma, mb, alpha=-1.0)
        sa, sb = self.std()
        denom = torch.outer(sa, sb)
        top = float(sa.max()) * float(sb.max()) if sa.numel() else 0.0
        tiny = max(1e-12 * top, 1e-30)
        dead = denom <= tiny
        corr.div_(denom.clamp_min_(tiny))
        del denom
        return corr.masked_fill_(dead, 0.0).clamp_(-1.0, 1.0).nan_to_num_(nan=0.0)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}/n": torch.tensor([self.n], dtype=torch.float64),
            f"{prefix}/shift_a": self.shift_a,
            f"{prefix}/shift_b": self.shift_b,
            f"{prefix}/sum_a": self.sum_a,
            f"{prefix}/sum_b": self.sum_b,
            f"{prefix}/sq_a": self.sq_a,
            f"{prefix}/sq_b": self.sq_b,
            f"{prefix}/cross": self.cross,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> SiteStats:
        g = lambda k: tensors[f"{prefix}/{k}"]  # noqa: E731
        return cls(
            float(g("n")[0]),
            g("shift_a"),
            g("shift_b"),
            g("sum_a"),
            g("sum_b"),
            g("sq_a"),
            g("sq_b"),
            g("cross"),
        )
