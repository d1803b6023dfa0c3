"""Data-parallel training under `torchrun` (PyTorch DistributedDataParallel).

`torchrun` starts one process per device and tells each its place through the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain
`python -m difforge train` sees none of them and runs as a world of one, with no
process group and no collective calls.

Every rank builds the same global batch of B images from (seed, step) and the same
noise for all B samples, then keeps its own contiguous B / world_size rows. DDP averages
the gradients of these equal shares, which is the gradient of the mean loss over the
global batch: N processes follow the same trajectory as one process with batch B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from difforge.config import ConfigError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """Where this process stands: rank r of `size` processes (local_rank on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the run directory: logs, samples, checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (an equal, contiguous share)."""
        per = global_batch // self.size
        return slice(self.rank * per, (self.rank + 1) * per)


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The World torchrun describes in the environment; a world of one without it."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return World()
    try:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        found = {k: env.get(k) for k in ENV_VARS}
        raise ConfigError(f"incomplete torchrun environment {found}; launch with torchrun") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local}")
    return World(rank, size, local)


def check_world(world: World, device: torch.device, batch_size: int) -> torch.device:
    """Reject impossible set-ups before any work, and pick this rank's device.

    On CUDA each process takes the GPU numbered by its LOCAL_RANK.
    """
    if not world.distributed:
        return device
    if batch_size % world.size:
        raise ConfigError(
            f"batch size {batch_size} does not split evenly over {world.size} processes; "
            f"use a multiple of {world.size} (the batch size is the global batch)"
        )
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"--device {device} with {world.size} processes: use --device cuda (or auto); "
                              "each process takes the GPU numbered by its LOCAL_RANK")
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise ConfigError(f"LOCAL_RANK {world.local_rank} but this node has {count} GPU(s); "
                              f"use --nproc_per_node {count} or fewer")
        return torch.device("cuda", world.local_rank)
    return device


def init(world: World, device: torch.device, timeout_s: float = 1800) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); True if this call created it."""
    if not world.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank (picklable objects: paths, configs, error text)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def sum_all(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise sum over ranks (float64 on the CPU for gloo, on the device for NCCL)."""
    if not world.distributed:
        return values
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DDP around `model` in a distributed world, else the model itself.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank
    starts from the same weights even if their initial RNG differed.
    """
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, to check that ranks agree bit for bit."""
    import hashlib

    h = hashlib.sha256()
    for name, v in module.state_dict().items():
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
