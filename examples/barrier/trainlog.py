"""What both of the testbed's training scripts record: the running loss every few steps, the
versions that trained, and the summary saved next to the checkpoint.

    >>> log = StepLog(every=2, start=0.0)
    >>> for step, loss in enumerate([1.0, 3.0, 5.0]):
    ...     log.add(step, 3, loss, echo=False)
    >>> [e["loss"] for e in log.entries]
    [2.0, 5.0]
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers


class StepLog:
    """Mean training loss over every ``every`` steps (and the last), with the seconds since
    ``start``; each entry is printed to stderr as one JSON line."""

    def __init__(self, every: int, start: float) -> None:
        self.every, self.start = every, start
        self.entries: list[dict] = []
        self._running: list[float] = []

    def add(self, step: int, steps: int, loss: float, *, echo: bool = True) -> None:
        self._running.append(loss)
        if (step + 1) % self.every and step + 1 != steps:
            return
        entry = {"step": step + 1, "loss": round(float(np.mean(self._running)), 4)}
        entry["seconds"] = round(time.time() - self.start, 1)
        self.entries.append(entry)
        if echo:
            print(json.dumps(entry), file=sys.stderr, flush=True)
        self._running = []


def save_summary(out: Path, summary: dict, log: StepLog, message: str) -> None:
    """Write ``summary`` (+ one thread, the versions and the log) to ``out/train_log.json``."""
    summary |= {
        "threads": 1,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "log": log.entries,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {out}: {message}", file=sys.stderr)
