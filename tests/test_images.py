"""Image calibration (and ready-made .safetensors batches): ViT-style encoders merge on a
folder of images; wrong data for a model is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graphperm.errors import CalibrationError
from graphperm.inputs import adapter_for
from graphperm.merge import align, merge_models
from graphperm.policy import load_policy
from graphperm.trace import load_model
from tests.textmodels import save_tiny_bert

DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"


def _policy(**cal):
    policy = load_policy("fnn-attn").model_dump()
    policy["calibration"].update(num_clips=None, **cal)
    return load_policy(policy)


@pytest.fixture(scope="module")
def vits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vits")
    out = []
    for seed in (0, 1):
        folder = root / f"vit{seed}"
        load_model("builtin:vit-tiny", seed=seed).model.save_pretrained(folder)
        out.append(folder)
    return out[0], out[1]


def test_images_without_a_processor_are_resized_and_normalised(vits) -> None:
    adapter = adapter_for(load_model(vits[0]), _policy().calibration)
    data = adapter.calibration([IMAGES])
    assert len(data) == 6 and "ImageNet" in data.summary["description"]
    batches = list(data.batches(4))
    assert [b.items for b in batches] == [4, 2]
    assert batches[1].inputs["pixel_values"].shape == (4, 3, 32, 32)
    assert batches[1].mask.tolist() == [[True], [True], [False], [False]]
    # a plain red image: the red channel is high, normalised with the ImageNet mean/std
    red = adapter.calibration([IMAGES / "red.jpg"])
    (b,) = list(red.batches(1))
    assert b.inputs["pixel_values"][0, 0].mean() > 1.0 > b.inputs["pixel_values"][0, 2].mean()


def test_images_through_the_models_image_processor(vits, tmp_path) -> None:
    from transformers import ViTImageProcessor

    folder = tmp_path / "vit"
    load_model(vits[0]).model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    data = adapter_for(load_model(folder), _policy().calibration).calibration([IMAGES])
    assert "image processor" in data.summary["description"]
    (b, _) = list(data.batches(4))
    assert b.inputs["pixel_values"].shape == (4, 3, 32, 32)


def test_merging_two_vits_on_images(vits) -> None:
    a, b = load_model(vits[0]), load_model(vits[1])
    result = merge_models(align(a, b, _policy(), [IMAGES]), a, b, weight_a=0.5)
    assert result.check is not None and result.check.ok
    assert result.alignment.calibration["images"] == 6


def test_ready_made_batches_for_a_vit(vits, tmp_path) -> None:
    path = tmp_path / "batches.safetensors"
    save_file({"pixel_values": torch.randn(5, 3, 32, 32)}, str(path))
    a, b = load_model(vits[0]), load_model(vits[1])
    alignment = align(a, b, _policy(), [path])
    assert alignment.calibration["images"] == 5


def test_ready_made_batches_with_wrong_keys_or_shapes(vits, tmp_path) -> None:
    adapter = adapter_for(load_model(vits[0]), _policy().calibration)
    from graphperm.inputs import tensor_calibration

    wrong = tmp_path / "w.safetensors"
    save_file({"input_ids": torch.zeros(2, 8, dtype=torch.long)}, str(wrong))
    with pytest.raises(CalibrationError, match="the model is exported on pixel_values"):
        tensor_calibration(adapter, [wrong])
    small = tmp_path / "s.safetensors"
    save_file({"pixel_values": torch.zeros(2, 3, 16, 16)}, str(small))
    with pytest.raises(CalibrationError, match=r"every item must be \(3, 32, 32\)"):
        tensor_calibration(adapter, [small])


def test_cli_image_folder_for_a_text_model(tmp_path) -> None:
    bert = save_tiny_bert(tmp_path / "bert", ["a", "b"])
    out = tmp_path / "o"
    args = [str(bert), str(bert), "--policy", "fnn-attn", "--calib", str(IMAGES), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "graphperm", "merge", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graphperm: error: ") and "no text files" in last, proc.stderr
    assert not out.exists() or not any(out.iterdir())
