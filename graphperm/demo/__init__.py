"""What ``graphperm demo`` ships: two small trained encoders, calibration clips, probe tasks.

The encoders are the speech and music models of the Table I miniature (``examples/table1``):
one HuBERT-style architecture, trained from different seeds on different audio with different
objectives. The probe tasks are a slice of that study's benchmark, disjoint from the
calibration clips.

Example:
    >>> from graphperm.demo import ENCODERS, load_probe_tasks
    >>> sorted(p.name for p in ENCODERS.values())
    ['music', 'speech']
    >>> tasks = load_probe_tasks()  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from graphperm.errors import GraphpermError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ENCODERS = {"speech": ASSETS / "encoders" / "speech", "music": ASSETS / "encoders" / "music"}
DEMO = ASSETS / "demo"
CALIBRATION = [DEMO / "calib" / "speech", DEMO / "calib" / "music"]


@dataclass(frozen=True)
class ProbeTask:
    """Equal-length clips with labels and a fixed train/test split."""

    name: str
    domain: str  # "speech" or "music"
    description: str
    clips: torch.Tensor  # (N, samples) float32, 16 kHz
    labels: torch.Tensor  # (N,) int64
    train: torch.Tensor  # (N,) bool
    classes: tuple[str, ...]


def load_probe_tasks(folder: Path = DEMO) -> list[ProbeTask]:
    """The probe tasks shipped with the demo (``probe.json`` + one FLAC per task)."""
    import soundfile as sf

    index = folder / "probe.json"
    if not index.exists():
        raise GraphpermError(
            f"{index} is missing: the demo's assets were not installed; reinstall graphperm "
            "from a checkout that has graphperm/assets"
        )
    tasks = []
    for name, spec in json.loads(index.read_text()).items():
        audio, _ = sf.read(folder / spec["file"], dtype="float32")
        clips = torch.from_numpy(np.ascontiguousarray(audio.reshape(-1, spec["clip_samples"])))
        tasks.append(
            ProbeTask(
                name=name,
                domain=spec["domain"],
                description=spec["description"],
                clips=clips,
                labels=torch.tensor(spec["labels"]),
                train=torch.tensor([s == "train" for s in spec["split"]]),
                classes=tuple(spec["classes"]),
            )
        )
    return tasks
