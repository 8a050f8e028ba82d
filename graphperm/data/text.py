"""Calibration text and image files: find them, read them, pick a seeded sample, take a shard.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("one\\n\\ntwo\\n")
    >>> _ = (d / "b.jsonl").write_text('{"text": "three"}\\n')
    >>> sorted(read_texts([d]))
    ['one', 'three', 'two']
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from graphperm.data.audio import AUDIO_EXTENSIONS
from graphperm.data.sources import check_sources
from graphperm.errors import CalibrationError

__all__ = ["IMAGE_SUFFIXES", "TEXT_SUFFIXES", "find_files", "pick", "read_texts"]

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: What other files in a calibration folder are, to name them when they are left out.
KINDS = {
    "audio files": tuple(AUDIO_EXTENSIONS),
    "images": IMAGE_SUFFIXES,
    "text files": TEXT_SUFFIXES,
}


def find_files(sources: Sequence[str | Path], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Every file with one of ``suffixes`` in ``sources`` (files or folders, searched
    recursively), sorted; a clear :class:`CalibrationError` when there is none, or when a
    folder holds more files of another kind (audio, images, texts) than of ``what`` (the wrong
    folder: a few transcripts beside the audio are not a text corpus). Fewer files of another
    kind are left out with a warning.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a.flac", "b.flac", "notes.txt"):
        ...     _ = (d / name).write_bytes(b"")
        >>> try:
        ...     find_files([d], TEXT_SUFFIXES, "text files")
        ... except CalibrationError as err:
        ...     print(str(err).split(" holds ")[1].split(":")[0])
        2 audio files (.flac) and only 1 text file
    """
    if not sources:
        raise CalibrationError(f"no calibration data: pass --calib with {what}")
    check_sources(sources)
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if not path.exists():
            raise CalibrationError(f"calibration source '{src}' does not exist")
        if path.is_file():
            if path.suffix.lower() not in suffixes:
                raise CalibrationError(
                    f"calibration source '{src}' is not {what} ({', '.join(suffixes)})"
                )
            files.append(path)
            continue
        found: list[Path] = []
        others: dict[str, list[Path]] = {}
        for p in sorted(path.rglob("*")):
            if not p.is_file():
                continue
            ending = p.suffix.lower()
            if ending in suffixes:
                found.append(p)
                continue
            kind = next((k for k, ends in KINDS.items() if ending in ends), None)
            if kind is not None:
                others.setdefault(kind, []).append(p)
        for kind, paths in others.items():
            endings = ", ".join(sorted({p.suffix.lower() for p in paths}))
            held = f"{_count(len(paths), kind)} ({endings})"
            if not found:
                raise CalibrationError(
                    f"no {what} ({', '.join(suffixes)}) in '{src}', which holds {held}; pass "
                    f"{what} or a folder of them"
                )
            if len(paths) > len(found):
                raise CalibrationError(
                    f"calibration folder '{src}' holds {held} and only "
                    f"{_count(len(found), what)}: it is not a folder of {what}; pass "
                    f"{what} ({', '.join(suffixes)}) or a folder of them"
                )
            log.warning("calibration: leaving out %s in '%s'", held, src)
        files += found
    if not files:
        names = ", ".join(str(s) for s in sources)
        raise CalibrationError(f"no {what} ({', '.join(suffixes)}) in {names}")
    return files


def _count(n: int, plural: str) -> str:
    return f"1 {plural.removesuffix('s')}" if n == 1 else f"{n} {plural}"


def _record_text(record: object) -> str | None:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        return next((v for v in record.values() if isinstance(v, str)), None)
    return None


def read_texts(sources: Sequence[str | Path], counts: dict | None = None) -> list[str]:
    """The texts in ``sources``: every line of a ``.txt`` file, the ``"text"`` field (else the
    first string field) of every record of a ``.jsonl`` file; blank lines are passed over and
    records without text (empty or whitespace only) skipped. ``counts``, when given, receives
    ``files`` (files read) and ``skipped_texts`` (records skipped)."""
    texts: list[str] = []
    files = find_files(sources, TEXT_SUFFIXES, "text files")
    skipped = 0
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as err:
            raise CalibrationError(f"cannot read {path}: {err}") from err
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            if path.suffix.lower() == ".jsonl":
                try:
                    line = _record_text(json.loads(line))
                except json.JSONDecodeError as err:
                    raise CalibrationError(f"{path}:{n} is not a JSON record: {err}") from err
                if not line or not line.strip():
                    skipped += 1
                    continue
            texts.append(line)
    if counts is not None:
        counts.update(files=len(files), skipped_texts=skipped)
    if skipped:
        log.warning("calibration: skipped %d records without text (empty or blank)", skipped)
    if not texts:
        raise CalibrationError("the calibration text files hold no text")
    return texts


def pick(items: list, num: int | None, seed: int, shard: tuple[int, int] | None = None) -> list:
    """A seeded shuffle of ``items``, cut to ``num`` (None: all), then this shard's share
    (every ``size``-th item from ``rank``).

    Example:
        >>> pick(list(range(10)), 4, seed=0) == pick(list(range(10)), 4, seed=0)
        True
        >>> len(pick(list(range(10)), 4, seed=0, shard=(1, 2)))
        2
    """
    order = list(items)
    random.Random(seed).shuffle(order)
    if num is not None:
        order = order[:num]
    if shard is not None:
        rank, size = shard
        order = order[rank::size]
    return order
