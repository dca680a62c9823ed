"""An epoch's running totals, and the per-epoch metrics made from them, each declared once.

A ``Total`` is a running sum that steps add to (``StepResult.totals``), saved with mid-epoch
checkpoints and, if it counts each process's own share of the batches, summed over the processes
when the epoch ends. A ``Metric`` is one value of metrics.jsonl (and wandb) for each epoch, and,
if it says how, one of summary.json. The trainer declares its own (``TRAINER_TOTALS``,
``TRAINER_METRICS``), a method adds its (``Method.totals``, ``Method.metrics``); nothing else
needs to know about either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ssam.train.distributed import Replicas

SUMMARIES = ("last", "sum")


@dataclass(frozen=True)
class Total:
    """A running sum over an epoch's steps, of ints or floats (``number_type``). ``per_process``: each process
    counts its own share of the batches, and the epoch's total is their sum; otherwise it is the
    same on every process (the main one's is kept)."""

    name: str
    number_type: type = float
    per_process: bool = False


@dataclass(frozen=True)
class Metric:
    """One per-epoch value of metrics.jsonl: ``value(method, totals)`` at the epoch's end, None
    where it does not exist (‖ε‖ in an epoch without a sharpness-aware step). ``summary`` puts it
    in summary.json too: the ``last`` epoch's value, or the ``sum`` over epochs."""

    name: str
    value: Callable[[Any, Mapping[str, float | int]], Any]
    summary: str | None = None

    def __post_init__(self) -> None:
        if self.summary is not None and self.summary not in SUMMARIES:
            raise ValueError(f"metric {self.name!r}: summary must be one of {', '.join(SUMMARIES)} or None")


def ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    """numerator / denominator × scale, or None when nothing was counted."""
    return None if not denominator else scale * numerator / denominator


def mean_loss(totals: Mapping[str, float | int]) -> float:
    return totals["loss_sum"] / max(totals["images"], 1)


def accuracy(totals: Mapping[str, float | int]) -> float:
    return 100.0 * totals["correct"] / max(totals["images"], 1)


TRAINER_TOTALS = (
    Total("loss_sum", float, per_process=True),  # the loss at w times the examples it is over
    Total("correct", int, per_process=True),
    Total("images", int, per_process=True),  # that loss_sum and correct are over
    Total("trained_images", int, per_process=True),  # in the batches, whole
    Total("skipped_steps", int),
)
TRAINER_METRICS = (
    Metric("train_loss", lambda _, totals: mean_loss(totals)),
    Metric("train_acc", lambda _, totals: accuracy(totals)),
    Metric("skipped_steps", lambda _, totals: totals["skipped_steps"]),
)


@dataclass
class EpochProgress:
    """Where an epoch is, and its running totals: saved with mid-epoch checkpoints.

    A step may add a total as a 0-d tensor (a loss on the GPU): the running sum then stays on the
    device, so that a step needs no host sync for its totals, and comes to the host when read
    (``settle``). Adding in the same order, in the same float64, gives the same sum either way."""

    step: int = 0
    time_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list)
    lr_at_start: float = 0.0
    totals: dict[str, float | int] = field(default_factory=dict)

    @classmethod
    def start(cls, totals: Iterable[Total]) -> EpochProgress:
        return cls(totals={total.name: total.number_type() for total in totals})

    def state_dict(self) -> dict[str, Any]:
        self.settle()
        return {**self.__dict__, "totals": dict(self.totals)}

    def settle(self) -> None:
        """The totals kept on the device, as Python numbers (exactly: float64 to float, int64 to
        int); later steps add to these."""
        for name, value in self.totals.items():
            if isinstance(value, torch.Tensor):
                self.totals[name] = value.item()

    def add(self, step_totals: Mapping[str, float | int]) -> None:
        for name, value in step_totals.items():
            self.totals[name] += value

    def add_up(self, replicas: Replicas, declared: Iterable[Total], *, onto_main_only: bool = False) -> None:
        """Replace the per-process totals by their sums over the processes: on every process (the
        epoch's end), or on the main one only, the others starting again from zero (before a
        mid-epoch checkpoint, which holds the main process's totals: resumed or not, the epoch
        then adds up the same numbers in the same order)."""
        self.settle()
        per_process = [total for total in declared if total.per_process]
        sums = replicas.sum([self.totals[total.name] for total in per_process])
        if onto_main_only and not replicas.is_main:
            self.clear(per_process)
            return
        for total, value in zip(per_process, sums):
            self.totals[total.name] = total.number_type(value)

    def clear(self, totals: Iterable[Total]) -> None:
        for total in totals:
            self.totals[total.name] = total.number_type()

    @property
    def loss(self) -> float:
        self.settle()
        return mean_loss(self.totals)

    @property
    def accuracy(self) -> float:
        self.settle()
        return accuracy(self.totals)
