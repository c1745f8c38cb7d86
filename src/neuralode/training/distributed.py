"""Data-parallel training under ``torchrun`` for every task, and a single process as its ``W = 1`` case.

Launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment), :func:`init_distributed`
joins a process group (gloo on CPU, NCCL on CUDA). Each task splits its global batch of step ``k``
into ``W`` equal shards, one per rank, and after ``backward()`` calls :meth:`Dist.average_gradients`:
the mean of the shards' mean-loss gradients is the gradient of the global batch's mean loss, so a
fixed-step model follows the single-process trajectory up to floating-point summation order.
An adaptive solver picks its steps from the error on its own shard, so its NFE (and hence its
numbers) differ slightly between 1 and ``W`` processes.

Gradients are averaged by one all-reduce of their concatenation rather than by wrapping the model
in ``DistributedDataParallel``: the models here are small, and the adjoint method computes
parameter gradients inside its own backward solve, where DDP's per-parameter hooks add nothing
but ordering constraints. Only rank 0 writes the run folder and shows progress; logged figures
are all-reduced first (:class:`Sums`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .config import DEVICES, ConfigError


@dataclass
class Dist:
    """Where this process stands: its rank, the number of processes, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    enabled: bool = False
    owns_group: bool = False  # we initialised the group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, values: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or max) a float64 vector over the ranks; the identity in a single process."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = values.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.cpu()

    def any_signal(self, signum: int | None) -> int | None:
        """The largest signal number any rank received (so all ranks stop at the same step)."""
        flag = self.all_reduce(torch.tensor([float(signum or 0)], dtype=torch.float64), op="max").item()
        return int(flag) or None

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (one all-reduce for all of them)."""
        if not self.enabled:
            return
        params = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        import torch.distributed as dist

        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def shard(self, batch_size: int, field: str = "batch_size") -> slice:
        """This rank's rows of a global batch of ``batch_size`` (which must divide evenly)."""
        if batch_size % self.world_size:
            raise ConfigError(
                field,
                f"{field}={batch_size} is the global batch and must be divisible by the number of processes ({self.world_size}).",
            )
        local = batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def pick_device(device_name: str, local_rank: int = 0) -> torch.device:
    """The device ``"auto"``, ``"cpu"`` or ``"cuda"`` names here (``auto``: CUDA if available).

    Raises:
        ConfigError: (field ``device``) an unknown name, or ``"cuda"`` without CUDA.
    """
    if device_name not in DEVICES:
        raise ConfigError("device", f"device must be one of {', '.join(DEVICES)}; got {device_name!r}.")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "device is 'cuda' but CUDA is not available here; use 'cpu' or 'auto'.")
    if device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun process group if launched by torchrun, and pick the device.

    Raises:
        ConfigError: ``device_name`` is ``"cuda"`` and there is no CUDA.
    """
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not under_torchrun and not (dist.is_available() and dist.is_initialized()):
        return Dist(device=device)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(dist.get_rank(), dist.get_world_size(), device, True, owns)


def resume_hint(task: str, out: object, ctx: Dist) -> str:
    """The command that continues a stopped run."""
    if ctx.enabled:
        return f"relaunch the same torchrun command with --resume (run folder {out})"
    return f"neuralode train {task} --out {out} --resume"


class Sums:
    """Running sums of named figures (losses times counts, NFE, ...) over a logging interval or an
    epoch, summed over the ranks when read. Rank 0 carries them through a checkpoint, so a resumed
    interval reports the same figures as one never interrupted."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.values = torch.zeros(len(names), dtype=torch.float64)

    def add(self, **values: float) -> None:
        for name, value in values.items():
            self.values[self.names.index(name)] += float(value)

    def totals(self, ctx: Dist) -> dict[str, float]:
        """The sums over all ranks (a collective call: every rank must make it)."""
        return dict(zip(self.names, ctx.all_reduce(self.values.clone()).tolist()))

    def reset(self) -> None:
        self.values.zero_()

    def state(self, ctx: Dist) -> torch.Tensor:
        """For a checkpoint: the global sums (collective), to be restored on rank 0 only."""
        return ctx.all_reduce(self.values.clone())

    def load(self, values: torch.Tensor | None, ctx: Dist) -> None:
        self.reset()
        if values is not None and ctx.is_main:
            self.values += values
