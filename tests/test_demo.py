"""The demo's assets and probe, and the demo itself end to end."""

from __future__ import annotations

import json

import pytest
import torch

from graphperm.cli import main
from graphperm.demo import CALIBRATION, ENCODERS, load_probe_tasks
from graphperm.demo.probe import layer_features, probe_accuracy
from graphperm.trace import load_model


def test_shipped_encoders_share_one_architecture_and_differ_in_weights() -> None:
    a, b = (load_model(str(ENCODERS[k])) for k in ("speech", "music"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].shape == sb[k].shape for k in sa)
    assert not torch.equal(
        sa["encoder.layers.0.attention.q_proj.weight"],
        sb["encoder.layers.0.attention.q_proj.weight"],
    )
    for folder in ENCODERS.values():
        prep = json.loads((folder / "preprocessor_config.json").read_text())
        assert prep["do_normalize"] and prep["sampling_rate"] == 16000


def test_probe_tasks_have_labels_splits_and_equal_clips() -> None:
    tasks = load_probe_tasks()
    assert {t.domain for t in tasks} == {"speech", "music"}
    for t in tasks:
        assert t.clips.ndim == 2 and len(t.clips) == len(t.labels) == len(t.train)
        assert 0 < int(t.train.sum()) < len(t.train)
        assert int(t.labels.max()) < len(t.classes)
        assert set(t.labels[~t.train].tolist()) <= set(t.labels[t.train].tolist())
    for folder in CALIBRATION:
        assert len(list(folder.glob("*.ogg"))) >= 8


def test_probe_learns_a_separable_task_and_not_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, 16, generator=gen)
    train = torch.arange(200) < 150
    y = (x[:, 1, 0] + x[:, 1, 3] > 0).long()  # only layer 1 carries the label
    assert probe_accuracy(x, y, train, classes=2) > 90
    noise = torch.randint(0, 4, (200,), generator=gen)
    assert probe_accuracy(x, noise, train, classes=4) < 45


def test_layer_features_pool_every_layer() -> None:
    model = load_model(str(ENCODERS["speech"])).module
    feats = layer_features(model, torch.randn(3, 8000), batch_size=2)
    assert feats.shape == (3, model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert torch.isfinite(feats).all()


@pytest.mark.slow
def test_demo_runs_and_scores_linear_and_aligned(capsys, tmp_path) -> None:
    out = tmp_path / "merged"
    assert main(["demo", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    scores = {}
    for line in printed.splitlines():
        for row in ("A (speech)", "B (music)", "linear 0.5/0.5", "aligned 0.5/0.5"):
            if line.startswith(row):
                scores[row] = [float(x) for x in line[len(row) :].split()]
    assert len(scores) == 4 and "aligned 0.9/0.1" in printed, printed
    # the demo's point: uniform averaging collapses keyword spotting, aligning first does not
    assert scores["aligned 0.5/0.5"][0] > scores["linear 0.5/0.5"][0] + 10, scores
    assert (out / "model.safetensors").exists() and (out / "permutations.safetensors").exists()
