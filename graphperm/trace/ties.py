"""Tied tensors: state-dict entries that are one tensor under several names.

A model that ties its output embeddings to its input embeddings (``BertForMaskedLM``,
``LlamaForCausalLM`` with ``tie_word_embeddings``), or that keeps one embedding under two names
(``T5EncoderModel``'s ``shared`` and ``encoder.embed_tokens``), holds one storage for several
keys. Every stage treats such keys as one tensor: transformed once, interpolated once, written
with one value. Ties are found from storage, never from names.

Example:
    >>> import torch
    >>> w = torch.zeros(3, 2)
    >>> tied_keys({"emb.weight": w, "head.weight": w, "bias": torch.zeros(3)})
    {'head.weight': 'emb.weight'}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["same_tensor", "tie_groups", "tied_keys"]


def _where(t: torch.Tensor) -> tuple | None:
    if t.device.type == "meta" or t.numel() == 0:
        return None
    return (
        t.device,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        tuple(t.stride()),
        t.dtype,
    )


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of the same memory with the same layout."""
    wa = _where(a)
    return wa is not None and wa == _where(b)


def tied_keys(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``alias -> first key`` for every key whose tensor is the same memory as an earlier key's
    (in ``state``'s order)."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for key, t in state.items():
        where = _where(t)
        if where is None:
            continue
        if where in first:
            out[key] = first[where]
        else:
            first[where] = key
    return out


def tie_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """The keys of ``state`` that are one tensor, as lists (first key first); untied keys are
    left out.

    Example:
        >>> w = torch.zeros(2)
        >>> tie_groups({"a": w, "b": torch.ones(2), "c": w})
        [['a', 'c']]
    """
    groups: dict[str, list[str]] = {}
    for alias, first in tied_keys(state).items():
        groups.setdefault(first, [first]).append(alias)
    return list(groups.values())
