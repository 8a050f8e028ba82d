"""Learned alignment: exact transforms chosen for the merged model as a whole, by gradient
descent on calibration data (a label-free objective by default, a user's loss through the API).

Example:
    >>> from graphperm.solve import METHODS
    >>> "learned" in METHODS
    True
"""

from __future__ import annotations

from graphperm.learn.learner import LearnReport, learn_alignment
from graphperm.learn.method import LearnedAlignment  # registers method: learned
from graphperm.learn.transforms import LearnedTransforms, as_matrix

__all__ = ["LearnReport", "LearnedAlignment", "LearnedTransforms", "as_matrix", "learn_alignment"]
