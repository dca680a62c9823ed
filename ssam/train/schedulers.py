"""Learning-rate schedules, stepped once per training step (smooth at any epoch count)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULERS = ("cosine", "step", "constant")


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    milestones: list[float] | None = None,
    gamma: float = 0.1,
) -> LambdaLR:
    """``cosine``: lr·(1 + cos(π t/T))/2, to zero at the last step; ``step``: lr·γ^k after the
    k-th milestone (fractions of training, e.g. [0.5, 0.75]); ``constant``: lr."""
    if name == "cosine":
        factor = _Cosine(total_steps)
    elif name == "step":
        factor = _Step([round(m * total_steps) for m in milestones or []], gamma)
    elif name == "constant":
        factor = _Constant()
    else:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    return LambdaLR(optimizer, factor)


# Classes rather than lambdas: LambdaLR saves their settings in its state_dict, plain data.
class _Cosine:
    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


class _Step:
    def __init__(self, milestone_steps: list[int], gamma: float) -> None:
        self.milestone_steps = milestone_steps
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        return self.gamma ** sum(step >= m for m in self.milestone_steps)


class _Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def fast_forward(scheduler: LambdaLR, steps: int) -> None:
    """Put a fresh schedule where it is after ``steps`` steps, learning rates included."""
    scheduler.last_epoch = steps
    rates = [base * factor(steps) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
