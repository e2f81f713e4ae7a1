"""Which shards this process owns when a job runs as several processes.

`accelerate launch` and `torchrun` set `RANK` and `WORLD_SIZE` for every process, on one machine or many; a
scheduler without them (a Slurm array, a shell loop) can pass the same numbers explicitly. Process `r` of `n` owns
the shards `r, r + n, r + 2n, ...`: whole shards, so no process ever writes another's files, and no process needs
to talk to another (no `torch.distributed` group is created).
"""

from __future__ import annotations

import os

__all__ = ["process_position", "owned_shards"]


def process_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """`(rank, world_size)`: the arguments when given, else `RANK`/`WORLD_SIZE` from the launcher, else `(0, 1)`."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0")) if world_size > 1 else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"process {rank} of {world_size}: need 0 <= rank < world size")
    return rank, world_size


def owned_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, num_shards, world_size))
