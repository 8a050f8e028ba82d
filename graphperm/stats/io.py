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

from graphperm.errors import UsageError
from graphperm.stats.accumulate import SiteStats
from graphperm.stats.collect import Statistics

__all__ = ["all_reduce", "load_statistics", "save_statistics"]


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
        "positions": stats.positions,
        "batches": stats.batches,
        "items": stats.items,
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
        raise UsageError(f"statistics file '{path}' does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("graphperm", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise UsageError(f"'{path}' is not a graphperm statistics file: {err}") from err
    if not isinstance(meta, dict) or "positions" not in meta:
        raise UsageError(
            f"'{path}' is not a statistics file of this graphperm version; collect it again "
            "with `graphperm stats`"
        )
    parts: list[dict] = [{} for _ in range(int(meta["parts"]))]
    prefixes = {k.rsplit("/", 1)[0] for k in tensors}
    for prefix in sorted(prefixes):
        part, site = prefix.split("/", 1)
        key, dim = site.rsplit(":", 1)
        parts[int(part)][(key, int(dim))] = SiteStats.from_tensors(tensors, prefix)
    stats = Statistics(parts, meta["positions"], meta["batches"], 0.0, meta.get("items", 0))
    return stats, meta


def all_reduce(stats: Statistics) -> Statistics:
    """Sum statistics over every process of the default ``torch.distributed`` group."""
    import torch.distributed as dist

    parts = []
    for part in stats.parts:
        out = {}
        for key in sorted(part):
            s = part[key]
            shift = s.shift.double().clone()
            dist.broadcast(shift, src=0)
            r = s.rebased(shift)
            flat = torch.cat(
                [
                    torch.tensor([r.n], dtype=torch.float64),
                    r.sums.reshape(-1),
                    r.squares.reshape(-1),
                    r.cross.reshape(-1),
                ]
            )
            dist.all_reduce(flat)
            cuts = [1, r.sums.numel(), r.squares.numel(), r.cross.numel()]
            n, sums, squares, cross = torch.split(flat, cuts)
            out[key] = SiteStats(
                float(n),
                r.shift,
                sums.reshape(r.sums.shape),
                squares.reshape(r.squares.shape),
                cross.reshape(r.cross.shape).to(s.cross.dtype),
                s.pairs,
            )
        parts.append(out)
    totals = torch.tensor([stats.positions, stats.batches, stats.items], dtype=torch.float64)
    dist.all_reduce(totals)
    return Statistics(parts, float(totals[0]), int(totals[1]), stats.elapsed, int(totals[2]))
