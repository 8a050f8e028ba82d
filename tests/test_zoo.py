"""The zoo: tiny random-init configs of the encoder classes of transformers (audio, text, vision)
and of causal language models (decoders), each traced, analysed and verified, with the group kinds
and counts it must have.

The configs live in :data:`graphperm.trace.builtin.ZOO` (``graphperm verify builtin:zoo/NAME``
reproduces any row); ``examples/zoo/make_table.py`` writes ``docs/architectures.md`` from them.
"""

from __future__ import annotations

import functools

import pytest
import torch

from graphperm.analysis import Analysis, analyse
from graphperm.apply import verify
from graphperm.trace import example_inputs, load_model, trace
from graphperm.trace.builtin import ZOO

pytestmark = pytest.mark.slow

DECODER = {"residual": 1, "attn": 2, "ffn": 2}

#: Groups per kind that each model must have (two layers each, unless the model shares heads
#: across layers through one relative-position table: T5, MT5, MPNet).
EXPECTED: dict[str, dict[str, int]] = {
    "hubert": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3},
    "wav2vec2": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3},
    "wav2vec2-conformer": {"residual": 1, "attn": 2, "ffn": 4, "conv": 5},
    "wav2vec2-bert": {"residual": 1, "attn": 2, "ffn": 4, "conv": 2},
    "wavlm": {"residual": 1, "ffn": 2, "conv": 3, "other": 2},
    "unispeech": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3},
    "unispeech-sat": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3},
    "sew": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3, "other": 1},
    "sew-d": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3, "other": 1},
    "data2vec-audio": {"residual": 1, "attn": 2, "ffn": 2, "conv": 3},
    "whisper": {"attn": 2, "ffn": 2, "conv": 1},  # its stream: read by the untraced decoder
    "speech2text": {"attn": 2, "ffn": 2, "conv": 1},
    "ast": {"residual": 1, "attn": 2, "ffn": 2},
    # the whole codec, traced concretely (export cannot bound its padding and LSTM): each
    # convolution's channels, the encoder's residual blocks and LSTM, the codebook's stream
    # from the encoder's last convolution through the quantiser into the decoder, its LSTM,
    # transposed convolutions and residual blocks
    "encodec": {"conv": 11, "residual": 4},
    "clap-audio": {"residual": 2, "attn": 2, "ffn": 2},
    "bert": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "bert-gelu-new": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "roberta": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "xlm-roberta": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "camembert": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "data2vec-text": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "ernie": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "electra": {"residual": 2, "attn": 2, "ffn": 2},
    "albert": {"residual": 2, "attn": 1, "ffn": 1, "other": 1},
    "distilbert": {"residual": 1, "attn": 2, "ffn": 2},
    "deberta": {"residual": 1, "attn": 2, "ffn": 2},
    "deberta-v2": {"residual": 1, "attn": 2, "ffn": 2},
    "mpnet": {"residual": 1, "attn": 1, "ffn": 2, "other": 1},
    "convbert": {"residual": 1, "attn": 2, "ffn": 2},
    "fnet": {"residual": 1, "ffn": 2, "other": 1},
    "funnel": {"residual": 1, "attn": 3, "ffn": 3},
    "bigbird": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "roformer": {"residual": 1, "attn": 2, "ffn": 2},
    "esm": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "canine": {"residual": 2, "attn": 4, "ffn": 4, "other": 1},
    "mobilebert": {"residual": 3, "attn": 2, "ffn": 7, "other": 1},
    "squeezebert": {"residual": 1, "other": 1},
    "layoutlm": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "xlm": {"residual": 1, "attn": 2, "ffn": 2},
    "rembert": {"residual": 2, "attn": 2, "ffn": 2, "other": 1},
    "megatron-bert": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "t5-encoder": {"residual": 1, "attn": 1, "ffn": 2},
    "umt5-encoder": {"residual": 1, "attn": 2, "ffn": 2},
    "mt5-encoder": {"residual": 1, "attn": 1, "ffn": 2},
    "modernbert": {"residual": 1, "attn": 2, "ffn": 2},
    "ibert": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "longformer": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    # each layer's attention adds a convolution of its values to the landmark attention (a
    # skip, by the add rule): its heads group counts as residual
    "nystromformer": {"residual": 3, "ffn": 2},
    "vit": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "deit": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "beit": {"residual": 1, "attn": 2, "ffn": 2},
    "data2vec-vision": {"residual": 1, "attn": 2, "ffn": 2},
    "vit-mae": {"residual": 1, "attn": 2, "ffn": 2},
    "vit-msn": {"residual": 1, "attn": 2, "ffn": 2},
    "dinov2": {"residual": 1, "attn": 2, "ffn": 2},
    "yolos": {"residual": 1, "attn": 2, "ffn": 2, "other": 1},
    "clip-vision": {"residual": 1, "attn": 2, "ffn": 2},
    "siglip-vision": {"residual": 2, "attn": 3, "ffn": 3},
    "swin": {"residual": 2, "attn": 2, "ffn": 2},
    "swinv2": {"residual": 2, "attn": 2, "ffn": 4},
    "convnext": {"residual": 2, "ffn": 2},
    "convnextv2": {"residual": 2, "ffn": 2},
    "resnet": {"residual": 1, "conv": 5},
    "regnet": {"residual": 1, "conv": 6},
    "mobilenet-v2": {"residual": 5, "conv": 20},
    "poolformer": {"residual": 2, "conv": 2},
    "segformer": {"residual": 2, "attn": 3, "conv": 3},
    "levit": {"residual": 3, "attn": 5, "ffn": 5, "conv": 3},
    # whole encoder–decoders with their LM heads (scope "whole"): each stream a residual group
    # (Whisper's encoder and decoder streams are two; T5 and BART share one embedding between
    # encoder, decoder and head, so theirs are one), cross-attention one more attn group per
    # decoder layer, the encoder's stream free (no longer pinned, as the encoder's outputs are)
    "whisper-lm": {"conv": 1, "residual": 2, "attn": 4, "ffn": 3},
    "t5": {"residual": 1, "attn": 3, "ffn": 3},
    "bart": {"residual": 1, "attn": 4, "ffn": 3},
    # causal language models (base models): one residual stream, attention and FFN per layer
    "gpt2": DECODER,
    "gpt-neo": DECODER,
    "gpt-neox": DECODER,
    "gptj": DECODER,
    "opt": DECODER,
    "bloom": DECODER,
    "falcon": DECODER,
    "llama": DECODER,
    "mistral": DECODER,
    "mixtral": DECODER,
    "qwen2": DECODER,
    "qwen3": DECODER,
    "gemma": DECODER,
    "gemma2": DECODER,
    "phi": DECODER,
    "phi3": DECODER,
    "olmo": DECODER,
    "stablelm": DECODER,
    "starcoder2": DECODER,
}

#: Models traced specialised to their example inputs: branches on input values (draft_export),
#: or lengths computed from tensors that export cannot bound (a concrete trace).
SPECIALISED = {"longformer", "encodec"}


def zoo_inputs(name: str, loaded) -> dict[str, torch.Tensor]:
    entry = ZOO[name]
    if entry.inputs is not None:
        return entry.inputs(loaded.config)
    return example_inputs(loaded, length=entry.length)


@functools.cache
def zoo_analysis(name: str) -> Analysis:
    scope = "whole" if ZOO[name].modality == "encoder-decoder" else "encoder"
    loaded = load_model(f"builtin:zoo/{name}", scope=scope)
    return analyse(trace(loaded, zoo_inputs(name, loaded)))


def test_the_zoo_covers_audio_text_vision_and_decoders() -> None:
    assert set(EXPECTED) == set(ZOO)
    modalities = [ZOO[n].modality for n in EXPECTED]
    assert len(EXPECTED) >= 40
    assert {m: modalities.count(m) >= 10 for m in ("audio", "text", "vision", "decoder")} == {
        "audio": True,
        "text": True,
        "vision": True,
        "decoder": True,
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_verifies_with_expected_groups(name: str) -> None:
    torch.set_num_threads(1)
    analysis = zoo_analysis(name)
    assert analysis.traced.specialised == (name in SPECIALISED)
    assert analysis.counts() == EXPECTED[name], [(g.name, g.kind) for g in analysis.groups]
    report = verify(analysis, seed=0)
    assert report.ok, [(o.name, o.max_abs, o.max_rel) for o in report.outputs]
    assert not analysis.coupling.failed, analysis.coupling.failed


# ------------------------------------------------------------------ the misclassified cases of #11
def kinds(name: str) -> dict[str, str]:
    return {g.name: g.kind for g in zoo_analysis(name).groups}


@pytest.mark.parametrize(
    ("name", "ffn"),
    [
        ("bert-gelu-new", "encoder.layer.{}.intermediate.dense"),  # gelu_new: x + 0.044715·x³
        ("bigbird", "encoder.layer.{}.intermediate.dense"),  # gelu_new
        ("umt5-encoder", "encoder.block.{}.layer.1.DenseReluDense"),  # gated gelu_new
        ("fnet", "encoder.layer.{}"),  # gelu_new
        ("convnextv2", "encoder.stages.{}.layers.0"),  # GRN: γ·(x·N(x)) + β + x
    ],
)
def test_pointwise_adds_leave_ffn_groups_ffn(name: str, ffn: str) -> None:
    got = kinds(name)
    assert got[ffn.format(0)] == got[ffn.format(1)] == "ffn", got
    assert list(got.values()).count("residual") <= 2


def test_albert_shared_layer_has_one_ffn() -> None:
    got = kinds("albert")
    assert got["encoder.albert_layer_groups.0.albert_layers.0.ffn"] == "ffn", got


@pytest.mark.parametrize(
    ("name", "attn"),
    [("roformer", "encoder.layer.{}.attention"), ("esm", "encoder.layer.{}.attention")],
)
def test_rotary_attention_is_attention_per_layer(name: str, attn: str) -> None:
    got = kinds(name)
    assert got[attn.format(0)] == got[attn.format(1)] == "attn", got
    assert "encoder.embed_positions" not in got
    heads = [g.heads for g in zoo_analysis(name).groups if g.kind == "attn"]
    assert heads == [4, 4]


def test_wavlm_residual_stream_is_residual() -> None:
    groups = {g.name: g for g in zoo_analysis("wavlm").groups}
    residual = groups["residual"]
    assert residual.kind == "residual" and residual.heads == 4  # split into heads by its gates
    assert any(k.startswith("encoder.layers.1.attention") for k, _ in residual.tensors)
    assert "feature_projection.projection" not in groups


def test_funnel_keeps_its_residual_stream() -> None:
    """avg_pool2d over (tokens, channels) with a (2, 1) window and repeat_interleave over tokens
    leave the channels free."""
    got = kinds("funnel")
    assert list(got.values()).count("residual") == 1 and list(got.values()).count("attn") == 3
    assert not zoo_analysis("funnel").coupling.unknown


def test_missing_rules_of_issue_11_are_there() -> None:
    for name in (
        "wav2vec2-conformer",
        "wav2vec2-bert",
        "speech2text",
        "canine",
        "convbert",
        "vit-mae",
    ):
        unknown = set(zoo_analysis(name).coupling.unknown)
        assert not unknown, (name, unknown)
    assert kinds("vit-mae")["residual"] == "residual"


# ------------------------------------------------------------------------------- the decoders
def parts(name: str, kind: str = "attn") -> list[list[tuple[str, int]]]:
    groups = [g for g in zoo_analysis(name).groups if g.kind == kind]
    return [[(p.name, p.size) for p in g.parts] for g in groups]


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "gemma", "olmo", "phi3", "mixtral"])
def test_grouped_query_attention_permutes_kv_heads_and_their_query_heads(name: str) -> None:
    """2 key/value heads, each shared by 2 query heads: a query head moves only among the heads
    that share its key/value head; rotary qk channels stay in place (no qk part)."""
    assert parts(name) == [[("heads0", 2), ("heads1", 2), ("vo", 8)]] * 2


@pytest.mark.parametrize("name", ["gpt-neox", "phi", "gptj"])
def test_partial_rotary_leaves_the_passed_through_qk_channels_free(name: str) -> None:
    """Half of each head's qk channels are rotated (pinned: their frequencies differ), the other
    half pass through and may move (and rotate), the same way in q and k."""
    a = zoo_analysis(name)
    for g in a.groups:
        if g.kind == "attn":
            assert ("qk", 4) in [(p.name, p.size) for p in g.parts], g.structure
            assert a.symmetry(g.name, "qk").family == "orth"


def test_bloom_alibi_pins_the_heads() -> None:
    """ALiBi adds a fixed slope per head to the logits: heads cannot be reordered."""
    assert all("heads" not in dict(p) for p in parts("bloom"))


def test_falcon_one_kv_head_is_shared_by_every_query_head() -> None:
    assert parts("falcon") == [[("heads", 4)]] * 2


def test_mixtral_router_and_experts() -> None:
    """The router reads the residual stream; its expert axis, and so the experts' order, stays
    (top-k picks experts by position); each layer's experts form one FFN group."""
    a = zoo_analysis("mixtral")
    groups = {g.name: g for g in a.groups}
    assert ("layers.0.mlp.gate.weight", 1) in groups["residual"].tensors
    experts = groups["layers.0.mlp.experts"]
    assert experts.kind == "ffn" and experts.size == 64
    assert ("layers.0.mlp.experts.gate_up_proj", 1) in experts.tensors
    assert ("layers.0.mlp.experts.down_proj", 2) in experts.tensors
    fixed = {(f.key, f.dim) for f in a.fixed}
    assert {("layers.0.mlp.gate.weight", 0), ("layers.0.mlp.experts.down_proj", 0)} <= fixed


# ------------------------------------------------------- the two export could not capture (#23)
def test_encodec_codebook_moves_with_the_stream() -> None:
    """The quantiser compares the encoder's output with every code (a product with the codebook
    and sums over the channels), picks the nearest (its position: the code axis stays) and looks
    it up for the decoder: the codebook's channels move with the encoder's last convolution and
    the decoder's first; each LSTM's hidden units are the stream around it."""
    a = zoo_analysis("encodec")
    assert a.traced.specialised and a.warnings[0].startswith("torch.export could not capture")
    groups = {g.name: g for g in a.groups}
    stream = groups["encoder.layers.9.conv"]
    assert {
        ("quantizer.layers.0.codebook.embed", 1),
        ("decoder.layers.0.conv.parametrizations.weight.original1", 1),
    } <= set(stream.tensors)
    assert ("quantizer.layers.0.codebook.embed", 0) in {(f.key, f.dim) for f in a.fixed}
    for lstm, group in (
        ("encoder.layers.7", "encoder.layers.6.conv"),
        ("decoder.layers.1", "decoder.layers.0.conv"),
    ):
        assert (f"{lstm}.lstm.weight_hh_l0", 1) in groups[group].tensors
    # a random-init codebook is all zeros: verify again with codes drawn from the encoder's
    # frames (as EnCodec's training initialises them), so that frames pick different codes
    model = a.traced.loaded.module
    embed = model.quantizer.layers[0].codebook.embed
    before = embed.clone()
    try:
        with torch.no_grad():
            frames = model.encoder(a.traced.inputs["input_values"])[0].T
            pick = torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))
            embed.copy_(frames[pick[: len(embed)]])
            codes = model(**a.traced.inputs).audio_codes
        assert codes.unique().numel() > 1
        for seed in (0, 1):
            assert verify(a, seed=seed).ok
    finally:
        with torch.no_grad():
            embed.copy_(before)


def test_nystromformer_takes_its_mask_over_the_keys() -> None:
    """With the (batch, 1, 1, tokens) key mask, export captures the landmark attention in general
    (not specialised), and the graph reads the mask: padding changes its output as it changes
    the model's."""
    a = zoo_analysis("nystromformer")
    assert not a.traced.specialised
    inputs = dict(a.traced.inputs)
    mask = inputs["attention_mask"].clone()
    mask[..., -4:] = torch.finfo(mask.dtype).min
    padded = {**inputs, "attention_mask": mask}
    with torch.no_grad():
        want = a.traced.loaded.module(**padded).last_hidden_state
        got = a.traced.program.module()(**padded)[0]
        plain = a.traced.program.module()(**inputs)[0]
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)
