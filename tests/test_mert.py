"""MERT checkpoints load as HubertModel, without remote code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graphperm.errors import ModelLoadError
from graphperm.mert import mert_state_to_hubert
from graphperm.trace import load_model


def _fake_mert(folder: Path, **extra) -> torch.nn.Module:
    """A MERT-style checkpoint: MERT's config fields and key names, HuBERT's numbers."""
    reference = load_model("builtin:hubert-tiny", seed=3).module
    config = reference.config.to_dict()
    config.update(
        {
            "model_type": "mert_model",
            "architectures": ["MERTModel"],
            "auto_map": {"AutoModel": "modeling_MERT.MERTModel"},
            "feature_extractor_cqt": False,
            "deepnorm": False,
            "attention_relax": -1.0,
            "sample_rate": 16000,
            **extra,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = {}
    for k, v in reference.state_dict().items():
        k = k.replace("conv.parametrizations.weight.original0", "conv.weight_g")
        k = k.replace("conv.parametrizations.weight.original1", "conv.weight_v")
        state[f"mert_model.{k}"] = v.contiguous()
    state["mert_model.label_embs_concat"] = torch.zeros(3, 4)  # a pretraining-only tensor
    save_file(state, str(folder / "model.safetensors"))
    return reference


def test_key_mapping() -> None:
    state = {
        "mert_model.encoder.pos_conv_embed.conv.weight_v": 1,
        "mert_model.feature_projection.projection.weight": 2,
        "label_embs_concat": 3,
    }
    mapped, dropped = mert_state_to_hubert(state)
    assert mapped == {
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1": 1,
        "feature_projection.projection.weight": 2,
    }
    assert dropped == ["label_embs_concat"]


def test_mert_folder_loads_as_hubert_and_computes_the_same(tmp_path: Path) -> None:
    reference = _fake_mert(tmp_path / "mert")
    loaded = load_model(tmp_path / "mert")
    assert type(loaded.module).__name__ == "HubertModel"
    x = torch.randn(1, 8000)
    with torch.no_grad():
        assert torch.allclose(
            loaded.module(x).last_hidden_state, reference.eval()(x).last_hidden_state, atol=1e-6
        )


def test_mert_variants_hubert_cannot_compute_are_refused(tmp_path: Path) -> None:
    _fake_mert(tmp_path / "deep", deepnorm=True)
    with pytest.raises(ModelLoadError, match="DeepNorm"):
        load_model(tmp_path / "deep")
