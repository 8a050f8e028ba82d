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

__all__ = ["is_main", "world"]

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
