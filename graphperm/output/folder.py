"""Writing an output folder all at once: into a temporary folder, then renamed into place.

The folder and its files get the permissions the user's umask gives new files (not the
private ``drwx------`` of a temporary folder), and an output that is, contains or lies inside
one of the inputs is refused whatever ``force`` says: nothing a user passes in is modified.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with output_folder(root / "out") as tmp:
    ...     _ = (tmp / "x.txt").write_text("hi")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['x.txt']
    >>> check_output(root / "out" / "sub", force=True, inputs={"model A": root / "out"})
    Traceback (most recent call last):
    ...
    graphperm.errors.OutputExistsError: --out '...sub' lies inside model A ('...out'), an input; ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from graphperm.errors import OutputExistsError

__all__ = ["check_not_an_input", "check_output", "output_folder"]


def check_output(
    out: Path, force: bool, inputs: Mapping[str, str | Path | None] | None = None
) -> None:
    """Refuse, before any heavy work, an output that is, contains or lies inside one of
    ``inputs`` (what the user passed in, by the name to show: ``{"model B": "bert-b/"}``;
    entries that are not local paths, such as hub ids, are ignored) whatever ``force`` says,
    and an existing non-empty folder (or a file) unless ``force``."""
    check_not_an_input(Path(out), inputs or {})
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder '{out}' exists and is not empty; choose another --out or pass --force"
        )


def check_not_an_input(out: Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output path that is, contains or lies inside one of ``inputs``."""
    target = out.expanduser().resolve()
    for name, given in inputs.items():
        if given is None or not str(given):
            continue
        path = Path(str(given)).expanduser()
        if not path.exists():
            continue  # a hub id, a builtin: name, or a path the command will reject itself
        path = path.resolve()
        if target == path:
            how = "is"
        elif target.is_relative_to(path):
            how = "lies inside"
        elif path.is_relative_to(target):
            how = "contains"
        else:
            continue
        raise OutputExistsError(
            f"--out '{out}' {how} {name} ('{given}'), an input; choose a folder outside every "
            "input (--force never writes over an input)"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_up(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions a new file gets under the umask
    (temporary folders and some writers create them private)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def output_folder(
    out: str | Path,
    *,
    force: bool = False,
    inputs: Mapping[str, str | Path | None] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out``.

    Nothing is left behind if the body raises (or is interrupted): a half-written output never
    appears. ``inputs`` as for :func:`check_output`.
    """
    out = Path(out)
    check_output(out, force, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        _open_up(tmp)
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
