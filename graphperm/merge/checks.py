"""Checks that models can be aligned: same class, same tensors, same shapes.

Example:
    >>> from graphperm.trace import load_model
    >>> a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    >>> check_same_architecture(a, b)
"""

from __future__ import annotations

from graphperm.errors import MismatchError
from graphperm.trace import LoadedModel

__all__ = ["check_same_architecture", "model_letter"]


def model_letter(index: int) -> str:
    """``A`` for the first model, ``B`` for the second, ... (``model 27`` past Z)."""
    return chr(ord("A") + index) if index < 26 else str(index + 1)


def check_same_architecture(a: LoadedModel, *others: LoadedModel) -> None:
    """Raise :class:`MismatchError` naming the first tensors in which a model differs from A."""
    sa = a.state_dict()
    for i, b in enumerate(others, start=1):
        sb = b.state_dict()
        name_a, name_b = type(a.module).__name__, type(b.module).__name__
        letter = model_letter(i)
        only_a = [k for k in sa if k not in sb]
        only_b = [k for k in sb if k not in sa]
        if only_a or only_b:
            first = only_a[:2] or only_b[:2]
            side = "A" if only_a else letter
            raise MismatchError(
                f"models differ in architecture ({name_a} vs {name_b} of model {letter}): model "
                f"{side} has {', '.join(first)}{' ...' if len(only_a or only_b) > 2 else ''} and "
                f"the other does not; graphperm merges models of one architecture"
            )
        shapes = [
            (k, tuple(sa[k].shape), tuple(sb[k].shape)) for k in sa if sa[k].shape != sb[k].shape
        ]
        if shapes:
            k, x, y = shapes[0]
            more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
            raise MismatchError(
                f"models differ in shape: {k} is {x} in A and {y} in {letter}{more}; graphperm "
                "merges models of one architecture and size"
            )
