"""Three or more models: one pass, every model aligned into A's basis, N-way interpolation,
the command line with --weights, and the model card."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
from graphperm.data.synth import write_clips
from graphperm.merge import align_models, merge_all, prepare
from graphperm.policy import load_policy
from graphperm.trace import load_model
from tests.helpers import graphperm_cli

ONE_SECOND = {"calibration": {"clip_seconds": 1.0, "num_clips": 16}}


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, count=16, seconds=1.0)
    return folder


def _scrambled(a, plan, indexer, seed: int):
    every = random_permutation(indexer.shapes(), seed=seed)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    b = load_model("builtin:hubert-tiny")
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    return b


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3]])
def test_a_and_two_permuted_copies_merge_back_to_a(audio: Path, weights) -> None:
    policy = load_policy("paper").model_dump()
    policy.update(ONE_SECOND)
    policy = load_policy(policy)
    a = load_model("builtin:hubert-tiny")
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    models = [a, _scrambled(a, plan, indexer, 5), _scrambled(a, plan, indexer, 6)]
    alignment = align_models(models, policy, [audio])
    assert len(alignment.perms) == 2
    result = merge_all(alignment, models, weights=weights)
    assert result.weights == pytest.approx(weights)
    assert all(c.ok for c in result.checks) and len(result.checks) == 2
    err = max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())
    assert err < 1e-4


def cli(*args: str) -> subprocess.CompletedProcess:
    return graphperm_cli("merge", *args)


TINY = ["builtin:hubert-tiny"] * 3


def merge_three(audio: Path, tmp_path: Path, *extra: str) -> Path:
    """``graphperm merge`` of three random tiny HuBERTs (paper policy, 1-s clips, weights
    0.5/0.25/0.25) into ``tmp_path/m3``; fails the test if it does not exit 0."""
    out = tmp_path / "m3"
    policy = load_policy("paper").model_dump()
    policy.update(ONE_SECOND)
    (tmp_path / "p.json").write_text(json.dumps(policy))
    args = [*TINY, "--random-init", "--calib", str(audio), "--num-clips", "8"]
    args += ["--policy", str(tmp_path / "p.json"), *extra]
    proc = cli(*args, "--weights", "0.5", "0.25", "0.25", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    return out


def test_three_models_on_the_command_line(audio: Path, tmp_path: Path) -> None:
    out = merge_three(audio, tmp_path)
    report = json.loads((out / "merge_report.json").read_text())
    assert report["weights"] == [0.5, 0.25, 0.25] and len(report["models"]) == 3
    for name in ("permutations.safetensors", "permutations_2.safetensors"):
        assert load_file(str(out / name))  # one set per model after A
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "- graphperm" in card
    assert "base_model:" not in card  # no hub id among the sources
    assert "(the policy's weights 0.9/0.05/0.05 were replaced by the weights above)" in card
    assert "--weights 0.5 0.25 0.25" in card  # the command that made it
    assert card.count("| builtin:hubert-tiny |") == 3
    assert "mean moved fraction" in card


def _bad(args: list[str], needle: str, out: Path) -> None:
    proc = cli(*args, "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graphperm: error: ") and needle in last, proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_wrong_number_of_weights(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY, "--random-init", "--calib", str(audio), "--weights", "0.5", "0.5"],
        "--weights has 2 weights for 3 models",
        tmp_path / "o",
    )


def test_weights_that_do_not_sum_to_one(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY, "--random-init", "--calib", str(audio), "--weights", "0.5", "0.5", "0.5"],
        "sum to 1",
        tmp_path / "o",
    )


def test_different_architectures_among_three(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY[:2], "builtin:hubert-stable-tiny", "--random-init", "--calib", str(audio)],
        "differ in architecture",
        tmp_path / "o",
    )


# ---------------------------------------------------------------- consensus refinement (MergeMany)


def _consensus_policy(rounds: int, **extra):
    policy = load_policy("paper").model_dump()
    policy.update(ONE_SECOND)
    policy["consensus_rounds"] = rounds
    policy.update(extra)
    return load_policy(policy)


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3]])
def test_consensus_on_a_and_two_permuted_copies_gives_back_a(audio: Path, weights) -> None:
    policy = _consensus_policy(2, model_weights=weights)
    a = load_model("builtin:hubert-tiny")
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    models = [a, _scrambled(a, plan, indexer, 5), _scrambled(a, plan, indexer, 6)]
    alignment = align_models(models, policy, [audio])
    rounds = alignment.consensus
    assert [r["round"] for r in rounds][:2] == [0, 1] and rounds[0]["measure"] == "correlation"
    # the copies agree exactly, so every matched correlation is 1 (dead units give 0)
    assert rounds[-1]["objective"] == pytest.approx(rounds[0]["objective"])
    assert rounds[-1]["changed"] == []  # nothing left to improve: refinement stops
    result = merge_all(alignment, models)
    assert result.weights == pytest.approx(weights)
    err = max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())
    assert err < 1e-4


def _frames(analysis, plan, models, adapter, sources, batch_size):
    """Every site's activations of every model on the calibration data: {key: [X_m]}."""
    from graphperm.inputs import step_mask
    from graphperm.stats import SiteRunner, frame_layout, valid_frames

    sites = {(s.key, s.dim): s for s in plan.sites()}
    values = sorted({k for k, _ in sites})
    runner = SiteRunner(analysis.traced.program, values, float_dtype=torch.float64)
    out: dict = {k: [[] for _ in models] for k in sites}

    def wide(x: dict) -> dict:  # forwards in float64, as the fp64 statistics run them
        return {k: v.double() if v.is_floating_point() else v for k, v in x.items()}

    for batch in adapter.calibration(sources).batches(batch_size):
        for m, model in enumerate(models):
            acts = dict(zip(values, runner(wide(model.state_dict()), wide(batch.inputs))))
            for key, site in sites.items():
                layout = frame_layout(analysis, site)
                act = acts[key[0]]
                full = act.shape[layout.time] if layout.time is not None else 0
                ok = step_mask(batch.mask, full) if full else batch.mask.any(1, keepdim=True)
                out[key][m].append(valid_frames(act, layout, ok).double())
    return {k: [torch.cat(x) for x in v] for k, v in out.items()}


def test_correlation_with_the_average_of_the_others_matches_brute_force(audio: Path) -> None:
    """The correlation of model i with the weighted average of the others' standardised,
    aligned units, from the pair statistics alone, equals the one computed from the raw
    activations (three independent random-init tiny HuBERTs, random permutations, fp64)."""
    from graphperm.solve.consensus import correlation_with_others, site_indices
    from graphperm.stats import calibrate

    policy = _consensus_policy(
        1, calibration={**ONE_SECOND["calibration"], "max_frame_rate": None, "precision": "fp64"}
    )
    models = [load_model("builtin:hubert-tiny", random_init=True, seed=s) for s in (0, 1, 2)]
    adapter, analysis, plan = prepare(models[0], policy)
    stats, _ = calibrate(analysis, plan, models, adapter, [audio], every_pair=True)
    indexer = Indexer(analysis)
    shapes = indexer.shapes()
    perms = [Permutation(), random_permutation(shapes, seed=3), random_permutation(shapes, seed=4)]
    frames = _frames(analysis, plan, models, adapter, [audio], policy.calibration.batch_size)
    weights = [0.2, 0.5, 0.3]
    checked = 0
    for key, xs in frames.items():
        idx = site_indices(indexer, key, perms)
        std = [(x - x.mean(0)) / x.std(0, unbiased=False) for x in xs]
        assert all(torch.isfinite(u).all() for u in std)  # no dead unit at these sites
        for i in range(3):
            rest = sum(w for j, w in enumerate(weights) if j != i)
            z = sum(weights[j] / rest * std[j][:, idx[j]] for j in range(3) if j != i)
            zc = (z - z.mean(0)) / z.std(0, unbiased=False)
            brute = zc.T @ std[i] / zc.shape[0]
            ours = correlation_with_others(stats.site(key), idx, i, weights)
            assert torch.allclose(ours, brute, atol=1e-8), (key, i)
            checked += 1
    assert checked >= 3 * 4


def test_consensus_objective_never_decreases_on_three_random_models(audio: Path) -> None:
    models = [load_model("builtin:hubert-tiny", random_init=True, seed=s) for s in (0, 1, 2)]
    policy = _consensus_policy(4)
    alignment = align_models(models, policy, [audio])
    rounds = alignment.consensus
    objectives = [r["objective"] for r in rounds]
    assert len(rounds) >= 2
    assert all(b >= a - 1e-12 for a, b in zip(objectives, objectives[1:])), objectives
    assert objectives[-1] > objectives[0]  # independent models: the consensus does move them
    assert all(len(r["with_others"]) == 3 for r in rounds)
    # the reports follow the refined permutations
    for perm, rows in zip(alignment.perms, alignment.model_reports):
        assert all(r.moved_fraction == perm.moved_fraction(r.name) for r in rows)
    merged = merge_all(alignment, models)
    assert all(c.ok for c in merged.checks)


def test_consensus_with_weight_matching(audio: Path) -> None:
    """MergeMany proper: each model weight-matched to the mean of the others' weights; the
    objective (weighted mean cosine of every pair's weights) never decreases; the oracle holds."""
    policy = _consensus_policy(3, method="weights")
    models = [load_model("builtin:hubert-tiny", random_init=True, seed=s) for s in (0, 1, 2)]
    rounds = align_models(models, policy).consensus
    objectives = [r["objective"] for r in rounds]
    assert rounds[0]["measure"] == "weights_cosine" and len(rounds) >= 2
    assert all(b >= a - 1e-12 for a, b in zip(objectives, objectives[1:])), objectives

    a = models[0]
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    copies = [a, _scrambled(a, plan, indexer, 5), _scrambled(a, plan, indexer, 6)]
    result = merge_all(align_models(copies, policy), copies, weights=[0.2, 0.5, 0.3])
    err = max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())
    assert err < 1e-4


def test_two_models_ignore_consensus(audio: Path) -> None:
    """With two models the average of the others is A itself: nothing to refine, and the
    statistics stay each-against-A."""
    policy = _consensus_policy(3)
    a = load_model("builtin:hubert-tiny", random_init=True, seed=0)
    b = load_model("builtin:hubert-tiny", random_init=True, seed=1)
    alignment = align_models([a, b], policy, [audio])
    assert alignment.consensus == []
    key = alignment.stats.site_keys()[0]
    assert alignment.stats.site(key).pairs == ((0, 1),)


def test_consensus_on_the_command_line(audio: Path, tmp_path: Path) -> None:
    out = merge_three(audio, tmp_path, "--consensus-rounds", "2")
    report = json.loads((out / "merge_report.json").read_text())
    rounds = report["consensus"]
    assert [r["round"] for r in rounds][:2] == [0, 1] and len(rounds) <= 3
    assert "consensus_s" in report["timings_s"]
    assert "- consensus refinement" in (out / "README.md").read_text()
    saved = (out / "policy.yaml").read_text()
    assert "consensus_rounds: 2" in saved and "0.25" in saved  # reproducible as written


def test_negative_consensus_rounds(audio: Path, tmp_path: Path) -> None:
    _bad(
        [*TINY, "--random-init", "--calib", str(audio), "--consensus-rounds", "-1"],
        "--consensus-rounds must be 0 or more",
        tmp_path / "o",
    )


def test_compose_is_applying_one_permutation_then_the_other() -> None:
    from graphperm.solve.consensus import compose

    a = load_model("builtin:hubert-tiny")
    _, analysis, _ = prepare(a, load_policy("paper"))
    indexer = Indexer(analysis)
    p, q = (random_permutation(indexer.shapes(), seed=s) for s in (1, 2))
    state = a.state_dict()
    twice = permute_state(indexer, permute_state(indexer, state, p), q)
    once = permute_state(indexer, state, compose(analysis, p, q))
    assert any(not torch.equal(v, state[k]) for k, v in once.items())
    assert all(torch.equal(v, twice[k]) for k, v in once.items())


@pytest.mark.parametrize("method", ["activations", "weights"])
def test_consensus_alone_recovers_two_permuted_copies(audio: Path, method: str) -> None:
    """Started from no alignment at all, the rounds alone bring π₁(A) and π₂(A) back onto A
    when A weighs most (each copy's target is then mostly A): the objective climbs from near
    0 (correlations) or below 1 (weight cosines) to 1, and the permuted copies equal A."""
    from graphperm.solve import refine
    from graphperm.stats import calibrate

    policy = _consensus_policy(5, method=method)
    a = load_model("builtin:hubert-tiny")
    adapter, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    models = [a, _scrambled(a, plan, indexer, 5), _scrambled(a, plan, indexer, 6)]
    stats = None
    if method == "activations":
        stats, _ = calibrate(analysis, plan, models, adapter, [audio], every_pair=True)
    perms, history = refine(
        analysis,
        plan,
        [Permutation(), Permutation()],
        stats=stats,
        states=[m.state_dict() for m in models],
        weights=[0.5, 0.25, 0.25],
        rounds=5,
    )
    objectives = [h.objective for h in history]
    assert objectives[0] < 0.9 and objectives[-1] == pytest.approx(1.0, abs=1e-6), objectives
    assert all(b >= a - 1e-12 for a, b in zip(objectives, objectives[1:]))
    assert history[-1].changed == []
    for model, perm in zip(models[1:], perms):
        state = permute_state(indexer, model.state_dict(), perm)
        assert max(float((state[k] - v).abs().max()) for k, v in a.state_dict().items()) < 1e-6


# ------------------------------------------- a model with no input recipe, calibrated from tensors


class _CustomEncoder(torch.nn.Module):
    """No transformers config, no input recipe: only a .safetensors file can feed it."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 32)
        self.down = torch.nn.Linear(32, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


def test_a_model_with_no_recipe_is_traced_and_merged_from_calibration_tensors(
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    from graphperm.errors import ModelLoadError
    from graphperm.inputs import TensorAdapter

    torch.manual_seed(0)
    batches = tmp_path / "batches.safetensors"
    save_file({"x": torch.randn(24, 5, 8)}, str(batches))
    policy = load_policy({"align": [{"kind": "ffn"}], "calibration": {"batch_size": 4}})
    a = load_model(_CustomEncoder())
    with pytest.raises(ModelLoadError, match="no example-input recipe"):
        prepare(a, policy)  # nothing to trace it on
    adapter, analysis, plan = prepare(a, policy, calib=[batches])
    assert isinstance(adapter, TensorAdapter) and [t.kind for t in plan.targets] == ["ffn"]
    secret = Permutation({"up": {"channels": torch.randperm(32, generator=torch.Generator())}})
    b = load_model(_CustomEncoder())
    b.module.load_state_dict(permute_state(Indexer(analysis), a.state_dict(), secret))
    models = [a, b, load_model(_CustomEncoder())]
    models[2].module.load_state_dict(b.state_dict())
    alignment = align_models(models, policy, [batches])
    assert alignment.calibration["items"] == 24
    result = merge_all(alignment, models, weights=[0.5, 0.25, 0.25])
    err = max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())
    assert err < 1e-6
