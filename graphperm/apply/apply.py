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

from graphperm.apply.fold import fold_state, folds_for
from graphperm.apply.indexer import Indexer
from graphperm.apply.permutation import Permutation
from graphperm.trace.ties import tie_groups

__all__ = ["permute_state"]


def permute_state(
    indexer: Indexer,
    state: dict[str, torch.Tensor],
    perm: Permutation,
    *,
    inplace: bool = False,
) -> dict[str, torch.Tensor]:
    """``state`` (keys relative to the traced module) with ``perm`` applied.

    By default a new state dict (tensors the traced graph does not read are shared, unchanged);
    with ``inplace`` each tensor is overwritten one at a time, so permuting a module's
    ``state_dict()`` costs no second copy of the model.

    Rotated parts first fold the norms they pass through (:mod:`graphperm.apply.fold`).
    Keys that are one tensor (tied embeddings, :mod:`graphperm.trace.ties`) are transformed
    once, as the key the traced graph reads, and all get that value.
    """
    coupling = indexer.analysis.coupling
    folds = folds_for(indexer.analysis, perm.rotated)
    if folds:
        state = fold_state(state, folds, inplace=inplace)
    by_target = {target: key for key, target in coupling.state.items()}
    follows = tie_followers(state, set(by_target) - set(coupling.unused))
    out = {}
    with torch.no_grad():
        for name, tensor in state.items():
            key = by_target.get(name)
            if key is None or name in follows:
                out[name] = tensor
                continue
            moved = indexer.permute(tensor, coupling.classes(key), perm)
            if inplace:
                if moved is not tensor:
                    tensor.copy_(moved)
                out[name] = tensor
            else:
                out[name] = moved.contiguous()
    for name, leader in follows.items():
        out[name] = state[name] if inplace else out[leader]  # in place: the same memory
    return out


def tie_followers(state: dict[str, torch.Tensor], read: set[str]) -> dict[str, str]:
    """``key -> the key of the same tensor that is transformed`` for every tied key that is
    not: the one the graph reads (else the first) leads its tie."""
    follows = {}
    for keys in tie_groups(state):
        leader = next((k for k in keys if k in read), keys[0])
        follows.update({k: leader for k in keys if k != leader})
    return follows
