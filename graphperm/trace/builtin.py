"""Built-in model configs (random weights): for demos, tests and trying graphperm offline.

``builtin:NAME`` loads one of these with freshly initialised weights (seeded), so nothing is
downloaded. Sizes are tiny except ``hubert-base``, which is HuBERT base's architecture.

Example:
    >>> from graphperm.trace.builtin import BUILTINS
    >>> "hubert-tiny" in BUILTINS
    True
"""

from __future__ import annotations

from collections.abc import Callable

import transformers as tf

__all__ = ["BUILTINS", "builtin_config"]

_AUDIO_TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(32, 32, 32),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)

BUILTINS: dict[str, Callable[[], tf.PretrainedConfig]] = {
    # HuBERT base architecture (95M parameters): post-LN, group-norm conv stack.
    "hubert-base": lambda: tf.HubertConfig(),
    # The same architecture, tiny.
    "hubert-tiny": lambda: tf.HubertConfig(**_AUDIO_TINY),
    # HuBERT large style: stable (pre-)layer norm, layer-norm conv stack with conv bias.
    "hubert-stable-tiny": lambda: tf.HubertConfig(
        **_AUDIO_TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True
    ),
    "wav2vec2-tiny": lambda: tf.Wav2Vec2Config(**_AUDIO_TINY),
    "wav2vec2-stable-tiny": lambda: tf.Wav2Vec2Config(
        **_AUDIO_TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True
    ),
    "whisper-tiny": lambda: tf.WhisperConfig(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        num_mel_bins=16,
        max_source_positions=50,
        max_target_positions=32,
        vocab_size=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    ),
    "bert-tiny": lambda: tf.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=128,
        max_position_embeddings=64,
    ),
    "vit-tiny": lambda: tf.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    ),
}


def builtin_config(name: str) -> tf.PretrainedConfig:
    """The config of built-in model ``name`` (without the ``builtin:`` prefix)."""
    return BUILTINS[name]()
