"""Calibration audio: planning, mixing, reading, resampling, padding and error handling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from graphperm.data import AudioBatch, CalibrationSet, Clip
from graphperm.errors import CalibrationError


def tone(
    path: Path, seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1
) -> Path:
    """Write a sine tone (each extra channel at half the amplitude of the previous one)."""
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave / 2**c for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate)
    return path


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def read_all(calib: CalibrationSet, batch_size: int = 4) -> list[AudioBatch]:
    return list(calib.batches(batch_size))


@pytest.mark.parametrize(
    ("seconds", "min_fraction", "expected"),
    [
        (10.0, 0.5, [4.0, 4.0, 2.0]),  # last 2 s chunk is exactly half a clip: kept
        (10.0, 0.6, [4.0, 4.0]),  # ... and dropped when half is not enough
        (8.0, 0.5, [4.0, 4.0]),
        (3.0, 0.5, [3.0]),  # a file shorter than one clip but long enough
        (1.5, 0.5, []),  # too short: no clips
    ],
)
def test_chunks_and_min_fraction(tmp_path, seconds, min_fraction, expected):
    tone(
        tmp_path / "long.wav", 12.0
    )  # keeps the plan non-empty when the file under test gives none
    path = tone(tmp_path / "x.flac", seconds)
    calib = CalibrationSet([path, tmp_path / "long.wav"], min_fraction=min_fraction)
    clips = sorted((c for c in calib.clips if c.path == path), key=lambda c: c.start)
    assert [c.seconds for c in clips] == pytest.approx(expected)
    assert [c.start for c in clips] == pytest.approx([4.0 * i for i in range(len(expected))])


def test_reads_the_planned_segment(tmp_path):
    # A ramp makes every sample's position readable from its value.
    rate = 8000
    sf.write(tmp_path / "ramp.wav", np.arange(3 * rate, dtype=np.int32) << 8, rate, "PCM_32")
    calib = CalibrationSet([tmp_path], sample_rate=rate, clip_seconds=1.0)
    (batch,) = read_all(calib, batch_size=8)
    for row, clip in enumerate(batch.clips):
        first = batch.waveforms[row, 0].item() * 2**31 / 2**8
        assert first == pytest.approx(clip.start * rate)


@pytest.mark.parametrize("native_rate", [8000, 16000, 44100])
def test_resampling_keeps_length_and_pitch(tmp_path, native_rate):
    tone(tmp_path / "a.wav", 2.0, rate=native_rate, freq=440.0)
    calib = CalibrationSet([tmp_path], sample_rate=16000, clip_seconds=1.0)
    (batch,) = read_all(calib)
    assert batch.waveforms.shape == (2, 16000)
    assert batch.lengths.tolist() == [16000, 16000]
    assert batch.waveforms.dtype == torch.float32
    for wave in batch.waveforms:
        assert peak_hz(wave, 16000) == pytest.approx(440.0, abs=1.0)
        assert wave.abs().max() == pytest.approx(0.5, abs=0.02)


def test_stereo_is_averaged_to_mono(tmp_path):
    tone(tmp_path / "stereo.flac", 1.0, channels=2)
    calib = CalibrationSet([tmp_path], clip_seconds=1.0)
    (batch,) = read_all(calib)
    assert batch.waveforms.shape == (1, 16000)
    t = np.arange(16000) / 16000
    expected = 0.75 * 0.5 * np.sin(2 * np.pi * 440.0 * t)  # mean of amplitudes 0.5 and 0.25
    np.testing.assert_allclose(batch.waveforms[0].numpy(), expected, atol=1e-3)


def test_padding_lengths_and_mask(tmp_path):
    tone(tmp_path / "a.wav", 1.0)
    tone(tmp_path / "b.wav", 0.6, rate=44100)
    tone(tmp_path / "c.flac", 0.75, rate=8000)
    calib = CalibrationSet([tmp_path], clip_seconds=1.0)
    assert len(calib) == 3
    batches = read_all(calib, batch_size=2)
    assert [len(b.clips) for b in batches] == [2, 1]
    by_name = {}
    for batch in batches:
        assert batch.waveforms.shape[1] == batch.lengths.max()
        assert batch.lengths.dtype == torch.int64
        assert batch.mask.dtype == torch.bool
        assert batch.mask.sum(dim=1).tolist() == batch.lengths.tolist()
        assert torch.all(batch.waveforms[~batch.mask] == 0)
        assert batch.seconds == pytest.approx(batch.lengths.sum().item() / 16000)
        by_name |= {
            c.path.name: n for c, n in zip(batch.clips, batch.lengths.tolist(), strict=True)
        }
    assert by_name == {"a.wav": 16000, "b.wav": 9600, "c.flac": 12000}
    assert sum(b.seconds for b in batches) == pytest.approx(calib.seconds)


def test_sources_are_interleaved_and_shuffled_deterministically(tmp_path):
    for i in range(3):
        tone(tmp_path / "speech" / f"s{i}.wav", 8.0)  # 2 clips each: 6 speech clips
    tone(tmp_path / "music" / "m.flac", 16.0, rate=44100)  # 4 music clips
    sources = [tmp_path / "speech", tmp_path / "music"]
    calib = CalibrationSet(sources, seed=1)
    assert [c.source for c in calib.clips] == [0, 1] * 4 + [0, 0]
    assert calib.clips == CalibrationSet(sources, seed=1).clips
    assert len(calib.files) == 4
    orders = {tuple(CalibrationSet(sources, seed=s).clips) for s in range(5)}
    assert len(orders) > 1  # the seed shuffles clips within each source
    assert all(sorted(o, key=str) == sorted(calib.clips, key=str) for o in orders)
    assert calib.describe() == "10 clips (40.0 s) from 4 files in 2 sources (speech: 6, music: 4)"


def test_num_clips_and_shards(tmp_path):
    tone(tmp_path / "a" / "x.wav", 20.0)
    tone(tmp_path / "b" / "y.wav", 20.0)
    sources = [tmp_path / "a", tmp_path / "b"]
    full = CalibrationSet(sources, num_clips=7).clips
    assert len(full) == 7
    assert full == CalibrationSet(sources).clips[:7]
    assert [c.source for c in full] == [0, 1, 0, 1, 0, 1, 0]
    shards = [CalibrationSet(sources, num_clips=7, shard=(r, 3)).clips for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    union = [clip for shard in shards for clip in shard]
    assert sorted(union, key=str) == sorted(full, key=str)
    assert len(set(union)) == 7  # disjoint


def test_bad_arguments(tmp_path):
    tone(tmp_path / "a.wav", 8.0)
    with pytest.raises(CalibrationError, match="shard"):
        CalibrationSet([tmp_path], shard=(2, 2))
    with pytest.raises(CalibrationError, match="shard 2 of 3 gets no clips"):
        CalibrationSet([tmp_path], shard=(2, 3))
    with pytest.raises(CalibrationError, match="num_clips"):
        CalibrationSet([tmp_path], num_clips=0)
    with pytest.raises(CalibrationError, match="batch_size"):
        next(CalibrationSet([tmp_path]).batches(0))


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    tone(tmp_path / "good.wav", 4.0)
    (tmp_path / "text.wav").write_text("not audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored: not an audio file ending")
    calib = CalibrationSet([tmp_path])
    assert sorted(p.name for p, _ in calib.skipped) == ["empty.flac", "text.wav"]
    assert all(reason for _, reason in calib.skipped)
    assert "text.wav" in caplog.text
    assert [p.name for p in calib.files] == ["good.wav"]
    assert calib.describe().endswith("; 2 unreadable files skipped")
    (batch,) = read_all(calib)
    assert batch.lengths.tolist() == [64000]


@pytest.mark.parametrize("damage", ["overwrite", "delete"])
def test_file_that_breaks_after_planning_is_skipped_once(tmp_path, caplog, damage):
    tone(tmp_path / "a.wav", 8.0)
    broken = tone(tmp_path / "b.wav", 12.0)
    calib = CalibrationSet([tmp_path])
    assert len(calib) == 5
    if damage == "overwrite":
        broken.write_text("overwritten")
    else:
        broken.unlink()
    batches = read_all(calib, batch_size=2)
    assert [c.path.name for b in batches for c in b.clips] == ["a.wav", "a.wav"]
    assert [p.name for p, _ in calib.skipped] == ["b.wav"]
    assert caplog.text.count("b.wav") == 1
    assert [p.name for p in calib.files] == ["a.wav"]
    if damage == "delete":
        assert calib.skipped[0][1] == "file not found"


def test_finds_other_formats_with_any_case_ending(tmp_path):
    tone(tmp_path / "deep" / "er" / "A.OGG", 1.0)
    tone(tmp_path / "b.Flac", 1.0, rate=8000)
    tone(tmp_path / "c.aiff", 1.0, rate=44100, channels=2)
    calib = CalibrationSet([tmp_path], clip_seconds=1.0)
    assert [p.name for p in calib.files] == ["b.Flac", "c.aiff", "A.OGG"]  # sorted by path
    (batch,) = read_all(calib)
    assert batch.lengths.tolist() == [16000] * 3
    for wave in batch.waveforms:
        assert peak_hz(wave, 16000) == pytest.approx(440.0, abs=1.0)


def test_missing_source(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CalibrationError, match=r"'.*nope' does not exist"):
        CalibrationSet([missing])


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("hi")
    with pytest.raises(CalibrationError, match="no audio files") as err:
        CalibrationSet([tmp_path])
    assert str(tmp_path) in str(err.value)


def test_only_unreadable_files(tmp_path):
    (tmp_path / "a.wav").write_text("not audio")
    (tmp_path / "b.mp3").write_bytes(b"")
    with pytest.raises(CalibrationError, match="all 2 audio files") as err:
        CalibrationSet([tmp_path])
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    assert "unreadable" in message
    assert "a.wav" in message


def test_only_short_files(tmp_path):
    tone(tmp_path / "a.wav", 1.0)
    with pytest.raises(CalibrationError, match=r"shorter than .* = 2 s") as err:
        CalibrationSet([tmp_path], clip_seconds=4.0)
    assert str(tmp_path) in str(err.value)


def test_progress_goes_to_stderr_only_when_asked(tmp_path, capsys):
    tone(tmp_path / "a.wav", 8.0)
    calib = CalibrationSet([tmp_path])
    list(calib.batches(1))
    assert capsys.readouterr().err == ""
    list(calib.batches(1, progress=True, desc="stats"))
    captured = capsys.readouterr()
    assert "stats" in captured.err
    assert captured.out == ""


def test_clip_is_a_value():
    a = Clip(Path("x.wav"), 0, 0.0, 4.0)
    assert a == Clip(Path("x.wav"), 0, 0.0, 4.0)
    assert len({a, Clip(Path("x.wav"), 0, 0.0, 4.0)}) == 1


SHARED = Path(
    os.environ.get("GRAPHPERM_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)


def test_real_speech_and_music():
    audio = SHARED / "data" / "audio"
    if not (audio / "speech").is_dir() or not (audio / "music").is_dir():
        pytest.skip(f"no shared calibration audio at {audio}")
    calib = CalibrationSet([audio / "speech", audio / "music"], num_clips=8, clip_seconds=2.0)
    assert [c.source for c in calib.clips] == [0, 1] * 4
    assert not calib.skipped  # the transcription .txt files are not audio and are not tried
    batches = read_all(calib, batch_size=4)
    assert sum(len(b.clips) for b in batches) == 8
    for batch in batches:
        assert batch.waveforms.shape[1] <= 32000
        assert torch.isfinite(batch.waveforms).all()
        assert batch.waveforms[batch.mask].abs().max() > 0.01  # real sound, not silence


def test_error_when_no_planned_clip_can_be_read(tmp_path):
    path = tone(tmp_path / "a.wav", 8.0)
    calib = CalibrationSet([tmp_path])
    path.write_text("gone bad")
    with pytest.raises(CalibrationError, match="none of the 2 planned calibration clips") as err:
        read_all(calib)
    assert "a.wav" in str(err.value)
