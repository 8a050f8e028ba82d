"""Calibration that is what it claims: clip length does not change the statistics, Whisper shards
pack as one process, images by their real range, every source and file counted once and
accounted for, wrong or too little data said in one line."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from graphperm.cli import main
from graphperm.data import CalibrationSet
from graphperm.errors import CalibrationError
from graphperm.merge import prepare
from graphperm.policy import load_policy
from graphperm.stats import calibrate
from graphperm.trace import load_model
from tests.helpers import graphperm_cli
from tests.textmodels import save_tiny_bert

RATE = 16000


def _policy(name: str = "fnn-attn", **calibration):
    policy = load_policy(name)
    cal = policy.calibration.model_copy(
        update={"num_clips": None, "max_frame_rate": None, **calibration}
    )
    return policy.model_copy(update={"calibration": cal})


def _stats(a, b, policy, sources, shard=None):
    adapter, analysis, plan = prepare(a, policy)
    return calibrate(analysis, plan, [a, b], adapter, sources, shard=shard, device="cpu")


def _noise(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.normal(size=len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), RATE)
    return path


def _one_line_exit_2(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graphperm: error: ") and needle in last, proc.stderr


# -- issue 25.1: a clip's statistics do not depend on how long the other clips may be


def test_the_same_clips_give_the_same_statistics_whatever_clip_seconds(tmp_path) -> None:
    """0.7-s clips aligned with clip_seconds 0.7 and 1.0: the same audio, the same statistics
    (padding to 1.0 s used to reach every real frame through GroupNorm and attention)."""
    for i in range(6):
        _noise(tmp_path / "clips" / f"c{i}.wav", 0.7, seed=i)
    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    short, _ = _stats(a, b, _policy("paper", clip_seconds=0.7), [tmp_path / "clips"])
    long, _ = _stats(a, b, _policy("paper", clip_seconds=1.0), [tmp_path / "clips"])
    assert short.items == long.items == 6
    for key in short.site_keys():
        assert short.site(key).n == long.site(key).n
        diff = float((short.correlation(key) - long.correlation(key)).abs().max())
        assert diff < 1e-5, (key, diff)


def test_a_model_without_a_dynamic_length_export_falls_back_to_padding(tmp_path, monkeypatch):
    """Said in a warning and in the summary; the statistics still count only real frames."""
    from graphperm.errors import TraceError

    calibration = importlib.import_module("graphperm.stats.calibrate")  # not the function

    def no_export(*args, **kwargs):
        raise TraceError("torch.export could not capture it")

    for i, seconds in enumerate([1.0, 0.6, 1.0]):
        _noise(tmp_path / f"c{i}.wav", seconds, seed=i)
    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    own, info = _stats(a, b, _policy("paper", clip_seconds=1.0), [tmp_path])
    assert "padded" not in info
    monkeypatch.setattr(calibration, "trace", no_export)
    padded, info = _stats(a, b, _policy("paper", clip_seconds=1.0), [tmp_path])
    assert info["padded"] is True and padded.items == own.items == 3
    assert padded.positions == own.positions == 16000 * 2.6


# -- issue 25.2: Whisper shards pack exactly as one process


def test_whisper_shards_pack_as_one_process(tmp_path) -> None:
    """``stats --shard i/3`` three times, solved together: the single run's permutations."""
    for i in range(12):
        _noise(tmp_path / "audio" / f"c{i:02d}.wav", 1.0, seed=i)  # 48 clips of 0.25 s
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(clip_seconds=0.25, batch_size=2).model_dump_json())
    common = ["builtin:whisper-tiny", "builtin:whisper-tiny", "--random-init", "--quiet"]
    common += ["--policy", str(policy), "--calib", str(tmp_path / "audio")]
    assert main(["align", *common, "--out", str(tmp_path / "one")]) == 0
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"s{i}.safetensors"))
        assert main(["stats", *common, "--shard", f"{i}/3", "--out", files[-1]]) == 0
    assert main(["solve", *files, "--out", str(tmp_path / "three")]) == 0
    one = load_file(tmp_path / "one" / "permutations.safetensors")
    three = load_file(tmp_path / "three" / "permutations.safetensors")
    assert one.keys() == three.keys() and one
    assert all(torch.equal(one[k], three[k]) for k in one)


def test_whisper_reports_how_much_context_packing_shares(tmp_path) -> None:
    for i in range(2):
        _noise(tmp_path / f"c{i}.wav", 1.0, seed=i)
    a = load_model("builtin:whisper-tiny")
    from graphperm.inputs import adapter_for

    packed = adapter_for(a, _policy(clip_seconds=0.25).calibration).calibration([tmp_path])
    assert "packed 4 clips per window: 75 % of the audio" in packed.summary["description"]
    alone = adapter_for(a, _policy(clip_seconds=0.25, pack=False).calibration)
    assert "one clip per window" in alone.calibration([tmp_path]).summary["description"]


# -- issue 25.3: images by their real range


def test_images_are_converted_by_their_real_range(tmp_path) -> None:
    """The same pictures as 8-bit RGB, 16-bit grayscale, palette and opaque RGBA files give
    the same statistics (16-bit used to be clipped to white)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = [rng.integers(0, 256, (24, 24), dtype=np.uint8) for _ in range(4)]
    colour = [rng.integers(0, 4, (24, 24, 3), dtype=np.uint8) * 85 for _ in range(4)]
    kinds = {
        "rgb": [Image.fromarray(np.stack([g] * 3, -1)) for g in gray]
        + [Image.fromarray(c) for c in colour],
        "deep": [Image.fromarray(g.astype(np.uint16) * 257) for g in gray]  # I;16
        + [Image.fromarray(c).quantize(64) for c in colour],  # palette
        "alpha": [Image.fromarray(np.stack([g] * 3, -1)).convert("RGBA") for g in gray]
        + [Image.fromarray(c).convert("RGBA") for c in colour],
    }
    a, b = load_model("builtin:vit-tiny"), load_model("builtin:vit-tiny", seed=1)
    got = {}
    for kind, images in kinds.items():
        for i, im in enumerate(images):
            (tmp_path / kind).mkdir(exist_ok=True)
            im.save(tmp_path / kind / f"{i}.png")
        assert kind != "deep" or Image.open(tmp_path / kind / "0.png").mode.startswith("I")
        got[kind], _ = _stats(a, b, _policy(), [tmp_path / kind])
    for kind in ("deep", "alpha"):
        for key in got["rgb"].site_keys():
            diff = float((got[kind].correlation(key) - got["rgb"].correlation(key)).abs().max())
            assert diff < 1e-6, (kind, key, diff)


def test_cmyk_and_transparency() -> None:
    from PIL import Image

    from graphperm.inputs.pixels import to_8bit

    cmyk = Image.new("RGB", (1, 1), (200, 100, 50)).convert("CMYK")
    assert to_8bit(cmyk).getpixel((0, 0)) == (200, 100, 50)
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_8bit(half).getpixel((0, 0)) == (127, 127, 127)


# -- issue 25.4 and 19.8-9: every source and file counted once, and accounted for


def test_a_source_given_twice_is_one_line_exit_2(tmp_path) -> None:
    _noise(tmp_path / "a" / "x.wav", 1.0, seed=0)
    proc = graphperm_cli(
        "merge",
        "builtin:hubert-tiny",
        "builtin:hubert-tiny",
        "--random-init",
        "--calib",
        str(tmp_path / "a"),
        "--calib",
        str(tmp_path / "a" / "x.wav"),
        "--out",
        str(tmp_path / "out"),
    )
    _one_line_exit_2(proc, "lies inside")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CalibrationError, match="given twice"):
        CalibrationSet([tmp_path / "a", tmp_path / "a"])


def test_blank_texts_are_skipped_and_counted(tmp_path) -> None:
    from graphperm.inputs import adapter_for

    folder = save_tiny_bert(tmp_path / "bert", ["one", "two"])
    (tmp_path / "t.jsonl").write_text('{"text": "one two"}\n{"text": "   "}\n{"text": ""}\n')
    adapter = adapter_for(load_model(str(folder)), _policy().calibration)
    data = adapter.calibration([tmp_path / "t.jsonl"])
    assert len(data) == 1 and data.summary["skipped_texts"] == 2
    assert "2 records without text skipped" in data.summary["description"]


def test_sources_share_evenly_and_a_short_one_says_so(tmp_path, caplog) -> None:
    for i in range(2):
        _noise(tmp_path / "speech" / f"s{i}.wav", 2.0, seed=i)  # 4 clips of 1 s
    for i in range(4):
        _noise(tmp_path / "music" / f"m{i}.wav", 5.0, seed=10 + i)  # 20 clips
    sources = [tmp_path / "speech", tmp_path / "music"]
    with caplog.at_level(logging.WARNING):
        calib = CalibrationSet(sources, clip_seconds=1.0, num_clips=12)
    assert [c.source for c in calib.clips].count(0) == 4  # all it has
    assert "speech gives 4 clips, short of its share of 6" in caplog.text
    assert calib.short_sources == [(sources[0], 4, 6)]
    assert calib.describe().endswith("in 2 sources (speech: 4, music: 8)")
    caplog.clear()
    even = CalibrationSet(sources, clip_seconds=1.0, num_clips=8)
    assert [c.source for c in even.clips].count(0) == 4 and not caplog.text


def test_every_dropped_file_is_counted_with_its_reason(tmp_path) -> None:
    """Files too short for one clip used to vanish ("from 47 files", skipped_files: [])."""
    from graphperm.inputs import adapter_for

    for i in range(3):
        _noise(tmp_path / f"ok{i}.wav", 1.0, seed=i)
    _noise(tmp_path / "short.wav", 0.2, seed=9)
    (tmp_path / "broken.wav").write_text("not audio")
    a = load_model("builtin:hubert-tiny")
    data = adapter_for(a, _policy(clip_seconds=1.0).calibration).calibration([tmp_path])
    skipped = data.summary["skipped_files"]
    assert len(skipped) == 2 and data.summary["files"] == 3
    assert any("short.wav: 0.20 s, shorter than" in s for s in skipped)
    assert any("broken.wav" in s for s in skipped)
    assert data.summary["description"] == (
        "3 clips (3.0 s) from 3 files in 1 source; 1 unreadable file skipped; "
        "1 file shorter than 0.5 s skipped"
    )


# -- issue 19.10-11: wrong or too little data, a tokenizer without words


def test_an_audio_folder_for_a_text_model_is_one_line_exit_2(tmp_path) -> None:
    folder = save_tiny_bert(tmp_path / "bert", ["one", "two"])
    speech = tmp_path / "speech"
    for i in range(3):
        _noise(speech / f"s{i}.flac", 0.3, seed=i)
    (speech / "transcript.txt").write_text("one two\n")
    proc = graphperm_cli(
        "merge", str(folder), str(folder), "--policy", "fnn-attn", "--calib", str(speech),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    _one_line_exit_2(proc, "holds 3 audio files (.flac) and only 1 text file")
    assert not (tmp_path / "out").exists()


def test_too_little_data_warns(tmp_path) -> None:
    """One image for a ViT: fewer positions than units at the widest aligned group."""
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "one.png")
    a, b = load_model("builtin:vit-tiny"), load_model("builtin:vit-tiny", seed=1)
    _, info = _stats(a, b, _policy(), [tmp_path])
    assert "fewer positions than units" in info["warnings"][0]
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    _, info = _stats(a, b, _policy(), [tmp_path])
    assert "warnings" not in info


def test_a_tokenizer_with_an_empty_vocabulary_is_not_called_missing(tmp_path) -> None:
    import transformers as tf

    folder = save_tiny_bert(tmp_path / "bert", ["x"], tokenizer=False)
    tf.BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}).save_pretrained(
        folder
    )
    (tmp_path / "t.txt").write_text("x\n")
    proc = graphperm_cli(
        "merge", str(folder), str(folder), "--policy", "fnn-attn", "--calib",
        str(tmp_path / "t.txt"), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    _one_line_exit_2(proc, "has an empty vocabulary")


def test_bf16_statistics_run_and_stay_near_fp32(tmp_path) -> None:
    """``precision: bf16`` runs the graph under bf16 autocast; HuBERT's graph writes its
    float32 ``masked_spec_embed`` into the bf16 hidden states (``index_put``), which failed
    with a dtype error before the runner cast put values to their destination's dtype. Its
    correlations stay within bf16 rounding of the fp32 pass's."""
    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    audio = [_noise(tmp_path / f"c{i}.wav", 1.0, i) for i in range(4)]
    fp32, _ = _stats(a, b, _policy(clip_seconds=0.5), audio)
    bf16, _ = _stats(a, b, _policy(clip_seconds=0.5, precision="bf16"), audio)
    assert fp32.site_keys() == bf16.site_keys()
    worst = max(
        float((fp32.correlation(k) - bf16.correlation(k)).abs().max()) for k in fp32.site_keys()
    )
    assert 0 < worst < 0.1, worst
