"""``method: learned``: another method's transforms, then optimised end to end
(:func:`graphperm.learn.learn_alignment`).

Example:
    >>> from graphperm.solve import get_method
    >>> sorted(get_method("learned").needs)
    ['correlation', 'models', 'weights']
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from graphperm.errors import PolicyError
from graphperm.learn.learner import learn_alignment
from graphperm.policy import Learn
from graphperm.solve import AlignmentMethod, Problem, Solution, get_method, register_method
from graphperm.solve.consensus import correlation_with_a

__all__ = ["LearnedAlignment", "budget_steps"]

log = logging.getLogger(__name__)


def budget_steps(settings: Learn, batches: Sequence, calibration_items: int) -> int:
    """``settings.steps``, capped by ``settings.budget`` (a multiple of the calibration's
    forward passes, two models × ``calibration_items``) where one is set.

    Example:
        >>> batches = [{"x": torch.zeros(2, 3)}] * 8  # 16 items, 4 held out
        >>> budget_steps(Learn(steps=200, budget=1.5), batches, calibration_items=128)
        54
        >>> budget_steps(Learn(steps=200), batches, calibration_items=128)
        200
    """
    if settings.budget is None or not batches:
        return settings.steps
    sizes = [_items(b) for b in batches]
    n_held = max(1, round(len(batches) * settings.holdout))
    items, held = sum(sizes), sum(sizes[-n_held:])
    per_batch = (items - held) / max(1, len(batches) - n_held)
    allowed = settings.budget * 2 * calibration_items - 2 * items - held  # refs, first eval
    per_step = 3 * per_batch + held / settings.eval_every
    return max(0, min(settings.steps, int(allowed // per_step)))


def _items(batch) -> int:
    """Examples in a batch of model inputs (the leading size of its first tensor)."""
    inputs = dict(getattr(batch, "inputs", batch))
    first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
    return 1 if first is None or first.ndim == 0 else int(first.shape[0])


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
        capped = budget_steps(settings, ctx.batches, problem.stats.items if problem.stats else 0)
        if capped < settings.steps:
            log.info("learn.budget %.3g: %d steps of %d", settings.budget, capped, settings.steps)
            settings = settings.model_copy(update={"steps": capped})
        if settings.steps == 0:
            return first
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
