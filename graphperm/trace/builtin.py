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
from dataclasses import dataclass

import torch
import transformers as tf

__all__ = ["BUILTINS", "ZOO", "ZooModel", "builtin_config"]

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


# ----------------------------------------------------------------------------- the zoo
@dataclass(frozen=True)
class ZooModel:
    """A tiny random-init config of one model class of transformers, as the zoo test uses it:
    an encoder, a causal language model's base model (modality ``"decoder"``), or a whole
    encoder–decoder with its language-model head (modality ``"encoder-decoder"``).

    ``config()`` builds the config (``architectures`` names the class when ``AutoModel`` would
    build another one); ``length`` is the example input's length (samples, frames or tokens);
    ``inputs`` builds inputs for models whose main input has no recipe in
    :func:`graphperm.trace.example_inputs`.
    """

    #: "audio", "text", "vision", "decoder" (causal language models) or "encoder-decoder" (traced
    #: whole: ``load_model(..., scope="whole")``)
    modality: str
    config: Callable[[], tf.PretrainedConfig]
    length: int | None = None
    inputs: Callable[[tf.PretrainedConfig], dict[str, torch.Tensor]] | None = None


_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=128,
    max_position_embeddings=64,
)
_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
_AUDIO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 2, 2),
    conv_kernel=(10, 3, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
#: Causal language models: 4 query heads sharing 2 key/value heads where the class has
#: grouped-query attention; special tokens inside the tiny vocabulary.
_DEC = dict(_TEXT, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_GQA = dict(_DEC, num_key_value_heads=2)
_GPT2 = dict(
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_inner=64,
    vocab_size=128,
    n_positions=64,
    bos_token_id=1,
    eos_token_id=2,
)
_T5 = dict(
    d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4, vocab_size=128
)
_SWIN = dict(
    image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4
)


def _features(config: tf.PretrainedConfig, shape: tuple[int, ...], name: str = "input_features"):
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(*shape, generator=g)}


def _key_masked(config: tf.PretrainedConfig, n: int) -> dict[str, torch.Tensor]:
    """Token ids with the attention mask over the keys (policy ``calibration.attention_mask:
    keys``, :func:`graphperm.inputs.tokens.key_mask`): (1, 1, 1, n), 0 on every token."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, n), generator=g)
    return {"input_ids": ids, "attention_mask": torch.zeros(1, 1, 1, n)}


def _cls(config: tf.PretrainedConfig, name: str) -> tf.PretrainedConfig:
    config.architectures = [name]
    return config


ZOO: dict[str, ZooModel] = {
    # ----------------------------------------------------------------------------- audio
    "hubert": ZooModel("audio", lambda: tf.HubertConfig(**_AUDIO), 4000),
    "wav2vec2": ZooModel("audio", lambda: tf.Wav2Vec2Config(**_AUDIO), 4000),
    "wav2vec2-conformer": ZooModel(
        "audio", lambda: tf.Wav2Vec2ConformerConfig(**_AUDIO, conv_depthwise_kernel_size=7), 4000
    ),
    "wav2vec2-bert": ZooModel(
        "audio",
        lambda: tf.Wav2Vec2BertConfig(
            **{k: v for k, v in _AUDIO.items() if not k.startswith(("conv_", "num_conv"))},
            feature_projection_input_dim=16,
            conv_depthwise_kernel_size=7,
        ),
        inputs=lambda c: _features(c, (1, 50, c.feature_projection_input_dim)),
    ),
    "wavlm": ZooModel("audio", lambda: tf.WavLMConfig(**_AUDIO, num_buckets=32), 4000),
    "unispeech": ZooModel("audio", lambda: tf.UniSpeechConfig(**_AUDIO), 4000),
    "unispeech-sat": ZooModel("audio", lambda: tf.UniSpeechSatConfig(**_AUDIO), 4000),
    "sew": ZooModel("audio", lambda: tf.SEWConfig(**_AUDIO, squeeze_factor=2), 4000),
    "sew-d": ZooModel(
        "audio",
        lambda: tf.SEWDConfig(**_AUDIO, squeeze_factor=2, position_buckets=16),
        4000,
    ),
    "data2vec-audio": ZooModel(
        "audio",
        lambda: tf.Data2VecAudioConfig(**_AUDIO, num_conv_pos_embedding_layers=2),
        4000,
    ),
    "whisper": ZooModel("audio", lambda: BUILTINS["whisper-tiny"]()),
    "speech2text": ZooModel(
        "audio",
        lambda: tf.Speech2TextConfig(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=4,
            decoder_ffn_dim=64,
            vocab_size=128,
            conv_channels=32,
            input_feat_per_channel=16,
            max_source_positions=64,
            max_target_positions=32,
        ),
        inputs=lambda c: _features(c, (1, 64, c.input_feat_per_channel * c.input_channels)),
    ),
    "ast": ZooModel(
        "audio",
        lambda: tf.ASTConfig(**{**_VIT, "image_size": None}, num_mel_bins=32, max_length=48),
    ),
    "encodec": ZooModel(  # a neural codec: conv + LSTM encoder, vector quantiser, decoder
        "audio",
        lambda: tf.EncodecConfig(
            hidden_size=16,
            num_filters=4,
            num_residual_layers=1,
            upsampling_ratios=[2, 2],
            codebook_size=16,
            codebook_dim=16,
            num_lstm_layers=1,
        ),
        inputs=lambda c: _features(c, (1, c.audio_channels, 400), "input_values"),
    ),
    "clap-audio": ZooModel(
        "audio",
        lambda: _cls(
            tf.ClapAudioConfig(
                spec_size=64,
                num_mel_bins=16,
                patch_size=4,
                patch_stride=4,
                hidden_size=64,
                depths=[1, 1],
                num_attention_heads=[2, 4],
                window_size=4,
                patch_embeds_hidden_size=16,
                projection_dim=16,
            ),
            "ClapAudioModel",
        ),
        inputs=lambda c: _features(c, (1, 1, 64, c.num_mel_bins)),
    ),
    # ------------------------------------------------------------------------------ text
    "bert": ZooModel("text", lambda: tf.BertConfig(**_TEXT)),
    "bert-gelu-new": ZooModel("text", lambda: tf.BertConfig(**_TEXT, hidden_act="gelu_new")),
    "roberta": ZooModel("text", lambda: tf.RobertaConfig(**_TEXT)),
    "xlm-roberta": ZooModel("text", lambda: tf.XLMRobertaConfig(**_TEXT)),
    "camembert": ZooModel("text", lambda: tf.CamembertConfig(**_TEXT)),
    "data2vec-text": ZooModel("text", lambda: tf.Data2VecTextConfig(**_TEXT)),
    "ernie": ZooModel("text", lambda: tf.ErnieConfig(**_TEXT)),
    "electra": ZooModel("text", lambda: tf.ElectraConfig(**_TEXT, embedding_size=16)),
    "albert": ZooModel("text", lambda: tf.AlbertConfig(**_TEXT, embedding_size=16)),
    "distilbert": ZooModel(
        "text",
        lambda: tf.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=128, max_position_embeddings=64
        ),
    ),
    "deberta": ZooModel("text", lambda: tf.DebertaConfig(**_TEXT)),
    "deberta-v2": ZooModel("text", lambda: tf.DebertaV2Config(**_TEXT)),
    "mpnet": ZooModel("text", lambda: tf.MPNetConfig(**_TEXT)),
    "convbert": ZooModel("text", lambda: tf.ConvBertConfig(**_TEXT, embedding_size=32)),
    "fnet": ZooModel(
        "text", lambda: tf.FNetConfig(**{k: v for k, v in _TEXT.items() if "heads" not in k})
    ),
    "funnel": ZooModel(
        "text",
        lambda: _cls(
            tf.FunnelConfig(
                vocab_size=128,
                block_sizes=[1, 1],
                d_model=32,
                n_head=4,
                d_head=8,
                d_inner=64,
                num_decoder_layers=1,
            ),
            "FunnelModel",
        ),
    ),
    "bigbird": ZooModel("text", lambda: tf.BigBirdConfig(**_TEXT, attention_type="original_full")),
    "roformer": ZooModel("text", lambda: tf.RoFormerConfig(**_TEXT)),
    "esm": ZooModel(
        "text", lambda: tf.EsmConfig(**_TEXT, pad_token_id=1, position_embedding_type="rotary")
    ),
    "canine": ZooModel(
        "text",
        lambda: tf.CanineConfig(
            **{k: v for k, v in _TEXT.items() if k != "vocab_size"},
            num_hash_buckets=64,
            downsampling_rate=4,
        ),
        inputs=lambda c: {"input_ids": torch.randint(0, 1000, (1, 16))},
    ),
    "mobilebert": ZooModel(
        "text",
        lambda: tf.MobileBertConfig(
            **_TEXT, embedding_size=16, intra_bottleneck_size=16, num_feedforward_networks=2
        ),
    ),
    "squeezebert": ZooModel("text", lambda: tf.SqueezeBertConfig(**_TEXT, embedding_size=32)),
    "layoutlm": ZooModel("text", lambda: tf.LayoutLMConfig(**_TEXT)),
    "xlm": ZooModel(
        "text",
        lambda: tf.XLMConfig(
            vocab_size=128, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64
        ),
    ),
    "rembert": ZooModel(
        "text", lambda: tf.RemBertConfig(**_TEXT, input_embedding_size=16, output_embedding_size=16)
    ),
    "megatron-bert": ZooModel("text", lambda: tf.MegatronBertConfig(**_TEXT)),
    "t5-encoder": ZooModel("text", lambda: _cls(tf.T5Config(**_T5), "T5EncoderModel")),
    "umt5-encoder": ZooModel("text", lambda: _cls(tf.UMT5Config(**_T5), "UMT5EncoderModel")),
    "mt5-encoder": ZooModel("text", lambda: _cls(tf.MT5Config(**_T5), "MT5EncoderModel")),
    "modernbert": ZooModel(
        "text",
        lambda: tf.ModernBertConfig(
            **{k: v for k, v in _TEXT.items()}, global_attn_every_n_layers=1, pad_token_id=0
        ),
    ),
    "ibert": ZooModel("text", lambda: tf.IBertConfig(**_TEXT)),
    "longformer": ZooModel(
        "text", lambda: tf.LongformerConfig(**_TEXT, attention_window=8, pad_token_id=1)
    ),
    "nystromformer": ZooModel(  # its landmark scores take only a mask over the keys
        "text",
        lambda: tf.NystromformerConfig(**_TEXT, num_landmarks=4, segment_means_seq_len=16),
        inputs=lambda c: _key_masked(c, 16),
    ),
    # ------------------------------------------- whole encoder–decoders (scope "whole"), with heads
    "whisper-lm": ZooModel(
        "encoder-decoder",
        lambda: _cls(BUILTINS["whisper-tiny"](), "WhisperForConditionalGeneration"),
    ),
    "t5": ZooModel(
        "encoder-decoder",
        lambda: _cls(tf.T5Config(**_T5, decoder_start_token_id=0), "T5ForConditionalGeneration"),
    ),
    "bart": ZooModel(
        "encoder-decoder",
        lambda: _cls(
            tf.BartConfig(
                d_model=32,
                encoder_layers=2,
                decoder_layers=1,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                vocab_size=128,
                max_position_embeddings=64,
            ),
            "BartForConditionalGeneration",
        ),
    ),
    # --------------------------------------------------------- decoders (causal language models)
    "gpt2": ZooModel("decoder", lambda: tf.GPT2Config(**_GPT2)),
    "gpt-neo": ZooModel(  # one global and one local (sliding-window) attention layer
        "decoder",
        lambda: tf.GPTNeoConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            vocab_size=128,
            max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "gpt-neox": ZooModel("decoder", lambda: tf.GPTNeoXConfig(**_DEC, rotary_pct=0.5)),
    "gptj": ZooModel("decoder", lambda: tf.GPTJConfig(**_GPT2, rotary_dim=4)),
    "opt": ZooModel(
        "decoder",
        lambda: tf.OPTConfig(
            **{k: v for k, v in _DEC.items() if k != "intermediate_size"},
            ffn_dim=64,
            word_embed_proj_dim=32,
        ),
    ),
    "bloom": ZooModel(  # ALiBi: a fixed slope per head
        "decoder",
        lambda: tf.BloomConfig(
            hidden_size=32, n_layer=2, n_head=4, vocab_size=128, bos_token_id=1, eos_token_id=2
        ),
    ),
    "falcon": ZooModel(  # Falcon-7B's layout: one key/value head, parallel attention and MLP
        "decoder",
        lambda: tf.FalconConfig(
            **{k: v for k, v in _DEC.items() if k != "intermediate_size"},
            new_decoder_architecture=False,
            multi_query=True,
        ),
    ),
    "llama": ZooModel("decoder", lambda: tf.LlamaConfig(**_GQA)),
    "mistral": ZooModel("decoder", lambda: tf.MistralConfig(**_GQA, sliding_window=8)),
    "mixtral": ZooModel(
        "decoder", lambda: tf.MixtralConfig(**_GQA, num_local_experts=4, num_experts_per_tok=2)
    ),
    "qwen2": ZooModel("decoder", lambda: tf.Qwen2Config(**_GQA)),
    "qwen3": ZooModel("decoder", lambda: tf.Qwen3Config(**_GQA, head_dim=8)),
    "gemma": ZooModel("decoder", lambda: tf.GemmaConfig(**_GQA, head_dim=8)),
    "gemma2": ZooModel("decoder", lambda: tf.Gemma2Config(**_GQA, head_dim=8, sliding_window=8)),
    "phi": ZooModel("decoder", lambda: tf.PhiConfig(**_DEC, partial_rotary_factor=0.5)),
    "phi3": ZooModel("decoder", lambda: tf.Phi3Config(**_GQA)),
    "olmo": ZooModel("decoder", lambda: tf.OlmoConfig(**_GQA)),
    "stablelm": ZooModel("decoder", lambda: tf.StableLmConfig(**_GQA)),
    "starcoder2": ZooModel("decoder", lambda: tf.Starcoder2Config(**_GQA, sliding_window=8)),
    # ---------------------------------------------------------------------------- vision
    "vit": ZooModel("vision", lambda: tf.ViTConfig(**_VIT)),
    "deit": ZooModel("vision", lambda: tf.DeiTConfig(**_VIT)),
    "beit": ZooModel("vision", lambda: tf.BeitConfig(**_VIT, use_relative_position_bias=True)),
    "data2vec-vision": ZooModel("vision", lambda: tf.Data2VecVisionConfig(**_VIT)),
    "vit-mae": ZooModel("vision", lambda: tf.ViTMAEConfig(**_VIT)),
    "vit-msn": ZooModel("vision", lambda: tf.ViTMSNConfig(**_VIT)),
    "dinov2": ZooModel(
        "vision",
        lambda: tf.Dinov2Config(**{k: v for k, v in _VIT.items() if k != "intermediate_size"}),
    ),
    "yolos": ZooModel(
        "vision", lambda: tf.YolosConfig(**{**_VIT, "image_size": [32, 32]}, num_detection_tokens=4)
    ),
    "clip-vision": ZooModel("vision", lambda: _cls(tf.CLIPVisionConfig(**_VIT), "CLIPVisionModel")),
    "siglip-vision": ZooModel(
        "vision", lambda: _cls(tf.SiglipVisionConfig(**_VIT), "SiglipVisionModel")
    ),
    "swin": ZooModel("vision", lambda: tf.SwinConfig(**_SWIN)),
    "swinv2": ZooModel("vision", lambda: tf.Swinv2Config(**_SWIN)),
    "convnext": ZooModel(
        "vision",
        lambda: tf.ConvNextConfig(
            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32
        ),
    ),
    "convnextv2": ZooModel(
        "vision",
        lambda: tf.ConvNextV2Config(
            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32
        ),
    ),
    "resnet": ZooModel(
        "vision",
        lambda: tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]),
    ),
    "regnet": ZooModel(
        "vision",
        lambda: tf.RegNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8
        ),
    ),
    "mobilenet-v2": ZooModel(
        "vision", lambda: tf.MobileNetV2Config(image_size=32, depth_multiplier=0.25)
    ),
    "poolformer": ZooModel(
        "vision",
        lambda: tf.PoolFormerConfig(
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_encoder_blocks=2,
            patch_sizes=[7, 3],
            strides=[4, 2],
            padding=[2, 1],
        ),
    ),
    "segformer": ZooModel(
        "vision",
        lambda: tf.SegformerConfig(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
        ),
    ),
    "levit": ZooModel(
        "vision",
        lambda: tf.LevitConfig(
            image_size=32,
            hidden_sizes=[16, 32, 48],
            num_attention_heads=[1, 2, 3],
            depths=[1, 1, 1],
            key_dim=[8, 8, 8],
        ),
    ),
}
