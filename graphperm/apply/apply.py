"""Permute a model's weights.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> from graphperm.apply import Indexer, random_permutation
    >>> loaded = load_model("builtin:hubert-tiny")
    >>> ix = Indexer(analyse(trace(loaded)))
    >>> state = permute_state(ix, loaded.state_dict(), random_permutation(ix.shapes(), seed=1))
    >>> len(state) == len(loaded.state_dict())
    True
"""

from __future__ import annotations

import torch

from graphperm.apply.indexer import Indexer
from graphperm.apply.permutation import Permutation

__all__ = ["permute_state"]


def permute_state(
    indexer: Indexer, state: dict[str, torch.Tensor], perm: Permutation
) -> dict[str, torch.Tensor]:
    """A new state dict (keys relative to the traced module) with ``perm`` applied.

    Tensors the traced graph does not read are copied unchanged.
    """
    coupling = indexer.analysis.coupling
    by_target = {target: key for key, target in coupling.state.items()}
    out = {}
    for name, tensor in state.items():
        key = by_target.get(name)
        if key is None:
            out[name] = tensor
            continue
        out[name] = indexer.permute(tensor, coupling.classes(key), perm).contiguous()
    return out
