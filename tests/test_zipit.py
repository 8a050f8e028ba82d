"""ZipIt!'s matching: merge/unmerge matrices from the pooled correlation of several models."""

from __future__ import annotations

import pytest
import torch

from graphperm.errors import PolicyError
from graphperm.solve.zipit import zip_match


def _corr(*feats: torch.Tensor) -> torch.Tensor:
    return torch.corrcoef(torch.cat(feats, dim=1).T)


def test_a_with_a_permuted_copy_zips_each_unit_with_its_copy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 24, generator=g)
    p = torch.randperm(24, generator=g)
    merge, unmerge = result = zip_match(_corr(x, x[:, p]), models=2)
    assert result.within == [0, 0] and result.across == 24
    assert torch.equal(unmerge[:24], torch.eye(24))  # A's units keep their places
    assert torch.equal(unmerge[24:], torch.eye(24)[p])  # B's unit k joins A's unit p[k]
    # merging A's and B's features gives A's back (each merged unit: the mean of two copies)
    merged = torch.cat([x, x[:, p]], dim=1) @ merge.T
    assert torch.allclose(merged, x, rtol=1e-4, atol=1e-4)


def test_duplicated_units_are_merged_within_a_model_up_to_the_budget() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 16, generator=g)
    a[:, 1] = a[:, 0] + 1e-3 * torch.randn(500, generator=g)  # a duplicate inside A
    b = torch.randn(500, 16, generator=g)  # B unrelated: A's duplicate is the best pair
    free = zip_match(_corr(a, b), models=2, beta=0.5)
    assert free.within[0] >= 1 and sum(free.within) <= 2 * int(16 // 2 * 0.5)
    assert free[1][0].nonzero().flatten().tolist() == free[1][1].nonzero().flatten().tolist()
    closed = zip_match(_corr(a, b), models=2, beta=0.0)
    assert closed.within[0] <= 1  # a budget of 0 closes A after its first inner merge


def test_every_pooled_unit_lands_in_exactly_one_merged_unit() -> None:
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(300, 12, generator=g) for _ in range(3)]
    merge, unmerge = zip_match(_corr(*feats), models=3, alpha=0.5, beta=0.25)
    assert unmerge.shape == (36, 12) and merge.shape == (12, 36)
    assert torch.equal(unmerge.sum(1), torch.ones(36))
    assert torch.allclose(merge.sum(1), torch.ones(12), atol=1e-4)


@pytest.mark.parametrize(("alpha", "beta", "needle"), [(0.3, 1.5, "beta"), (2.0, 0.1, "alpha")])
def test_out_of_range_settings_are_policy_errors(alpha: float, beta: float, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        zip_match(torch.eye(4), models=2, alpha=alpha, beta=beta)
