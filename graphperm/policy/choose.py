"""The policy a merge uses when none is given: chosen from what the model has.

- a convolutional front end (speech encoders: HuBERT, wav2vec2, MERT, Whisper's encoder): the
  paper's policy (``paper``: conv channels, attention heads with their vo channels, FFN units,
  0.9/0.1);
- anything else (text, vision): ``orth``, every group with every exact rotation on activations
  plus weights, 0.5/0.5 — the most consistent setting of the loss-barrier testbed
  (examples/barrier), as good as every group on activations where nothing rotates;
- without calibration data, their data-free versions: ``weights`` and ``orth-no-data``.

The choice reads the model's groups, never its class name.

Example:
    >>> from graphperm.analysis import analyse
    >>> from graphperm.trace import load_model, trace
    >>> name, why = default_policy(analyse(trace(load_model("builtin:bert-tiny"))), data=True)
    >>> name
    'orth'
"""

from __future__ import annotations

from graphperm.analysis import Analysis

__all__ = ["default_policy"]


def default_policy(analysis: Analysis, *, data: bool) -> tuple[str, str]:
    """The built-in policy to use for ``analysis``'s model, and why (one phrase to print).
    ``data``: whether calibration data was given."""
    if any(g.kind == "conv" for g in analysis.groups):
        if data:
            return "paper", "a convolutional front end: the paper's policy"
        return "weights", "a convolutional front end, no --calib: data-free (with --calib: paper)"
    if data:
        return "orth", "no convolutional front end: every group, every exact rotation"
    return "orth-no-data", "no convolutional front end, no --calib: data-free (with --calib: orth)"
