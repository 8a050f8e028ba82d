"""How often Sinkhorn matching differs from the linear assignment, per group, and whether the
matched correlation (on the same statistics) is higher or lower.

    python examples/sinkhorn/compare.py                       # the demo speech/music encoders
    python examples/sinkhorn/compare.py builtin:hubert-tiny builtin:hubert-tiny
    python examples/sinkhorn/compare.py --steps 100      # fewer optimisation steps (300)

One calibration pass; both methods solve the same statistics. Prints one row per group: units
placed differently, and the mean matched correlation of each solution.
"""

from __future__ import annotations

import argparse
from importlib.resources import files

import graphperm.solve.sinkhorn as sinkhorn
from graphperm.merge import align
from graphperm.policy import load_policy
from graphperm.solve import Problem, get_method
from graphperm.trace import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="A and B (default: the demo encoders)")
    parser.add_argument("--steps", type=int, default=sinkhorn.STEPS, help="Sinkhorn steps")
    parser.add_argument("--clips", type=int, default=32, help="calibration clips of 1 s")
    args = parser.parse_args()
    sinkhorn.STEPS = args.steps
    assets = files("graphperm") / "assets"
    specs = args.models or [str(assets / "encoders" / "speech"), str(assets / "encoders" / "music")]
    calib = [str(assets / "demo" / "calib")]
    a, b = load_model(specs[0]), load_model(specs[1], seed=1)
    policy = load_policy("paper").model_dump()
    policy["calibration"].update(clip_seconds=1.0, num_clips=args.clips)
    policy["tie_margin"] = 0.0  # compare the assignments themselves
    alignment = align(a, b, policy, calib)
    problem = Problem(alignment.analysis, alignment.plan, 1, alignment.stats)
    lap = get_method("activations").align(problem).perm
    soft = get_method("sinkhorn").align(problem)
    total = differ = 0
    print(f"{'group':44s} {'part':6s} {'units':>5s} {'differ':>6s}")
    for group, parts in lap.perms.items():
        for part, p in parts.items():
            q = soft.perm.get(group, part)
            n, d = p.numel(), int((p != q).sum())
            total, differ = total + n, differ + d
            print(f"{group:44s} {part:6s} {n:5d} {d:6d}")
    print(f"all parts: {differ} of {total} units placed differently ({100 * differ / total:.1f}%)")
    for r_soft, r_lap in zip(soft.reports, alignment.reports):
        print(
            f"{r_lap.name:44s} matched corr: assignment {r_lap.corr_after:.4f}, "
            f"sinkhorn {r_soft.corr_after:.4f}"
        )


if __name__ == "__main__":
    main()
