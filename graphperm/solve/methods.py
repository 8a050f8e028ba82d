"""The alignment-method seam: from statistics (or weights) to permutations, behind a registry.

A method declares what it needs (``correlation``: the calibration pass's cross-correlations;
``weights``: the models' weights only) and turns a :class:`Problem` — one model to bring into the
reference model's basis — into a :class:`~graphperm.apply.Permutation` and per-group reports.
``activations`` (the paper's correlation + linear assignment, heads first) is the first entry;
a new method is one class registered with :func:`register_method`.

Example:
    >>> {"activations", "hybrid", "weights"} <= set(METHODS)
    True
    >>> get_method("activations").needs
    frozenset({'correlation'})
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from graphperm.analysis import Analysis
from graphperm.apply import Permutation
from graphperm.errors import PolicyError
from graphperm.policy import Plan
from graphperm.solve.agreement import agreement
from graphperm.solve.solver import GroupReport, solve
from graphperm.stats import Statistics

__all__ = [
    "METHODS",
    "AlignmentMethod",
    "Problem",
    "RunContext",
    "Solution",
    "get_method",
    "register_method",
    "split_half_agreement",
]


@dataclass
class RunContext:
    """What a method that runs the models needs (``needs`` holds ``"models"``): the loaded
    models (A first), calibration batches of model inputs kept in memory, and optionally a
    user's loss ``loss_fn(model, batch)``; ``device``: where they run (``cpu``, ``cuda``)."""

    models: list = field(default_factory=list)
    batches: list = field(default_factory=list)
    loss_fn: object | None = None
    progress: bool = False
    device: str = "cpu"


@dataclass
class Problem:
    """Bring model ``model`` (an index into ``states``; 0 is the reference A) into A's basis."""

    analysis: Analysis
    plan: Plan
    model: int = 1
    stats: Statistics | None = None
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    context: RunContext | None = None

    @property
    def pair(self) -> tuple[int, int]:
        return (0, self.model)


@dataclass
class Solution:
    """The permutation of one model, and a report per aligned group."""

    perm: Permutation
    reports: list[GroupReport] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # method-specific report (merge_report.json)


class AlignmentMethod:
    """Base class of alignment methods; subclasses set ``name``, ``needs`` and ``align``."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""

    def align(self, problem: Problem, *, reports: bool = True) -> Solution:
        raise NotImplementedError


METHODS: dict[str, AlignmentMethod] = {}


def register_method(cls: type[AlignmentMethod]) -> type[AlignmentMethod]:
    """Class decorator: make ``cls`` available as ``method: <cls.name>`` in policies."""
    if cls.name in METHODS:
        raise ValueError(f"two alignment methods named {cls.name!r}")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str, *, where: str = "policy") -> AlignmentMethod:
    """The method registered as ``name``; a one-line :class:`PolicyError` otherwise."""
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise PolicyError(
        f"{where}: method: '{name}' is not an alignment method{hint}; choose one of "
        + ", ".join(sorted(METHODS))
    )


@register_method
class ActivationMatching(AlignmentMethod):
    """The paper's method: Pearson correlation of activations on calibration data, one linear
    assignment per part; attention heads first (block scores), then channels within heads.

    A subclass that sets ``assign`` (``staticmethod(corr -> p)``) keeps all of that and replaces
    only the assignment of each part (``sinkhorn``, ``symmetric``)."""

    name = "activations"
    needs = frozenset({"correlation"})
    description = "correlation of activations + linear assignment (the paper)"
    assign: ClassVar[Callable[[torch.Tensor], torch.Tensor] | None] = None

    def align(self, problem: Problem, *, reports: bool = True) -> Solution:
        if problem.stats is None:
            raise PolicyError(f"method '{self.name}' needs calibration data; pass --calib PATH")
        # the weight tie-break serves the linear assignment; another assignment settles its own
        how = {"states": problem.states} if self.assign is None else {"assign": self.assign}
        perm, rows = solve(
            problem.plan,
            problem.analysis,
            problem.stats,
            pair=problem.pair,
            reports=reports,
            **how,
        )
        return Solution(perm, rows)


def split_half_agreement(method: AlignmentMethod, problem: Problem) -> dict[str, float]:
    """Per group, how far the permutations solved from each half of the data agree."""
    if problem.stats is None or len(problem.stats.parts) != 2:
        return {}
    halves: list[Permutation] = []
    for i in range(2):
        half = Problem(
            problem.analysis, problem.plan, problem.model, problem.stats.half(i), problem.states
        )
        halves.append(method.align(half, reports=False).perm)
    return agreement(problem.plan, problem.analysis, *halves)
