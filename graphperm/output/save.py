"""Writing results: the merged model as a ``save_pretrained`` folder, the permutations, the
resolved policy and ``merge_report.json``.

Example:
    >>> result = merge_models(align(a, b, "paper", ["audio/"]), a, b)   # doctest: +SKIP
    >>> save_merge(result, "merged/")                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from graphperm import __version__
from graphperm.errors import VerificationError
from graphperm.merge.results import Alignment, MergeResult
from graphperm.output.card import command_line, model_card
from graphperm.output.config import write_merge_config
from graphperm.output.extras import copy_extras, resolve_dtype
from graphperm.output.folder import output_folder
from graphperm.trace import LoadedModel, tie_groups

__all__ = ["report_dict", "save_alignment", "save_merge", "write_model", "write_policy"]


def save_alignment(alignment: Alignment, folder: Path, weights: list[float] | None = None) -> None:
    """Write ``permutations.safetensors`` (one per model after A for three or more models:
    ``permutations.safetensors`` for the second, ``permutations_2.safetensors`` for the third,
    ...), ``policy.yaml`` (the policy as used, with the merge's ``weights`` when given) and
    ``merge_report.json`` (without merge-specific fields) into ``folder``."""
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
    write_policy(folder / "policy.yaml", alignment, weights)
    (folder / "merge_report.json").write_text(json.dumps(report_dict(alignment), indent=2))


def write_policy(path: Path, alignment: Alignment, weights: list[float] | None = None) -> None:
    """The policy as used (defaults filled in, ``weights`` applied), readable back by
    ``--policy``; what it aligned in this model follows as comments."""
    policy = alignment.policy.with_weights(weights) if weights else alignment.policy
    lines = [
        "# The policy of this merge, defaults filled in: `--policy policy.yaml` uses it again.",
        yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
        "# What it aligned in this model (group / part: measured at):",
    ]
    for t in alignment.plan.targets:
        how = f" ({t.transform})" if t.transform != "perm" else ""
        sites = ", ".join(sorted({s.module for s in t.sites})) or "-"
        lines.append(f"#   {t.group} / {t.part}{how}: {t.role}, {sites}")
    lines += [f"#   not measured, left in place: {m}" for m in alignment.plan.unmeasured]
    path.write_text("\n".join(lines) + "\n")


def report_dict(alignment: Alignment, result: MergeResult | None = None) -> dict:
    """The content of ``merge_report.json``."""
    policy = alignment.policy
    out = {
        "graphperm": __version__,
        "model_a": alignment.sources[0],
        "model_b": alignment.sources[1],
        "model_class": type(alignment.analysis.traced.loaded.module).__name__,
        "policy": policy.description or "custom",
        "method": alignment.method if alignment.plan.targets else "none (plain interpolation)",
        "policy_weights": policy.base_weights(alignment.models),
        "weight_a": result.weight_a if result is not None else policy.weight_a,
        "combine": policy.combine.model_dump(mode="json"),
        "calibration": alignment.calibration,
        "groups": [r.to_dict() for r in alignment.reports],
        "unmeasured": alignment.plan.unmeasured,
        # every method: cosine of each model's weight matrices with A's, before/after alignment
        "weight_agreement": alignment.weight_agreement[0] if alignment.weight_agreement else {},
        "warnings": alignment.analysis.warnings,
        "timings_s": {k: round(v, 3) for k, v in alignment.timings.items()},
    }
    if alignment.models > 2:
        out["models"] = list(alignment.sources)
        out["groups_by_model"] = {
            alignment.sources[k + 1]: [r.to_dict() for r in rows]
            for k, rows in enumerate(alignment.model_reports)
        }
        out["weight_agreement_by_model"] = {
            alignment.sources[k + 1]: agreement
            for k, agreement in enumerate(alignment.weight_agreement)
        }
        if result is not None:
            out["weights"] = result.weights
        if alignment.consensus:
            out["consensus"] = alignment.consensus
    if alignment.method_reports:
        out["method_report"] = alignment.method_reports[0]
        if alignment.models > 2:
            out["method_reports"] = alignment.method_reports
    if alignment.zip_reports:
        zipit = alignment.policy.zipit
        out["zipit"] = {
            "alpha": zipit.alpha,
            "beta": zipit.beta,
            "note": "not an exact transform: no check of B′ for zipped parts; each model's "
            "merged-then-unmerged output is compared with its own on calibration data",
            "parts": alignment.zip_reports,
        }
        if result is not None and result.zip_errors:
            out["zipit"]["merged_then_unmerged_rel_error"] = [
                {"model": source, "rel_error": None if e is None else round(e, 8)}
                for source, e in zip(alignment.sources, result.zip_errors)
            ]
    if result is not None and result.repair is not None:
        out["repair"] = result.repair
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
    *,
    dtype: str | torch.dtype | None = "auto",
) -> None:
    """Save ``loaded``'s whole model with ``state`` (keys relative to the traced module) in place
    of the traced module's weights, as a ``save_pretrained`` folder (config + safetensors), in
    ``dtype`` (``auto``: the dtype the model was saved in), with the model's tokenizer,
    processor and generation files next to it.

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
    target = resolve_dtype(dtype, loaded.source)
    if target is not None:  # cast each tensor once, so tied keys stay one tensor
        cast: dict[int, torch.Tensor] = {}
        full = {
            k: cast.setdefault(id(v), v.to(target)) if v.is_floating_point() else v
            for k, v in full.items()
        }
    with loaded.as_loaded() as model:  # its own config, not the settings graphperm ran it with
        model.save_pretrained(folder, state_dict=full, safe_serialization=True)
    if target is not None:
        _set_config_dtype(folder / "config.json", target)
    copy_extras(loaded.source, folder)


def _dtype_name(dtype: str | torch.dtype | None) -> str:
    """``--dtype``'s spelling of ``dtype`` (None: the float32 the merge is computed in)."""
    if isinstance(dtype, str):
        return dtype
    return str(dtype or torch.float32).removeprefix("torch.")


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    """Say in ``config.json`` the dtype the weights were written in (save_pretrained writes the
    in-memory model's, float32)."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = name
    if "torch_dtype" in config:
        config["torch_dtype"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_merge(
    result: MergeResult,
    out: str | Path,
    *,
    force: bool = False,
    command: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    config: dict | None = None,
) -> Path:
    """Write the merged model folder (loadable with ``AutoModel.from_pretrained``), the
    permutations, the resolved policy, the report and a model card (``README.md``; ``command``
    is the command line that made the merge, else an equivalent one is written); all or
    nothing. ``dtype``: the weights' dtype (``auto``: model A's as saved; the merge itself is
    computed in float32). ``merge.yaml`` reproduces the merge with ``graphperm merge --config``;
    ``config`` adds what the result does not know (``calib`` sources, ``random_init``,
    ``seed_b``, ``trust_remote_code``)."""
    out = Path(out)
    sources = result.alignment.sources
    inputs = {f"model {k + 1}": source for k, source in enumerate(sources)}
    with output_folder(out, force=force, inputs=inputs) as tmp:
        write_model(tmp, result.model_a, result.state, result.rest, dtype=dtype)
        save_alignment(result.alignment, tmp, result.weights)
        report = report_dict(result.alignment, result)
        (tmp / "merge_report.json").write_text(json.dumps(report, indent=2))
        policy = result.alignment.policy.with_weights(result.weights)
        write_merge_config(
            tmp / "merge.yaml",
            {
                "models": list(sources),
                "policy": policy.model_dump(mode="json"),
                "weights": list(result.weights),
                "dtype": _dtype_name(dtype),
                **(config or {}),
            },
        )
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
