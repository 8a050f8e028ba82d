"""Writing results: the merged model as a ``save_pretrained`` folder, the permutations, the
resolved policy and ``merge_report.json``.

Example:
    >>> result = merge_models(align(a, b, "paper", ["audio/"]), a, b)   # doctest: +SKIP
    >>> save_merge(result, "merged/")                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from graphperm import __version__
from graphperm.errors import VerificationError
from graphperm.merge.results import Alignment, MergeResult
from graphperm.output.card import command_line, model_card
from graphperm.output.folder import output_folder
from graphperm.trace import LoadedModel, tie_groups

__all__ = ["report_dict", "save_alignment", "save_merge", "write_model"]


def save_alignment(alignment: Alignment, folder: Path) -> None:
    """Write ``permutations.safetensors`` (one per model after A for three or more models:
    ``permutations.safetensors`` for the second, ``permutations_2.safetensors`` for the third,
    ...), the resolved ``policy.yaml`` and ``merge_report.json`` (without merge-specific
    fields) into ``folder``."""
    a = alignment.analysis.traced.loaded
    for k, perm in enumerate(alignment.perms):
        name = "permutations.safetensors" if k == 0 else f"permutations_{k + 1}.safetensors"
        perm.save(
            folder / name,
            metadata={
                "graphperm": __version__,
                "model_class": type(a.module).__name__,
                "model_a": alignment.sources[0],
                "model_b": alignment.sources[k + 1],
            },
        )
    resolved = alignment.plan.to_dict()
    (folder / "policy.yaml").write_text(
        "# The policy as graphperm resolved it for this merge (defaults filled in).\n"
        + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    )
    (folder / "merge_report.json").write_text(json.dumps(report_dict(alignment), indent=2))


def report_dict(alignment: Alignment, result: MergeResult | None = None) -> dict:
    """The content of ``merge_report.json``."""
    policy = alignment.policy
    out = {
        "graphperm": __version__,
        "model_a": alignment.sources[0],
        "model_b": alignment.sources[1],
        "model_class": type(alignment.analysis.traced.loaded.module).__name__,
        "policy": policy.description or "custom",
        "method": alignment.method,
        "weight_a": result.weight_a if result is not None else policy.weight_a,
        "calibration": alignment.calibration,
        "groups": [r.to_dict() for r in alignment.reports],
        "unmeasured": alignment.plan.unmeasured,
        "warnings": alignment.analysis.warnings,
        "timings_s": {k: round(v, 3) for k, v in alignment.timings.items()},
    }
    if alignment.models > 2:
        out["models"] = list(alignment.sources)
        out["groups_by_model"] = {
            alignment.sources[k + 1]: [r.to_dict() for r in rows]
            for k, rows in enumerate(alignment.model_reports)
        }
        if result is not None:
            out["weights"] = result.weights
        if alignment.consensus:
            out["consensus"] = alignment.consensus
    if result is not None:
        out["timings_s"].update({k: round(v, 3) for k, v in result.timings.items()})
        if result.check is not None:
            out["verification"] = {
                "ok": all(c.ok for c in result.checks),
                "max_abs_error": max(c.max_abs for c in result.checks),
                "max_rel_error": max(c.max_rel for c in result.checks),
            }
    return out


def write_model(
    folder: Path,
    loaded: LoadedModel,
    state: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save ``loaded``'s whole model with ``state`` (keys relative to the traced module) in place
    of the traced module's weights, as a ``save_pretrained`` folder (config + safetensors).

    Keys that are one tensor in the model (tied embeddings) are written as one tensor, with
    the value ``state`` gives them.
    ``rest`` (full keys) replaces tensors outside the traced module (a merged decoder)."""
    full = dict(loaded.model.state_dict())
    full.update(rest or {})
    new = {loaded.prefix + k: v for k, v in state.items()}
    full.update(new)
    for keys in tie_groups(loaded.model.state_dict()):
        given = [k for k in keys if k in new]
        value = full[given[0] if given else keys[0]]
        for k in given[1:]:
            if full[k] is not value and not torch.equal(full[k], value):
                raise VerificationError(
                    f"'{given[0]}' and '{k}' are one tensor in the model but were given "
                    "different values; nothing was written. This is a graphperm bug: please "
                    "report it"
                )
        full.update({k: value for k in keys})
    with loaded.as_loaded() as model:  # its own config, not the settings graphperm ran it with
        model.save_pretrained(folder, state_dict=full, safe_serialization=True)
    prep = Path(loaded.source) / "preprocessor_config.json"
    if prep.is_file():
        shutil.copy(prep, folder / prep.name)


def save_merge(
    result: MergeResult, out: str | Path, *, force: bool = False, command: str | None = None
) -> Path:
    """Write the merged model folder (loadable with ``AutoModel.from_pretrained``), the
    permutations, the resolved policy, the report and a model card (``README.md``; ``command``
    is the command line that made the merge, else an equivalent one is written); all or
    nothing."""
    out = Path(out)
    with output_folder(out, force=force) as tmp:
        write_model(tmp, result.model_a, result.state, result.rest)
        save_alignment(result.alignment, tmp)
        report = report_dict(result.alignment, result)
        (tmp / "merge_report.json").write_text(json.dumps(report, indent=2))
        if command is None:
            command = command_line(
                result.alignment.sources,
                policy=str(out / "policy.yaml"),  # the resolved policy, written here
                weights=result.weights,
                calib=["CALIB"] if result.alignment.calibration else [],
                out=str(out),
            )
        (tmp / "README.md").write_text(model_card(report, command))
    return out
