"""Deterministic k-means (k-means++ init, Lloyd iterations) in numpy, for pretraining targets."""

from __future__ import annotations

import numpy as np


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x**2).sum(1)[:, None] - 2.0 * x @ c.T + (c**2).sum(1)[None, :]


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centroid for each row of x."""
    return np.concatenate(
        [_sq_dists(x[i : i + chunk], centroids).argmin(1) for i in range(0, len(x), chunk)]
    ).astype(np.int64)


def fit(
    x: np.ndarray, k: int, seed: int, iters: int = 30, max_points: int = 60000
) -> tuple[np.ndarray, float]:
    """Cluster rows of x (float32) into k centroids; returns (centroids, mean squared distance)."""
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
    x = x.astype(np.float64)
    centroids = [x[rng.integers(len(x))]]
    d2 = _sq_dists(x, centroids[0][None]).ravel()
    for _ in range(1, k):  # k-means++
        nxt = x[rng.choice(len(x), p=np.maximum(d2, 0) / np.maximum(d2, 0).sum())]
        centroids.append(nxt)
        d2 = np.minimum(d2, _sq_dists(x, nxt[None]).ravel())
    c = np.stack(centroids)
    for _ in range(iters):
        labels = assign(x, c)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        empty = counts == 0
        c = np.where(empty[:, None], c, sums / np.maximum(counts, 1)[:, None])
        if empty.any():  # re-seed empty clusters on the worst-fitted points
            far = np.argsort(-_sq_dists(x, c)[np.arange(len(x)), labels])[: int(empty.sum())]
            c[empty] = x[far]
    labels = assign(x, c)
    inertia = float(np.mean(_sq_dists(x, c)[np.arange(len(x)), labels]))
    return c.astype(np.float32), inertia
