"""Exact rotations: which parts the analysis proves rotatable, folding norms, random rotations
in verify, and merges that rotate B′ into A's basis and give back A's function."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers

from graphperm.analysis import analyse
from graphperm.apply import (
    Indexer,
    Permutation,
    check_inputs,
    fold_state,
    folds_for,
    outputs,
    random_orthogonal,
    verify,
)
from graphperm.data.synth import write_clips
from graphperm.merge import prepare
from graphperm.policy import load_policy
from graphperm.solve.assignment import procrustes
from graphperm.trace import load_model, trace
from tests.helpers import ARCHITECTURES, analysis_of, function_oracle

IMAGES = Path(__file__).parent / "data" / "images"


def _vit_with_head(seed: int = 0):
    """A pre-LN ViT traced with its classifier, LayerNorm gains and biases far from 1 and 0."""
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return load_model(model)


@pytest.fixture(scope="module")
def vit():
    return _vit_with_head()


def _family(analysis, group: str, part: str):
    return analysis.symmetry(group, part)


def test_families_follow_the_structure(vit) -> None:
    bert = analysis_of("bert-tiny")
    attn = bert.group("encoder.layer.0.attention")
    fam = {p.name: _family(bert, attn.name, p.name).family for p in attn.parts}
    assert fam == {"heads": "perm", "qk": "orth", "vo": "orth"}
    # post-LN: the stream is read by the residual add after a LayerNorm, which cannot be folded
    why = _family(bert, "residual", "channels")
    assert why.family == "perm" and "LayerNorm" in why.why
    assert _family(bert, "encoder.layer.0.intermediate.dense", "channels").family == "perm"
    # Whisper's decoder (not traced) reads its encoder's stream: it stays fixed
    assert "residual" not in analysis_of("whisper-tiny").counts()
    # HuBERT adds GELU(pos_conv) to its stream
    hubert = analysis_of("hubert-tiny")
    assert {_family(hubert, "residual", p.name).family for p in hubert.group("residual").parts} == {
        "perm"
    }
    # a ViT returning its final LayerNorm's output cannot fold that norm's gain
    why = _family(analysis_of("vit-tiny"), "residual", "channels")
    assert why.family == "perm" and "returned" in why.why
    # with its classifier, the pre-LN stream rotates (keeping the all-ones direction: LayerNorm)
    a = analyse(trace(vit))
    s = _family(a, "residual", "channels")
    assert s.family == "orth" and s.keeps_ones and len(s.folds) == 5
    assert {r.weight for f in s.folds for r in f.readers} >= {"classifier.weight"}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_verify_draws_rotations_on_every_architecture(name: str) -> None:
    report = verify(analysis_of(name), seed=3)
    assert report.ok and report.rotated_parts > 0


def test_random_rotations_change_the_weights_and_keep_the_function(vit) -> None:
    a = analyse(trace(vit))
    report = verify(a, seed=1)
    # the stream and qk/vo of two layers; the logits of the task head stay in order
    assert report.ok and report.rotated_parts == 5
    # and a rotation that ignored the folds or the all-ones direction would not
    ix = Indexer(a)
    perm = Permutation()
    perm.set("residual", "channels", random_orthogonal(48, torch.Generator().manual_seed(0)))
    state = {k: ix.permute(v, a.coupling.classes(q), perm) for k, v, q in _params(a)}
    broken = copy.deepcopy(vit.module)
    broken.load_state_dict({**vit.module.state_dict(), **state})
    inputs = check_inputs(a)
    want, got = outputs(vit.module, inputs)[0], outputs(broken, inputs)[0]
    assert float((want - got).abs().max()) > 1e-2


def _params(a):
    by_target = {t: k for k, t in a.coupling.state.items()}
    state = a.traced.loaded.module.state_dict()
    return [(k, v, by_target[k]) for k, v in state.items() if k in by_target]


def test_folding_keeps_the_function_and_the_class(vit) -> None:
    a = analyse(trace(vit))
    folds = folds_for(a, [("residual", "channels")])
    folded = copy.deepcopy(vit.module)
    folded.load_state_dict(fold_state(vit.module.state_dict(), folds))
    inputs = check_inputs(a)
    diff = (outputs(folded, inputs)[0] - outputs(vit.module, inputs)[0]).abs().max()
    assert float(diff) < 1e-5
    gains = [v for k, v in folded.state_dict().items() if "layernorm" in k and "weight" in k]
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains)
    assert type(folded) is type(vit.module)


def test_procrustes_recovers_a_rotation_and_keeps_ones() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    r = random_orthogonal(6, g, keeps_ones=True)
    m = x.T @ (x @ r)  # m[i, j] = Σ A_i B_j for A = x, B = x R; B Rᵀ = A
    found = procrustes(m, keeps_ones=True)
    assert torch.allclose(found, r.T, atol=1e-8)
    assert torch.allclose(found @ torch.ones(6, dtype=torch.float64), torch.ones(6).double())


def test_a_rotation_asked_of_a_permutation_only_part_stays_a_permutation() -> None:
    a = load_model("builtin:bert-tiny")
    _, _, plan = prepare(a, load_policy({"align": [{"transform": "orth"}], "method": "weights"}))
    by = {(t.group, t.part): t.transform for t in plan.targets}
    assert by[("residual", "channels")] == "perm"
    assert by[("encoder.layer.0.attention", "qk")] == "orth"
    assert by[("encoder.layer.0.attention", "heads")] == "perm"


ORTH = {"align": [{"transform": "orth"}], "calibration": {"num_clips": None}}


@pytest.mark.parametrize("method", ["activations", "weights", "hybrid"])
def test_rotated_copy_merges_back_to_a(vit, method: str) -> None:
    policy = {**ORTH, "method": method}
    calib = [] if method == "weights" else [IMAGES]
    err, alignment = function_oracle(vit, policy, calib)
    assert err <= 1e-4
    rotated = set().union(*(p.rotated for p in alignment.perms))
    assert ("residual", "channels") in rotated


FIRST = {"kind": "residual", "at": "first"}


@pytest.mark.parametrize(
    "policy",
    [
        "pre-ln",
        {"align": [{"transform": "orth"}, {**FIRST, "transform": "orth"}]},
    ],
    ids=["pre-ln", "orth-first"],
)
def test_residual_measured_at_its_first_site_merges_back_to_a(vit, policy: str | dict) -> None:
    """`at: first` measures the residual stream on the embedding alone; a rotated or permuted
    copy of A is still found exactly."""
    rotates_stream = policy != "pre-ln"  # pre-ln permutes the stream, the other rotates it
    policy = {**load_policy(policy).model_dump(), "calibration": {"num_clips": None}}
    err, alignment = function_oracle(vit, policy, [IMAGES])
    assert err <= 1e-4
    rotated = set().union(*(p.rotated for p in alignment.perms))
    assert (("residual", "channels") in rotated) == rotates_stream
    sites = alignment.plan.by_group()["residual"]["channels"].sites
    assert [s.module for s in sites] == ["vit.layers.0.attention.q_proj"]  # reads the embedding


def test_rotated_heads_of_a_speech_encoder_merge_back(tmp_path: Path) -> None:
    clips = write_clips(tmp_path, count=4, seconds=2.0)
    policy = load_policy("fnn-attn").model_dump()
    policy["align"] = [{**r, "transform": "orth"} for r in policy["align"]]
    policy["calibration"].update(num_clips=None, clip_seconds=1.0)
    err, alignment = function_oracle(load_model("builtin:hubert-tiny"), policy, clips)
    assert err <= 1e-4
    assert {part for _, part in alignment.perms[0].rotated} == {"vo"}  # the paper skips qk


def test_merge_command_writes_rotations(tmp_path: Path) -> None:
    import subprocess
    import sys

    from safetensors.torch import load_file

    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "graphperm", "merge", "builtin:bert-tiny", "builtin:bert-tiny"]
    cmd += ["--random-init", "--policy", "weights", "--transform", "orth", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    perms = load_file(out / "permutations.safetensors")
    rotated = {k for k, v in perms.items() if v.is_floating_point()}
    assert "encoder.layer.0.attention/qk" in rotated and "residual/channels" not in rotated
    r = perms["encoder.layer.0.attention/vo"]
    eye = torch.eye(r.shape[-1], dtype=r.dtype).expand_as(r)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye, atol=1e-9)
    assert transformers.AutoModel.from_pretrained(out) is not None
    assert load_policy("orth").align[0].transform == "orth"


def _gpt2_lm(tied: bool):
    """A tiny GPT-2 LM (``Conv1D`` layers: ``aten.addmm`` with ``(in, out)`` weights; an LM head
    without a bias), LayerNorm gains and biases far from 1 and 0."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
        tie_word_embeddings=tied, use_cache=False,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return load_model(model)


def test_a_gpt2_stream_rotates_through_conv1d_and_a_head_without_bias() -> None:
    """GPT-2's norms feed ``Conv1D`` (``addmm``): their gains fold into the weights' input rows.
    The final norm feeds an LM head without a bias: its bias stays in the norm (divided by the
    gain) and rotates with the stream. Tied to the input embedding, the head cannot take the
    gain, and the stream is permuted only."""
    lm = _gpt2_lm(tied=False)
    a = analyse(trace(lm))
    s = a.symmetry("residual", "channels")
    assert s.family == "orth" and s.keeps_ones, s.why
    by_weight = {r.weight: r.in_dim for f in s.folds for r in f.readers}
    assert by_weight["transformer.h.0.attn.c_attn.weight"] == 0  # Conv1D: (in, out)
    assert by_weight["lm_head.weight"] == 1
    (final,) = [f for f in s.folds if f.weight == "transformer.ln_f.weight"]
    assert final.keep_bias and not any(f.keep_bias for f in s.folds if f is not final)
    folded = copy.deepcopy(lm.module)
    folded.load_state_dict(fold_state(lm.module.state_dict(), s.folds))
    assert not torch.equal(folded.transformer.ln_f.bias, torch.zeros(32))
    inputs = check_inputs(a)
    diff = (outputs(folded, inputs)[0] - outputs(lm.module, inputs)[0]).abs().max()
    assert float(diff) < 1e-4
    report = verify(a, seed=2)
    assert report.ok and report.rotated_parts == 5  # the stream and qk/vo of two layers
    err, alignment = function_oracle(lm, {**ORTH, "method": "weights"})
    assert err <= 1e-4
    assert ("residual", "channels") in alignment.perms[0].rotated
    tied = analyse(trace(_gpt2_lm(tied=True))).symmetry("residual", "channels")
    assert tied.family == "perm" and "ln_f" in tied.why
