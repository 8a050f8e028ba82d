"""The merged folder's ``README.md``: a Hugging Face model card (YAML front matter, then the
source models, policy, method, weights, a per-kind summary of ``merge_report.json`` and the
command that reproduces the merge).

Example:
    >>> card = model_card(report_dict_example(), "graphperm merge A B --out m")
    >>> card.splitlines()[:3]
    ['---', 'library_name: transformers', 'tags:']
    >>> "| ffn | 1 | 0.500 | 0.100 | 0.900 |" in card
    True
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import yaml

__all__ = [
    "command_line",
    "kind_summary",
    "model_card",
    "permuted_card",
    "permuted_report",
    "report_dict_example",
]


def command_line(
    sources: Sequence[str],
    *,
    policy: str,
    weights: Sequence[float],
    calib: Sequence[str] = (),
    out: str = "OUT",
) -> str:
    """An equivalent ``graphperm merge`` line (for merges made through the library).

    Example:
        >>> command_line(["a", "b"], policy="paper", weights=[0.9, 0.1], calib=["x/"])
        'graphperm merge a b --policy paper --weights 0.9 0.1 --calib x/ --out OUT'
    """
    parts = ["graphperm", "merge", *sources, "--policy", policy]
    parts += ["--weights", *(f"{w:g}" for w in weights)]
    for c in calib:
        parts += ["--calib", c]
    parts += ["--out", out]
    return shlex.join(parts)


def kind_summary(groups: list[dict]) -> list[dict]:
    """Per group kind: how many groups, mean moved fraction, mean correlation before/after."""
    out: dict[str, list[dict]] = {}
    for g in groups:
        out.setdefault(g["kind"], []).append(g)

    def mean(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return [
        {
            "kind": kind,
            "groups": len(rows),
            "moved_fraction": mean(rows, "moved_fraction"),
            "corr_before": mean(rows, "corr_before"),
            "corr_after": mean(rows, "corr_after"),
        }
        for kind, rows in out.items()
    ]


def _is_hub_id(source: str) -> bool:
    """``org/name`` that is not a local path (what a hub model card's ``base_model`` takes)."""
    from pathlib import Path

    return (
        source.count("/") == 1
        and not source.startswith((".", "/", "~", "builtin:"))
        and not Path(source).exists()
    )


def _overridden(report: dict, weights: Sequence[float]) -> str:
    """A note when the merge did not use the policy's own weights (its description names
    them)."""
    own = report.get("policy_weights")
    if own is None or [round(w, 6) for w in own] == [round(w, 6) for w in weights]:
        return ""
    listed = "/".join(f"{w:g}" for w in own)
    return f" (the policy's weights {listed} were replaced by the weights above)"


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _table(groups: list[dict]) -> list[str]:
    lines = [
        "| kind | groups | mean moved fraction | mean corr before | mean corr after |",
        "|---|---|---|---|---|",
    ]
    for row in kind_summary(groups):
        lines.append(
            f"| {row['kind']} | {row['groups']} | {_fmt(row['moved_fraction'])} | "
            f"{_fmt(row['corr_before'])} | {_fmt(row['corr_after'])} |"
        )
    return lines


def model_card(report: dict, command: str, *, config: bool = True) -> str:
    """The card's text from ``merge_report.json``'s content and the reproducing command
    (``config``: the folder holds a ``merge.yaml`` that re-runs the merge)."""
    sources = report.get("models") or [report["model_a"], report["model_b"]]
    weights = report.get("weights") or [report["weight_a"], 1.0 - report["weight_a"]]
    front: dict = {"library_name": "transformers", "tags": ["graphperm", "merge"]}
    hub = [s for s in sources if _is_hub_id(s)]  # a local path is no base_model to link
    if hub:
        front["base_model"] = hub
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# Merge of {len(sources)} {report['model_class']} encoders",
        "",
        f"Made with graphperm {report['graphperm']}: every model after the first had its units "
        "permuted into the first model's basis (permutation groups derived from the exported "
        "graph), then the weights were interpolated.",
        "",
        "## Source models",
        "",
        "| model | weight |",
        "|---|---|",
    ]
    lines += [f"| {s} | {w:g} |" for s, w in zip(sources, weights)]
    cal = report.get("calibration") or {}
    lines += [
        "",
        "## Policy and method",
        "",
        f"- policy: {report['policy']}" + _overridden(report, weights),
        f"- alignment method: {report['method']}",
    ]
    if cal.get("description"):
        lines.append(f"- calibration data: {cal['description']}")
    combine = report.get("combine") or {}
    if combine.get("method", "interpolate") != "interpolate":
        settings = ", ".join(f"{k} {v}" for k, v in combine.items() if k != "method")
        lines.append(f"- combination: {combine['method']} ({settings}) instead of interpolation")
    rounds = report.get("consensus")
    if rounds:
        first, last = rounds[0], rounds[-1]
        lines.append(
            f"- consensus refinement (each model re-aligned to the average of the others): "
            f"{last['round']} round(s), objective ({first['measure']}) "
            f"{first['objective']:.3f} → {last['objective']:.3f}"
        )
    agreement = report.get("weight_agreement_by_model") or (
        {sources[1]: report["weight_agreement"]} if report.get("weight_agreement") else {}
    )
    for source, figure in agreement.items():
        if figure:
            lines.append(
                f"- weights of {source} against {sources[0]} (cosine of the weight matrices "
                f"alignment moves): {figure['before']:.3f} before, {figure['after']:.3f} after"
            )
    learn = (report.get("method_report") or {}).get("learn")
    if learn:
        lines.append(
            f"- learned alignment ({learn['objective']} objective, {learn['steps']} steps): "
            f"held-out objective {learn['heldout_before']:.4g} → {learn['heldout_after']:.4g}, "
            f"training {learn['train_before']:.4g} → {learn['train_after']:.4g}"
            + (
                f" (on {learn['train_batches_evaluated']} of {learn['train_batches']} batches)"
                if learn.get("train_batches_evaluated", learn["train_batches"])
                != learn["train_batches"]
                else ""
            )
            + f" (best at step {learn['best_step']}; 0 = the start was kept)"
        )
    repair = report.get("repair")
    if repair and repair.get("units"):
        lines.append(
            f"- REPAIR (not an exact transform): {repair['units']} hidden units in "
            f"{repair['layers']} layers rescaled; their statistics' distance from the "
            f"parents' interpolated {repair['mismatch_before']:.3g} → "
            f"{repair['mismatch_after']:.3g}"
        )
    zipit = report.get("zipit")
    if zipit:
        within = ", ".join(
            f"{sum(p['within_model_merges'][m] for p in zipit['parts'])} within {source}"
            for m, source in enumerate(sources)
        )
        lines.append(
            f"- ZipIt! (not an exact transform; alpha {zipit['alpha']:g}, beta "
            f"{zipit['beta']:g}) on {len(zipit['parts'])} part(s): merges {within} "
            "(per part in merge_report.json)"
        )
        for row in zipit.get("merged_then_unmerged_rel_error") or []:
            source, err = row["model"], row["rel_error"]
            shown = "n/a (an output is zipped)" if err is None else f"{err:.3g}"
            lines.append(
                f"  - {source} merged then unmerged, against itself on calibration data: "
                f"relative output error {shown}"
            )
    ver = report.get("verification")
    if ver is not None:
        state = "passed" if ver["ok"] else "FAILED"
        lines.append(
            f"- check (permuted models compute what they computed): {state}, "
            f"max rel error {ver['max_rel_error']:.2g}"
        )
    lines += ["", "## Alignment summary (from `merge_report.json`)", ""]
    by_model = report.get("groups_by_model")
    if by_model:
        for source, groups in by_model.items():
            lines += [f"{source} into {sources[0]}:", "", *_table(groups), ""]
    elif report.get("groups"):
        lines += [*_table(report["groups"]), ""]
    else:
        lines += ["No group was aligned (plain interpolation).", ""]
    lines += ["## Reproduce", ""]
    if config:
        lines += [
            "`merge.yaml` holds everything that made this merge (models, policy, calibration "
            "sources, weights, seeds, dtype); run it again with:",
            "",
            "```bash",
            "graphperm merge --config merge.yaml --out merged-again/",
            "```",
            "",
        ]
    lines += [
        "The command that made it:",
        "",
        "```bash",
        command,
        "```",
        "",
        "The folder also holds the permutations (`permutations*.safetensors`), the policy "
        "(`policy.yaml`, accepted by `--policy`) and the full report (`merge_report.json`).",
        "",
    ]
    return "\n".join(lines)


def permuted_report(model: str, perms: str, check) -> dict:
    """What ``graphperm apply`` without ``--merge-into`` writes as ``apply_report.json``:
    the model, the permutations file and the check (a ``VerifyReport``)."""
    from graphperm import __version__

    return {
        "graphperm": __version__,
        "model": model,
        "permutations": perms,
        "verification": {
            "ok": check.ok,
            "max_abs_error": check.max_abs,
            "max_rel_error": check.max_rel,
        },
    }


def permuted_card(report: dict, command: str) -> str:
    """The card of a model with saved permutations applied (no merge)."""
    ver = report["verification"]
    state = "passed" if ver["ok"] else "FAILED"
    return "\n".join(
        [
            "---",
            yaml.safe_dump({"library_name": "transformers", "tags": ["graphperm"]}).rstrip(),
            "---",
            "",
            f"# {report['model']} with its units permuted",
            "",
            f"Made with graphperm {report['graphperm']}: the weights of {report['model']} with the "
            f"permutations of `{report['permutations']}` applied (copied here as "
            "`permutations.safetensors`). It computes the same function, up to the same "
            f"permutation of its outputs: check {state}, max rel error {ver['max_rel_error']:.2g}.",
            "",
            "## Reproduce",
            "",
            "```bash",
            command,
            "```",
            "",
        ]
    )


def report_dict_example() -> dict:
    """A minimal ``merge_report.json`` content (for examples and tests)."""
    return {
        "graphperm": "0",
        "model_a": "a",
        "model_b": "b",
        "model_class": "BertModel",
        "policy": "p",
        "method": "correlation",
        "weight_a": 0.5,
        "groups": [
            {"kind": "ffn", "moved_fraction": 0.5, "corr_before": 0.1, "corr_after": 0.9},
        ],
    }
