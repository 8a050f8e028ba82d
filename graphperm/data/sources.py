"""Calibration sources as the user names them: each path once, none inside another.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> check_sources([d / "a", d / "b"])  # fine
    >>> try:
    ...     check_sources([d, d / "a"])
    ... except CalibrationError as err:
    ...     print(str(err).split("', ")[1])
    so its files would count twice; pass one of them
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from graphperm.errors import CalibrationError

__all__ = ["check_sources"]


def check_sources(sources: Sequence[str | Path]) -> None:
    """Refuse a source given twice, or one inside another (its files would count twice)."""
    seen: dict[Path, str | Path] = {}
    for src in sources:
        path = Path(src).expanduser().resolve()
        for other, name in seen.items():
            if path == other:
                raise CalibrationError(
                    f"calibration source '{src}' is given twice; pass each source once"
                )
            inner, outer = (src, name) if other in path.parents else (name, src)
            if other in path.parents or path in other.parents:
                raise CalibrationError(
                    f"calibration source '{inner}' lies inside '{outer}', so its files would "
                    "count twice; pass one of them"
                )
        seen[path] = src
