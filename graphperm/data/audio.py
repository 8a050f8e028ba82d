"""Calibration audio: find files, plan fixed-length clips, and stream padded batches.

The plan (which clip of which file, in which order) is made up front from file headers alone, so it
is cheap, deterministic and printable before anything heavy runs. Audio is read one clip segment at
a time at the file's own sample rate and resampled with soxr, so memory does not grow with the
amount of data. Files that cannot be read are skipped, logged and counted; they never crash a run.

Example:
    >>> calib = CalibrationSet(["speech/", "music/"], num_clips=64)  # doctest: +SKIP
    >>> print(calib.describe())  # doctest: +SKIP
    64 clips (256.0 s) from 40 files in 2 sources
    >>> for batch in calib.batches(8):  # doctest: +SKIP
    ...     batch.waveforms.shape, batch.lengths, batch.mask
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm import tqdm

from graphperm.data.sources import check_sources
from graphperm.errors import CalibrationError

__all__ = ["AUDIO_EXTENSIONS", "AudioBatch", "CalibrationSet", "Clip"]

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"})
"""File name endings searched for in folders (case-insensitive). A file named directly is always
tried, whatever its ending."""

# What soundfile raises for a file it cannot open or decode (LibsndfileError is a RuntimeError).
_READ_ERRORS = (RuntimeError, OSError, ValueError)


@dataclass(frozen=True)
class Clip:
    """One planned segment of one audio file.

    Example:
        >>> Clip(Path("speech/a.flac"), source=0, start=4.0, seconds=2.5).seconds
        2.5
    """

    path: Path
    """The audio file."""
    source: int
    """Index of the calibration source (the i-th path given by the user) the file came from."""
    start: float
    """Offset from the start of the file, in seconds."""
    seconds: float
    """Duration of the segment, in seconds (at most ``clip_seconds``)."""


@dataclass(frozen=True)
class AudioBatch:
    """Mono float32 clips, zero-padded on the right, with the number of valid samples per row.

    Example:
        >>> batch = AudioBatch(torch.ones(2, 3), torch.tensor([3, 1]), clips=(), sample_rate=2)
        >>> batch.mask
        tensor([[ True,  True,  True],
                [ True, False, False]])
        >>> batch.seconds
        2.0
    """

    waveforms: torch.Tensor
    """(B, L) float32; L is the longest clip in the batch, shorter rows are padded with zeros."""
    lengths: torch.Tensor
    """(B,) int64 number of valid samples in each row."""
    clips: tuple[Clip, ...]
    """The clip each row was read from."""
    sample_rate: int
    """Samples per second of ``waveforms``."""

    @property
    def mask(self) -> torch.Tensor:
        """(B, L) bool, True on valid samples and False on padding."""
        positions = torch.arange(self.waveforms.shape[-1], device=self.lengths.device)
        return positions < self.lengths[:, None]

    @property
    def seconds(self) -> float:
        """Total valid (unpadded) audio in the batch, in seconds."""
        return int(self.lengths.sum()) / self.sample_rate


class CalibrationSet:
    """A deterministic, mixed plan of fixed-length clips from audio files and folders.

    Each source is a file or a folder (searched recursively); a source given twice, or inside
    another, is refused. Every file is cut into consecutive clips of ``clip_seconds``; a shorter
    last clip is kept if it lasts at least ``min_fraction * clip_seconds``, and a file too short
    for any clip is skipped and counted (:attr:`skipped`). Clips are shuffled within each source
    (``seed``) and the sources are interleaved round-robin, so any prefix of the plan mixes them
    evenly: ``num_clips`` keeps that many from the front, each source giving an equal share
    (a source with fewer clips than its share gives all it has, says so in a warning and in
    :attr:`short_sources`, and the others fill the rest). ``shard=(rank, world_size)`` keeps
    every world_size-th clip from ``rank`` on, for distributed calibration. ``by_length`` orders
    the kept clips longest first (stable), so that clips of equal length are neighbours and
    :meth:`batches` with ``equal_length`` fills its batches.

    Example:
        >>> calib = CalibrationSet(["speech/", "music/"], num_clips=128)  # doctest: +SKIP
        >>> len(calib), calib.seconds  # doctest: +SKIP
        (128, 512.0)
        >>> batch = next(calib.batches(16))  # doctest: +SKIP

    Raises:
        CalibrationError: a source does not exist, an argument is out of range, or the plan is
            empty (no audio found, all files unreadable, or all too short).
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        *,
        sample_rate: int = 16000,
        clip_seconds: float = 4.0,
        num_clips: int | None = None,
        seed: int = 0,
        min_fraction: float = 0.5,
        shard: tuple[int, int] | None = None,
        by_length: bool = False,
    ) -> None:
        if isinstance(sources, str | Path):
            sources = [sources]
        _check_arguments(sources, sample_rate, clip_seconds, num_clips, min_fraction, shard)
        check_sources(sources)
        self.sources: tuple[Path, ...] = tuple(Path(s).expanduser() for s in sources)
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.min_fraction = min_fraction
        self.files: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        self._rates: dict[Path, int] = {}

        self.short_files = 0
        per_source = [self._plan_source(i, root, seed) for i, root in enumerate(self.sources)]
        if not any(per_source):
            raise CalibrationError(self._why_empty())
        clips = _round_robin(per_source)[:num_clips]
        self.short_sources: list[tuple[Path, int, int]] = []
        """(source, clips it gave, its share) of each source too short for its share."""
        if num_clips is not None and len(self.sources) > 1:
            share = num_clips // len(self.sources)
            given = [sum(c.source == i for c in clips) for i in range(len(self.sources))]
            for root, planned, n in zip(self.sources, per_source, given):
                if n < share and n < max(given):  # short, and the mix is uneven for it
                    self.short_sources.append((root, len(planned), share))
                    log.warning(
                        "calibration source %s gives %s, short of its share of %d (of "
                        "num_clips %d); the other sources fill the rest",
                        root,
                        _count(len(planned), "clip"),
                        share,
                        num_clips,
                    )
        if shard is not None:
            rank, world_size = shard
            if rank >= len(clips):
                raise CalibrationError(
                    f"calibration shard {rank} of {world_size} gets no clips (the plan has only "
                    f"{len(clips)}); use fewer processes or more calibration audio"
                )
            clips = clips[rank::world_size]
        if by_length:
            clips = sorted(clips, key=lambda c: -c.seconds)
        self.clips: list[Clip] = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:
        return f"CalibrationSet({self.describe()})"

    @property
    def seconds(self) -> float:
        """Total planned audio, in seconds."""
        return sum(clip.seconds for clip in self.clips)

    def describe(self) -> str:
        """One line summing up the plan.

        Example:
            >>> calib.describe()  # doctest: +SKIP
            '128 clips (512.0 s) from 53 files in 2 sources; 1 unreadable file skipped'
        """
        n_files = len({clip.path for clip in self.clips})
        text = (
            f"{_count(len(self.clips), 'clip')} ({self.seconds:.1f} s) from "
            f"{_count(n_files, 'file')} in {_count(len(self.sources), 'source')}"
        )
        if len(self.sources) > 1:
            per = [sum(c.source == i for c in self.clips) for i in range(len(self.sources))]
            text += " (" + ", ".join(f"{s.name or s}: {n}" for s, n in zip(self.sources, per)) + ")"
        unreadable = len(self.skipped) - self.short_files
        if unreadable:
            text += f"; {_count(unreadable, 'unreadable file')} skipped"
        if self.short_files:
            shortest = self.min_fraction * self.clip_seconds
            text += f"; {_count(self.short_files, 'file')} shorter than {shortest:g} s skipped"
        return text

    def batches(
        self,
        batch_size: int,
        *,
        progress: bool = False,
        desc: str = "calibration",
        equal_length: bool = False,
    ) -> Iterator[AudioBatch]:
        """Read the planned clips in order and yield them in padded batches.

        Each clip is read at its file's own rate, averaged to mono, resampled to ``sample_rate``
        with soxr and cut to at most ``round(clip_seconds * sample_rate)`` samples. A file that
        fails to read is skipped (and added to :attr:`skipped` once); every batch but the last
        holds ``batch_size`` clips. With ``equal_length`` every batch holds clips of one length
        only (nothing padded): a clip of another length starts the next batch.

        Example:
            >>> for batch in calib.batches(8, progress=True):  # doctest: +SKIP
            ...     stats.update(model(batch.waveforms), batch.mask)
        """
        if batch_size < 1:
            raise CalibrationError(f"batch_size must be at least 1, got {batch_size}")
        failed = {path for path, _ in self.skipped}
        pending: list[tuple[Clip, np.ndarray]] = []
        n_read = 0
        with tqdm(
            total=self.seconds,
            desc=desc,
            unit="s",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            for clip in self.clips:
                if clip.path not in failed:
                    audio = self._read(clip, failed)
                    if audio is not None:
                        if equal_length and pending and len(pending[0][1]) != len(audio):
                            yield self._collate(pending)
                            pending = []
                        pending.append((clip, audio))
                        n_read += 1
                bar.update(clip.seconds)
                if len(pending) == batch_size:
                    yield self._collate(pending)
                    pending = []
            if pending:
                yield self._collate(pending)
        if self.clips and n_read == 0:
            raise CalibrationError(
                f"none of the {_count(len(self.clips), 'planned calibration clip')} could be "
                f"read (last: {self.skipped[-1][0]}: {self.skipped[-1][1]}); check the files"
            )

    def _plan_source(self, index: int, root: Path, seed: int) -> list[Clip]:
        """Every clip of one source, shuffled with ``seed``."""
        clips: list[Clip] = []
        for path in _find_audio(root):
            try:
                info = sf.info(str(path))
            except _READ_ERRORS as err:
                self._skip(path, _reason(path, err))
                continue
            chunks = self._chunk(path, index, info.frames, info.samplerate)
            if not chunks:
                shortest = self.min_fraction * self.clip_seconds
                self.short_files += 1
                self._skip(
                    path,
                    f"{info.frames / info.samplerate:.2f} s, shorter than min_fraction × "
                    f"clip_seconds = {shortest:g} s",
                )
                continue
            self.files.append(path)
            self._rates[path] = info.samplerate
            clips += chunks
        random.Random(seed).shuffle(clips)
        return clips

    def _chunk(self, path: Path, source: int, frames: int, rate: int) -> list[Clip]:
        """Consecutive clips of one file; a short last clip only if long enough."""
        step = max(1, round(self.clip_seconds * rate))
        shortest = self.min_fraction * self.clip_seconds * rate - 1e-6
        return [
            Clip(path, source, start / rate, min(step, frames - start) / rate)
            for start in range(0, frames, step)
            if min(step, frames - start) >= shortest
        ]

    def _read(self, clip: Clip, failed: set[Path]) -> np.ndarray | None:
        """One clip as mono float32 at ``sample_rate``, or None (logged) if it cannot be read."""
        rate = self._rates[clip.path]
        try:
            audio, _ = sf.read(
                str(clip.path),
                start=round(clip.start * rate),
                frames=round(clip.seconds * rate),
                dtype="float32",
                always_2d=True,
            )
            if len(audio) == 0:
                raise ValueError(f"no samples at {clip.start:.2f} s (was the file truncated?)")
        except _READ_ERRORS as err:
            failed.add(clip.path)
            self._skip(clip.path, _reason(clip.path, err))
            if clip.path in self.files:
                self.files.remove(clip.path)
            return None
        mono = audio.mean(axis=1, dtype=np.float32)
        if rate != self.sample_rate:
            mono = soxr.resample(mono, rate, self.sample_rate)
        return mono[: round(self.clip_seconds * self.sample_rate)]

    def _collate(self, items: list[tuple[Clip, np.ndarray]]) -> AudioBatch:
        lengths = torch.tensor([len(audio) for _, audio in items], dtype=torch.int64)
        waveforms = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
        for row, (_, audio) in enumerate(items):
            waveforms[row, : len(audio)] = torch.from_numpy(np.ascontiguousarray(audio))
        return AudioBatch(waveforms, lengths, tuple(clip for clip, _ in items), self.sample_rate)

    def _skip(self, path: Path, reason: str) -> None:
        log.warning("skipping calibration file %s: %s", path, reason)
        self.skipped.append((path, reason))

    def _why_empty(self) -> str:
        where = ", ".join(f"'{s}'" for s in self.sources)
        if not self.files and not self.skipped:
            endings = " ".join(sorted(AUDIO_EXTENSIONS))
            return (
                f"no audio files ({endings}) found in calibration sources {where}; "
                "pass a folder that contains audio files"
            )
        if self.short_files == len(self.skipped):
            shortest = self.min_fraction * self.clip_seconds
            return (
                f"all {_count(len(self.skipped), 'audio file')} in calibration sources {where} "
                f"are shorter than min_fraction * clip_seconds = {shortest:g} s; "
                "lower clip_seconds or min_fraction"
            )
        path, reason = next((p, r) for p, r in self.skipped if "shorter than" not in r)
        short = f"; {self.short_files} too short" if self.short_files else ""
        return (
            f"all {_count(len(self.skipped), 'audio file')} in calibration sources {where} "
            f"are unreadable (first: {path}: {reason}{short}); pass audio that soundfile can read"
        )


def _check_arguments(
    sources: Sequence[str | Path],
    sample_rate: int,
    clip_seconds: float,
    num_clips: int | None,
    min_fraction: float,
    shard: tuple[int, int] | None,
) -> None:
    if not sources:
        raise CalibrationError("no calibration sources given; pass audio files or folders")
    for source in sources:
        if not Path(source).expanduser().exists():
            raise CalibrationError(
                f"calibration source '{source}' does not exist; "
                "pass an audio file or a folder of audio files"
            )
    if sample_rate <= 0:
        raise CalibrationError(f"sample_rate must be positive, got {sample_rate}")
    if not clip_seconds > 0:
        raise CalibrationError(f"clip_seconds must be positive, got {clip_seconds}")
    if not 0 < min_fraction <= 1:
        raise CalibrationError(f"min_fraction must be in (0, 1], got {min_fraction}")
    if num_clips is not None and num_clips < 1:
        raise CalibrationError(f"num_clips must be at least 1 (or None for all), got {num_clips}")
    if shard is not None:
        rank, world_size = shard
        if not 0 <= rank < world_size:
            raise CalibrationError(
                f"shard=({rank}, {world_size}) is invalid; need 0 <= rank < world_size"
            )


def _find_audio(root: Path) -> list[Path]:
    """``root`` itself if it is a file, else the audio files below it, sorted by path."""
    if not root.is_dir():
        return [root]
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )


def _round_robin(groups: list[list[Clip]]) -> list[Clip]:
    """One from each group in turn; a group that runs out leaves the rotation."""
    merged: list[Clip] = []
    for i in range(max(map(len, groups), default=0)):
        merged += [group[i] for group in groups if i < len(group)]
    return merged


def _reason(path: Path, err: Exception) -> str:
    """Why ``path`` could not be read, without libsndfile's "Error opening 'path': " prefix."""
    if not path.exists():
        return "file not found"
    return getattr(err, "error_string", None) or str(err)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
