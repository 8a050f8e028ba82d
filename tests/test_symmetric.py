"""``method: symmetric`` (the paper code's match_tensors_permute_symmetric): what it gives
relative to ``activations``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphperm.data.synth import write_clips
from graphperm.merge import align
from graphperm.policy import load_policy
from graphperm.solve import solve, symmetric_match
from graphperm.solve.assignment import match
from graphperm.trace import load_model


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, count=8, seconds=1.0)
    return folder


def test_both_directions_agree_so_symmetric_is_b_to_a_on_absolute_correlation() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        c = torch.randn(12, 12, generator=g)
        p = symmetric_match(c)
        assert torch.equal(p, match(c.abs()))
        assert torch.equal(match(c.abs().T)[p], torch.arange(12))  # A -> B is its inverse


def test_symmetric_is_the_paper_policy_matched_on_absolute_correlation(audio) -> None:
    """On real statistics, ``symmetric`` gives exactly B -> A's assignment on |corr| (heads
    first): the 'midpoint' adds nothing for two models; it differs from ``activations`` only
    where |corr| and corr pick different partners."""
    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    policy = load_policy("symmetric").model_dump()
    policy["calibration"].update({"clip_seconds": 1.0, "num_clips": 8})
    alignment = align(a, b, policy, [audio])
    on_abs, _ = solve(
        alignment.plan, alignment.analysis, alignment.stats, assign=lambda c: match(c.abs())
    )
    plain, _ = solve(alignment.plan, alignment.analysis, alignment.stats, assign=match)
    same = different = 0
    for group, part, p in alignment.perm:
        assert torch.equal(p, on_abs.get(group, part)), (group, part)
        if torch.equal(p, plain.get(group, part)):
            same += 1
        else:
            different += 1
    assert same > 0  # mostly the signed assignment too, where the best partner is positive
