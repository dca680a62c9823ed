"""FLOPs of training, counted by torch's FlopCounterMode: a cost that any machine can check.

FlopCounterMode counts the matrix products and convolutions that actually run, forward and
backward, at 2 FLOPs a multiply-add. So an ascent restricted with ``backward(inputs=...)`` is
charged only for the gradients it computes, a no-grad forward for its forward alone, and a
Fisher mask refresh for its per-example passes.

It does not count element-wise work: BatchNorm, activations, pooling, norms, the optimizer's
updates and SAM's climbs. What they would add, by count: an output of a 3×3 convolution over C
input channels costs 18·C FLOPs, its BatchNorm and ReLU about 6 (forward; the backward is
alike), so about 2% at C = 16 and less for wider layers; the optimizer and a climb touch each
weight a few times a step, against the thousands of FLOPs each weight takes part in per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssam.train.kinds import Method
from ssam.train.loop import take_step
from ssam.train.passes import Passes


def flops_of(work: Callable[[], object]) -> int:
    """The FLOPs of what ``work()`` runs."""
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def training_flops_per_step(
    method: Method,
    passes: Passes,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    steps_per_epoch: int,
    last_batch_size: int | None = None,
) -> float:
    """The mean FLOPs of a step over a whole training run, taken as the trainer takes it: every
    step's index from the first to the last, each epoch started (so late phases, intervals,
    switching and mask refreshes come at their own steps), on one batch given every time, cut to
    ``last_batch_size`` examples at the last step of each epoch where the training set does not
    fill it (a method that keeps a record per example, as SAF, needs each step's own size)."""
    total = 0
    for epoch in range(epochs):
        method.start_epoch(epoch)
        for step in range(steps_per_epoch):
            index = epoch * steps_per_epoch + step
            size = last_batch_size if step == steps_per_epoch - 1 and last_batch_size else len(targets)
            batch = inputs[:size], targets[:size]
            total += flops_of(lambda index=index, batch=batch: take_step(method, passes, *batch, index))
    return total / (epochs * steps_per_epoch)
