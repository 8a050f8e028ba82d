"""Text encoders: token ids (BERT, RoBERTa, T5's encoder, ...).

Example:
    >>> from graphperm.trace import load_model
    >>> adapter = adapter_for(load_model("builtin:bert-tiny"))
    >>> {k: tuple(v.shape) for k, v in adapter.example().items()}
    {'input_ids': (1, 16)}
"""

from __future__ import annotations

import torch

from graphperm.errors import ModelLoadError
from graphperm.inputs.base import InputAdapter, adapter_for, register_adapter

__all__ = ["TokenAdapter", "adapter_for"]


@register_adapter("input_ids")
class TokenAdapter(InputAdapter):
    """Random token ids for export (16 tokens by default)."""

    kind = "tokens"
    item = "texts"
    unit = "tokens"

    def example(self, batch_size=1, length=None, seed=0):
        vocab = getattr(self.loaded.config, "vocab_size", None)
        if vocab is None:
            raise ModelLoadError(
                f"no example-input recipe for {self.describe_model()} (main input 'input_ids', no "
                "vocab_size in its config); pass --inputs FILE.safetensors"
            )
        g = torch.Generator().manual_seed(seed)
        return {self.input_name: torch.randint(0, vocab, (batch_size, length or 16), generator=g)}
