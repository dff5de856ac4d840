"""The ranks of a ``torchrun`` launch: which process this is, its device, and two collectives.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the
environment) :func:`process_group` joins PyTorch's process group — NCCL when the ranks run on
CUDA, each on ``cuda:LOCAL_RANK``; gloo on the CPU — and leaves it on exit. Launched any other
way it is one rank with no group, and the collectives return their input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from .backend import pick_device

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world_size`` ranks and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None          # "gloo" / "nccl" in a process group, None alone

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files and prints."""
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled through the process group)."""
        if self.backend is None:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.backend is None:
            return [value]
        values: list[T | None] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values  # type: ignore[return-value]


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets the same variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


@contextmanager
def process_group(device: str = "auto") -> Iterator[Ranks]:
    """This process's :class:`Ranks` for ``device`` (``auto``, ``cpu``, ``cuda``, ``mps``); under
    ``torchrun`` a CUDA device becomes ``cuda:LOCAL_RANK`` and the group is joined until exit."""
    chosen = pick_device(device)
    if not launched():
        yield Ranks(device=str(chosen))
        return
    rank, world_size, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    backend = "gloo"
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} needs GPU cuda:{local_rank}, but this machine has "
                             f"{torch.cuda.device_count()}; start at most that many processes per node")
        chosen, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(chosen)
    dist.init_process_group(backend, device_id=chosen if backend == "nccl" else None)
    try:
        yield Ranks(rank=rank, world_size=world_size, local_rank=local_rank, device=str(chosen), backend=backend)
        dist.barrier()          # leave together: a rank that tears gloo down early can abort a busy peer
    finally:
        dist.destroy_process_group()
