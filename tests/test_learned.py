"""Learned alignment (``method: learned``): exact transforms optimised end to end through the
merged model. Oracles: started from the exact answer it stays there and the merge gives A back
(permutations and rotations); started from the identity it moves toward the answer; it never
ends worse on held-out data; a user's loss replaces the objective; the CLI writes its report."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
from graphperm.errors import PolicyError
from graphperm.learn import LearnedTransforms, learn_alignment
from graphperm.merge import align
from graphperm.policy import Learn
from graphperm.trace import BUILTINS, load_model
from graphperm.trace.inputs import example_inputs
from tests.helpers import analysis_of, function_oracle, graphperm_cli


def _pixels(path, items=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    save_file({"pixel_values": torch.randn(items, 3, 32, 32, generator=g)}, str(path))
    return str(path)


def _policy(transform="perm", steps=4, start="hybrid"):
    return {
        "align": [{"transform": transform}],
        "method": "learned",
        "learn": {"start": start, "steps": steps, "items": 8, "eval_every": 2, "lr": 0.1},
        "weight_a": 0.5,
        "calibration": {"batch_size": 2},
    }


@pytest.mark.parametrize(
    ("transform", "estimator", "objective"),
    [
        ("perm", "scores", "outputs"),
        ("orth", "scores", "outputs"),
        ("perm", "weights", "outputs"),
        ("orth", "scores", "sites"),
    ],
)
def test_started_from_the_exact_answer_it_stays_and_gives_back_a(
    tmp_path, transform, estimator, objective
):
    a = load_model("builtin:vit-tiny")
    calib = [_pixels(tmp_path / "x.safetensors")]
    policy = _policy(transform)
    policy["learn"] |= {"estimator": estimator, "objective": objective}
    worst, alignment = function_oracle(a, policy, calib)
    assert worst <= 1e-4
    learn = alignment.method_reports[0]["learn"]
    assert learn["heldout_before"] <= 1e-8 and learn["heldout_after"] <= 1e-8
    if transform == "orth":
        assert alignment.perm.rotated  # rotations were learned, and stayed exact


def _identity(shapes):
    return Permutation(
        {
            g: {p: torch.arange(s[-1]).expand(*s).clone() for p, s in parts.items()}
            for g, parts in shapes.items()
        }
    )


def _permuted_copy(name):
    a = load_model(f"builtin:{name}")
    analysis = analysis_of(name)
    indexer = Indexer(analysis)
    b = copy.deepcopy(a)
    secret = random_permutation(indexer.shapes(), seed=3)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    return a, b, analysis, indexer


def _token_batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, 90, (2, 12), generator=g)} for _ in range(n)]


def test_started_from_identity_it_moves_toward_the_answer():
    a, b, analysis, indexer = _permuted_copy("bert-tiny")
    start = _identity(indexer.shapes())
    perm, report = learn_alignment(
        analysis,
        [a, b],
        start,
        _token_batches(),
        Learn(steps=30, lr=0.3, eval_every=5),
        weight_a=0.5,
    )
    assert report.heldout_after < 0.8 * report.heldout_before
    perm.check(indexer.shapes())  # still exact permutations
    assert report.best_step > 0


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_started_from_identity_git_rebasins_proxy_recovers_a(name):
    """``estimator: weights`` with ``proxy: a`` (git re-basin's straight-through estimator,
    whose proxy weights start at A's): from the identity, B = a random permutation of A over
    every aligned part comes back exactly on every tiny builtin, so the merge gives back A. The
    recovery is the first step's weight matching of B to the proxy (A's weights), and the
    held-out objective keeps the step that did best."""
    from graphperm.merge import prepare
    from graphperm.policy import load_policy

    a = load_model(f"builtin:{name}")
    policy = {"align": [{}], "method": "learned", "calibration": {"clip_seconds": 1.0}}
    _, analysis, plan = prepare(a, load_policy(policy))
    indexer = Indexer(analysis)
    every = random_permutation(indexer.shapes(), seed=3)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    b = copy.deepcopy(a)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    batches = [example_inputs(a, seed=i) for i in range(4)]
    settings = Learn(steps=2, lr=1e-4, eval_every=1, estimator="weights", proxy="a")
    start = _identity(indexer.shapes())
    perm, report = learn_alignment(
        analysis, [a, b], start, batches, settings, weight_a=0.5, plan=plan
    )
    back = permute_state(indexer, b.state_dict(), perm)
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(back[k], v, rtol=0, atol=1e-6 * float(v.abs().max())), k
    assert report.best_step > 0 and report.heldout_after <= 1e-8 < report.heldout_before
    # the same from the identity with the proxy at the start stays far from A
    _, far = learn_alignment(
        analysis, [a, b], start, batches, settings.model_copy(update={"proxy": "start"}),
        weight_a=0.5, plan=plan,
    )  # fmt: skip
    assert far.heldout_after > 1e3 * max(report.heldout_after, 1e-12)


def test_never_worse_than_the_start_on_held_out_data_and_deterministic():
    a, b = load_model("builtin:bert-tiny"), load_model("builtin:bert-tiny", seed=1)
    start = align(a, b, "weights")
    settings = Learn(steps=6, lr=0.5, eval_every=2, seed=4)
    runs = [
        learn_alignment(
            start.analysis, [a, b], start.perm, _token_batches(), settings, weight_a=0.5
        )
        for _ in range(2)
    ]
    (p1, r1), (p2, r2) = runs
    assert r1.heldout_after <= r1.heldout_before
    assert all(torch.equal(x, p2.get(g, q)) for g, q, x in p1)
    assert r1.heldout_after == r2.heldout_after


def test_the_progress_bar_shows_the_held_out_objective_from_the_start_and_the_best(capsys):
    a, b = load_model("builtin:bert-tiny"), load_model("builtin:bert-tiny", seed=1)
    start = align(a, b, "weights")
    settings = Learn(steps=4, lr=0.5, eval_every=2, seed=4)
    _, report = learn_alignment(
        start.analysis, [a, b], start.perm, _token_batches(), settings, weight_a=0.5, progress=True
    )
    err = capsys.readouterr().err
    assert "learning the alignment" in err
    assert f"heldout={report.heldout_before:.4g}" in err  # before the first evaluation
    assert f"best={report.heldout_after:.4g} (step {report.best_step})" in err


def test_references_too_large_to_keep_are_run_again_with_the_same_result(monkeypatch):
    """Past REFERENCE_BYTES the parents' outputs are computed again at every step and
    evaluation instead of kept (HuBERT base's sites on 128 clips would take ~19 GB): the
    same objective values, the same transforms."""
    from graphperm.learn import learner

    a, b, analysis, indexer = _permuted_copy("bert-tiny")
    start = _identity(indexer.shapes())
    settings = Learn(steps=10, lr=0.3, eval_every=5)

    def run():
        return learn_alignment(analysis, [a, b], start, _token_batches(), settings, weight_a=0.5)

    kept = run()
    monkeypatch.setattr(learner, "REFERENCE_BYTES", 0)
    again = run()
    assert all(torch.equal(x, again[0].get(g, q)) for g, q, x in kept[0])
    for key in ("train_before", "train_after", "heldout_before", "heldout_after"):
        assert getattr(kept[1], key) == getattr(again[1], key)
    assert kept[1].best_step == again[1].best_step > 0


def test_a_users_loss_replaces_the_objective():
    a, b, analysis, indexer = _permuted_copy("bert-tiny")
    target = {}

    def loss_fn(model, batch):  # e.g. a training loss; here: distance to A's hidden states
        key = id(batch)
        if key not in target:
            with torch.no_grad():
                target[key] = a.module(**batch).last_hidden_state
        return (model(**batch).last_hidden_state - target[key]).pow(2).mean()

    _, report = learn_alignment(
        analysis,
        [a, b],
        _identity(indexer.shapes()),
        _token_batches(),
        Learn(steps=10, lr=0.3),
        weight_a=0.5,
        loss_fn=loss_fn,
    )
    assert report.objective == "loss_fn"
    assert report.heldout_after < report.heldout_before


def test_a_step_with_a_non_finite_objective_is_skipped_not_applied():
    """A batch whose objective (or gradient) is NaN skips its step, counted in the report,
    instead of filling Adam's moments, and through them every later step, with NaN."""
    a, b, analysis, indexer = _permuted_copy("bert-tiny")
    batches = _token_batches()
    bad = id(batches[0])

    def loss_fn(model, batch):
        out = model(**batch).last_hidden_state.pow(2).mean()
        return out * float("nan") if id(batch) == bad else out

    perm, report = learn_alignment(
        analysis,
        [a, b],
        _identity(indexer.shapes()),
        batches,
        Learn(steps=12, lr=0.3, eval_every=3, seed=1),
        weight_a=0.5,
        loss_fn=loss_fn,
    )
    assert report.skipped_steps > 0
    assert report.skipped_steps < report.steps
    assert torch.isfinite(torch.tensor(report.heldout_after))
    assert report.heldout_after <= report.heldout_before
    perm.check(indexer.shapes())


def test_a_rotation_whose_svd_does_not_converge_goes_back_to_the_group_by_qr(monkeypatch):
    """LAPACK's SVD can fail to converge on a matrix whose singular values are all 1; the
    exact rotation is then taken from a QR decomposition: orthogonal, and the same matrix."""
    r0 = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    t = LearnedTransforms(Permutation({"g": {"x": r0}}), {})
    with torch.no_grad():
        t.angles[0].normal_(std=0.3)
    want = t.hard().get("g", "x")

    def fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", fails)
    got = t.hard().get("g", "x")
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(got.T @ got, eye, atol=1e-12)
    assert torch.allclose(got, want, atol=1e-10)


def test_transforms_keep_the_all_ones_direction_when_asked():
    r0 = torch.eye(4, dtype=torch.float64)
    t = LearnedTransforms(Permutation({"g": {"x": r0}}), {("g", "x"): True})
    with torch.no_grad():
        t.angles[0].normal_()
    r = t.hard().get("g", "x")
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.allclose(r @ ones, ones) and torch.allclose(r.T @ r, torch.eye(4).double())


def test_cli_learned_merge_writes_its_report(tmp_path):
    policy = tmp_path / "learned.json"
    policy.write_text(json.dumps(_policy(steps=2)))
    calib = _pixels(tmp_path / "x.safetensors")
    out = tmp_path / "m"
    r = graphperm_cli(
        "merge",
        "builtin:vit-tiny",
        "builtin:vit-tiny",
        "--seed-b",
        "1",
        "--policy",
        str(policy),
        "--calib",
        calib,
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == "learned"
    assert report["method_report"]["learn"]["steps"] == 2
    assert report["verification"]["ok"]


def test_repair_brings_hidden_statistics_to_their_targets_and_says_it_is_not_exact(tmp_path):
    a = load_model("builtin:vit-tiny")
    b = load_model("builtin:vit-tiny", seed=1)
    calib = [_pixels(tmp_path / "x.safetensors")]
    policy = {"align": [{}], "method": "hybrid", "weight_a": 0.5, "repair": True}
    from graphperm.merge import merge_models

    alignment = align(a, b, policy, calib)
    plain = merge_models(alignment, a, b)
    assert plain.repair is not None
    rep = plain.repair
    assert rep["units"] > 0 and rep["exact"] is False
    assert rep["mismatch_after"] < 0.2 * rep["mismatch_before"]
    # only the writers of hidden units changed
    off = dict(policy, repair=False)
    unrepaired = merge_models(align(a, b, off, calib), a, b)
    changed = {k for k, v in plain.state.items() if not torch.equal(v, unrepaired.state[k])}
    from graphperm.learn.repair import writers

    layers = writers(alignment.analysis, a.module, {g.name for g in alignment.analysis.groups})
    assert layers
    assert {g.kind for g in alignment.analysis.groups if g.name in set(layers.values())} == {"ffn"}
    assert changed == {f"{n}.{w}" for n in layers for w in ("weight", "bias")}


def test_repair_without_data_is_one_line_error(tmp_path):
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"align": [{}], "method": "weights", "repair": True}))
    r = graphperm_cli(
        "merge",
        "builtin:vit-tiny",
        "builtin:vit-tiny",
        "--seed-b",
        "1",
        "--policy",
        str(policy),
        "--out",
        str(tmp_path / "m"),
    )
    assert r.returncode == 2
    assert "--calib" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("budget", [2.0, 1000.0])
def test_a_budget_caps_learnings_operations_at_a_multiple_of_the_calibrations(tmp_path, budget):
    """learn.budget counts the floating-point operations learning runs (references,
    evaluations, each step with its transforms and backward pass) against ``budget`` times the
    calibration's forwards (two models x 8 images), an image's forward counted on its own
    here; the steps beyond are not run, and a large budget caps nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    a, b = load_model("builtin:vit-tiny"), load_model("builtin:vit-tiny", seed=1)
    policy = _policy(steps=50)
    policy["learn"]["budget"] = budget
    alignment = align(a, b, policy, [_pixels(tmp_path / "x.safetensors")])
    learn = alignment.method_reports[0]["learn"]
    with torch.no_grad(), FlopCounterMode(display=False) as count:
        a.module(pixel_values=torch.randn(1, 3, 32, 32))
    assert learn["flops_allowed"] == pytest.approx(budget * 2 * 8 * count.get_total_flops())
    # a step (forward and backward, through the soft transforms) costs more than 3 forwards
    assert learn["flops_per_step"] > 3 * 2 * count.get_total_flops()
    if budget == 2.0:
        assert 1 <= learn["steps"] < 50
        # within the budget, give or take the first step (run before its cost is known)
        assert learn["flops_spent"] <= learn["flops_allowed"] + learn["flops_per_step"]
        assert learn["flops_spent"] + 2 * learn["flops_per_step"] > learn["flops_allowed"]
    else:
        assert learn["steps"] == 50
        assert learn["flops_spent"] <= learn["flops_allowed"]


def _tied_lm(seed=0):
    """A tiny GPT-Neo with its LM head (tied to the input embedding: one tensor, two names;
    linear layers, which REPAIR corrects, where GPT-2 has its own Conv1D)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=16,
        attention_types=[[["global"], 2]],
        use_cache=False,
    )
    model = GPTNeoForCausalLM(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    return load_model(model)


def test_learning_and_repair_run_on_a_language_model_whose_head_is_tied():
    """Its state names the tied tensor twice; merged states hold two equal values under the two
    names, which ``functional_call`` refused by default (barrier pair g)."""
    from graphperm.analysis import analyse
    from graphperm.learn.repair import repair_state, repair_targets
    from graphperm.trace import trace

    a = _tied_lm()
    batches = [{"input_ids": x["input_ids"] % 64} for x in _token_batches()]
    analysis = analyse(trace(a, batches[0]))
    indexer = Indexer(analysis)
    b = copy.deepcopy(a)
    secret = random_permutation(indexer.shapes(), seed=3)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    start = _identity(indexer.shapes())
    perm, report = learn_alignment(
        analysis, [a, b], start, batches, Learn(steps=4, lr=0.3, eval_every=2), weight_a=0.5
    )
    assert report.objective == "outputs" and report.steps == 4
    assert 0 < report.heldout_after <= report.heldout_before
    perm.check(indexer.shapes())
    _, own = learn_alignment(
        analysis,
        [a, b],
        start,
        [{**x, "labels": x["input_ids"]} for x in batches],
        Learn(steps=4, lr=0.3, eval_every=2),
        weight_a=0.5,
        loss_fn=lambda model, batch: model(**batch).loss,
    )
    assert own.objective == "loss_fn" and own.heldout_after <= own.heldout_before
    states = [a.state_dict(), b.state_dict()]
    merged = {k: 0.5 * (states[0][k] + states[1][k]) for k in states[0]}
    targets = repair_targets(analysis, a.module, states, batches, weights=[0.5, 0.5])
    _, rep = repair_state(a.module, merged, targets, batches)
    assert rep["units"] > 0 and rep["mismatch_after"] < rep["mismatch_before"]


def test_next_token_objective_is_the_language_models_own_loss():
    """``learn.objective: next_token`` scores the merged model by its own loss on the text (no
    labels); started from the exact answer it stays there and A comes back; a model that is
    not a causal LM is refused in one line."""
    from graphperm.analysis import analyse
    from graphperm.learn import next_token_loss
    from graphperm.trace import trace

    a = _tied_lm()
    batches = [{"input_ids": x["input_ids"] % 64} for x in _token_batches()]
    labelled = {**batches[0], "labels": batches[0]["input_ids"]}
    own = a.module(**labelled).loss
    assert torch.allclose(next_token_loss(lambda **kw: a.module(**kw), batches[0]), own)
    analysis = analyse(trace(a, batches[0]))
    indexer = Indexer(analysis)
    b = copy.deepcopy(a)
    secret = random_permutation(indexer.shapes(), seed=3)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    settings = Learn(steps=4, lr=0.3, eval_every=2, objective="next_token")
    perm, report = learn_alignment(
        analysis, [a, b], _identity(indexer.shapes()), batches, settings, weight_a=0.5
    )
    # the held-out objective is the merged model's own loss: at the start (B as it is), that
    # of plain averaging, computed here without graphperm
    merged = copy.deepcopy(a.module)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    merged.load_state_dict({k: 0.5 * (v + sb[k]) for k, v in sa.items()})
    plain = sum(float(merged(**x, labels=x["input_ids"]).loss) for x in batches[-2:]) / 2
    assert report.objective == "next_token"
    assert report.heldout_before == pytest.approx(plain, rel=1e-5)
    assert report.heldout_after <= report.heldout_before
    perm.check(indexer.shapes())
    bert, bert_b, bert_analysis, _ = _permuted_copy("bert-tiny")
    with pytest.raises(PolicyError, match="not one"):
        learn_alignment(
            bert_analysis, [bert, bert_b], _identity(Indexer(bert_analysis).shapes()),
            _token_batches(), settings, weight_a=0.5,
        )  # fmt: skip


def test_repair_corrects_gpt2_conv1d_writers():
    """GPT-2's FFN units are written by ``Conv1D`` (``x @ W + b``, weight ``(in, out)``):
    REPAIR finds those layers, scales their weight's output columns, and brings the merged
    statistics to their targets."""
    import transformers

    from graphperm.analysis import analyse
    from graphperm.learn.repair import repair_state, repair_targets, writers
    from graphperm.trace import trace

    def lm(seed):
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(
            vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, use_cache=False
        )
        return load_model(transformers.GPT2LMHeadModel(cfg).eval())

    a, b = lm(0), lm(1)
    batches = [{"input_ids": x["input_ids"] % 64} for x in _token_batches()]
    analysis = analyse(trace(a, batches[0]))
    found = writers(analysis, a.module, {g.name for g in analysis.groups})
    assert sorted(found) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    states = [a.state_dict(), b.state_dict()]
    merged = {k: 0.5 * (states[0][k] + states[1][k]) for k in states[0]}
    targets = repair_targets(analysis, a.module, states, batches, weights=[0.5, 0.5])
    out, rep = repair_state(a.module, merged, targets, batches)
    assert rep["units"] == 2 * 128 and rep["mismatch_after"] < 0.1 * rep["mismatch_before"]
    w, w0 = out["transformer.h.0.mlp.c_fc.weight"], merged["transformer.h.0.mlp.c_fc.weight"]
    scale = w / w0  # one factor per output column (unit), the same down each column
    assert torch.allclose(scale, scale[:1].expand_as(scale), rtol=1e-4)
