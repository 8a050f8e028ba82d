"""Test helpers: cached analyses of the built-in models, and the optional ../shared folder."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(
    os.environ.get("GRAPHPERM_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)

#: Small configs of the architectures the property test covers.
ARCHITECTURES = [
    "hubert-tiny",  # post-LN, group-norm conv stack
    "hubert-stable-tiny",  # pre-LN (stable layer norm), layer-norm conv stack, conv bias
    "wav2vec2-tiny",
    "wav2vec2-stable-tiny",
    "whisper-tiny",  # encoder of an encoder-decoder model
    "bert-tiny",  # text
    "vit-tiny",  # vision
]


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@cache
def analysis_of(name: str):
    """Analysis of builtin:NAME (cached: building and tracing is the slow part)."""
    from graphperm.analysis import analyse
    from graphperm.trace import load_model, trace

    return analyse(trace(load_model(f"builtin:{name}")))
