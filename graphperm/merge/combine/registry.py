"""The combine seam: how aligned models become one, element by element, behind a registry.

A :class:`Combination` turns one tensor of every model (float64, already in A's basis) and the
models' weights into the merged tensor, with or without a base model (task arithmetic:
``θ_base + scale · Σ_m w_m (θ_m − θ_base)``). :func:`combine` runs one over a whole state dict:
each tensor computed in float64 and rounded once to its own dtype, integer buffers from A,
tensors that share storage (tied weights) computed once. Plain interpolation without a base is
:func:`graphperm.merge.interpolate` itself, so the default merge is unchanged to the bit.

Example:
    >>> import torch
    >>> from graphperm.policy import Combine
    >>> states = [{"x": torch.tensor([1.0, -1.0])}, {"x": torch.tensor([3.0, 1.0])}]
    >>> combine(states, lambda k: [0.5, 0.5], Combine(method="ties", quantile=0.0))["x"]
    tensor([ 2., -1.])
    >>> sorted(COMBINATIONS)
    ['dare', 'interpolate', 'ties']
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from graphperm.errors import PolicyError
from graphperm.merge.interpolate import interpolate
from graphperm.policy import Combine

__all__ = [
    "COMBINATIONS",
    "Combination",
    "combine",
    "get_combination",
    "register_combination",
    "tensor_generator",
]

State = dict[str, torch.Tensor]


class Combination:
    """Base class of combinations; subclasses set ``name``, ``description`` and
    :meth:`tensor`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def tensor(
        self,
        key: str,
        values: list[torch.Tensor],
        weights: list[float],
        base: torch.Tensor | None,
        settings: Combine,
    ) -> torch.Tensor:
        """The merged float64 tensor at ``key`` from every model's ``values`` (A first) and
        their ``weights``; ``base`` is the base model's tensor (task arithmetic) or None."""
        raise NotImplementedError


COMBINATIONS: dict[str, Combination] = {}


def register_combination(cls: type[Combination]) -> type[Combination]:
    """Class decorator: make ``cls`` available as ``combine: <cls.name>`` in policies."""
    if cls.name in COMBINATIONS:
        raise ValueError(f"two combinations named {cls.name!r}")
    COMBINATIONS[cls.name] = cls()
    return cls


def get_combination(name: str, *, where: str = "policy") -> Combination:
    """The combination registered as ``name``; a one-line :class:`PolicyError` otherwise."""
    if name in COMBINATIONS:
        return COMBINATIONS[name]
    close = difflib.get_close_matches(name, list(COMBINATIONS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise PolicyError(
        f"{where}: combine.method: '{name}' is not a combination{hint}; choose one of "
        + ", ".join(sorted(COMBINATIONS))
    )


def tensor_generator(seed: int, key: str, model: int) -> torch.Generator:
    """A generator seeded by (``seed``, tensor name, model index): the same masks whatever the
    order in which tensors are combined, or which other tensors exist."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(key.encode()) * 131 + model) % (2**63))
    return g


def combine(
    states: Sequence[State],
    weights: Callable[[str], Sequence[float]],
    settings: Combine | None = None,
    *,
    base: State | None = None,
    inplace: bool = False,
    where: str = "policy",
) -> State:
    """Combine the floating-point tensors of ``states`` (A first, all in A's basis) with
    ``weights(key)`` (one per model) as ``settings`` says; with ``base``, as task arithmetic
    around it. ``inplace`` overwrites A's tensors one at a time (no third copy of a model)."""
    settings = settings or Combine()
    method = get_combination(settings.method, where=where)
    if base is None and settings.method == "interpolate":
        return interpolate(states, weights, inplace=inplace)
    if base is None and settings.scale != 1.0:
        raise PolicyError(
            f"{where}: combine.scale is a factor of task vectors; it needs a base model "
            "(--base BASE), or leave it at 1"
        )
    first = states[0]
    out: State = {}
    done: dict[tuple, str] = {}  # storage of a tensor already combined -> its key
    with torch.no_grad():
        for key, a in first.items():
            if not a.is_floating_point():
                out[key] = a if inplace else a.clone()
                continue
            alias = (a.untyped_storage().data_ptr(), a.storage_offset(), a.shape, a.stride())
            if alias in done:
                out[key] = out[done[alias]]
                continue
            done[alias] = key
            w = [float(x) for x in weights(key)]
            if len(w) != len(states):
                raise ValueError(f"{len(w)} weights for {len(states)} models at {key}")
            values = [s[key].double() for s in states]
            ref = None if base is None else base[key].double()
            merged = method.tensor(key, values, w, ref, settings)
            if inplace:
                a.copy_(merged)
                out[key] = a
            else:
                out[key] = merged.to(a.dtype)
    return out
