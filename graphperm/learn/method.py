"""``method: learned``: another method's transforms, then optimised end to end
(:func:`graphperm.learn.learn_alignment`).

Example:
    >>> from graphperm.solve import get_method
    >>> sorted(get_method("learned").needs)
    ['correlation', 'models', 'weights']
"""

from __future__ import annotations

import dataclasses

from graphperm.errors import PolicyError
from graphperm.learn.learner import learn_alignment
from graphperm.solve import AlignmentMethod, Problem, Solution, get_method, register_method
from graphperm.solve.consensus import correlation_with_a

__all__ = ["LearnedAlignment"]


@register_method
class LearnedAlignment(AlignmentMethod):
    """Start from ``learn.start``'s solution and optimise the same exact transforms for the
    merged model on calibration data (no labels by default). Without models to run (the
    split-half check, ``graphperm solve``) it gives the starting solution."""

    name = "learned"
    needs = frozenset({"correlation", "weights", "models"})
    description = "another method's transforms, optimised end to end through the merged model"

    def align(self, problem: Problem, *, reports: bool = True) -> Solution:
        settings = problem.plan.policy.learn
        if settings.start == self.name:
            raise PolicyError("learn.start: 'learned' cannot start from itself")
        start = get_method(settings.start, where="learn.start")
        if problem.stats is None and "correlation" in start.needs:
            raise PolicyError(
                f"method 'learned' starting from '{start.name}' needs calibration data; "
                "pass --calib PATH"
            )
        first = start.align(problem, reports=reports)
        ctx = problem.context
        if ctx is None or settings.steps == 0:
            return first
        models = [ctx.models[0], ctx.models[problem.model]]
        perm, report = learn_alignment(
            problem.analysis,
            models,
            first.perm,
            ctx.batches,
            settings,
            weight_a=problem.plan.policy.base_weights(len(ctx.models))[0],
            loss_fn=ctx.loss_fn,
            progress=ctx.progress,
            plan=problem.plan,
            calibration_items=problem.stats.items if problem.stats else 0,
            device=ctx.device,
        )
        rows = []
        for r in first.reports:
            r = dataclasses.replace(r, moved_fraction=perm.moved_fraction(r.name))
            if problem.stats is not None and r.corr_after is not None:
                r.corr_after = correlation_with_a(
                    problem.analysis, problem.plan, problem.stats, perm, r.name, problem.model
                )
            rows.append(r)
        return Solution(perm, rows, extra={"learn": report.to_dict()})
