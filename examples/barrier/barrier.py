"""Loss barriers: merge two independently trained models at lambda = 0, 0.1, ..., 1 and
evaluate the merged model's own loss on held-out data.

    python examples/barrier/barrier.py                   # every pair and method
    python examples/barrier/barrier.py --pair b --method plain --method paper

lambda is the weight of A: merged = lambda * A + (1 - lambda) * B' (B' = B aligned to A).
barrier(lambda) = loss(lambda) - [lambda * loss(1) + (1 - lambda) * loss(0)], the loss above
the straight line between the end points; reported are its value at 0.5 and its maximum.
Writes results/barrier.json (a list `runs`: pair, method, lambdas, losses, barrier_mid,
barrier_max, and what the alignment found), results/barrier.md and results/barrier.png.

Methods are pluggable: `METHODS` maps a name to a function (a, b, calib) -> Merger, whose
`module(lam)` is the merged module at weight lam of A. Add one there and nothing else changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import images  # noqa: E402
import speech  # noqa: E402
import text  # noqa: E402

from graphperm.analysis import analyse  # noqa: E402
from graphperm.apply import fold_state, folds_for  # noqa: E402
from graphperm.inputs import ModelBatch  # noqa: E402
from graphperm.learn import learn_alignment  # noqa: E402
from graphperm.merge import Alignment, align, finish_alignment, merge_models  # noqa: E402
from graphperm.policy import Combine, Learn, Policy, Repair, load_policy, resolve  # noqa: E402
from graphperm.solve import get_method  # noqa: E402
from graphperm.stats import collect, reference_pairs  # noqa: E402
from graphperm.trace import LoadedModel, trace  # noqa: E402

RESULTS = HERE / "results"
LAMBDAS = [round(i / 10, 1) for i in range(11)]
CALIBRATION: dict[str, Any] = {}  # policy calibration overrides for audio (default: 256 x 4 s)

# A calibration set: audio files/folders (what graphperm's `align` reads today), or ready-made
# model-input batches (one dict of tensors per forward pass, all of one shape).
Calib = Sequence[str | Path] | Sequence[dict[str, torch.Tensor]]


# ------------------------------------------------------------------------------ alignment glue
def find_alignment(a: LoadedModel, b: LoadedModel, policy: Policy, calib: Calib) -> Alignment:
    """B's permutations towards A under ``policy``, from ``calib``.

    Audio goes through graphperm's own `align`. For ready-made batches (images), which graphperm
    cannot calibrate from yet, the same steps run by hand through the public lower-level API:
    trace A on the batch shape, analyse, resolve the policy, fold the norms the plan's rotations
    pass through (both models, in place, as `align_models` does), collect statistics of A and B
    at the plan's sites (float64 where rotated), solve. This is the one function to swap for
    graphperm's calibration from in-memory batches if it gets one.
    """
    if all(isinstance(c, str | Path) for c in calib):
        return align(a, b, policy, list(calib), where=policy.description or "policy")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    analysis = analyse(trace(a, calib[0]))
    plan = resolve(policy, analysis)
    folds = folds_for(analysis, plan.rotated)
    for m in (a, b):
        fold_state(m.state_dict(), folds, inplace=True)
    timings["trace_analysis_s"] = time.perf_counter() - start
    states = [a.state_dict(), b.state_dict()]
    if "correlation" not in get_method(policy.method).needs:
        return finish_alignment(
            analysis, plan, None, {}, timings, (a.source, b.source), states=states
        )
    n = next(iter(calib[0].values())).shape[0]
    batches = (
        ModelBatch(inputs, mask=torch.ones(n, 1, dtype=torch.bool), items=n) for inputs in calib
    )
    rotated = {(s.key, s.dim) for t in plan.targets if t.transform == "orth" for s in t.sites}
    pairs = reference_pairs(2, within=bool(plan.zipped))  # ZipIt! pools each model with itself
    stats = collect(
        analysis,
        plan.sites(),
        states,
        batches,
        split_half=True,
        float64_sites=rotated,
        pairs=pairs,
    )
    timings["statistics_s"] = stats.elapsed
    info = {"images": stats.items, "description": f"{stats.items} ready-made inputs"}
    return finish_alignment(
        analysis, plan, stats, info, timings, (a.source, b.source), states=states
    )


def kinds_of(a: LoadedModel, calib: Calib) -> set[str]:
    """The group kinds graphperm finds in A (traced on a calibration-shaped input)."""
    inputs = calib[0] if isinstance(calib[0], dict) else None
    if inputs is None:
        inputs = {"input_values": torch.randn(2, 16000) * 0.1}
    return {g.kind for g in analyse(trace(a, inputs)).groups}


def policy_for(rules: list[dict], kinds: set[str], description: str) -> Policy:
    """A policy of the ``rules`` whose kind the model has (ViT has no conv group, and a rule
    that selects nothing is an error), with calibration defaults."""
    return load_policy(
        {
            "version": 1,
            "description": description,
            "align": [r for r in rules if r["kind"] in kinds],
            "calibration": CALIBRATION,
        }
    )


# ------------------------------------------------------------------------------------ methods
class Merger(Protocol):
    def module(self, lam: float) -> nn.Module:
        """The merged module at weight ``lam`` of A."""
        ...


@dataclass
class AlignedMerger:
    """Interpolation of A and B' (B permuted by ``alignment``; no permutations = plain
    averaging). graphperm checks B' against B on every merge."""

    alignment: Alignment
    a: LoadedModel
    b: LoadedModel
    info: dict[str, Any] = field(default_factory=dict)

    def module(self, lam: float) -> nn.Module:
        return merge_models(self.alignment, self.a, self.b, weight_a=lam).module()


def _aligned(
    rules: list[dict], description: str, how: str = "activations", combine: str = "interpolate"
) -> Callable[..., AlignedMerger]:
    def method(a: LoadedModel, b: LoadedModel, calib: Calib) -> AlignedMerger:
        policy = policy_for(rules, kinds_of(a, calib), description)
        policy = policy.model_copy(update={"method": how, "combine": Combine(method=combine)})
        start = time.perf_counter()
        alignment = find_alignment(a, b, policy, calib)
        info = {
            "align_seconds": round(time.perf_counter() - start, 1),
            "policy": [r.model_dump(exclude_defaults=True) for r in policy.align],
            "calibration": alignment.calibration.get("description"),
            "rotated": sorted(f"{g}/{p}" for g, p in alignment.perms[0].rotated)
            if alignment.perms
            else [],
            "groups": {
                r.name: {
                    "kind": r.kind,
                    "moved_fraction": _round(r.moved_fraction),
                    "corr_before": _round(r.corr_before),
                    "corr_after": _round(r.corr_after),
                    "split_half_agreement": _round(r.split_half_agreement),
                }
                for r in alignment.reports
            },
        }
        if alignment.zip_reports:  # ZipIt!: merges within each model, summed over parts
            info["zipit_within_merges"] = [
                sum(p["within_model_merges"][m] for p in alignment.zip_reports) for m in (0, 1)
            ]
            info["zipit_across_merges"] = sum(
                p["across_model_merges"] for p in alignment.zip_reports
            )
        return AlignedMerger(alignment, a, b, info)

    return method


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def plain(a: LoadedModel, b: LoadedModel, calib: Calib) -> AlignedMerger:
    """No alignment: lambda * A + (1 - lambda) * B."""
    policy = load_policy({"version": 1, "description": "plain averaging", "align": []})
    return AlignedMerger(find_alignment(a, b, policy, calib), a, b)


PAPER_RULES = [  # specs/paper.yaml
    {"kind": "conv", "site": "pre"},
    {"kind": "attn", "parts": ["heads", "vo"], "site": "post"},
    {"kind": "ffn", "site": "post"},
]
ALL_RULES = [  # every group but the heads' outputs ("other": class/unit logits)
    {"kind": "conv"},
    {"kind": "attn"},  # heads, qk and vo
    {"kind": "ffn"},
    {"kind": "residual"},
]

# every group, the residual stream rotated (any orthogonal matrix) where the analysis proves it
# exact (pre-LN: norm gains folded into their readers; the all-ones direction kept for LayerNorm's
# centring); where it does not (post-LN HuBERT), the residual stream is permuted as in ``all``
ORTH_RULES = [*ALL_RULES[:-1], {"kind": "residual", "transform": "orth"}]
# every part the analysis proves rotatable rotated: also the attention qk/vo channels per head
# (specs/orth.yaml without the heads' output logits)
ORTH_ALL_RULES = [{**r, "transform": "orth"} for r in ALL_RULES]
# the heads' qk/vo channels rotated, everything else (the residual stream too) permuted
ORTH_ATTN_RULES = [{**r, "transform": "orth"} if r["kind"] == "attn" else r for r in ALL_RULES]


def first(rules: list[dict]) -> list[dict]:
    """``rules`` with the residual stream measured at its first site only (`at: first`: as the
    embedding wrote it, before any layer added to it) instead of at every reader."""
    return [{**r, "at": "first"} if r["kind"] == "residual" else r for r in rules]


LEARN = {"steps": 200, "lr": 0.02, "eval_every": 10, "holdout": 0.25}
LEARN_BATCHES = 8  # of the image pairs' 32 images: 6 to learn on, 2 held out
AUDIO_BATCH = 8  # 1-s training crops per batch of pair (a)'s own loss
# the longer settings (issue 21, second pass): more images (64 or 96 batches of 32 drawn from
# the training seed, a quarter held out) and more steps
LEARN_LONG = {**LEARN, "steps": 800, "eval_every": 20}
LEARN_SITES = {**LEARN, "steps": 1200, "eval_every": 20, "objective": "sites"}


def _learned(
    rules: list[dict],
    description: str,
    *,
    start: str = "hybrid",
    steps: int | None = None,
    labels: bool = False,
    repair: bool = False,
    settings: dict | None = None,
    n_batches: int = LEARN_BATCHES,
    kl: str | None = None,
    audio_items: int = 64,
) -> Callable[..., AlignedMerger]:
    """``start``'s alignment, then (``steps`` > 0) learned alignment through the merged model:
    label-free (the merged model reproduces its parents' outputs interpolated), or with
    ``labels`` the model's own loss: the classifiers' cross-entropy on labelled training
    images, the language models' next-byte loss on the calibration text, pair (a)'s masked
    prediction of its training audio's k-means units (``n_batches`` batches of
    ``AUDIO_BATCH`` crops); with ``kl``
    (``"mixture"`` or ``"logits"``), KL divergence of the merged model's output distribution
    from the parents' (their mixture, or the softmax of their mean logits: no labels; pair (a):
    the mixture, both heads, on the crops and masks of its own loss); with
    ``repair``, REPAIR after every merge. ``audio_items``: the clips learned on (pair a)."""
    base = _aligned(rules, description, how=start)
    settings = {**(settings or LEARN)}
    if steps is not None:
        settings["steps"] = steps
    steps = settings["steps"]

    def method(a: LoadedModel, b: LoadedModel, calib: Calib) -> AlignedMerger:
        audio = isinstance(calib[0], (str, Path))
        if audio and not labels and not kl:  # audio: graphperm's own pipeline does it all
            policy = policy_for(rules, kinds_of(a, calib), description).model_copy(
                update={
                    "method": "learned" if steps else start,
                    "learn": Learn(start=start, **settings, items=audio_items),
                    "repair": Repair(enabled=repair),
                    "weight_a": 0.5,
                }
            )
            t = time.perf_counter()
            alignment = find_alignment(a, b, policy, calib)
            info = {"align_seconds": round(time.perf_counter() - t, 1)}
            if alignment.method_reports:
                info["learn"] = alignment.method_reports[0].get("learn")
            return AlignedMerger(alignment, a, b, info | {"data": "calibration"})
        merger = base(a, b, calib)
        alignment = merger.alignment
        info = dict(merger.info)
        t = time.perf_counter()
        if steps:
            batches, loss_fn = list(calib[:n_batches]), None
            if labels and audio:  # pair (a)'s own objective: units of the audio, masked
                batches = speech.SpeechTask().training_batches(n_batches, AUDIO_BATCH)
                loss_fn = speech.own_loss
            elif audio:  # label-free: the same crops and masks, the parents' predictions
                crops = speech.SpeechTask().training_batches(n_batches, AUDIO_BATCH)
                batches = speech.with_targets(a.module, b.module, crops)
                loss_fn = speech.distill_loss
            elif labels:
                batches, loss_fn = _labelled(calib, n_batches), _cross_entropy
            elif kl:  # label-free: KL to the parents' next-byte / class distributions
                batches, loss_fn = _with_targets(a, b, _more(calib, n_batches), kl), _kl
            elif n_batches > len(calib):  # more items than calibration has: a longer draw
                batches = _more(calib, n_batches)
            perm, report = learn_alignment(
                alignment.analysis,
                [a, b],
                alignment.perms[0],
                batches,
                Learn(start=start, **settings),
                weight_a=0.5,
                loss_fn=loss_fn,
                plan=alignment.plan,
                progress=True,
            )
            alignment.perms[0] = perm
            info["learn"] = report.to_dict()
        if repair and audio:
            raise SystemExit("REPAIR after labelled learning is wired for the image and text pairs")
        if repair:
            policy = alignment.plan.policy.model_copy(
                update={"repair": Repair(enabled=True, items=n_batches * 32)}
            )
            alignment.plan = dataclasses.replace(alignment.plan, policy=policy)
            alignment.batches = list(calib[:n_batches])
        info["learn_seconds"] = round(time.perf_counter() - t, 1)
        # a language model's own loss reads the calibration text and nothing else; pair (a)'s
        # reads the training audio's k-means units: the testbed's targets, counted as labels
        info["data"] = (
            "labels" if labels and (audio or "pixel_values" in calib[0]) else "calibration"
        )
        return AlignedMerger(alignment, a, b, info)

    return method


def _more(calib: Calib, n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` unlabelled batches of the calibration's kind (a longer draw where ``n`` exceeds
    what the calibration holds)."""
    if n <= len(calib):
        return list(calib[:n])
    if "input_ids" in calib[0]:  # text: n * size windows evenly spaced over the training text
        return text.TextTask().calib(n * calib[0]["input_ids"].shape[0])
    return [{"pixel_values": x["pixel_values"]} for x in _labelled(calib, n)]


def _labelled(calib: Calib, n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of the image pairs' training images with their labels (a draw of
    ``n`` batches from the training seed: the images depend on how many are drawn); for the
    language models, ``n`` batches of training windows whose labels are their own bytes (the
    model shifts them: its next-byte loss)."""
    if "input_ids" in calib[0]:
        return [{**x, "labels": x["input_ids"]} for x in _more(calib, n)]
    size = next(iter(calib[0].values())).shape[0]
    x, y = images.draw(n * size, images.TRAIN_SEED)
    return [
        {"pixel_values": x[i : i + size], "labels": y[i : i + size]}
        for i in range(0, n * size, size)
    ]


def _cross_entropy(model: Callable[..., Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def _logits(model: Callable[..., Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k != "target_logp"}).logits


def _with_targets(
    a: LoadedModel, b: LoadedModel, batches: list[dict[str, torch.Tensor]], kind: str
) -> list[dict[str, torch.Tensor]]:
    """``batches`` with the parents' log-probabilities at λ = 0.5 attached (``target_logp``):
    the mixture of their distributions (``mixture``) or the softmax of their mean logits
    (``logits``). B's outputs (classes, bytes) are not permuted, so these need no alignment."""
    out = []
    with torch.no_grad():
        for x in batches:
            la, lb = (_logits(m.module, x).log_softmax(-1) for m in (a, b))
            if kind == "mixture":
                t = torch.logaddexp(la, lb) - torch.log(torch.tensor(2.0))
            else:
                t = (0.5 * (la + lb)).log_softmax(-1)  # log_softmax drops the constants
            out.append({**x, "target_logp": t})
    return out


def _kl(model: Callable[..., Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(target || merged), mean over the positions: the merged model's distribution should
    be its parents' (no labels)."""
    logq = _logits(model, batch).log_softmax(-1)
    t = batch["target_logp"]
    return (t.exp() * (t - logq)).sum(-1).mean()


METHODS: dict[str, Callable[[LoadedModel, LoadedModel, Calib], Merger]] = {
    "plain": plain,
    "paper": _aligned(PAPER_RULES, "the paper policy: conv + attention heads/vo + FFN"),
    "all": _aligned(ALL_RULES, "every group: conv + attention heads/qk/vo + FFN + residual"),
    "weights": _aligned(
        ALL_RULES, "data-free weight matching (git re-basin) of every group", how="weights"
    ),
    "hybrid": _aligned(
        ALL_RULES, "every group, activation correlation + weight cost", how="hybrid"
    ),
    "orth": _aligned(ORTH_RULES, "every group, residual stream rotated (activations)"),
    "orth-weights": _aligned(
        ORTH_RULES, "every group, residual stream rotated (data-free weights)", how="weights"
    ),
    "orth-hybrid": _aligned(
        ORTH_RULES, "every group, residual stream rotated (activations + weights)", how="hybrid"
    ),
    "orth-all": _aligned(ORTH_ALL_RULES, "every group, every exact rotation (activations)"),
    "orth-all-weights": _aligned(
        ORTH_ALL_RULES, "every group, every exact rotation (data-free weights)", how="weights"
    ),
    "orth-all-hybrid": _aligned(
        ORTH_ALL_RULES, "every group, every exact rotation (activations + weights)", how="hybrid"
    ),
    # the residual stream measured where the embedding writes it (`at: first`)
    "all-first": _aligned(first(ALL_RULES), "every group, residual at its first site"),
    "hybrid-first": _aligned(
        first(ALL_RULES), "every group, residual at its first site, + weights", how="hybrid"
    ),
    "orth-first": _aligned(
        first(ORTH_RULES), "every group, residual rotated, measured at its first site"
    ),
    "orth-all-first": _aligned(
        first(ORTH_ALL_RULES), "every exact rotation, residual measured at its first site"
    ),
    # issue 20: the paper code's other tools on the best post-LN recipe (every group)
    "all-sinkhorn": _aligned(ALL_RULES, "every group, Sinkhorn matching", how="sinkhorn"),
    "all-ties": _aligned(ALL_RULES, "every group, then TIES (paper code's rule)", combine="ties"),
    "all-dare": _aligned(ALL_RULES, "every group, then DARE (drop 0.5)", combine="dare"),
    "plain-ties": _aligned([], "no alignment, TIES (paper code's rule)", combine="ties"),
    "zipit": _aligned(
        [{**r, "transform": "zip"} for r in PAPER_RULES],
        "ZipIt! on the paper policy's groups (heads permuted, vo channels zipped within them)",
    ),
    "all-zipit": _aligned(
        [{**r, "transform": "zip"} for r in ALL_RULES],
        "ZipIt! on every group (heads permuted, qk/vo channels zipped within them)",
    ),
    "symmetric": _aligned(
        PAPER_RULES, "the paper policy's groups, symmetric matching on |corr|", how="symmetric"
    ),
    "orth-attn-hybrid-first": _aligned(
        first(ORTH_ATTN_RULES),
        "heads' qk/vo rotated, residual permuted and measured at its first site, + weights",
        how="hybrid",
    ),
    # past exact layer-by-layer transforms (graphperm.learn): learned alignment and REPAIR
    "learned": _learned(ALL_RULES, "hybrid, then learned end to end (no labels)"),
    "learned-orth": _learned(
        ORTH_ALL_RULES, "every exact rotation, hybrid, then learned end to end (no labels)"
    ),
    "repair": _learned(ALL_RULES, "hybrid + REPAIR", steps=0, repair=True),
    "orth-repair": _learned(
        ORTH_ALL_RULES, "every exact rotation, hybrid, + REPAIR", steps=0, repair=True
    ),
    "learned-orth-repair": _learned(
        ORTH_ALL_RULES, "every exact rotation, learned (no labels), + REPAIR", repair=True
    ),
    "learned-repair": _learned(ALL_RULES, "hybrid, learned (no labels), + REPAIR", repair=True),
    # the longer settings (issue 21, second pass)
    "learned-orth-long": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 2,048 images, 800 steps (no labels)",
        settings=LEARN_LONG,
        n_batches=64,
    ),
    "learned-orth-sites": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 3,072 images, 1,200 steps, outputs and every "
        "measured site (no labels)",
        settings=LEARN_SITES,
        n_batches=96,
    ),
    # pair (a) (HuBERT, a step ~20x a ViT step): the spec's objective, 100 steps, 64 clips
    "learned-orth-sites-100": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 64 clips (a quarter held out), 100 steps, "
        "outputs and every measured site (no labels)",
        settings={**LEARN_SITES, "steps": 100},
        n_batches=64 // 32,
    ),
    "learned-orth-outputs-300": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 64 clips (a quarter held out), 300 steps, "
        "outputs only (no labels)",
        settings={**LEARN, "steps": 300, "eval_every": 20},
    ),
    # pair (a) with git re-basin's estimator (proxy weights, matched to B at every step): its
    # assignments are index permutations, so the residual stream's per-block channels (which
    # the positional conv's grouped weight holds per group, and the score matrices cannot
    # move) are learned too
    "learned-orth-weights-sites-100": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 64 clips (a quarter held out), 100 steps, "
        "outputs and every measured site, proxy weights matched to B (git re-basin; no labels)",
        settings={**LEARN_SITES, "steps": 100, "estimator": "weights", "lr": 1e-4},
        n_batches=64 // 32,
    ),
    "learned-orth-weights-sites-300-lr1e-3": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 64 clips (a quarter held out), 300 steps at "
        "lr 1e-3, outputs and every measured site, proxy weights matched to B (no labels)",
        settings={**LEARN_SITES, "steps": 300, "estimator": "weights", "lr": 1e-3},
        n_batches=64 // 32,
    ),
    "learned-orth-labels-long": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, learned on the model's own loss, 2,048 images, 800 steps",
        labels=True,
        settings=LEARN_LONG,
        n_batches=64,
    ),
    # label-free KL to the parents' output distributions (softmax heads: pairs b-g), through
    # the API's loss_fn: the mixture of their distributions, or the softmax of their mean logits
    "learned-orth-kl": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 2,048 items, 800 steps, KL to the parents' "
        "mixture (no labels)",
        settings=LEARN_LONG,
        n_batches=64,
        kl="mixture",
    ),
    "learned-orth-kl-logits": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 2,048 items, 800 steps, KL to the softmax of "
        "the parents' mean logits (no labels)",
        settings=LEARN_LONG,
        n_batches=64,
        kl="logits",
    ),
    # pair (g) at what this machine allowed (a step ~5 s under load): 200 steps, 512 windows
    "learned-orth-kl-200": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 512 items (a quarter held out), 200 steps, "
        "KL to the parents' mixture (no labels)",
        settings={**LEARN, "steps": 200, "eval_every": 20},
        n_batches=16,
        kl="mixture",
    ),
    "learned-orth-sites-200": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 512 items (a quarter held out), 200 steps, "
        "outputs and every measured site (no labels)",
        settings={**LEARN_SITES, "steps": 200},
        n_batches=16,
    ),
    "learned-orth-sites-200-lr005": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 512 items, 200 steps at lr 0.005, outputs and "
        "every measured site (no labels)",
        settings={**LEARN_SITES, "steps": 200, "lr": 0.005},
        n_batches=16,
    ),
    "learned-orth-sites-200-lr005-act": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, activations (the best exact start on pair g), learned on 512 "
        "items, 200 steps at lr 0.005, outputs and every measured site (no labels)",
        start="activations",
        settings={**LEARN_SITES, "steps": 200, "lr": 0.005},
        n_batches=16,
    ),
    "learned-orth-sites-400-lr005": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 1,024 items, 400 steps at lr 0.005, outputs "
        "and every measured site (no labels)",
        settings={**LEARN_SITES, "steps": 400, "lr": 0.005},
        n_batches=32,
    ),
    "learned-orth-labels-200": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 512 items, 200 steps",
        labels=True,
        settings={**LEARN, "steps": 200, "eval_every": 20},
        n_batches=16,
    ),
    # a language model's own next-byte loss on more windows (2,048, a quarter held out): for
    # text, the model's own loss reads the calibration text and nothing else
    "learned-orth-lm-300-act": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, activations, learned on the model's own loss, 2,048 items, "
        "300 steps at lr 0.005",
        start="activations",
        labels=True,
        settings={**LEARN, "steps": 300, "lr": 0.005, "eval_every": 20},
        n_batches=64,
    ),
    # the language models' own loss from a policy (`learn.objective: next_token`: the text
    # alone), the step size decayed to 0 (`learn.schedule: cosine`); specs/learned-lm.yaml
    "learned-orth-next-token": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the LM's own next-token loss (no labels), "
        "2,048 windows, 600 steps at lr 0.005, cosine",
        settings={
            **LEARN,
            "steps": 600,
            "lr": 0.005,
            "eval_every": 20,
            "objective": "next_token",
            "schedule": "cosine",
        },
        n_batches=64,
    ),
    "learned-orth-next-token-4000": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the LM's own next-token loss (no labels), "
        "8,192 windows, 4,000 steps at lr 0.005, cosine",
        settings={
            **LEARN,
            "steps": 4000,
            "lr": 0.005,
            "eval_every": 100,
            "objective": "next_token",
            "schedule": "cosine",
        },
        n_batches=256,
    ),
    # the default label-free objective (the parents' outputs and sites) with the same steps
    "learned-orth-sites-600-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 2,048 items, 600 steps at lr 0.005, cosine, "
        "outputs and every measured site (no labels)",
        settings={**LEARN_SITES, "steps": 600, "lr": 0.005, "schedule": "cosine"},
        n_batches=64,
    ),
    "learned-orth-sites-600-cosine-lr02": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on 2,048 items, 600 steps at lr 0.02, cosine, "
        "outputs and every measured site (no labels)",
        settings={**LEARN_SITES, "steps": 600, "schedule": "cosine"},
        n_batches=64,
    ),
    "learned-orth-sites-600-cosine-lr02-repair": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned as specs/learned.yaml (no labels), + REPAIR",
        settings={**LEARN_SITES, "steps": 600, "schedule": "cosine"},
        n_batches=64,
        repair=True,
    ),
    "learned-orth-labels-600-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 2,048 items, 600 steps "
        "at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 600, "eval_every": 20, "schedule": "cosine"},
        n_batches=64,
    ),
    # the same, longer: 2,000 / 8,000 / 16,000 steps on 4,096 / 16,384 / 32,768 labelled training
    # images (a quarter held out; issue 21's 95 % goal)
    "learned-orth-labels-2000-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 4,096 items, 2,000 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 2000, "eval_every": 100, "schedule": "cosine"},
        n_batches=128,
    ),
    "learned-orth-labels-8000-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 16,384 items, 8,000 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 8000, "eval_every": 200, "schedule": "cosine"},
        n_batches=512,
    ),
    # pair (a)'s own pretraining loss (masked prediction of the audio's k-means units) on
    # 64 batches of 8 training crops of 1 s, a quarter held out
    "learned-orth-labels-300-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 512 crops, 300 steps "
        "at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 300, "eval_every": 20, "schedule": "cosine"},
        n_batches=64,
    ),
    "learned-orth-labels-1200-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 2,048 crops, 1,200 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 1200, "eval_every": 50, "schedule": "cosine"},
        n_batches=256,
    ),
    "learned-orth-labels-2400-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 4,096 crops, 2,400 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 2400, "eval_every": 100, "schedule": "cosine"},
        n_batches=512,
    ),
    "learned-orth-kl-1200-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned to reproduce the parents' unit predictions "
        "(KL to their mixture, no labels), 2,048 crops, 1,200 steps at lr 0.02, cosine",
        kl="mixture",
        settings={**LEARN, "steps": 1200, "eval_every": 50, "schedule": "cosine"},
        n_batches=256,
    ),
    "learned-orth-labels-16000-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 32,768 items, 16,000 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 16000, "eval_every": 400, "schedule": "cosine"},
        n_batches=1024,
    ),
    "learned-orth-labels-32000-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 65,536 items, 32,000 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 32000, "eval_every": 800, "schedule": "cosine"},
        n_batches=2048,
    ),
    "learned-orth-labels-48000-cosine": _learned(
        ORTH_ALL_RULES,
        "every exact rotation, hybrid, learned on the model's own loss, 98,304 items, 48,000 "
        "steps at lr 0.02, cosine",
        labels=True,
        settings={**LEARN, "steps": 48000, "eval_every": 1200, "schedule": "cosine"},
        n_batches=3072,
    ),
    "learned-labels": _learned(
        ALL_RULES, "hybrid, then learned on the model's own loss", labels=True
    ),
    "learned-orth-labels": _learned(
        ORTH_ALL_RULES, "every exact rotation, learned on the model's own loss", labels=True
    ),
}

#: What each method used besides the two models: nothing, calibration inputs, or labels.
DATA = {
    "plain": "none",
    "plain-ties": "none",
    "weights": "none",
    "orth-weights": "none",
    "orth-all-weights": "none",
}
LABELLED = {
    "learned-labels",
    "learned-orth-labels",
    "learned-orth-labels-long",
    "learned-orth-labels-300-cosine",
    "learned-orth-labels-600-cosine",
    "learned-orth-labels-1200-cosine",
    "learned-orth-labels-2000-cosine",
    "learned-orth-labels-2400-cosine",
    "learned-orth-labels-8000-cosine",
    "learned-orth-labels-16000-cosine",
    "learned-orth-labels-32000-cosine",
    "learned-orth-labels-48000-cosine",
}


# -------------------------------------------------------------------------------------- pairs
@dataclass
class Pair:
    name: str
    description: str
    load: Callable[[], tuple[LoadedModel, LoadedModel]]
    loss: Callable[[nn.Module], float]
    calib: Callable[[], Calib]
    train_logs: Callable[[], list[Path]]


def _speech_pair() -> Pair:
    task = speech.SpeechTask()
    return Pair(
        "a",
        "HuBERT-architecture speech encoders + unit heads (post-LN), seeds 1 and 2",
        lambda: (speech.load(speech.checkpoint(1)), speech.load(speech.checkpoint(2))),
        task.loss,
        lambda: task.calib,
        lambda: [speech.checkpoint(s) / "train_log.json" for s in (1, 2)],
    )


def _speech_pair_dense() -> Pair:
    """Pair (a) with its positional conv dense (`speech.dense_pos_conv`: the same functions),
    so that the residual stream may be permuted freely: what the conv's groups cost."""
    pair = _speech_pair()
    load = pair.load
    pair.name = "a-dense"
    pair.description += ", positional conv made dense (block-diagonal: the same functions)"
    pair.load = lambda: tuple(speech.dense_pos_conv(m) for m in load())
    return pair


def _image_pair(
    name: str = "b", width: int = images.CONFIG["hidden_size"], variant: str = ""
) -> Pair:
    task = images.ImageTask()
    recipe = f", recipe variant {variant}" if variant else ""
    return Pair(
        name,
        f"pre-LN ViT classifiers (width {width}{recipe}) on drawn shapes, seeds 1 and 2",
        lambda: tuple(images.load(images.checkpoint(s, width, variant)) for s in (1, 2)),
        task.loss,
        task.calib,
        lambda: [images.checkpoint(s, width, variant) / "train_log.json" for s in (1, 2)],
    )


# pairs (c) and (d): pair (b)'s recipe at 2.5x and 4x the width (`images.py train --width W`);
# pair (e): pair (b) with weight decay 0.5 (`images.py train --weight-decay 0.5 --variant wd05`);
# pair (f): pair (c) at a learning rate scaled to its width, 2e-3 * 96 / 240 = 8e-4
IMAGE_PAIRS = {"c": (240, ""), "d": (384, ""), "e": (96, "wd05"), "f": (240, "lr8e-4")}


def _text_pair(name: str = "g", variant: str = "") -> Pair:
    task = text.TextTask()
    head = "LM head of its own" if variant == "untied" else "LM head tied"
    return Pair(
        name,
        f"pre-LN GPT-2-style byte-level causal LMs ({head}) on local text, seeds 1 and 2",
        lambda: tuple(text.load(text.checkpoint(s, variant)) for s in (1, 2)),
        task.loss,
        task.calib,
        lambda: [text.checkpoint(s, variant) / "train_log.json" for s in (1, 2)],
    )


PAIRS: dict[str, Callable[[], Pair]] = {
    "a": _speech_pair,
    "a-dense": _speech_pair_dense,
    "b": _image_pair,
    **{n: (lambda n=n, w=w, v=v: _image_pair(n, w, v)) for n, (w, v) in IMAGE_PAIRS.items()},
    "g": _text_pair,
    "h": lambda: _text_pair("h", "untied"),
}


# ------------------------------------------------------------------------------------ barrier
def barrier(lambdas: list[float], losses: list[float]) -> list[float]:
    """Loss minus the straight line between the end points (lambda = 0: B', 1: A)."""
    first, last = losses[0], losses[-1]
    return [loss - (lam * last + (1 - lam) * first) for lam, loss in zip(lambdas, losses)]


def run(pair: Pair, method: str) -> dict:
    torch.manual_seed(0)
    a, b = pair.load()
    calib = pair.calib()
    start = time.perf_counter()
    merger = METHODS[method](a, b, calib)
    setup = time.perf_counter() - start
    losses = [pair.loss(merger.module(lam)) for lam in LAMBDAS]
    bar = barrier(LAMBDAS, losses)
    out = {
        "pair": pair.name,
        "method": method,
        "lambdas": LAMBDAS,
        "losses": [round(x, 5) for x in losses],
        "barrier": [round(x, 5) for x in bar],
        "barrier_mid": round(bar[LAMBDAS.index(0.5)], 5),
        "barrier_max": round(max(bar), 5),
        "seconds": round(time.perf_counter() - start, 1),
        "setup_seconds": round(setup, 1),
    }
    out |= getattr(merger, "info", {})
    out.setdefault("data", DATA.get(method, "calibration"))
    return out


# ------------------------------------------------------------------------------------ reports
def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# Loss barriers",
        "",
        "Merged model's own held-out loss at weight lambda of A (lambda = 1: A, 0: B');",
        "barrier = loss minus the straight line between the end points. Written by",
        "`python examples/barrier/barrier.py`.",
        "",
        "| pair | method | data | loss A | loss B | loss at 0.5 | barrier at 0.5 | max barrier |"
        " vs plain at 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plain_mid = {r["pair"]: r["barrier_mid"] for r in result["runs"] if r["method"] == "plain"}
    for r in result["runs"]:
        base = plain_mid.get(r["pair"])
        cut = f"{100 * (1 - r['barrier_mid'] / base):+.0f} % cut" if base else ""
        if r["method"] == "plain":
            cut = ""
        lines.append(
            f"| {r['pair']} | {r['method']} | {r.get('data', '')} | {r['losses'][-1]:.4f} | "
            f"{r['losses'][0]:.4f} | "
            f"{r['losses'][LAMBDAS.index(0.5)]:.4f} | {r['barrier_mid']:.4f} | "
            f"{r['barrier_max']:.4f} | {cut} |"
        )
    lines += ["", "Loss along lambda:", ""]
    lines.append("| pair | method | " + " | ".join(f"{x:.1f}" for x in LAMBDAS) + " |")
    lines.append("|---|---|" + "---|" * len(LAMBDAS))
    for r in result["runs"]:
        lines.append(
            f"| {r['pair']} | {r['method']} | " + " | ".join(f"{x:.3f}" for x in r["losses"]) + " |"
        )
    lines += ["", "![loss along lambda](barrier.png)", ""]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({r["pair"] for r in result["runs"]})
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 5 * rows), squeeze=False)
    for ax in axes.flat[len(pairs) :]:
        ax.axis("off")
    titles = result.get("pairs", {})
    colours = plt.get_cmap("tab20").colors  # one colour per method, the same in every panel
    for ax, p in zip(axes.flat, pairs):
        for r in result["runs"]:
            if r["pair"] == p:
                ax.plot(
                    r["lambdas"],
                    r["losses"],
                    marker="o",
                    markersize=3,
                    color=colours[list(METHODS).index(r["method"]) % len(colours)],
                    label=f"{r['method']} (barrier@0.5 {r['barrier_mid']:.3f})",
                )
        ax.set_xlabel("λ (weight of A)")
        ax.set_ylabel("held-out loss")
        ax.set_title(f"pair {p}: {titles.get(p, '')}", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", action="append", choices=sorted(PAIRS), help="default: all")
    parser.add_argument("--method", action="append", choices=list(METHODS), help="default: all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "barrier.json"
    result = json.loads(path.read_text()) if path.exists() else {"runs": []}
    result.setdefault("pairs", {})
    result.setdefault("training", {})
    for r in result["runs"]:  # runs from before the field: what their method uses
        r.setdefault(
            "data", "labels" if r["method"] in LABELLED else DATA.get(r["method"], "calibration")
        )
    for name in args.pair or sorted(PAIRS):
        pair = PAIRS[name]()
        result["pairs"][name] = pair.description
        result["training"][name] = [
            {k: v for k, v in json.loads(p.read_text()).items() if k != "log"}
            for p in pair.train_logs()
        ]
        for method in args.method or list(METHODS):
            print(f"pair {name}, {method} ...", file=sys.stderr, flush=True)
            r = run(pair, method)
            print(
                f"pair {name} {method}: barrier at 0.5 {r['barrier_mid']:.4f}, "
                f"max {r['barrier_max']:.4f} ({r['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
            keep = [x for x in result["runs"] if (x["pair"], x["method"]) != (name, method)]
            result["runs"] = sorted(
                [*keep, r], key=lambda x: (x["pair"], list(METHODS).index(x["method"]))
            )
            path.write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out / "barrier.md")
    try:
        plot(result, args.out / "barrier.png")
    except ImportError:  # the results are written; only the figure needs it
        print("no plot: pip install -e '.[examples]' (matplotlib)", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
