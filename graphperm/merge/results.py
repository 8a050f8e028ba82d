"""What the merge stages pass on: an :class:`Alignment` (permutations of every model towards A,
and how they were found) and a :class:`MergeResult` (the merged weights and their checks).

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> from graphperm.policy import load_policy, resolve
    >>> analysis = analyse(trace(load_model("builtin:hubert-tiny")))
    >>> plan = resolve(load_policy("linear"), analysis)
    >>> Alignment.unaligned(analysis, plan, ("a", "b")).perm.perms
    {}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch

from graphperm.analysis import Analysis
from graphperm.apply import Permutation, VerifyReport
from graphperm.policy import Plan, Policy
from graphperm.solve import GroupReport
from graphperm.stats import Statistics
from graphperm.trace import LoadedModel

__all__ = ["Alignment", "MergeResult"]


@dataclass
class Alignment:
    """Permutations of every model after A towards A, and how they were found.

    ``perms[k]`` and ``model_reports[k]`` belong to model ``k + 1`` (``sources[k + 1]``);
    :attr:`perm` and :attr:`reports` are model B's, the second model's.
    """

    analysis: Analysis
    plan: Plan
    perms: list[Permutation]
    model_reports: list[list[GroupReport]]
    stats: Statistics | None = None
    calibration: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ("", "")
    method: str = "activations"
    consensus: list[dict] = field(default_factory=list)  # per round, with consensus_rounds
    # per model after A: cosine of its weights with A's before/after (merge/quality.py)
    weight_agreement: list[dict] = field(default_factory=list)
    method_reports: list[dict] = field(default_factory=list)  # per model after A, if any
    batches: list = field(default_factory=list, repr=False)  # inputs kept for learn / repair
    # outputs of every model after A on the check inputs, as given (before folding)
    references: list[list[torch.Tensor]] | None = field(default=None, repr=False)
    # transform: zip (ZipIt!): every model's unmerge matrices, A first ((group, part) -> U),
    # and a report per zipped part (graphperm.solve.zipit.zip_plan)
    unmerges: list[dict] = field(default_factory=list, repr=False)
    zip_reports: list[dict] = field(default_factory=list)
    # each model's merged-then-unmerged output error (relative), measured at the first merge
    zip_errors: list[float | None] = field(default_factory=list, repr=False)

    @classmethod
    def unaligned(cls, analysis: Analysis, plan: Plan, sources: tuple[str, ...], **kw) -> Alignment:
        """No permutations (plain interpolation), for ``len(sources)`` models."""
        others = max(1, len(sources) - 1)
        return cls(
            analysis,
            plan,
            [Permutation() for _ in range(others)],
            [[]] * others,
            sources=sources,
            **kw,
        )

    @classmethod
    def from_permutations(
        cls, analysis: Analysis, plan: Plan, perms: list[Permutation], sources: tuple[str, ...]
    ) -> Alignment:
        """Known permutations (read from a file, or solved elsewhere), without reports."""
        return cls(analysis, plan, list(perms), [[] for _ in perms], sources=sources)

    @property
    def policy(self) -> Policy:
        return self.plan.policy

    @property
    def models(self) -> int:
        return len(self.perms) + 1

    @property
    def perm(self) -> Permutation:
        return self.perms[0] if self.perms else Permutation()

    @property
    def reports(self) -> list[GroupReport]:
        return self.model_reports[0] if self.model_reports else []

    def without_permutations(self) -> Alignment:
        """The same alignment with every permutation dropped (plain interpolation)."""
        return replace(
            self,
            perms=[Permutation() for _ in self.perms],
            model_reports=[[] for _ in self.perms],
            unmerges=[],
            zip_reports=[],
            zip_errors=[],
        )


@dataclass
class MergeResult:
    """The merged weights (keys relative to the traced module) and the checks they passed."""

    alignment: Alignment
    state: dict[str, torch.Tensor]
    model_a: LoadedModel
    weights: list[float]  # per model, A first (before per-module overrides)
    checks: list[VerifyReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    repair: dict | None = None  # what REPAIR did (policy repair.enabled)
    # the saved model's tensors outside the traced module (full keys: a decoder), interpolated
    rest: dict[str, torch.Tensor] = field(default_factory=dict)
    # transform: zip: each model's merged-then-unmerged output against its own (relative error)
    zip_errors: list[float | None] = field(default_factory=list)

    @property
    def check(self) -> VerifyReport | None:
        """The first model's check (B's, for two models); None if nothing was checked."""
        return self.checks[0] if self.checks else None

    @property
    def weight_a(self) -> float:
        return self.weights[0]

    def module(self) -> torch.nn.Module:
        """A copy of A's traced module holding the merged weights, in eval mode (for probing
        a merge in memory; :func:`graphperm.output.save_merge` writes it to disk)."""
        model = copy.deepcopy(self.model_a.module)
        model.load_state_dict(self.state)
        return model.eval()
