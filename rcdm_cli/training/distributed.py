"""Running under torchrun: one process per device, gradients averaged by DDP.

The same command runs as a single process when torchrun's variables are absent.
NCCL serves GPUs, gloo the CPU. Every function here is a collective: all processes
call it at the same point, in the same order, or none does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a process waits for the others at a collective. Rank 0 alone writes
# checkpoints, the feature cache and previews while the others wait, which on slow
# shared storage takes minutes; the libraries' defaults (10 or 30 minutes) are too
# close to that.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_environment() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(world: World, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each process takes the GPU of its local rank."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return device


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_true(flag: bool, world: World, device: torch.device) -> bool:
    """Whether any process raised the flag (a stop signal, a non-finite loss)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_mean(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world.size
    return values


def all_gather_cat(t: torch.Tensor, world: World) -> torch.Tensor:
    if not world.distributed:
        return t
    parts = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_rows(local: torch.Tensor, world: World, device: torch.device, chunk_rows: int = 4096) -> torch.Tensor:
    """Every process's equally long CPU tensor, concatenated in rank order, on the CPU
    of every process. Sent in chunks, so a large feature table never has to fit on
    the device at once."""
    if not world.distributed:
        return local
    pieces: list[list[torch.Tensor]] = [[] for _ in range(world.size)]
    for start in range(0, max(local.shape[0], 1), chunk_rows):
        chunk = local[start : start + chunk_rows].to(device)
        for rank, part in enumerate(all_gather_cat(chunk, world).chunk(world.size)):
            pieces[rank].append(part.cpu())
    return torch.cat([torch.cat(p) for p in pieces])


def share_faults(local: list[int], flag: bool, world: World, device: torch.device) -> tuple[list[int], bool]:
    """(the sorted union of every process's list of image indices, whether any process
    raised ``flag``): one small reduction when every list is empty, nearly always."""
    if not world.distributed:
        return sorted(set(local)), flag
    head = torch.tensor([float(len(local)), 1.0 if flag else 0.0], device=device)
    dist.all_reduce(head, op=dist.ReduceOp.MAX)
    longest, any_flag = int(head[0].item()), bool(head[1].item() > 0)
    if longest == 0:
        return [], any_flag
    padded = torch.full((longest,), -1, dtype=torch.long, device=device)
    if local:
        padded[: len(local)] = torch.tensor(local, dtype=torch.long)
    gathered = all_gather_cat(padded, world).cpu().tolist()
    return sorted({i for i in gathered if i >= 0}), any_flag


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
