"""Check that a permuted model computes what the original computed.

The permuted model's outputs are compared with the original's, permuted the same way (a merged
model lives in model A's basis, so when the residual stream moves, so do the outputs).

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> report = verify(analyse(trace(load_model("builtin:hubert-tiny"))), seed=0)
    >>> report.ok
    True
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree

from graphperm.analysis.analysis import Analysis
from graphperm.apply.apply import permute_state
from graphperm.apply.indexer import Indexer
from graphperm.apply.permutation import Permutation, random_permutation
from graphperm.errors import VerificationError

__all__ = [
    "OutputCheck",
    "VerifyReport",
    "check_inputs",
    "check_permuted",
    "compare_outputs",
    "flat_outputs",
    "outputs",
    "random_rotations",
    "verify",
]

log = logging.getLogger(__name__)

RTOL = 1e-4  # of the output's largest magnitude
ATOL = 1e-5


@dataclass(frozen=True)
class OutputCheck:
    """How far one output of the permuted model is from the permuted original output."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max_abs / max |original|
    moved: bool  # whether the output itself is permuted

    @property
    def ok(self) -> bool:
        return self.max_abs <= ATOL + RTOL * (self.max_abs / self.max_rel if self.max_rel else 0)


@dataclass
class VerifyReport:
    """The outputs compared, and whether all agree within float32 tolerance."""

    outputs: list[OutputCheck] = field(default_factory=list)
    permuted_groups: int = 0
    rotated_parts: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.outputs) and all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=float("nan"))


def verify(
    analysis: Analysis,
    *,
    seed: int = 0,
    perm: Permutation | None = None,
    rotations: bool = True,
) -> VerifyReport:
    """Transform every part of every group by a random member of its family (a random
    orthogonal matrix for ``orth`` parts unless ``rotations=False``, a random permutation
    otherwise), or by ``perm``, and compare outputs."""
    indexer = Indexer(analysis)
    if perm is None:
        rotate = random_rotations(analysis) if rotations else {}
        perm = random_permutation(indexer.shapes(), seed=seed, rotate=rotate)
    loaded = analysis.traced.loaded
    module = loaded.module
    permuted = copy.deepcopy(module)
    permuted.load_state_dict(permute_state(indexer, module.state_dict(), perm))
    inputs = analysis.traced.inputs
    # Both sides run from the same random state, so a model that draws random numbers in its
    # forward pass (ViTMAE shuffles its patches) draws the same ones on both.
    ref = _run_seeded(module, inputs, seed)
    got = _run_seeded(permuted, inputs, seed)
    report = compare_outputs(analysis, indexer, perm, ref, got)
    report.permuted_groups = len(perm.perms)
    report.rotated_parts = len(perm.rotated)
    if not report.ok:
        again = _run_seeded(module, inputs, seed)
        if len(again) != len(ref) or any(not torch.equal(a, b) for a, b in zip(ref, again)):
            raise VerificationError(
                f"{type(module).__name__} gives different outputs on two runs with the same "
                "inputs and random state: it is nondeterministic, so outputs cannot show whether "
                "a permutation kept its function (the rules are not at fault)"
            )
    return report


def random_rotations(analysis: Analysis) -> dict[tuple[str, str], bool]:
    """Every ``orth`` part, and whether its rotations must keep the all-ones direction (the
    ``rotate`` argument of :func:`random_permutation`)."""
    return {
        (g.name, p.name): s.keeps_ones
        for g in analysis.groups
        for p in g.parts
        if (s := analysis.symmetry(g.name, p.name)).family == "orth"
    }


def _run_seeded(module: torch.nn.Module, inputs: dict, seed: int) -> list[torch.Tensor]:
    """Outputs of ``module(**inputs)`` with torch's random state set from ``seed`` (and restored
    afterwards)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return flat_outputs(module(**inputs))


def compare_outputs(
    analysis: Analysis,
    indexer: Indexer,
    perm: Permutation,
    ref: list[torch.Tensor],
    got: list[torch.Tensor],
) -> VerifyReport:
    """Compare ``got`` (permuted model) with ``ref`` (original) permuted as the graph says."""
    names = analysis.traced.program.graph_signature.user_outputs
    if len(ref) != len(names) or len(got) != len(names):
        raise RuntimeError(f"the model returned {len(ref)} tensors, the graph has {len(names)}")
    report = VerifyReport()
    for name, r, g in zip(names, ref, got):
        known = name in analysis.coupling.tensors
        expected = indexer.permute_value(name, r, perm) if known else r
        diff = (g.double() - expected.double()).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        scale = float(r.double().abs().max()) if r.numel() else 0.0
        report.outputs.append(
            OutputCheck(
                name=name,
                shape=tuple(r.shape),
                max_abs=max_abs,
                max_rel=max_abs / scale if scale else max_abs,
                moved=expected is not r,
            )
        )
    return report


def flat_outputs(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output (a ModelOutput, tuple, dict, ...), in order."""
    leaves, _ = pytree.tree_flatten(out)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def outputs(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``module(**inputs)`` without gradients, flattened."""
    with torch.no_grad():
        return flat_outputs(module(**inputs))


def check_permuted(
    analysis: Analysis,
    perm: Permutation,
    reference: list[torch.Tensor],
    permuted: torch.nn.Module,
    inputs: dict[str, torch.Tensor] | None = None,
) -> VerifyReport:
    """``permuted`` must compute ``reference`` (the original model's outputs on ``inputs``,
    default: the traced inputs' first row), permuted by ``perm``; raise
    :class:`~graphperm.errors.VerificationError` if it does not.

    Example:
        >>> from graphperm.trace import load_model, trace
        >>> from graphperm.analysis import analyse
        >>> a = analyse(trace(load_model("builtin:hubert-tiny")))
        >>> ref = outputs(a.traced.loaded.module, check_inputs(a))
        >>> check_permuted(a, Permutation(), ref, a.traced.loaded.module).ok
        True
    """
    from graphperm.errors import VerificationError

    inputs = inputs if inputs is not None else check_inputs(analysis)
    report = compare_outputs(
        analysis, Indexer(analysis), perm, reference, outputs(permuted, inputs)
    )
    if not report.ok:
        raise VerificationError(
            f"the permuted model no longer computes what it computed (max relative error "
            f"{report.max_rel:.3g}); no output was written. This is a graphperm bug: please "
            "report it with the output of `graphperm trace MODEL --json`"
        )
    return report


def check_inputs(analysis: Analysis) -> dict[str, torch.Tensor]:
    """The inputs a merge is checked on: the first row of the traced inputs."""
    return {k: v[:1] for k, v in analysis.traced.inputs.items()}
