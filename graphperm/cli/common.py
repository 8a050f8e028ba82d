"""Shared command-line plumbing: model options, logging, error handling."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from graphperm.analysis import Analysis, analyse
from graphperm.errors import ModelLoadError
from graphperm.trace import LoadedModel, example_inputs, load_model, trace

__all__ = ["add_model_args", "analyse_model", "load_cli_model", "say", "setup_logging"]


def add_model_args(p: argparse.ArgumentParser, *, names: tuple[str, ...] = ("model",)) -> None:
    for name in names:
        p.add_argument(
            name,
            metavar=name.upper(),
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
    return load_model(
        spec, random_init=args.random_init, seed=seed, trust_remote_code=args.trust_remote_code
    )


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


def say(*lines: str) -> None:
    """Print to stdout (the CLI prints; the library logs)."""
    for line in lines:
        print(line)
