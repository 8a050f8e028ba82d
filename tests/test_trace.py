"""Loading, example inputs and export, and their errors."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import ClapAudioConfig, HubertForCTC, T5Config, T5EncoderModel

from graphperm.analysis import analyse
from graphperm.errors import ModelLoadError, TraceError
from graphperm.trace import example_inputs, load_model, trace


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [
        ("hubert-tiny", "input_values", (1, 16000)),
        ("whisper-tiny", "input_features", (1, 16, 100)),
        ("bert-tiny", "input_ids", (1, 16)),
        ("vit-tiny", "pixel_values", (1, 3, 32, 32)),
    ],
)
def test_example_inputs_follow_the_config(name: str, key: str, shape: tuple) -> None:
    inputs = example_inputs(load_model(f"builtin:{name}"))
    assert next(iter(inputs)) == key and tuple(inputs[key].shape) == shape
    # text encoders are traced with their attention mask, so padding can be masked in calibration
    extra = ["attention_mask"] if key == "input_ids" else []
    if key == "input_values":  # an all-False mask: the masking path (masked_spec_embed) is traced
        extra = ["mask_time_indices"]
        mask = inputs["mask_time_indices"]
        assert mask.dtype == torch.bool and not mask.any() and mask.shape == (1, 799)  # frames
    assert list(inputs)[1:] == extra
    assert all(tuple(inputs[k].shape) == shape for k in [key, *extra] if k != "mask_time_indices")


def test_encoder_decoder_models_trace_their_encoder() -> None:
    loaded = load_model("builtin:whisper-tiny")
    assert loaded.prefix == "encoder." and type(loaded.module).__name__ == "WhisperEncoder"
    traced = trace(loaded)
    assert list(traced.program.graph_signature.user_inputs) == ["input_features"]
    targets = {s.target for s in traced.program.graph_signature.input_specs if s.target}
    assert targets <= set(loaded.state_dict()) and not any("decoder" in t for t in targets)
    analysis = analyse(traced)
    # the decoder (not traced) reads the encoder's output: its stream stays fixed
    assert analysis.counts() == {"conv": 1, "attn": 2, "ffn": 2}
    fixed = [f for f in analysis.fixed if f.key == "layer_norm.weight"]
    assert fixed and "reads the output of 'encoder'" in " ".join(fixed[0].reasons)
    assert all(
        not k.startswith(("encoder.", "decoder.")) for g in analysis.groups for k, _ in g.tensors
    )


def test_saved_encoder_only_model_is_traced_as_saved(tmp_path) -> None:
    """A saved T5EncoderModel is not rebuilt as a whole T5Model (whose decoder would need
    decoder inputs): config.architectures names the class."""
    model = T5EncoderModel(
        T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, vocab_size=64)
    )
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded.module).__name__ == "T5EncoderModel" and loaded.prefix == ""
    analysis = analyse(trace(loaded))
    assert analysis.counts()["attn"] == 1 and analysis.counts()["ffn"] == 1


def test_class_without_automodel_mapping_loads_from_architectures(tmp_path) -> None:
    config = ClapAudioConfig(
        spec_size=64,
        num_mel_bins=16,
        patch_size=4,
        patch_stride=4,
        hidden_size=32,
        depths=[1],
        num_attention_heads=[2],
        window_size=4,
        patch_embeds_hidden_size=16,
    )
    config.architectures = ["ClapAudioModel"]
    config.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, random_init=True)
    assert type(loaded.model).__name__ == "ClapAudioModel"


def test_headed_checkpoint_is_traced_whole(tmp_path) -> None:
    """A checkpoint saved with a task head is loaded, traced and saved back whole: the head
    reads the stream, so it moves with it; its logits (labels) stay in order."""
    HubertForCTC(load_model("builtin:hubert-tiny").config).save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded.model).__name__ == "HubertForCTC"
    assert loaded.module is loaded.model and loaded.prefix == "" and loaded.fixed_outputs
    analysis = analyse(trace(loaded))
    residual = analysis.group("residual")
    assert ("lm_head.weight", 1) in residual.tensors
    assert not any(k == "lm_head.weight" and d == 0 for g in analysis.groups for k, d in g.tensors)


def test_parameters_map_to_state_dict_names() -> None:
    traced = trace(load_model("builtin:hubert-tiny"))
    targets = {s.target for s in traced.program.graph_signature.input_specs if s.target}
    assert "encoder.layers.0.attention.q_proj.weight" in targets
    assert targets <= set(traced.loaded.state_dict())


class _NoRecipe(nn.Module):
    main_input_name = "mystery"

    def forward(self, mystery: torch.Tensor) -> torch.Tensor:
        return mystery


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:  # data-dependent control flow on a value export cannot see
            return self.out(torch.relu(self.lin(x)))
        return self.out(x)


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.from_numpy(x.numpy()))  # no data behind export's fake tensors


class _PaddedRecurrent(nn.Module):
    """EnCodec's pattern: a strided convolution padded by a length computed from buffer
    tensors (data-dependent under export), then an LSTM over the frames (whose number
    draft_export cannot bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, stride=2)
        self.lstm = nn.LSTM(6, 6)
        self.out = nn.Linear(6, 3)
        for name, value in (("stride", 2), ("kernel", 3), ("total", 1)):
            self.register_buffer(name, torch.tensor(value), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, channels, time)
        length = x.shape[-1]
        frames = torch.ceil((length - self.kernel + self.total) / self.stride + 1).long() - 1
        extra = frames * self.stride + self.kernel - self.total - length
        h = self.conv(torch.nn.functional.pad(x, (self.total, extra))).permute(2, 0, 1)
        return self.out(self.lstm(h)[0] + h)


def test_what_export_cannot_bound_is_traced_concretely(caplog) -> None:
    """Export and draft_export both fail; the concrete trace (the ops run on the example
    inputs, numbers read out of tensors taken as they were) serves, with a warning, and the
    analysis says it is specialised."""
    from graphperm.apply import verify

    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="graphperm.trace.export"):
        traced = trace(load_model(_PaddedRecurrent()), {"x": torch.randn(2, 4, 9)})
    assert traced.specialised and "concretely" in caplog.text
    names = {spec.target for spec in traced.program.graph_signature.input_specs}
    assert {"conv.weight", "lstm.weight_hh_l0", "out.weight"} <= names  # the model's own names
    a = analyse(traced)
    assert a.warnings[0].startswith("torch.export could not capture _PaddedRecurrent")
    assert a.to_dict()["specialised"] is True
    (g,) = [g for g in a.groups if ("lstm.weight_hh_l0", 1) in g.tensors]
    assert g.size == 6 and ("conv.weight", 0) in g.tensors  # the LSTM's units are the stream
    assert verify(a).ok


def test_missing_recipe_is_a_user_error() -> None:
    with pytest.raises(ModelLoadError, match=r"no example-input recipe.*--inputs"):
        example_inputs(load_model(_NoRecipe()))


def test_unexportable_model_is_a_user_error() -> None:
    with pytest.raises(TraceError, match=r"torch\.export could not capture _Unexportable"):
        trace(load_model(_Unexportable()), {"x": torch.randn(2, 4)})


def test_data_dependent_branches_are_traced_as_the_example_takes_them() -> None:
    """export cannot capture a branch on input values; draft_export takes it as the example
    does, and verify on that example is the proof."""
    from graphperm.apply import verify

    torch.manual_seed(0)
    loaded = load_model(_DataDependent())
    positive = trace(loaded, {"x": torch.rand(2, 4) + 0.1})
    assert positive.specialised
    a = analyse(positive)
    assert [g.kind for g in a.groups].count("ffn") == 1 and verify(a).ok  # relu(lin(x))
    negative = analyse(trace(loaded, {"x": -torch.rand(2, 4) - 0.1}))
    assert "ffn" not in [g.kind for g in negative.groups]  # out(x): no hidden layer here
    assert not trace(load_model(nn.Linear(4, 2)), {"input": torch.randn(2, 4)}).specialised
