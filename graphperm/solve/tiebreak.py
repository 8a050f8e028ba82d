"""Units the calibration data cannot tell apart are matched by their weights.

Real checkpoints have dead units (constant activations: GELU of large negative inputs) and
near-duplicates (pairs correlating above 0.999). Correlation cannot separate them, so a linear
assignment on correlations alone gives them arbitrary partners. After the assignment on
correlations, a unit is *decided* when its matched correlation beats every other candidate in
its row and its partner's column by at least ``margin``; decided pairs are final. The others are
re-assigned among themselves on their correlation plus the cosine similarity of their weight
*fingerprints*: each unit's slices of every tensor the part moves, each slice sorted (so the
fingerprint does not depend on how any other axis is permuted), normalised per tensor.
:func:`settle` finds the decided pairs without an assignment (they are mutual row and column
maxima) and solves only one, of the undecided units, so the tie-break costs nothing when every
unit is decided and one assignment when (random weights) almost none are.

Example:
    >>> import torch
    >>> corr = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> fa = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> fb = fa[[0, 2, 1]]                      # B's units 1 and 2 are A's 2 and 1
    >>> p, on_weights = break_ties(corr, torch.arange(3), fa, fb, margin=1e-3)
    >>> p.tolist(), on_weights
    ([0, 2, 1], 2)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from graphperm.solve.assignment import match

__all__ = ["break_ties", "decided", "fingerprints", "settle", "undecided"]


def undecided(corr: torch.Tensor, perm: torch.Tensor, margin: float) -> torch.Tensor:
    """Bool (n,): A's unit ``i`` is undecided when ``corr[i, perm[i]]`` is not ahead of every
    other entry of row ``i`` and of column ``perm[i]`` by at least ``margin``."""
    n = corr.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.bool)
    rows = torch.arange(n)
    matched = corr[rows, perm].double()
    # the best rival of each pair: the row's (column's) best entry other than the matched one
    top_r, arg_r = corr.topk(2, dim=1)
    row_rival = torch.where(arg_r[:, 0] == perm, top_r[:, 1], top_r[:, 0])
    top_c, arg_c = corr.topk(2, dim=0)
    col_rival = torch.where(arg_c[0][perm] == rows, top_c[1][perm], top_c[0][perm])
    best = torch.maximum(row_rival, col_rival).double()
    return (matched - best) < margin


def fingerprints(slices: list[torch.Tensor]) -> torch.Tensor:
    """(units, features): each ``(units, k)`` slice sorted along ``k``, scaled to unit norm per
    tensor, laid side by side, then each row scaled to unit norm."""
    parts = []
    for s in slices:
        # contiguous first: sorting a transposed slice (fc2's columns) is ~2.5x slower, and
        # its result keeps the input's strides, so its norm's summation order (last bits)
        # would depend on how the weight happens to be stored. NumPy's sort (vectorised)
        # takes a third of torch's time on CPU; sorted values are the same whatever the sort.
        s = s.detach().float().reshape(s.shape[0], -1)
        if s.device.type == "cpu":
            s = torch.from_numpy(np.sort(np.ascontiguousarray(s.numpy()), axis=1))
        else:
            s = s.contiguous().sort(dim=1).values
        norm = s.norm()
        parts.append(s.div_(norm) if norm > 0 else s)
    f = torch.cat(parts, dim=1)
    del parts
    return f.div_(f.norm(dim=1, keepdim=True).clamp_min(1e-30))


def break_ties(
    corr: torch.Tensor,
    perm: torch.Tensor,
    finger_a: torch.Tensor,
    finger_b: torch.Tensor,
    *,
    margin: float,
) -> tuple[torch.Tensor, int]:
    """``perm`` (from the assignment on ``corr``) with its undecided units re-matched among
    themselves on correlation + fingerprint similarity; and how many units that concerned."""
    loose = undecided(corr, perm, margin)
    count = int(loose.sum())
    if count < 2:
        return perm, 0
    rows = loose.nonzero().squeeze(1)
    cols = perm[rows]
    score = corr[rows[:, None], cols[None, :]].float()  # one copy of the undecided block
    local = match(score.addmm_(finger_a[rows].float(), finger_b[cols].float().T))
    del score
    out = perm.clone()
    out[rows] = cols[local]
    return out, count


def decided(corr: torch.Tensor, margin: float) -> torch.Tensor:
    """(n,) int64: B's unit for each of A's units that is decided whatever the assignment, -1
    for the others: ``corr[i, j]`` beats every other entry of row ``i`` and of column ``j`` by
    at least ``margin`` (then ``j`` is row ``i``'s best and ``i`` column ``j``'s best, so these
    pairs never share a unit). An assignment that keeps these pairs leaves undecided (see
    :func:`undecided`) exactly the units this marks -1. ``corr`` is written to while this
    runs and restored before it returns.

    Example:
        >>> decided(torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.5], [0.0, 0.5, 0.5]]), 1e-3)
        tensor([ 0, -1, -1])
    """
    n = corr.shape[0]
    if n < 2:
        return torch.full((n,), -1, dtype=torch.long)
    first_r, best = corr.max(dim=1)
    first_c = corr.amax(dim=0)  # (a strided arg-max along dim 0 is several times slower)
    rows = torch.arange(n)
    mutual = first_r >= first_c[best]  # row i's best is also its column's best ...
    claims = torch.bincount(best[mutual], minlength=n)
    mutual &= claims[best] == 1  # ... and no other row's (a tie in the column)
    i, j = rows[mutual], best[mutual]
    corr[i, j] = float("-inf")  # the runners-up without the pairs, in place (restored)
    try:
        second_r, second_c = corr.amax(dim=1), corr.amax(dim=0)
    finally:
        corr[i, j] = first_r[mutual]
    lead = torch.minimum(
        first_r.double() - second_r.double(), first_c[best].double() - second_c[best].double()
    )
    return torch.where(mutual & (lead >= margin), best, -1)


def settle(
    m: np.ndarray,
    *,
    fingers: Callable[[], tuple[torch.Tensor | None, torch.Tensor | None]],
    margin: float,
) -> tuple[torch.Tensor, int]:
    """The assignment on correlations ``m`` with its undecided units matched on correlation +
    weight fingerprints (``fingers()``: A's and B's; only asked for when at least two units
    are undecided); and how many units were matched on weights. One job for a
    :class:`~graphperm.solve.assignment.Matcher` worker, so that the tie-break of large parts
    runs in parallel too.

    The pairs the correlations decide on their own (:func:`decided`) are kept without solving
    anything, and one assignment on the rest places the others: the same permutation as
    :func:`~graphperm.solve.assignment.match` followed by :func:`break_ties` whenever that
    assignment keeps the decided pairs (an optimal one does unless a decided pair costs more
    elsewhere than it gains), at the cost of one assignment of the undecided units only: none
    when every unit is decided, one about as large as the part's when (random weights) almost
    none are, instead of two.

    Example:
        >>> m = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> fa = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> p, on_weights = settle(m, fingers=lambda: (fa, fa[[0, 2, 1]]), margin=1e-3)
        >>> p.tolist(), on_weights
        ([0, 2, 1], 2)
    """
    corr = torch.from_numpy(m).float()
    partner = decided(corr, margin)
    loose = partner < 0
    count = int(loose.sum())
    if count >= 2:
        finger_a, finger_b = fingers()
        if finger_a is None or finger_b is None:  # nothing to break ties on
            return match(torch.from_numpy(m)), 0
    rows = loose.nonzero().squeeze(1)
    taken = torch.zeros(corr.shape[0], dtype=torch.bool)
    taken[partner[~loose]] = True
    cols = (~taken).nonzero().squeeze(1)
    out = partner.clone()
    if count == 1:
        out[rows] = cols
    elif count >= 2:
        score = corr[rows[:, None], cols[None, :]]  # one copy of the undecided block
        out[rows] = cols[match(score.addmm_(finger_a[rows].float(), finger_b[cols].float().T))]
    return out, count if count >= 2 else 0
