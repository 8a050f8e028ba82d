"""Sinkhorn matching: a soft permutation hardened by an assignment, as an alignment method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphperm.solve.sinkhorn as sinkhorn
from graphperm.data.synth import write_clips
from graphperm.policy import load_policy
from graphperm.solve import get_method, match, sinkhorn_match
from graphperm.trace import load_model
from tests.helpers import merge_oracle


def test_sinkhorn_recovers_a_clear_permutation() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randperm(12, generator=g)
    corr = torch.eye(12)[p] * 0.8 + 0.05 * torch.randn(12, 12, generator=g)
    got = sinkhorn_match(corr, steps=60)
    assert torch.equal(got, p) and torch.equal(got, match(corr))


def test_sinkhorn_ends_where_the_assignment_does_on_a_close_call() -> None:
    """A0 correlates best with B0 but the assignment gives B0 to A1 (0.55 + 0.62 > 0.60):
    the soft path must not stop at the greedy choice, with or without the penalty."""
    corr = torch.tensor([[0.60, 0.55, 0.50], [0.62, 0.00, 0.00], [0.00, 0.00, 0.58]])
    assert match(corr).tolist() == [1, 0, 2]
    for weight in (0.0, 1.0, 50.0):
        assert sinkhorn_match(corr, steps=80, off_diagonal=weight).tolist() == [1, 0, 2]


def test_sinkhorn_is_a_registered_correlation_method_with_a_spec() -> None:
    assert get_method("sinkhorn").needs == frozenset({"correlation"})
    assert load_policy("sinkhorn").method == "sinkhorn"


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, count=8, seconds=1.0)
    return folder


def test_merging_a_with_a_permuted_copy_gives_back_a(audio: Path, monkeypatch) -> None:
    monkeypatch.setattr(sinkhorn, "STEPS", 40)  # a clear problem needs few steps
    policy = load_policy("sinkhorn").model_dump()
    policy["calibration"].update(clip_seconds=1.0, num_clips=8)
    worst, alignment = merge_oracle(load_model("builtin:hubert-tiny"), policy, [audio])
    assert worst < 1e-5 and alignment.method == "sinkhorn"
