"""Built-in objectives of learned alignment that score the merged model itself.

``next_token``: a causal language model's own loss on the calibration text, the cross-entropy
of each token given the ones before it, over the positions the batch marks as real. It reads
nothing but the text (no labels), and it is what the model was trained to do, so it scores the
merged model directly rather than its distance from the parents.

Example:
    >>> import torch, transformers
    >>> cfg = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
    ...                               n_head=2, use_cache=False)
    >>> lm = transformers.GPT2LMHeadModel(cfg).eval()
    >>> check_causal_lm(lm)
    >>> batch = {"input_ids": torch.tensor([[1, 2, 3, 4]])}
    >>> loss = next_token_loss(lambda **kw: lm(**kw), batch)
    >>> bool(abs(loss - lm(**batch, labels=batch["input_ids"]).loss) < 1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graphperm.errors import PolicyError

__all__ = ["check_causal_lm", "next_token_loss"]


def check_causal_lm(module: torch.nn.Module) -> None:
    """Raise a :class:`~graphperm.errors.PolicyError` unless ``module`` is a transformers causal
    language model with its head (a class ``AutoModelForCausalLM`` builds)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    if type(module).__name__ not in names:
        raise PolicyError(
            f"learn.objective 'next_token' is a causal language model's own loss; "
            f"{type(module).__name__} is not one: use objective 'outputs' or 'sites'"
        )


def next_token_loss(model: Callable[..., object], batch: object) -> torch.Tensor:
    """Mean cross-entropy of each real token given the tokens before it (``batch``: a
    :class:`~graphperm.inputs.ModelBatch`, whose ``mask`` marks real tokens, or a dict of
    model inputs, whose ``attention_mask`` does)."""
    inputs = dict(getattr(batch, "inputs", batch))
    ids = inputs.get("input_ids")
    if ids is None:
        raise PolicyError("learn.objective 'next_token' needs token ids ('input_ids') to learn on")
    out = model(**inputs)
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, tuple | list):
        logits = out[0]
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != tuple(ids.shape):
        raise PolicyError(
            "learn.objective 'next_token' needs (batch, tokens, vocabulary) logits for the "
            "input ids: a causal language model traced with its head"
        )
    mask = getattr(batch, "mask", None)
    if mask is None or tuple(mask.shape) != tuple(ids.shape):
        mask = inputs.get("attention_mask", torch.ones_like(ids))
    keep = (mask[:, 1:] != 0) & (mask[:, :-1] != 0)
    pred = logits[:, :-1][keep]
    return torch.nn.functional.cross_entropy(pred.float(), ids[:, 1:][keep])
