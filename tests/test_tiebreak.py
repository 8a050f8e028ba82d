"""Units the calibration data cannot separate (dead, duplicated) are matched on their weights,
and only those: a unit whose activations decide its partner keeps it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

import graphperm.solve.tiebreak as tiebreak
from graphperm.data.synth import write_clips
from graphperm.policy import load_policy
from graphperm.solve import match
from graphperm.solve.assignment import Matcher
from graphperm.solve.tiebreak import break_ties, decided, settle, undecided
from graphperm.trace import load_model
from tests.helpers import merge_oracle

SHARED = Path(__file__).resolve().parents[2] / "shared"
WHISPER = SHARED / "models" / "whisper-tiny.en"
AUDIO = [SHARED / "data/audio/speech", SHARED / "data/audio/music"]


def test_decided_units_keep_their_partners() -> None:
    g = torch.Generator().manual_seed(0)
    n = 40
    truth = torch.randperm(n, generator=g)
    corr = torch.rand(n, n, generator=g) * 0.5
    corr[torch.arange(n), truth] = 0.9
    dead = torch.arange(10)  # A's first ten units: no signal at all
    corr[dead] = 0.0
    corr[:, truth[dead]] = 0.0
    p = match(corr)
    loose = undecided(corr, p, 1e-3)
    assert loose[:10].all() and not loose[10:].any()
    # fingerprints that disagree with the correlations everywhere: they may only move the dead
    fa, fb = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    fb[truth[dead]] = fa[dead]  # ... whose weights do identify them
    q, count = break_ties(corr, p, fa, fb, margin=1e-3)
    assert count == 10
    assert torch.equal(q[10:], p[10:])
    assert torch.equal(q[:10], truth[:10])


def test_tie_break_in_worker_processes_gives_what_it_gives_in_place() -> None:
    # large parts are settled (assignment + tie-break) in Matcher workers: same answer
    g = torch.Generator().manual_seed(3)
    n = 1100  # above the size that goes to workers
    truth = torch.randperm(n, generator=g)
    jobs = []
    for k in range(3):
        corr = torch.rand(n, n, generator=g, dtype=torch.float64) * 0.5
        corr[torch.arange(n), truth] = 0.9
        corr[: 100 * (k + 1)] = 0.0  # dead units: undecided
        fa = torch.randn(n, 6, generator=g)
        jobs.append((corr, fa, fa[truth.argsort()]))
    got: dict[int, tuple[torch.Tensor, int]] = {}
    with Matcher(workers=2) as matcher:
        for i, (corr, fa, fb) in enumerate(jobs):
            job = partial(settle, fingers=lambda fa=fa, fb=fb: (fa, fb), margin=1e-3)
            matcher.submit(corr, lambda r, i=i: got.__setitem__(i, r), job=job)
    for i, (corr, fa, fb) in enumerate(jobs):
        p, count = break_ties(corr.float(), match(corr), fa, fb, margin=1e-3)
        assert count >= 100 * (i + 1)
        assert torch.equal(got[i][0], p) and got[i][1] == count
        assert torch.equal(p, truth)  # the weights placed the dead units


def _counting_match(monkeypatch) -> list[int]:
    """Sizes of the assignments the tie-break solves from now on."""
    sizes: list[int] = []

    def counted(m: torch.Tensor) -> torch.Tensor:
        sizes.append(m.shape[0])
        return match(m)

    monkeypatch.setattr(tiebreak, "match", counted)
    return sizes


def test_tie_break_is_free_when_every_unit_is_decided(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    n = 300
    truth = torch.randperm(n, generator=g)
    corr = torch.rand(n, n, generator=g, dtype=torch.float64) * 0.5
    corr[torch.arange(n), truth] = 0.9
    sizes = _counting_match(monkeypatch)
    asked = []
    p, count = settle(corr.numpy(), fingers=lambda: asked.append(1), margin=1e-3)
    assert torch.equal(p, truth) and count == 0
    assert sizes == [] and asked == []  # no assignment solved, no fingerprints taken


def test_tie_break_of_random_units_costs_one_assignment(monkeypatch) -> None:
    # random weights: no unit is decided; the tie-break is the one assignment (on correlation
    # + fingerprints), not a second one after the assignment on correlations
    g = torch.Generator().manual_seed(2)
    n = 200
    corr = torch.randn(n, n, generator=g, dtype=torch.float64) * 1e-3
    fa, fb = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    sizes = _counting_match(monkeypatch)
    p, count = settle(corr.numpy(), fingers=lambda: (fa, fb), margin=1e-3)
    assert sizes == [count] and count > 0.9 * n
    monkeypatch.undo()
    q, count_before = break_ties(corr.float(), match(corr), fa, fb, margin=1e-3)
    assert count == count_before and torch.equal(p, q)  # what match + break_ties gives


def test_decided_pairs_are_those_every_assignment_leaves_decided() -> None:
    g = torch.Generator().manual_seed(4)
    n = 60
    truth = torch.randperm(n, generator=g)
    corr = torch.rand(n, n, generator=g) * 0.5
    corr[torch.arange(n), truth] = 0.9
    corr[:15] = 0.3  # fifteen rows with no preference
    partner = decided(corr, 1e-3)
    loose = undecided(corr, match(corr), 1e-3)
    assert torch.equal(partner < 0, loose) and (partner < 0).sum() == 15
    assert torch.equal(partner[15:], truth[15:])


def test_dead_units_of_a_random_model_are_matched_on_weights(tmp_path) -> None:
    write_clips(tmp_path, count=8, seconds=1.0)
    a = load_model("builtin:hubert-tiny")
    with torch.no_grad():  # a third of every FFN's units dead: GELU of very negative inputs
        for layer in a.module.encoder.layers:
            dense = layer.feed_forward.intermediate_dense
            dense.weight[::3] *= 1e-3
            dense.bias[::3] = -30.0
    policy = load_policy({"align": [{"kind": "ffn"}], "calibration": {"clip_seconds": 1.0}})
    worst, alignment = merge_oracle(a, policy, [tmp_path])
    assert all(r.matched_on_weights >= 40 for r in alignment.reports)  # 43 dead of 128 each
    assert worst < 1e-4


@pytest.mark.skipif(not WHISPER.is_dir(), reason="needs ../shared/models/whisper-tiny.en")
@pytest.mark.parametrize("spec", ["paper", "cnn-all", "fnn-attn"])
def test_real_whisper_oracle_is_exact(spec: str) -> None:
    a = load_model(str(WHISPER))
    policy = load_policy(spec).model_dump()
    policy["calibration"].update(num_clips=4, split_half=False)
    worst, alignment = merge_oracle(a, load_policy(policy), AUDIO)
    assert worst < 1e-4
    assert any(r.matched_on_weights for r in alignment.reports)
