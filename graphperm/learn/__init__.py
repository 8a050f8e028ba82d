"""Past layer-by-layer alignment, with the models run on calibration data: learned alignment
(exact transforms chosen for the merged model as a whole, by gradient descent; a label-free
objective by default, a user's loss through the API) and REPAIR (hidden units' statistics reset
after merging; not exact).

Example:
    >>> from graphperm.solve import METHODS
    >>> "learned" in METHODS
    True
"""

from __future__ import annotations

from graphperm.learn.learner import LearnReport, learn_alignment
from graphperm.learn.method import LearnedAlignment  # registers method: learned
from graphperm.learn.objectives import next_token_loss
from graphperm.learn.repair import RepairTargets, repair_state, repair_targets
from graphperm.learn.transforms import LearnedTransforms, as_matrix

__all__ = [
    "LearnReport",
    "LearnedAlignment",
    "LearnedTransforms",
    "RepairTargets",
    "as_matrix",
    "learn_alignment",
    "next_token_loss",
    "repair_state",
    "repair_targets",
]
