"""Linear assignment on correlation matrices (scipy's Jonker–Volgenant solver).

Example:
    >>> import torch
    >>> match(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
    [1, 0]
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from graphperm.apply import ones_basis

__all__ = [
    "Matcher",
    "block_scores",
    "match",
    "procrustes",
    "rotation_block_scores",
    "rotation_score",
]

# Assignments at least this large go to worker processes (a 3072-unit one takes ~1 s; below
# ~1000 units the transfer costs more than it saves).
PARALLEL_MIN_SIZE = 1024


def _clean(corr: torch.Tensor) -> np.ndarray:
    return np.nan_to_num(corr.detach().double().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)


def match(corr: torch.Tensor) -> torch.Tensor:
    """``p`` maximising ``Σ corr[i, p[i]]``: B's unit ``p[i]`` is matched to A's unit ``i``.

    NaNs (dead channels) count as zero correlation; ties keep the identity where possible.
    """
    return torch.from_numpy(_match_array(_clean(corr)))


def procrustes(m: torch.Tensor, *, keeps_ones: bool = False) -> torch.Tensor:
    """The orthogonal ``R`` maximising ``Σ_ij R[i, j] m[j, i]`` (``m[i, j]``: A's unit ``i``
    against B's unit ``j``, as for :func:`match`; B′ = B ``@ R``), float64. With
    ``keeps_ones``, the best among those with ``R @ 1 = 1``.

    Example:
        >>> r = procrustes(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
        >>> r.round().tolist()  # the permutation [1, 0] as a matrix
        [[0.0, 1.0], [1.0, 0.0]]
    """
    m = torch.nan_to_num(m.detach().double().cpu())
    n = m.shape[0]
    if keeps_ones:
        if n == 1:
            return torch.ones(1, 1, dtype=torch.float64)
        basis = ones_basis(n)
        inner = procrustes(basis.T @ m @ basis)
        return torch.full((n, n), 1.0 / n, dtype=torch.float64) + basis @ inner @ basis.T
    u, _, vh = torch.linalg.svd(m)
    return vh.T @ u.T


def rotation_score(m: torch.Tensor, r: torch.Tensor) -> float:
    """``Σ_ij r[i, j] m[j, i]``: the objective :func:`procrustes` maximises (for a permutation
    matrix, ``Σ_j m[j, p[j]]``, what :func:`match` maximises)."""
    return float((r.double() * m.double().T).sum())


def rotation_block_scores(m: torch.Tensor, h: int, *, keeps_ones: bool = False) -> torch.Tensor:
    """``(h, h)``: for A's block ``i`` and B's block ``r``, the value of the best rotation
    between them (the nuclear norm of their cost block; restricted to rotations keeping the
    all-ones direction with ``keeps_ones``)."""
    d = m.shape[0] // h
    blocks = m.double().reshape(h, d, h, d).permute(0, 2, 1, 3)  # [i, r] -> (d, d)
    if d == 1:
        return blocks[..., 0, 0] if keeps_ones else blocks[..., 0, 0].abs()
    if not keeps_ones:
        return torch.linalg.svdvals(blocks).sum(-1)
    basis = ones_basis(d)
    ones = blocks.sum((-1, -2)) / d  # the all-ones direction maps to itself: tr(J m)
    return ones + torch.linalg.svdvals(basis.T @ blocks @ basis).sum(-1)


def _match_array(m: np.ndarray) -> np.ndarray:
    n = m.shape[0]
    m[np.diag_indices(n)] += 1e-9  # a tiny bonus keeps unmatched (e.g. all-zero) units in place
    rows, cols = linear_sum_assignment(m, maximize=True)
    perm = np.empty(n, dtype=np.int64)
    perm[rows] = cols
    return perm


class Matcher:
    """Runs :func:`match` on many matrices, the large ones a few at a time in worker processes.

    scipy's solver holds the GIL, so threads do not help; forked workers do (only numpy arrays
    cross). ``workers`` defaults to the CPUs this process may use (``GRAPHPERM_SOLVE_WORKERS``
    overrides it; 1 runs everything here). At most ``workers`` matrices wait at a time, so
    memory stays at a few matrices. Results are identical to calling :func:`match` in turn.

    Example:
        >>> with Matcher() as m:
        ...     m.submit(torch.eye(3), lambda p: print(p.tolist()))
        [0, 1, 2]
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            env = os.environ.get("GRAPHPERM_SOLVE_WORKERS")
            workers = int(env) if env else len(os.sched_getaffinity(0))
        if "fork" not in multiprocessing.get_all_start_methods():
            workers = 1
        self.workers = max(1, workers)
        self._pool: Executor | None = None
        self._pending: list[tuple[np.ndarray, Callable[[torch.Tensor], None]]] = []

    def submit(self, corr: torch.Tensor, done: Callable[[torch.Tensor], None]) -> None:
        """Match ``corr``; ``done(perm)`` is called with the result (maybe later, in order)."""
        m = _clean(corr)
        if self.workers == 1 or m.shape[0] < PARALLEL_MIN_SIZE:
            done(torch.from_numpy(_match_array(m)))
            return
        self._pending.append((m, done))
        if len(self._pending) >= self.workers:
            self.flush()

    def flush(self) -> None:
        """Solve everything waiting."""
        if not self._pending:
            return
        jobs, self._pending = self._pending, []
        if len(jobs) == 1:
            results = [_match_array(jobs[0][0])]
        else:
            if self._pool is None:
                context = multiprocessing.get_context("fork")
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            results = list(self._pool.map(_match_array, [m for m, _ in jobs]))
        for (_, done), perm in zip(jobs, results, strict=True):
            done(torch.from_numpy(perm))

    def __enter__(self) -> Matcher:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


def block_scores(corr: torch.Tensor, blocks: int) -> torch.Tensor:
    """``S[j, k]`` = best inner assignment between A's block ``j`` and B's block ``k``."""
    size = corr.shape[0] // blocks
    m = _clean(corr)
    out = torch.zeros(blocks, blocks, dtype=torch.float64)
    for j in range(blocks):
        for k in range(blocks):
            sub = m[j * size : (j + 1) * size, k * size : (k + 1) * size]
            rows, cols = linear_sum_assignment(sub, maximize=True)
            out[j, k] = float(sub[rows, cols].sum())
    return out
