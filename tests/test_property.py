"""The central property: random permutations of every group leave outputs unchanged."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from graphperm.analysis import analyse
from graphperm.apply import Indexer, random_permutation, verify
from graphperm.errors import VerificationError
from graphperm.trace import load_model, trace
from tests.helpers import ARCHITECTURES, analysis_of, shared_path


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_permutations_preserve_outputs(name: str, seed: int) -> None:
    analysis = analysis_of(name)
    report = verify(analysis, seed=seed)
    assert report.ok, [(o.name, o.max_abs, o.max_rel) for o in report.outputs]
    # the residual moved too, unless an untraced decoder reads it (then it stays fixed)
    moved = not analysis.traced.loaded.partial
    assert report.outputs and all(o.moved == moved for o in report.outputs)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_has_attention_ffn_and_residual(name: str) -> None:
    analysis = analysis_of(name)
    kinds = analysis.counts()
    residual = 0 if analysis.traced.loaded.partial else 1  # an encoder the decoder reads
    assert kinds["attn"] == 2 and kinds["ffn"] == 2 and kinds.get("residual", 0) == residual, kinds
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
    for g in analysis.groups:
        assert perm.moved_fraction(g.name) > 0, f"{g.name}: drawn as the identity"
        moved = {k for k, _ in g.tensors if not torch.equal(state[k], permuted[k])}
        assert moved, f"{g.name}: none of its tensors changed"


def test_real_whisper_tiny_encoder() -> None:
    path = shared_path("models", "whisper-tiny.en")
    loaded = load_model(path)
    assert loaded.prefix == "model.encoder."  # saved as WhisperForConditionalGeneration
    analysis = analyse(trace(loaded))
    assert analysis.counts() == {"conv": 1, "attn": 4, "ffn": 4}  # the decoder reads the stream
    attn = next(g for g in analysis.groups if g.kind == "attn")
    assert attn.structure == "6 heads × (qk 64, vo 64)"
    report = verify(analysis, seed=3)
    assert report.ok, report.max_rel


class _Shuffles(nn.Module):
    """Shuffles its tokens with torch.rand on every forward, as ViTMAE does."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        order = torch.rand(x.shape[0], x.shape[1]).argsort(-1)
        h = torch.relu(self.a(x))
        return self.b(h.gather(1, order.unsqueeze(-1).expand_as(h)))


class _PythonRandom(nn.Module):
    """Random in a way no torch seed controls."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) + random.random()


def test_models_random_on_purpose_verify_under_one_rng_state() -> None:
    torch.manual_seed(0)
    analysis = analyse(trace(load_model(_Shuffles()), {"x": torch.randn(2, 5, 4)}))
    assert any(g.kind == "ffn" for g in analysis.groups)
    for seed in (0, 1):
        assert verify(analysis, seed=seed).ok


def test_a_model_that_disagrees_with_itself_is_not_blamed_on_a_rule() -> None:
    torch.manual_seed(0)
    analysis = analyse(trace(load_model(_PythonRandom()), {"x": torch.randn(2, 5, 4)}))
    with pytest.raises(
        VerificationError,
        match=r"_PythonRandom gives different outputs.*same "
        r"inputs and random state.*nondeterministic",
    ) as err:
        verify(analysis, seed=0)
    assert "\n" not in str(err.value)
