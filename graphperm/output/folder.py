"""Writing an output folder all at once: into a temporary folder, then renamed into place.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with output_folder(root / "out") as tmp:
    ...     _ = (tmp / "x.txt").write_text("hi")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['x.txt']
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from graphperm.errors import OutputExistsError

__all__ = ["check_output", "output_folder"]


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing non-empty folder (or a file) unless ``force``; before any heavy work."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder '{out}' exists and is not empty; choose another --out or pass --force"
        )


@contextlib.contextmanager
def output_folder(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out``.

    Nothing is left behind if the body raises: a half-written output never appears.
    """
    out = Path(out)
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
