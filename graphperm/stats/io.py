"""Statistics on disk and across processes: shards that any scheduler can combine.

A statistics file is a safetensors file with one entry per site and field, and JSON metadata
(the models, the policy, how much audio it saw). Files of different shards simply merge.
Under ``torch.distributed`` the same merge is an all-reduce: every process re-expresses its sums
around rank 0's shifts and the sums are added (float64), so the result does not depend on how
the data was split.

Example:
    >>> save_statistics(stats, "shard0.safetensors", {"model_a": "a/"})   # doctest: +SKIP
    >>> stats, meta = load_statistics("shard0.safetensors")               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graphperm.errors import MismatchError
from graphperm.stats.accumulate import SiteStats
from graphperm.stats.collect import Statistics

__all__ = ["all_reduce", "load_statistics", "save_statistics"]

_FIELDS = ("n", "shift_a", "shift_b", "sum_a", "sum_b", "sq_a", "sq_b", "cross")


def save_statistics(stats: Statistics, path: str | Path, meta: dict) -> None:
    """Write ``stats`` (all parts) and ``meta`` to ``path`` (written whole, then renamed)."""
    path = Path(path)
    tensors = {}
    for i, part in enumerate(stats.parts):
        for (key, dim), s in part.items():
            tensors.update(s.to_tensors(f"{i}/{key}:{dim}"))
    info = {
        **meta,
        "parts": len(stats.parts),
        "seconds": stats.seconds,
        "batches": stats.batches,
        "clips": stats.clips,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"graphperm": json.dumps(info)},
    )
    os.replace(tmp, path)


def load_statistics(path: str | Path) -> tuple[Statistics, dict]:
    """Read a file written by :func:`save_statistics`: ``(statistics, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise MismatchError(f"statistics file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("graphperm", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise MismatchError(f"'{path}' is not a graphperm statistics file: {err}") from err
    if not isinstance(meta, dict):
        raise MismatchError(f"'{path}' is not a graphperm statistics file (no metadata)")
    parts: list[dict] = [{} for _ in range(int(meta["parts"]))]
    prefixes = {k.rsplit("/", 1)[0] for k in tensors}
    for prefix in sorted(prefixes):
        part, site = prefix.split("/", 1)
        key, dim = site.rsplit(":", 1)
        parts[int(part)][(key, int(dim))] = SiteStats.from_tensors(tensors, prefix)
    stats = Statistics(parts, meta["seconds"], meta["batches"], 0.0, meta.get("clips", 0))
    return stats, meta


def all_reduce(stats: Statistics) -> Statistics:
    """Sum statistics over every process of the default ``torch.distributed`` group."""
    import torch.distributed as dist

    parts = []
    for part in stats.parts:
        out = {}
        for key in sorted(part):
            s = part[key]
            shifts = torch.cat([s.shift_a, s.shift_b]).double()
            dist.broadcast(shifts, src=0)
            r = s.rebased(shifts[: s.channels], shifts[s.channels :])
            flat = torch.cat(
                [
                    torch.tensor([r.n], dtype=torch.float64),
                    r.sum_a,
                    r.sum_b,
                    r.sq_a,
                    r.sq_b,
                    r.cross.reshape(-1),
                ]
            )
            dist.all_reduce(flat)
            c = s.channels
            cuts = [1, c, c, c, c, c * c]
            n, sa, sb, qa, qb, cross = torch.split(flat, cuts)
            out[key] = SiteStats(
                float(n),
                r.shift_a,
                r.shift_b,
                sa,
                sb,
                qa,
                qb,
                cross.reshape(c, c).to(s.cross.dtype),
            )
        parts.append(out)
    totals = torch.tensor([stats.seconds, stats.batches, stats.clips], dtype=torch.float64)
    dist.all_reduce(totals)
    return Statistics(parts, float(totals[0]), int(totals[1]), stats.elapsed, int(totals[2]))
