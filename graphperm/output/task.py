"""Writing a task-arithmetic merge: the model folder, ``merge_report.json`` (the combination,
each model's distance from the base, warnings), the policy's combine settings and a card.

Example:
    >>> import tempfile, pathlib
    >>> from graphperm.merge import task_arithmetic
    >>> from graphperm.trace import load_model
    >>> base = load_model("builtin:hubert-tiny")
    >>> result = task_arithmetic(base, [load_model("builtin:hubert-tiny", seed=0)])
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "ta"
    >>> sorted(p.name for p in save_task_arithmetic(result, folder).iterdir())
    ['README.md', 'config.json', 'merge_report.json', 'model.safetensors']
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from graphperm import __version__
from graphperm.merge import TaskArithmeticResult
from graphperm.output.folder import output_folder
from graphperm.output.save import write_model

__all__ = ["save_task_arithmetic", "task_card", "write_task_arithmetic"]


def write_task_arithmetic(result: TaskArithmeticResult, folder: Path, command: str = "") -> None:
    """Write the merged model and its report into ``folder`` (created by the model's save)."""
    write_model(folder, result.model_a, result.state)
    report = {"graphperm": __version__, **result.to_dict()}
    (folder / "merge_report.json").write_text(json.dumps(report, indent=2))
    (folder / "README.md").write_text(task_card(report, command))


def save_task_arithmetic(
    result: TaskArithmeticResult, out: str | Path, *, force: bool = False, command: str = ""
) -> Path:
    """:func:`write_task_arithmetic` into ``out``, all or nothing."""
    out = Path(out)
    with output_folder(out, force=force) as tmp:
        write_task_arithmetic(result, tmp / "model", command)
        for p in (tmp / "model").iterdir():
            p.rename(tmp / p.name)
        (tmp / "model").rmdir()
    return out


def task_card(report: dict, command: str) -> str:
    """The model card of a task-arithmetic merge, from its report."""
    front = {
        "library_name": "transformers",
        "tags": ["graphperm", "merge", "task-arithmetic"],
        "base_model": [report["base"], *report["models"]],
    }
    c = report["combine"]
    how = {
        "interpolate": "plain sums",
        "ties": f"TIES (trim below the {c['quantile']:g} quantile, elected sign, disjoint mean)",
        "dare": f"DARE (drop {c['drop']:g}, seed {c['seed']})",
    }.get(c["method"], c["method"])
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# Task arithmetic of {len(report['models'])} {report['model_class']} models",
        "",
        f"Made with graphperm {report['graphperm']}: merged = base + {c['scale']:g}·Σ w·(model − "
        f"base), task vectors combined by {how}; base `{report['base']}`.",
        "",
        "| model | weight | distance from base (relative) | median cosine with base |",
        "|---|---|---|---|",
    ]
    for w, d in zip(report["weights"], report["distance_from_base"]):
        lines.append(
            f"| {d['model']} | {w:g} | {d['relative_distance']:.4f} | {d['median_cosine']:.3f} |"
        )
    lines += ["", *(f"Warning: {w}" for w in report["warnings"])]
    if command:
        lines += ["", "## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(lines)
