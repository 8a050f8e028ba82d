"""Linear assignment on correlation matrices (scipy's Jonker–Volgenant solver).

Example:
    >>> import torch
    >>> match(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
    [1, 0]
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

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
    """A float64 copy of ``corr`` (the caller's is never written) with NaN and inf set to 0.
    One copy and one pass when everything is finite, as it nearly always is: ``nan_to_num``
    took three passes and two masks of a 3,072² matrix every time."""
    m = corr.detach().to("cpu", torch.float64, copy=True).numpy()
    bad = ~np.isfinite(m)
    if bad.any():
        m[bad] = 0.0
    return m


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
    # scipy maximises by minimising a negated copy; negating ours in place spares that copy
    # (75 MB of fresh pages for a 3,072-unit part, in every forked worker)
    rows, cols = linear_sum_assignment(np.negative(m, out=m))
    perm = np.empty(n, dtype=np.int64)
    perm[rows] = cols
    return perm


def _match_tensor(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(_match_array(m))


class Matcher:
    """Runs :func:`match` on many matrices, the large ones in forked worker processes.

    scipy's solver holds the GIL, so threads do not help; forked workers do. Each large
    matrix gets a worker of its own, forked when it is submitted: the worker sees the matrix
    without a copy (nothing is pickled on the way in) and the caller may drop it at once, so
    this process holds no matrix for a worker. At most ``workers`` run at a time
    (default: the CPUs this process may use; ``GRAPHPERM_SOLVE_WORKERS`` overrides it; 1 runs
    everything here). Results are identical to calling :func:`match` in turn.

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
        self._running: list[tuple[Any, Any, Callable[[Any], None]]] = []

    def submit(
        self,
        corr: torch.Tensor,
        done: Callable[[Any], None],
        job: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        """Match ``corr``; ``done(perm)`` is called with the result (maybe later, in order).

        ``job`` (a function of the cleaned float64 matrix) runs instead of the plain
        assignment, in the worker, and ``done`` gets what it returns: work that follows the
        assignment (the tie-break) runs in parallel too. ``corr`` is not modified.
        """
        job = job or _match_tensor
        if self.workers == 1 or corr.shape[0] < PARALLEL_MIN_SIZE:
            done(job(_clean(corr)))
            return
        while len(self._running) >= self.workers:
            self._finish_oldest()
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=_work, args=(job, corr, send), daemon=True)
        worker.start()  # forked: the worker has corr (copy on write); nothing is pickled
        send.close()
        self._running.append((worker, receive, done))

    def flush(self) -> None:
        """Wait for every running assignment (their ``done`` calls, in order)."""
        while self._running:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        worker, receive, done = self._running.pop(0)
        try:
            ok, result = torch.load(io.BytesIO(receive.recv_bytes()), weights_only=True)
        except EOFError:
            ok, result = False, f"the worker process died (exit code {worker.exitcode})"
        finally:
            receive.close()
            worker.join()
        if not ok:
            raise RuntimeError(f"linear assignment failed in a worker process: {result}")
        done(result)

    def __enter__(self) -> Matcher:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.flush()
        finally:
            for worker, receive, _ in self._running:
                worker.kill()
                worker.join()
                receive.close()
            self._running = []


def _work(job: Callable[[np.ndarray], Any], corr: torch.Tensor, send: Any) -> None:
    """A worker's whole life: clean, solve, send the result back (or why it failed)."""
    try:
        torch.set_num_threads(1)  # a forked worker: the parent's thread pool is not its own
        result: tuple = (True, job(_clean(corr)))
    except BaseException as err:  # the parent raises it
        result = (False, f"{type(err).__name__}: {err}")
    try:  # torch.save, not pickle: torch's reductions for multiprocessing would share the
        # tensor through a file descriptor that dies with this process
        buffer = io.BytesIO()
        torch.save(result, buffer)
        send.send_bytes(buffer.getvalue())
    finally:
        send.close()


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
