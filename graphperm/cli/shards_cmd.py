"""``graphperm stats`` and ``graphperm solve``: calibrate in shards anywhere, solve once.

Any scheduler (a Slurm array, Ray, a shell loop) can run ``graphperm stats ... --shard i/n`` for
each ``i``; ``graphperm solve stats_*.safetensors --out DIR`` adds the shards and writes the same
permutations, policy and report as ``graphperm align``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graphperm import __version__
from graphperm.cli.common import (
    add_merge_args,
    choose_policy,
    load_cli_model,
    policy_from_args,
    print_alignment,
    say,
    scoped_policy,
    user_inputs,
)
from graphperm.errors import OutputExistsError, UsageError
from graphperm.merge import check_same_architecture, finish_alignment, fold_models, prepare
from graphperm.output import check_not_an_input, check_output, output_folder, save_alignment
from graphperm.policy import load_policy
from graphperm.stats import calibrate
from graphperm.stats.io import load_statistics, save_statistics
from graphperm.trace import load_model

STATS_HELP = "collect the statistics of one shard of the calibration audio into a file"
SOLVE_HELP = "add statistics files of any number of shards and solve (like `graphperm align`)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help=STATS_HELP, description=STATS_HELP)
    add_merge_args(p, out_help="statistics file to write (.safetensors)")
    p.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="this shard of N (clips, texts or images I, I+N, I+2N, ...; Whisper: packed "
        "windows); default 0/1",
    )
    p.set_defaults(func=run_stats)
    return p


def add_solve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("solve", help=SOLVE_HELP, description=SOLVE_HELP)
    p.add_argument(
        "stats",
        nargs="+",
        type=Path,
        metavar="STATS",
        help="statistics files written by `graphperm stats`",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=run_solve)
    return p


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard '{text}' is not I/N (e.g. 0/4)") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard '{text}': I must be in 0..N-1")
    return i, n


def run_stats(args: argparse.Namespace) -> int:
    shard = _shard(args.shard)
    check_not_an_input(args.out, user_inputs(args))
    if args.out.is_dir():
        raise UsageError(f"--out '{args.out}' is a folder; name the statistics file to write")
    if args.out.exists() and not args.force:
        raise OutputExistsError(f"'{args.out}' exists; choose another --out or pass --force")
    if args.policy is not None:  # the models load in the policy's scope (or --scope)
        args.policy_scope = policy_from_args(args).scope
    a = load_cli_model(args, args.model_a, seed=0)
    choose_policy(args, a)
    policy = scoped_policy(policy_from_args(args), a)
    b = load_cli_model(args, args.model_b, seed=args.seed_b)
    check_same_architecture(a, b)
    adapter, analysis, plan = prepare(a, policy, where=args.policy)
    fold_models([a, b], analysis, plan)  # as `align` does: measure what differs by rotations
    stats, calibration = calibrate(
        analysis,
        plan,
        [a, b],
        adapter,
        args.calib,
        progress=not args.quiet,
        shard=shard,
        device=args.device,
    )
    meta = {
        "graphperm": __version__,
        "model_a": args.model_a,
        "model_b": args.model_b,
        "random_init": args.random_init,
        "seed_b": args.seed_b,
        "policy": policy.model_dump(mode="json"),
        "sites": sorted(f"{k}:{d}" for k, d in stats.site_keys()),
        "shard": list(shard),
        "calibration": calibration,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_statistics(stats, args.out, meta)
    say(
        f"shard {shard[0]}/{shard[1]}: {calibration['description']}",
        f"statistics of {len(meta['sites'])} sites written to {args.out}",
    )
    return 0


def run_solve(args: argparse.Namespace) -> int:
    check_output(args.out, args.force, user_inputs(args))
    loaded = [load_statistics(p) for p in args.stats]
    stats, meta = loaded[0]
    for path, (other, m) in zip(args.stats[1:], loaded[1:]):
        for field in ("model_a", "model_b", "policy", "sites", "random_init", "seed_b"):
            if m.get(field) != meta.get(field):
                raise UsageError(
                    f"'{path}' was collected with another {field.replace('_', ' ')}"
                    f" than '{args.stats[0]}'; solve shards of one job together"
                )
        stats = stats.merge(other)
    shards = sorted(tuple(m["shard"]) for _, m in loaded)
    if len(set(shards)) != len(shards):
        raise UsageError(f"the same shard was given twice ({shards}); pass each shard once")
    policy = load_policy(meta["policy"])
    scope = policy.scope or "whole"  # as `stats` loaded them
    a = load_model(meta["model_a"], random_init=meta["random_init"], seed=0, scope=scope)
    _, analysis, plan = prepare(a, policy)
    wanted = sorted(f"{s.key}:{s.dim}" for s in plan.sites())
    if wanted != meta["sites"]:
        raise UsageError(
            "the statistics do not match model A's sites under this graphperm "
            "version; collect them again"
        )
    item = next(iter(meta["calibration"]), "items")  # the adapter's noun: clips, texts, ...
    calibration = {item: stats.items, "shards": len(loaded)}
    if "seconds" in meta["calibration"]:
        calibration["seconds"] = round(sum(m["calibration"]["seconds"] for _, m in loaded), 3)
    amount = f" ({calibration['seconds']:.1f} s)" if "seconds" in calibration else ""
    calibration["description"] = f"{stats.items} {item}{amount} in {len(loaded)} shard(s)"
    # the weights break ties between units the statistics cannot separate, as in `align`
    b = load_model(
        meta["model_b"], random_init=meta["random_init"], seed=meta["seed_b"], scope=scope
    )
    fold_models([a, b], analysis, plan)
    alignment = finish_alignment(
        analysis,
        plan,
        stats,
        calibration,
        {},
        (meta["model_a"], meta["model_b"]),
        states=[a.state_dict(), b.state_dict()],
    )
    with output_folder(args.out, force=args.force, inputs=user_inputs(args)) as tmp:
        save_alignment(alignment, tmp)
    print_alignment(alignment)
    say(f"permutations written to {args.out / 'permutations.safetensors'}")
    return 0
