"""Cheaper statistics, measured the honest way (issue 22, item 2).

    python examples/benchmarks/reductions.py A B [--clips 128] [--out reductions.json]
    python examples/benchmarks/reductions.py --timing [--clips 16]   # HuBERT base, random

Each reduction of the statistics pass (fewer frames at wide sites, bf16) is judged by the
permutations it gives: their agreement with the default path's (fp32, every frame) on the same
clips, next to the default path's own **split-half agreement** (the permutations from one half
of the clips against those from the other half: how much the answer moves with the data alone).
A reduction whose agreement with the default stays at or above the split-half agreement changes
the answer less than drawing other clips would.

A and B must be trained models that share an architecture (on random weights the split-half
agreement is ~0, and "within the noise" would mean nothing): e.g. the loss-barrier testbed's
pair (a), ``examples/barrier/checkpoints/speech-seed1`` and ``speech-seed2``. The clips come from
``../shared/data/audio`` (speech and music). Per kind of group, agreement is the size-weighted
mean over its groups.

``--timing`` measures what each reduction saves on HuBERT base (random weights: the cost does
not depend on the weights): the statistics pass over the plain forwards of A and B on the same
batches, one right after the other in one process, in wall and in CPU seconds (steadier on a
loaded machine); with ``--repeat`` the best ratio of several rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch
from whisper_packing import recovered  # this folder's script: units put back right, per group

from graphperm.apply import Indexer, permute_state, random_permutation
from graphperm.merge import prepare
from graphperm.policy import load_policy
from graphperm.runtime import reuse_heap
from graphperm.solve import agreement, solve
from graphperm.stats import collect
from graphperm.stats.calibrate import own_length_graphs
from graphperm.trace import load_model

SHARED = Path(os.environ.get("GRAPHPERM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
AUDIO = [SHARED / "data/audio/speech", SHARED / "data/audio/music"]

#: name -> keyword arguments of ``collect`` beyond the defaults
VARIANTS: dict[str, dict] = {
    "default (fp32, every frame)": {},
    "fp64 (reference)": {"precision": "fp64"},
    "every 2nd frame at FFN-wide sites": {"wide_strides": "ffn:2"},
    "every 4th frame at FFN-wide sites": {"wide_strides": "ffn:4"},
    "every 2nd frame at every transformer site": {"wide_strides": "hidden:2"},
    "bf16 (forwards and products)": {"precision": "bf16"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="A and B (folders or builtin: names)")
    parser.add_argument("--clips", type=int, default=128, help="clips of 4 s")
    parser.add_argument("--policy", default="paper")
    parser.add_argument("--timing", action="store_true", help="cost on HuBERT base instead")
    parser.add_argument(
        "--planted",
        type=float,
        metavar="NOISE",
        help="one trained model A; B = A + NOISE x each tensor's std, then permuted at random: "
        "also report how many units each variant puts back (the right answer)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="--timing: rounds (best kept)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.timing:
        result = _timing(args)
    else:
        if len(args.models) != (1 if args.planted is not None else 2):
            parser.error("give two trained models A and B (one with --planted; or --timing)")
        result = _agreement(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def _setup(a_name: str, b_name: str, policy_name: str, clips: int, noise: float | None = None):
    policy = load_policy(policy_name)
    cal = policy.calibration.model_copy(update={"num_clips": clips})
    policy = policy.model_copy(update={"calibration": cal})
    builtin = a_name.startswith("builtin:")  # random weights: two seeds
    a = load_model(a_name, **({"seed": 0} if builtin else {}))
    b = load_model(b_name, **({"seed": 1} if builtin else {}))
    adapter, analysis, plan = prepare(a, policy)
    planted = None
    if noise is not None:  # B = A + noise, permuted at random
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for t in b.module.parameters():
                t.add_(torch.randn(t.shape, generator=g) * noise * t.std().nan_to_num(0.0))
        ix = Indexer(analysis)
        planted = random_permutation(ix.shapes(), seed=1)
        b.module.load_state_dict(permute_state(ix, b.state_dict(), planted))
    data = adapter.calibration(AUDIO)
    batches = list(data.batches(cal.batch_size))
    programs = own_length_graphs(analysis, plan, a, data.dynamic) if data.dynamic else None
    return policy, a, b, adapter, analysis, plan, batches, programs, planted


def _kwargs(variant: dict, analysis, plan, adapter, cal, programs) -> dict:
    kw = dict(
        precision=cal.precision,
        max_frames_per_row=adapter.max_steps(cal.max_frame_rate),
        programs=programs,
    )
    kw.update({k: v for k, v in variant.items() if k != "wide_strides"})
    if "wide_strides" in variant:
        where, k = variant["wide_strides"].split(":")
        widths = _widths(analysis, plan)
        kw["wide_strides"] = {widths[where]: int(k)}
    return kw


def _widths(analysis, plan) -> dict[str, int]:
    """The FFN sites' width and the narrowest transformer (attention or FFN) site's width."""
    by_kind: dict[str, set[int]] = defaultdict(set)
    for t in plan.targets:
        for s in t.sites:
            by_kind[t.kind].add(analysis.coupling.tensors[s.key].shape[s.dim])
    return {"ffn": min(by_kind["ffn"]), "hidden": min(by_kind["ffn"] | by_kind["attn"])}


def _by_kind(plan, analysis, agree: dict[str, float]) -> dict[str, float]:
    sizes = {g.name: g.size for g in analysis.groups}
    kinds: dict[str, list[str]] = defaultdict(list)
    for g in agree:
        kinds[next(iter(plan.by_group()[g].values())).kind].append(g)
    out = {
        k: round(sum(agree[g] * sizes[g] for g in gs) / sum(sizes[g] for g in gs), 4)
        for k, gs in sorted(kinds.items())
    }
    out["all"] = round(sum(agree[g] * sizes[g] for g in agree) / sum(sizes[g] for g in agree), 4)
    return out


def _agreement(args) -> dict:
    models = args.models if args.planted is None else args.models * 2
    policy, a, b, adapter, analysis, plan, batches, programs, planted = _setup(
        models[0], models[1], args.policy, args.clips, args.planted
    )
    cal = policy.calibration
    states = [dict(a.state_dict()), dict(b.state_dict())]
    sites = plan.sites()
    perms, seconds = {}, {}
    for name, variant in VARIANTS.items():
        kw = _kwargs(variant, analysis, plan, adapter, cal, programs)
        t = time.perf_counter()
        try:
            stats = collect(analysis, sites, states, batches, **kw)
        except RuntimeError as err:  # record it, measure the rest
            seconds[name] = f"failed: {str(err).splitlines()[0]}"
            continue
        seconds[name] = round(time.perf_counter() - t, 1)
        perms[name], _ = solve(plan, analysis, stats, reports=False)
        print(f"{name}: {seconds[name]} s", flush=True)
    # the default path's split-half agreement at the same number of clips
    kw = _kwargs({}, analysis, plan, adapter, cal, programs)
    halves = collect(analysis, sites, states, batches, split_half=True, **kw)
    p0, _ = solve(plan, analysis, halves.half(0), reports=False)
    p1, _ = solve(plan, analysis, halves.half(1), reports=False)
    ref = perms["default (fp32, every frame)"]
    found = {}
    if args.planted is not None:
        found = {
            "planted_noise": args.planted,
            "recovered (units put back where the planted permutation took them)": {
                name: _by_kind(plan, analysis, recovered(plan, analysis, planted, perm))
                for name, perm in perms.items()
            },
        }
    return {
        "date": date.today().isoformat(),
        "models": args.models,
        **found,
        "policy": args.policy,
        "clips": args.clips,
        "batches": len(batches),
        "widths": _widths(analysis, plan),
        "split_half_agreement (default path)": _by_kind(
            plan, analysis, agreement(plan, analysis, p0, p1)
        ),
        "agreement_with_default": {
            name: _by_kind(plan, analysis, agreement(plan, analysis, perms[name], ref))
            for name in perms
            if name != "default (fp32, every frame)"
        },
        "statistics_s (loaded machine: compare with --timing)": seconds,
    }


def _timing(args) -> dict:
    model = args.models[0] if args.models else "builtin:hubert-base"
    policy, a, b, adapter, analysis, plan, batches, programs, _ = _setup(
        model, model, args.policy, args.clips
    )
    cal = policy.calibration
    states = [dict(a.state_dict()), dict(b.state_dict())]
    sites = plan.sites()

    def forwards() -> tuple[float, float]:
        t, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for x in batches:
                for m in (a.module, b.module):
                    m(**x.inputs)
        return time.perf_counter() - t, time.process_time() - cpu

    forwards()  # warm-up
    out = {}
    for _ in range(args.repeat):  # rounds over the variants: load drifts between rounds
        for name, variant in VARIANTS.items():
            if name.startswith("fp64"):
                continue
            kw = _kwargs(variant, analysis, plan, adapter, cal, programs)
            plain, plain_cpu = forwards()
            t, cpu = time.perf_counter(), time.process_time()
            with reuse_heap():  # as graphperm's calibration runs it
                collect(analysis, sites, states, batches, **kw)
            took, took_cpu = time.perf_counter() - t, time.process_time() - cpu
            best = out.get(name, {"ratio": float("inf"), "cpu_ratio": float("inf")})
            out[name] = {
                "ratio": min(best["ratio"], round(took / plain, 3)),
                "cpu_ratio": min(best["cpu_ratio"], round(took_cpu / plain_cpu, 3)),
            }
            print(name, round(took, 1), round(plain, 1), out[name], flush=True)
    return {
        "date": date.today().isoformat(),
        "model": model,
        "clips": args.clips,
        "load_average": os.getloadavg(),
        "statistics_over_forwards": out,
    }


if __name__ == "__main__":
    main()
