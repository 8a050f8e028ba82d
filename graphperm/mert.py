"""MERT checkpoints as HuBERT models.

MERT (m-a-p/MERT-v0-public, MERT-v1-95M, ...) is HuBERT's architecture under its own class
(``MERTModel``, model type ``mert_model``), whose code only loads with ``trust_remote_code``.
graphperm never turns that on by default: it reads MERT's ``config.json`` and weights itself and
builds a plain ``transformers.HubertModel`` with the same parameters, so MERT can be aligned to
HuBERT with no remote code at all. The key mapping:

- an optional ``mert_model.`` / ``model.`` prefix is dropped;
- the positional convolution's old-style weight norm ``encoder.pos_conv_embed.conv.weight_g`` /
  ``weight_v`` becomes ``...conv.parametrizations.weight.original0`` / ``original1``;
- every other key (``feature_extractor.*``, ``feature_projection.*``, ``encoder.*``,
  ``masked_spec_embed``) is already HuBERT's;
- training-only extras (a CQT front end, label embeddings, projection heads) are dropped.

Variants that compute something HuBERT cannot (a CQT input branch, DeepNorm residual scaling,
attention relaxation) are refused with a message rather than silently changed.

Example:
    >>> state = {"mert_model.encoder.pos_conv_embed.conv.weight_g": 1,
    ...          "mert_model.masked_spec_embed": 2}
    >>> sorted(mert_state_to_hubert(state)[0])
    ['encoder.pos_conv_embed.conv.parametrizations.weight.original0', 'masked_spec_embed']
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers as tf

from graphperm.errors import ModelLoadError

__all__ = ["is_mert_config", "load_mert_as_hubert", "mert_config_to_hubert", "mert_state_to_hubert"]

log = logging.getLogger(__name__)

_PREFIXES = ("mert_model.", "model.")
_POS = "encoder.pos_conv_embed.conv."
_RENAMES = {
    _POS + "weight_g": _POS + "parametrizations.weight.original0",
    _POS + "weight_v": _POS + "parametrizations.weight.original1",
}
_DROP = ("feature_extractor_cqt", "label_embs", "final_proj", "quantizer", "project_q", "cqt")


def is_mert_config(config: dict) -> bool:
    """Whether a ``config.json`` dict describes a MERT model."""
    kind = str(config.get("model_type", "")).lower()
    archs = [str(a).lower() for a in config.get("architectures") or []]
    return kind.startswith("mert") or any(a.startswith("mert") for a in archs)


def mert_config_to_hubert(config: dict) -> tf.HubertConfig:
    """A ``HubertConfig`` with MERT's sizes; refuses variants HuBERT cannot compute."""
    if config.get("feature_extractor_cqt"):
        raise ModelLoadError(
            "this MERT checkpoint feeds CQT features into the transformer "
            "(feature_extractor_cqt); HuBERT has no such input, so it cannot be "
            "loaded as HuBERT"
        )
    if config.get("deepnorm"):
        raise ModelLoadError(
            "this MERT checkpoint uses DeepNorm residual scaling, which HuBERT "
            "does not compute; it cannot be loaded as HuBERT"
        )
    if float(config.get("attention_relax", -1.0) or -1.0) > 0:
        raise ModelLoadError(
            "this MERT checkpoint uses attention relaxation, which HuBERT does "
            "not compute; it cannot be loaded as HuBERT"
        )
    known = set(tf.HubertConfig().to_dict())
    kwargs = {
        k: v for k, v in config.items() if k in known and k not in ("model_type", "architectures")
    }
    hubert = tf.HubertConfig(**kwargs)
    hubert.architectures = ["HubertModel"]
    hubert.sampling_rate = int(config.get("sample_rate", config.get("sampling_rate", 16000)))
    return hubert


def mert_state_to_hubert(state: dict) -> tuple[dict, list[str]]:
    """MERT state-dict keys mapped to ``HubertModel``'s; returns ``(state, dropped keys)``."""
    out, dropped = {}, []
    for key, value in state.items():
        k = key
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
                break
        k = _RENAMES.get(k, k)
        if k.split(".")[0] in _DROP or any(k.startswith(d) for d in _DROP):
            dropped.append(key)
            continue
        out[k] = value
    return out, dropped


def load_mert_as_hubert(folder: str | Path) -> tf.HubertModel:
    """Load a local MERT checkpoint folder as a ``HubertModel`` without remote code."""
    folder = Path(folder)
    config = mert_config_to_hubert(json.loads((folder / "config.json").read_text()))
    state = _read_weights(folder)
    state, dropped = mert_state_to_hubert(state)
    if dropped:
        log.info("MERT: dropped training-only tensors %s", ", ".join(dropped[:5]))
    model = tf.HubertModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "masked_spec_embed"]
    if missing or unexpected:
        what = (
            f"missing {', '.join(missing[:3])}"
            if missing
            else f"unexpected {', '.join(unexpected[:3])}"
        )
        raise ModelLoadError(
            f"'{folder}' does not map onto HubertModel ({what}); is it a MERT "
            "checkpoint of the HuBERT architecture?"
        )
    return model.eval()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    bins = sorted(folder.glob("*.bin"))
    if not bins:
        raise ModelLoadError(f"'{folder}' has no weights (*.safetensors or *.bin)")
    state = {}
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
