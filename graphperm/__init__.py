"""graphperm: align and merge independently trained encoders by permuting their hidden units."""

from __future__ import annotations

__version__ = "0.1.0"
