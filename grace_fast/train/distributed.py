"""Processes of a training run: one alone, or several started by torchrun (DistributedDataParallel over NCCL on
GPUs, gloo on CPUs). Everything here is a no-op for a single process.

`torchrun --nproc-per-node 2 -m grace_fast train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; each process then trains on its share of every optimiser step.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """rank and world size of this process, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """[value of rank 0, value of rank 1, ...] on every rank (any picklable value)."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when flag is True on some rank (so all ranks take the same branch)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())


def start(device: str = "auto") -> Processes:
    """Join the process group torchrun describes in the environment (if any) and pick this process's device.

    device: "auto" (the GPU of LOCAL_RANK when CUDA is available, else the CPU), "cpu", "cuda" or "cuda:N".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available (use --device cpu)")
        chosen = torch.device("cuda", local_rank if chosen.index is None else chosen.index)
        if chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(chosen)!r} asked for, but this machine has {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Processes(rank, world, chosen)


def joined() -> bool:
    """Whether this process is already in a process group."""
    return dist.is_initialized()


def stop() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
