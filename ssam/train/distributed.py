"""Data-parallel training: one process per device, each with a whole replica of the model and its
own share of every batch, started by torchrun (or by the SLURM launcher, one task per GPU).

The replicas stay bit-identical: they start from rank 0's weights, every gradient that moves the
weights is averaged over the processes, BatchNorm statistics are averaged whenever they are read,
and Sparse SAM's masks are rank 0's, broadcast after every refresh. Rank 0 alone reads and writes
the run directory and the console; the others learn from it what they need (a busy directory,
a checkpoint to resume).

A lone process (no torchrun) gets ``SINGLE_PROCESS``, for which every collective step is a no-op:
such a run computes exactly what it did before data parallelism existed.
"""

from __future__ import annotations

import atexit
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from ssam.devices import resolve_device
from ssam.errors import ConfigError
from ssam.optim.ssam import MaskStrategy

# The collective backend for each kind of device.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
# DDP's forward_sync_buffers came with torch 2.13; before it, broadcast_buffers=False turned off the
# buffers' broadcast in the constructor as well as before every forward.
DDP_HAS_FORWARD_SYNC_BUFFERS = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters

T = TypeVar("T")


@dataclass(frozen=True)
class Replicas:
    """This process's place among the run's processes, and the collective steps they take."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` under DistributedDataParallel (rank 0's weights broadcast now), or itself alone.

        forward_sync_buffers=False: DDP would otherwise broadcast rank 0's buffers before every
        forward, the ascent's included (a collective twice a step, in a pass that must stay clear
        of DDP's machinery) and would keep only rank 0's BatchNorm statistics. Instead each process
        updates its own, and average_batchnorm_statistics reconciles them whenever they are read.
        That also leaves the frozen-statistics pass (ssam.optim.frozen_batchnorm_stats) as it is.
        Before torch 2.13, broadcast_buffers=False does the same but for the broadcast now, which
        this then does itself: the replicas start from rank 0's buffers too.
        """
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        if DDP_HAS_FORWARD_SYNC_BUFFERS:
            return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    def ascent_pass(self, model: torch.nn.Module) -> AbstractContextManager:
        """Where SAM's ascent forward and backward run: outside DDP's reducer (``no_sync``).

        The ascent backward differentiates only the tensors Sparse SAM perturbs
        (``backward(inputs=...)``), which DDP's gradient buckets cannot follow; the forward must
        be inside too, or DDP would still expect a synchronised backward."""
        return nullcontext() if self.world_size == 1 else model.no_sync()

    def accumulating(self, model: torch.nn.Module, *, last: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward under gradient accumulation: DDP
        all-reduces the summed gradient at the ``last`` one only (``no_sync`` around the others,
        their forwards included, so that DDP expects no synchronised backward)."""
        return nullcontext() if self.world_size == 1 or last else model.no_sync()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the processes, in one all-reduce of the tensors
        that have one: for Sparse SAM only those its mask perturbs travel."""
        self._average([p.grad for p in params if p.grad is not None])

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether a 0-d bool tensor is true on every process: they must agree to skip a step."""
        return self.all_true_each([flag])[0]

    def all_true_each(self, flags: list[torch.Tensor]) -> list[bool]:
        """Whether each 0-d bool tensor is true on every process, in one host read (and one
        collective)."""
        values = torch.stack([flag.to(self.device) for flag in flags]).to(torch.int32)
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return [bool(value) for value in values.tolist()]

    def sum(self, values: list[float]) -> list[float]:
        """Each number summed over the processes (in float64: counts stay exact)."""
        if self.world_size == 1:
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return totals.tolist()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (of one shape on all of them), concatenated along the first
        dimension in rank order: one all-gather."""
        if self.world_size == 1:
            return tensor
        pieces = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(pieces, tensor.contiguous())
        return torch.cat(pieces)

    def broadcast_masks(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Rank 0's bool masks on every process, in one broadcast."""
        if self.world_size == 1:
            return masks
        flat = torch.cat([m.reshape(-1).to(self.device, torch.uint8) for m in masks])
        dist.broadcast(flat, src=0)
        pieces = flat.split([m.numel() for m in masks])
        return [piece.view(m.shape).to(m.device, torch.bool) for piece, m in zip(pieces, masks)]

    @torch.no_grad()
    def average_batchnorm_statistics(self, model: torch.nn.Module) -> None:
        """Set every BatchNorm running mean and variance to its mean over the processes.

        The running mean is linear in the batch means, so its average is what one process with
        every batch would hold; the variance's average misses only the spread of the processes'
        batch means. (The counters, num_batches_tracked, are equal already.)"""
        self._average(
            [
                stat
                for m in model.modules()
                if isinstance(m, _BatchNorm) and m.track_running_stats
                for stat in (m.running_mean, m.running_var)
            ]
        )

    def _average(self, tensors: list[torch.Tensor]) -> None:
        """Each tensor replaced, in place, by its mean over the processes: one all-reduce."""
        if self.world_size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors]) / self.world_size
        dist.all_reduce(flat)
        for tensor, mean in zip(tensors, flat.split([t.numel() for t in tensors])):
            tensor.copy_(mean.view_as(tensor))

    def shard(self, dataset: Dataset) -> Dataset:
        """This process's share of an evaluation set: examples rank, rank + W, ... (all of them,
        none twice, so sums over the processes are the whole set's)."""
        if self.world_size == 1:
            return dataset
        return Subset(dataset, range(self.rank, len(dataset), self.world_size))

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by rank 0 alone, its result, or the exception it raised, handed to
        every process: so that a busy run directory or an unreadable checkpoint stops them all."""
        if self.world_size == 1:
            return compute()
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome = [(compute(), None)]
            except Exception as error:
                outcome = [(None, error)]
        dist.broadcast_object_list(outcome, src=0, device=self.device)
        result, error = outcome[0]
        if error is not None:
            raise error
        return result

    @contextmanager
    def console(self) -> Iterator[None]:
        """Inside, print() reaches the console from rank 0 only (stderr is left to every process:
        a failing rank must be heard)."""
        if self.is_main:
            yield
            return
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
            yield


SINGLE_PROCESS = Replicas()


class MasksFromMain:
    """A mask strategy whose every mask is rank 0's, broadcast to the others after each refresh.

    The strategies already draw the same numbers on every process (their generators are seeded
    alike), but SSAM-D's gradient score reads each process's own ascent gradient under local
    perturbation; the broadcast makes the masks identical whatever the strategy reads."""

    def __init__(self, strategy: MaskStrategy, replicas: Replicas) -> None:
        self.strategy = strategy
        self.replicas = replicas

    def is_due(self, epoch: int) -> bool:
        return self.strategy.is_due(epoch)

    def __call__(self, params, masks, sparsity: float, epoch: int) -> list[torch.Tensor]:
        return self.replicas.broadcast_masks(self.strategy(params, masks, sparsity, epoch))

    def state_dict(self) -> dict:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state)


def _export_submitit_environment() -> None:
    """Under the Hydra submitit launcher every task is one process of the job: give it the
    variables torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    environment = TorchDistributedEnvironment()
    if environment.world_size > 1:
        # CUDA_VISIBLE_DEVICES stays as SLURM set it: _process_device picks this task's GPU.
        environment.export(set_cuda_visible_devices=False)


def _process_device(setting: str) -> torch.device:
    device = resolve_device(setting)
    if device.type != "cuda":
        return device
    # One visible GPU per process (CUDA_VISIBLE_DEVICES set per task) or all of the node's.
    count = torch.cuda.device_count()
    index = 0 if count == 1 else int(os.environ.get("LOCAL_RANK", 0))
    if index >= count:
        raise ConfigError(
            f"this process has LOCAL_RANK {index} but the machine shows {count} GPUs: start at most "
            f"{count} processes per node (torchrun --nproc_per_node={count}), one per GPU"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def join_processes(device_setting: str) -> Replicas:
    """This process's place in the run, joining the other processes on first use.

    The processes are those of a process group already started (by a test, a notebook), or
    torchrun's (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the environment), or a
    submitit job's tasks; without any, a lone process. A group this starts (gloo on the CPU, nccl
    on GPUs) stays up until the process exits, so that several runs in one process (a Hydra
    multirun) share it.
    """
    _export_submitit_environment()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return Replicas(device=resolve_device(device_setting))
    device = _process_device(device_setting)
    if not dist.is_initialized():
        dist.init_process_group(BACKENDS[device.type])
        atexit.register(dist.destroy_process_group)
    return Replicas(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def hydra_overrides_for_this_process() -> list[str]:
    """Overrides that keep Hydra from writing anything from a process other than rank 0: no
    saved config (.hydra/) and no run directory of its own (its ``${now:...}`` could be a second
    later than rank 0's)."""
    if int(os.environ.get("RANK", 0)) == 0:
        return []
    return ["hydra.output_subdir=null", "hydra.run.dir=."]
