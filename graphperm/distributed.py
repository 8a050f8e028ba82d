"""Running under ``torchrun``: which process this is, and the process group.

graphperm needs no code of its own to scale out: under ``torchrun`` every process reads its shard
of the calibration clips, the statistics are all-reduced, and rank 0 solves and writes.

Example:
    >>> world()
    (0, 1)
"""

from __future__ import annotations

import logging
import os

__all__ = ["finish", "gather_calibration", "is_main", "world"]

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; joins a gloo process group when launched by ``torchrun`` with more
    than one process (statistics are all-reduced on the CPU, whatever device computed them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
        log.info("joined the process group as rank %d of %d", dist.get_rank(), size)
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def gather_calibration(mine: dict, size: int) -> dict:
    """Every process's calibration summary, added up: numbers are summed, lists joined, other
    values (sample rate, device) taken from this process."""
    import torch.distributed as dist

    every: list[dict] = [{} for _ in range(size)]
    dist.all_gather_object(every, mine)
    out: dict = {}
    for key, value in mine.items():
        if isinstance(value, bool) or key in ("sample_rate", "description"):
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = sum(c.get(key, 0) for c in every)
            out[key] = round(out[key], 3) if isinstance(value, float) else out[key]
        elif isinstance(value, list):
            out[key] = [x for c in every for x in c.get(key, [])]
        else:
            out[key] = value
    counts = ", ".join(f"{v} {k}" for k, v in out.items() if k in ("clips", "texts", "images"))
    amount = f" ({out['seconds']:.1f} s)" if "seconds" in out else ""
    out["description"] = f"{counts or 'data'}{amount} read by {size} processes"
    out["processes"] = size
    return out


def finish() -> None:
    """Leave the process group together: every process waits until all arrive, then the group
    is destroyed. (A process that simply exits while another still holds the group can die in
    gloo's teardown with "terminate called without an active exception".)"""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
