"""Linear assignment on correlation matrices (scipy's Jonker–Volgenant solver).

Example:
    >>> import torch
    >>> match(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
    [1, 0]
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["block_scores", "match", "match_score"]


def _clean(corr: torch.Tensor) -> np.ndarray:
    return np.nan_to_num(corr.detach().double().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)


def match(corr: torch.Tensor) -> torch.Tensor:
    """``p`` maximising ``Σ corr[i, p[i]]``: B's unit ``p[i]`` is matched to A's unit ``i``.

    NaNs (dead channels) count as zero correlation; ties keep the identity where possible.
    """
    m = _clean(corr)
    n = m.shape[0]
    # a tiny bonus on the diagonal keeps unmatched (e.g. all-zero) units in place
    rows, cols = linear_sum_assignment(m + 1e-9 * np.eye(n), maximize=True)
    perm = np.empty(n, dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


def match_score(corr: torch.Tensor) -> float:
    """The value of the best assignment, ``max_p Σ corr[i, p[i]]``."""
    m = _clean(corr)
    rows, cols = linear_sum_assignment(m, maximize=True)
    return float(m[rows, cols].sum())


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
