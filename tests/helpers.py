"""Test helpers: cached analyses of the built-in models, and the optional ../shared folder."""

from __future__ import annotations

import os
import subprocess
import sys
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


def merge_oracle(a, policy, calib=(), seed: int = 5):
    """B = A's weights permuted over exactly the parts ``policy`` aligns; merged with A at 0.5
    it must give back A. Returns the largest difference from A and the alignment."""
    import torch

    from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
    from graphperm.merge import align, merge_models, prepare
    from graphperm.policy import load_policy
    from graphperm.trace import load_model

    policy = load_policy(policy)
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    every = random_permutation(indexer.shapes(), seed=seed)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    assert secret.perms, "the policy must align something"
    b = load_model(a.source, scope=a.scope)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    changed = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])]
    assert changed  # B really is scrambled
    alignment = align(a, b, policy, list(calib))
    result = merge_models(alignment, a, b, weight_a=0.5)
    worst = max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())
    return worst, alignment


def function_oracle(a, policy, calib=(), seed: int = 5):
    """B = A under a random member of the family of every part ``policy`` aligns (rotations
    for the parts it rotates); merged with A at 0.5 it must compute A's function. Returns the
    largest output difference relative to A's largest output, and the alignment.

    Works for modules given as they are (``load_model(module)``): B is a deep copy.
    """
    import copy

    import torch

    from graphperm.apply import (
        Indexer,
        Permutation,
        check_inputs,
        outputs,
        permute_state,
        random_permutation,
    )
    from graphperm.merge import align, merge_models, prepare
    from graphperm.policy import load_policy

    policy = load_policy(policy)
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    rotate = {
        (t.group, t.part): analysis.symmetry(t.group, t.part).keeps_ones
        for t in plan.targets
        if t.transform == "orth"
    }
    every = random_permutation(indexer.shapes(), seed=seed, rotate=rotate)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    assert secret.perms, "the policy must align something"
    b = copy.deepcopy(a)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    alignment = align(a, b, policy, list(calib))
    result = merge_models(alignment, a, b, weight_a=0.5)
    merged = copy.deepcopy(a.module)
    merged.load_state_dict(result.state)
    inputs = check_inputs(analysis)
    want, got = outputs(a.module, inputs), outputs(merged, inputs)
    scale = max(float(w.abs().max()) for w in want)
    worst = max(float((g.double() - w.double()).abs().max()) for g, w in zip(got, want))
    assert all(torch.isfinite(g).all() for g in got)
    return worst / scale, alignment


def graphperm_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m graphperm ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "graphperm", *args], capture_output=True, text=True, timeout=600
    )
