"""Shared command-line plumbing: model options, logging, error handling."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from graphperm.analysis import Analysis, analyse
from graphperm.distributed import is_main
from graphperm.errors import ModelLoadError
from graphperm.merge import Alignment
from graphperm.policy import Policy, default_policy, load_policy, policy_names
from graphperm.report import format_table
from graphperm.trace import SCOPES, LoadedModel, example_inputs, load_model, trace

__all__ = [
    "add_dtype_arg",
    "add_merge_args",
    "add_model_args",
    "analyse_model",
    "choose_policy",
    "load_cli_model",
    "policy_from_args",
    "print_alignment",
    "say",
    "scoped_policy",
    "setup_logging",
    "user_inputs",
]


def add_model_args(
    p: argparse.ArgumentParser, *, names: tuple[str, ...] = ("model",), optional: bool = False
) -> None:
    for name in names:
        p.add_argument(
            name,
            metavar=name.upper(),
            nargs="?" if optional else None,
            help="a folder saved with save_pretrained, a hub id, or builtin:NAME",
        )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="build the model(s) from config alone, with seeded random weights",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a checkpoint's own model code to run (off by default)",
    )
    p.add_argument(
        "--scope",
        choices=list(SCOPES),
        help="encoder–decoder models (Whisper, T5, BART): what to trace, align and merge; "
        "whole (the default: encoder, decoder and cross-attention as one graph) or encoder "
        "(the encoder alone, as graphperm did before; the decoder is interpolated plainly). "
        "A policy's scope: field sets it too",
    )
    p.add_argument(
        "--inputs",
        type=Path,
        metavar="FILE",
        help="example inputs: a .safetensors file, one tensor per forward() argument",
    )
    p.add_argument(
        "--length",
        type=int,
        metavar="N",
        help="example input length (audio samples, feature frames or tokens)",
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    elif getattr(args, "verbose", 0) == 1:
        level = logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("transformers", "torch", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass


def load_cli_model(args: argparse.Namespace, spec: str, seed: int = 0) -> LoadedModel:
    """``spec`` loaded as the command line asks: an encoder–decoder in ``--scope``, else in the
    policy's scope (``args.policy_scope``, when a command has read its policy first), else
    whole. ``--scope`` on a model without a decoder is a one-line error."""
    given = getattr(args, "scope", None)
    scope = given or getattr(args, "policy_scope", None) or "whole"
    loaded = load_model(
        spec,
        random_init=args.random_init,
        seed=seed,
        trust_remote_code=args.trust_remote_code,
        scope=scope,
    )
    if given and not loaded.encoder_decoder:
        raise ModelLoadError(
            f"--scope {given}: '{spec}' is a {type(loaded.model).__name__}, not an "
            "encoder–decoder model (Whisper, T5, BART); leave --scope out"
        )
    return loaded


def scoped_policy(policy: Policy, a: LoadedModel) -> Policy:
    """``policy`` saying the scope model A was loaded in, when A is an encoder–decoder (so
    ``policy.yaml``, ``merge.yaml`` and statistics files record it)."""
    if a.encoder_decoder and policy.scope != a.scope:
        return policy.model_copy(update={"scope": a.scope})
    return policy


def cli_inputs(args: argparse.Namespace, loaded: LoadedModel) -> dict[str, torch.Tensor]:
    if args.inputs is not None:
        from safetensors.torch import load_file

        if not args.inputs.is_file():
            raise ModelLoadError(f"--inputs '{args.inputs}' does not exist")
        try:
            return dict(load_file(str(args.inputs)))
        except Exception as err:
            raise ModelLoadError(
                f"--inputs {args.inputs!r} is not a safetensors file: {err}"
            ) from err
    return example_inputs(loaded, length=args.length)


def analyse_model(args: argparse.Namespace, loaded: LoadedModel) -> Analysis:
    return analyse(trace(loaded, cli_inputs(args, loaded)))


def user_inputs(args: argparse.Namespace) -> dict[str, str | Path | None]:
    """Every local path the user passed (models, ``--calib`` sources, policy, permutations,
    inputs), by the name an error shows: what an output may never be, contain or lie in."""
    names = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    found: dict[str, str | Path | None] = {}
    models = [getattr(args, "model_a", None), getattr(args, "model_b", None)]
    models += list(getattr(args, "more_models", None) or [])
    for k, model in enumerate(models):
        found[f"model {names[k] if k < 26 else k + 1}"] = model
    for key, name in (
        ("model", "the model"),
        ("merge_into", "--merge-into model"),
        ("base", "--base model"),
    ):
        found[name] = getattr(args, key, None)
    for k, source in enumerate(getattr(args, "calib", None) or []):
        found[f"--calib source {k + 1}"] = source
    for key in ("policy", "perms", "inputs", "config"):
        value = getattr(args, key, None)
        found[f"--{key} file"] = value if isinstance(value, (str, Path)) else None
    for k, path in enumerate(getattr(args, "stats", None) or []):
        found[f"statistics file {k + 1}"] = path
    return found


def say(*lines: str) -> None:
    """Print to stdout (the CLI prints; the library logs)."""
    for line in lines:
        print(line)


def add_merge_args(
    p: argparse.ArgumentParser, out_help: str = "output folder", optional_models: bool = False
) -> None:
    """The arguments of ``merge``, ``align`` and ``stats``: two models, policy, data, output."""
    add_model_args(p, names=("model_a", "model_b"), optional=optional_models)
    p.add_argument(
        "--policy",
        help="a policy file (YAML/JSON, e.g. a merge's own policy.yaml) or a built-in name: "
        + ", ".join(policy_names())
        + " (default: chosen from model A and printed: paper for a convolutional front end, "
        "orth otherwise; without --calib weights or orth-no-data)",
    )
    p.add_argument(
        "--calib",
        action="append",
        default=[],
        metavar="PATH",
        help="calibration data, what the model reads: audio files or folders, texts (.txt one "
        "per line, .jsonl with a 'text' field), images, or a .safetensors of ready-made "
        "batches; repeat to mix sources",
    )
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help=out_help)
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the forwards, statistics and learned alignment run (auto: a GPU if there "
        "is one)",
    )
    p.add_argument("--num-clips", type=int, metavar="N", help="override calibration.num_clips")
    p.add_argument(
        "--method",
        metavar="NAME",
        help="override the policy's alignment method (activations, weights, hybrid, sinkhorn)",
    )
    p.add_argument(
        "--transform",
        choices=["perm", "orth"],
        help="override every align rule's transform ('orth': rotate the parts that admit it)",
    )
    p.add_argument(
        "--seed-b",
        type=int,
        default=1,
        help="with --random-init: seed of model B's weights (A uses 0)",
    )


def choose_policy(args: argparse.Namespace, loaded: LoadedModel) -> None:
    """Set ``args.policy`` to the built-in policy for ``loaded`` when none was given, and say
    which and why (:func:`graphperm.policy.default_policy`)."""
    if args.policy is not None:
        return
    name, why = default_policy(analyse_model(args, loaded), data=bool(args.calib))
    args.policy = name
    if is_main():
        say(f"policy: {name} (the default for this model: {why}; --policy to choose)")


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="dtype of the written weights (auto: the dtype model A was saved in; the merge "
        "itself is computed in float32)",
    )


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The ``--policy`` with command-line overrides (``--num-clips``, ``--method``,
    ``--transform``) applied, and validated again."""
    policy = load_policy(args.policy)
    data = policy.model_dump()
    if getattr(args, "num_clips", None) is not None:
        data["calibration"]["num_clips"] = args.num_clips
    if getattr(args, "method", None):
        data["method"] = args.method
    if getattr(args, "transform", None):
        data["align"] = [{**rule, "transform": args.transform} for rule in data["align"]]
    if getattr(args, "scope", None):
        data["scope"] = args.scope
    return load_policy(data) if data != policy.model_dump() else policy


def print_alignment(alignment: Alignment) -> None:
    """The calibration summary and a table of what alignment did, per group (and per model)."""
    cal = alignment.calibration
    if cal:
        say(f"calibration: {cal['description']}", "")
    if not any(alignment.model_reports):
        say("no group aligned (plain interpolation)")
        return
    for k, reports in enumerate(alignment.model_reports):
        if alignment.models > 2:
            say(f"model {k + 2}: {alignment.sources[k + 1]}")
        rows = [
            [
                r.name,
                r.kind,
                ",".join(f"{p} (orth)" if p in r.rotated else p for p in r.parts),
                f"{100 * r.moved_fraction:.1f}%",
                f"{r.corr_before:.3f}" if r.corr_before is not None else "-",
                f"{r.corr_after:.3f}" if r.corr_after is not None else "-",
            ]
            for r in reports
        ]
        say(
            format_table(rows, ["group", "kind", "parts", "moved", "corr before", "corr after"]),
            "",
        )
    for k, figure in enumerate(alignment.weight_agreement):
        if figure:
            who = "B" if alignment.models == 2 else f"model {k + 2}"
            say(
                f"weights of {who} against A (cosine of the weight matrices alignment moves): "
                f"{figure['before']:.3f} before, {figure['after']:.3f} after"
            )
    for missing in alignment.plan.unmeasured:
        say(f"warning: {missing} has no activation site; left in place")
    say_unused(alignment.analysis)


def say_unused(analysis: Analysis) -> None:
    """Warn about saved tensors the traced forward never reads: they are written unchanged."""
    for key in analysis.unused:
        say(f"warning: '{key}' is not used by the traced forward pass; it is written unchanged")
