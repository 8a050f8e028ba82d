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
import random
from collections.abc import Sequence
from pathlib import Path

from graphperm.errors import CalibrationError

__all__ = ["IMAGE_SUFFIXES", "TEXT_SUFFIXES", "find_files", "pick", "read_texts"]

TEXT_SUFFIXES = (".txt", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def find_files(sources: Sequence[str | Path], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Every file with one of ``suffixes`` in ``sources`` (files or folders, searched
    recursively), sorted; a clear :class:`CalibrationError` when there is none."""
    if not sources:
        raise CalibrationError(f"no calibration data: pass --calib with {what}")
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
        else:
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
    if not files:
        names = ", ".join(str(s) for s in sources)
        raise CalibrationError(f"no {what} ({', '.join(suffixes)}) in {names}")
    return files


def _record_text(record: object) -> str | None:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        return next((v for v in record.values() if isinstance(v, str)), None)
    return None


def read_texts(sources: Sequence[str | Path]) -> list[str]:
    """The texts in ``sources``: every non-empty line of a ``.txt`` file, the ``"text"`` field
    (else the first string field) of every record of a ``.jsonl`` file."""
    texts: list[str] = []
    for path in find_files(sources, TEXT_SUFFIXES, "text files"):
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
                if not line:
                    continue
            texts.append(line)
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
