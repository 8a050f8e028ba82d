"""Checks that two models can be aligned: same class, same tensors, same shapes.

Example:
    >>> from graphperm.trace import load_model
    >>> a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    >>> check_same_architecture(a, b)
"""

from __future__ import annotations

from graphperm.errors import MismatchError
from graphperm.trace import LoadedModel

__all__ = ["check_same_architecture"]


def check_same_architecture(a: LoadedModel, b: LoadedModel) -> None:
    """Raise :class:`MismatchError` naming the first tensors that differ."""
    sa, sb = a.state_dict(), b.state_dict()
    name_a, name_b = type(a.module).__name__, type(b.module).__name__
    only_a = [k for k in sa if k not in sb]
    only_b = [k for k in sb if k not in sa]
    if only_a or only_b:
        first = only_a[:2] or only_b[:2]
        side = "A" if only_a else "B"
        raise MismatchError(
            f"models differ in architecture ({name_a} vs {name_b}): model {side} has "
            f"{', '.join(first)}{' ...' if len(only_a or only_b) > 2 else ''} and the other does "
            "not; graphperm merges two models of one architecture"
        )
    shapes = [(k, tuple(sa[k].shape), tuple(sb[k].shape)) for k in sa if sa[k].shape != sb[k].shape]
    if shapes:
        k, x, y = shapes[0]
        more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
        raise MismatchError(
            f"models differ in shape: {k} is {x} in A and {y} in B{more}; graphperm merges two "
            "models of one architecture and size"
        )
