"""Linear assignment and the hierarchical (blocks, then channels) solve."""

from __future__ import annotations

import torch

from graphperm.solve import block_scores, match
from graphperm.solve.assignment import Matcher


def test_match_recovers_a_permutation() -> None:
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(50, generator=g)
    corr = torch.rand(50, 50, generator=g) * 0.5
    corr[torch.arange(50), perm] = 1.0
    assert torch.equal(match(corr), perm)


def test_match_survives_nan_and_dead_rows() -> None:
    corr = torch.tensor([[float("nan"), 0.2, 0.1], [0.0, 0.0, 0.0], [0.3, 0.9, 0.2]])
    p = match(corr)
    assert sorted(p.tolist()) == [0, 1, 2] and p[2] == 1


def test_block_scores_find_permuted_heads() -> None:
    g = torch.Generator().manual_seed(1)
    heads, d = 4, 8
    rho = torch.randperm(heads, generator=g)
    corr = torch.rand(heads * d, heads * d, generator=g) * 0.3
    inner = [torch.randperm(d, generator=g) for _ in range(heads)]
    for i in range(heads):
        for c in range(d):
            corr[i * d + c, rho[i] * d + inner[i][c]] = 1.0
    assert torch.equal(match(block_scores(corr, heads)), rho)
    for i in range(heads):
        sub = corr[i * d : (i + 1) * d, rho[i] * d : (rho[i] + 1) * d]
        assert torch.equal(match(sub), inner[i])


def test_matcher_in_worker_processes_gives_what_match_gives() -> None:
    gen = torch.Generator().manual_seed(0)
    mats = [torch.rand(1100, 1100, generator=gen, dtype=torch.float64) for _ in range(3)]
    mats.append(torch.rand(5, 5, generator=gen, dtype=torch.float64))  # small: solved in place
    got: dict[int, torch.Tensor] = {}
    with Matcher(workers=2) as matcher:
        for i, m in enumerate(mats):
            matcher.submit(m, lambda p, i=i: got.__setitem__(i, p))
    assert sorted(got) == [0, 1, 2, 3]
    for i, m in enumerate(mats):
        assert torch.equal(got[i], match(m))


def _fails(m) -> None:
    raise ValueError("no luck")


def test_a_failing_worker_says_why() -> None:
    import pytest

    with pytest.raises(RuntimeError, match="ValueError: no luck"), Matcher(workers=2) as matcher:
        matcher.submit(torch.rand(1100, 1100, dtype=torch.float64), print, job=_fails)
