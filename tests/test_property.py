"""The central property: random permutations of every group leave outputs unchanged."""

from __future__ import annotations

import pytest
import torch

from graphperm.analysis import analyse
from graphperm.apply import Indexer, random_permutation, verify
from graphperm.trace import load_model, trace
from tests.helpers import ARCHITECTURES, analysis_of, shared_path


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_permutations_preserve_outputs(name: str, seed: int) -> None:
    analysis = analysis_of(name)
    report = verify(analysis, seed=seed)
    assert report.ok, [(o.name, o.max_abs, o.max_rel) for o in report.outputs]
    assert report.outputs and all(o.moved for o in report.outputs)  # the residual moved too


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_has_attention_ffn_and_residual(name: str) -> None:
    analysis = analysis_of(name)
    kinds = analysis.counts()
    assert kinds["attn"] == 2 and kinds["ffn"] == 2 and kinds["residual"] == 1, kinds
    for g in analysis.groups:
        if g.kind == "attn":
            assert g.heads == 4 and g.structure == "4 heads × (qk 16, vo 16)"
            assert {p.name: p.outer for p in g.parts} == {
                "heads": None,
                "qk": "heads",
                "vo": "heads",
            }


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_random_permutation_actually_changes_weights(name: str) -> None:
    """Guards the property test against a vacuous pass (nothing permuted)."""
    analysis = analysis_of(name)
    indexer = Indexer(analysis)
    perm = random_permutation(indexer.shapes(), seed=0)
    state = analysis.traced.loaded.state_dict()
    from graphperm.apply import permute_state

    permuted = permute_state(indexer, state, perm)
    changed = [k for k in state if not torch.equal(state[k], permuted[k])]
    assert len(changed) >= len(analysis.groups)


def test_real_whisper_tiny_encoder() -> None:
    path = shared_path("models", "whisper-tiny.en")
    loaded = load_model(path)
    assert loaded.prefix == "encoder."
    analysis = analyse(trace(loaded))
    assert analysis.counts() == {"conv": 1, "residual": 1, "attn": 4, "ffn": 4}
    attn = next(g for g in analysis.groups if g.kind == "attn")
    assert attn.structure == "6 heads × (qk 64, vo 64)"
    report = verify(analysis, seed=3)
    assert report.ok, report.max_rel
