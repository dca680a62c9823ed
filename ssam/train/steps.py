"""The steps methods are made of, as plain functions of their passes and optimizer.

    sgd_step                one forward-backward at w, the base optimizer's step
    sam_step                ascent at w (from the first ⌈fraction·B⌉ examples), climb to w + ε,
                            descent at w + ε over the whole batch, back to w, step
    m_sharpness_step        each shard of m examples (optimizer.m) climbs its own ε_i; the step
                            uses their mean
    guarded_step            any of them, with non-finite losses and gradients handled

The methods (ssam/train/kinds.py) compose these; ``training_step`` composes them for a loop of
one's own that holds an optimizer and no method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ssam.optim import SAM, MomentumSAM
from ssam.train.distributed import SINGLE_PROCESS, Replicas
from ssam.train.passes import ExtraLoss, NonFiniteError, Passes, PassFailed, StepResult
from ssam.train.precision import FLOAT32, Precision

# The totals a sharpness-aware step adds to its epoch's (ssam/train/progress.py).
SHARPNESS_AWARE_STEPS = "sharpness_aware_steps"
PERTURBATION_NORM_SUM = "perturbation_norm_sum"


def parameters_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def ascent_batch_size(batch_size: int, ascent_fraction: float) -> int:
    """Examples in the ascent pass: the first ⌈fraction·B⌉ of the batch (at least one)."""
    return max(1, math.ceil(ascent_fraction * batch_size))


def sgd_step(
    passes: Passes,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    freeze_stats: bool = False,
    extra_loss: ExtraLoss | None = None,
) -> StepResult:
    """One forward-backward at w and ``optimizer``'s step (the base optimizer of a SAM), on the
    cross-entropy plus the method's ``extra_loss`` if any (see ``Passes.forward_backward``)."""
    optimizer.zero_grad(set_to_none=True)
    loss, correct = passes.forward_backward(inputs, targets, freeze_stats=freeze_stats, extra_loss=extra_loss)
    passes.check(loss, parameters_of(optimizer), "training")
    passes.settle()
    optimizer.step()
    return StepResult(loss, correct, len(targets))


def climb(
    passes: Passes,
    optimizer: SAM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str,
    perturbation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ascent gradient at w into ``.grad``, then the climb to w + ε; returns the loss at w
    and the number of correct predictions.

    It runs outside DDP's reducer; with ``perturbation="global"`` its gradients are then
    averaged by hand, so every process climbs the same ε, with ``"local"`` each climbs along
    its own batch's gradient. Under accumulation the gradient of every micro-batch is summed
    first, and the climb is taken once, from the whole batch's gradient."""
    optimizer.zero_grad(set_to_none=True)
    # A compiled backward computes every gradient of its graph anyway, and a graph that
    # left some out would be one more per mask: the ascent then builds the whole graph.
    ascent_graph = nullcontext() if passes.compiled else optimizer.ascent_graph()
    with passes.replicas.ascent_pass(passes.model), ascent_graph:
        loss, correct = passes.forward_backward(
            inputs, targets, optimizer.ascent_backward, freeze_stats=bn_stats == "descent"
        )
    params = parameters_of(optimizer)
    if perturbation == "global":
        passes.replicas.average_gradients(params)
    passes.check(loss, params, "ascent")
    if optimizer.refreshes_mask:
        passes.settle()  # a bad ascent gradient must never reach a mask refresh
    optimizer.first_step(zero_grad=True)
    return loss, correct


def descend(
    passes: Passes,
    optimizer: SAM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str,
    weight: float = 1.0,
) -> None:
    """The descent gradient at w + ε into ``.grad``, of the loss times ``weight`` (checked at
    the step's ``passes.settle()``, before the weights change)."""
    loss, _ = passes.forward_backward(inputs, targets, freeze_stats=bn_stats == "ascent", weight=weight)
    passes.check(loss, parameters_of(optimizer), "descent")


def sharpness_aware_totals(optimizer: SAM) -> dict[str, float | int]:
    # Kept on the device, in float64 as the epoch's totals are: no host sync in the step.
    return {SHARPNESS_AWARE_STEPS: 1, PERTURBATION_NORM_SUM: optimizer.last_perturbation_norm.double()}


def sam_step(
    passes: Passes,
    optimizer: SAM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str = "ascent",
    perturbation: str = "global",
    ascent_fraction: float = 1.0,
) -> StepResult:
    """Climb along the ascent gradient of the first ⌈fraction·B⌉ examples, take the whole
    batch's descent gradient at w + ε, go back to w and step. The loss and accuracy returned are
    the ascent part's, at w."""
    size = ascent_batch_size(len(targets), ascent_fraction)
    loss, correct = climb(
        passes, optimizer, inputs[:size], targets[:size], bn_stats=bn_stats, perturbation=perturbation
    )
    descend(passes, optimizer, inputs, targets, bn_stats=bn_stats)
    passes.settle()
    optimizer.second_step(zero_grad=True)
    return StepResult(loss, correct, size, sharpness_aware=True, totals=sharpness_aware_totals(optimizer))


def m_sharpness_step(
    passes: Passes,
    optimizer: SAM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    shard_size: int,
    bn_stats: str = "ascent",
    perturbation: str = "global",
) -> StepResult:
    """m-sharpness (Foret et al., Sec. 4; ``shard_size`` is their m, the setting optimizer.m):
    each shard of ``shard_size`` consecutive examples climbs its own
    ε_i along its own ascent gradient and takes its descent gradient at w + ε_i; the step uses
    their mean, each shard weighted by its size (a last, smaller shard when m does not divide the
    batch), so every example counts once, as in one batch. ‖ε‖ is logged as the shards' mean."""
    params = parameters_of(optimizer)
    batch = len(targets)
    descent_sum: list[torch.Tensor | None] = [None] * len(params)
    loss_sum = torch.zeros((), device=inputs.device)
    correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    norms = []
    for start in range(0, batch, shard_size):
        shard_inputs, shard_targets = inputs[start : start + shard_size], targets[start : start + shard_size]
        weight = len(shard_targets) / batch
        loss, shard_correct = climb(
            passes, optimizer, shard_inputs, shard_targets, bn_stats=bn_stats, perturbation=perturbation
        )
        loss_sum += loss.float() * weight
        correct += shard_correct
        norms.append(optimizer.last_perturbation_norm)
        descend(passes, optimizer, shard_inputs, shard_targets, bn_stats=bn_stats, weight=weight)
        optimizer.restore_weights()
        for index, p in enumerate(params):
            if p.grad is not None:
                descent_sum[index] = p.grad if descent_sum[index] is None else descent_sum[index].add_(p.grad)
            p.grad = None
    passes.settle()
    for p, grad in zip(params, descent_sum):
        p.grad = grad
    optimizer.second_step(zero_grad=True)
    optimizer.last_perturbation_norm = torch.stack([n.to(norms[0].device) for n in norms]).mean()
    return StepResult(
        loss_sum, correct, batch, sharpness_aware=True, totals=sharpness_aware_totals(optimizer)
    )


@dataclass(frozen=True)
class SharpnessAwareOptions:
    """How a sharpness-aware step runs: which pass updates the BatchNorm statistics, the
    perturbation under data parallelism, the ascent's share of the batch, and m-sharpness's
    shard size (None: the whole batch climbs one ε)."""

    bn_stats: str = "ascent"
    perturbation: str = "global"
    ascent_fraction: float = 1.0
    shard_size: int | None = None


def sharpness_aware_step(
    passes: Passes,
    optimizer: SAM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    options: SharpnessAwareOptions = SharpnessAwareOptions(),
) -> StepResult:
    """One ε for the batch (``sam_step``), or one per shard of ``options.shard_size`` examples
    (``m_sharpness_step``)."""
    if options.shard_size is None:
        return sam_step(
            passes,
            optimizer,
            inputs,
            targets,
            bn_stats=options.bn_stats,
            perturbation=options.perturbation,
            ascent_fraction=options.ascent_fraction,
        )
    return m_sharpness_step(
        passes,
        optimizer,
        inputs,
        targets,
        shard_size=options.shard_size,
        bn_stats=options.bn_stats,
        perturbation=options.perturbation,
    )


def _batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for module in model.modules() if isinstance(module, _BatchNorm) for b in module.buffers()]


def guarded_step(
    passes: Passes,
    step: Callable[[], StepResult],
    *,
    optimizer: torch.optim.Optimizer,
    on_nonfinite: str = "stop",
    abandon: Callable[[], None] = lambda: None,
) -> StepResult:
    """Run ``step``; if a pass of it fails (a non-finite loss or gradient), ``abandon`` it (a
    sharpness-aware method goes back to w), leave the weights and BatchNorm statistics as they
    were, and raise NonFiniteError (``on_nonfinite="stop"``) or skip the step (``"skip"``).
    Under fp16 a finite loss with an overflowing gradient skips the step and halves the loss
    scale, whatever ``on_nonfinite`` says; a step that went through lets the scale grow."""
    loss_scale = passes.precision.loss_scale
    buffers = _batchnorm_buffers(passes.model)
    saved_stats = [b.clone() for b in buffers] if on_nonfinite == "skip" or loss_scale else None
    try:
        result = step()
    except PassFailed as failure:
        abandon()
        optimizer.zero_grad(set_to_none=True)
        # Under fp16 a finite loss whose gradient overflowed is the scale's fault, not the run's.
        overflowed = loss_scale is not None and passes.replicas.all_true(torch.isfinite(failure.loss))
        if loss_scale is not None:
            loss_scale.update(overflowed=True)
        if on_nonfinite == "stop" and not overflowed:
            raise NonFiniteError(failure.pass_name) from None
        with torch.no_grad():
            for buffer, saved in zip(buffers, saved_stats):
                buffer.copy_(saved)
        return StepResult(failure.loss.detach(), torch.zeros((), dtype=torch.long), 0, skipped=True)
    if loss_scale is not None:
        loss_scale.update(overflowed=False)
    return result


def momentum_sam_step(
    passes: Passes, optimizer: MomentumSAM, inputs: torch.Tensor, targets: torch.Tensor
) -> StepResult:
    """Momentum-SAM's step: climb to w + a along the momentum, one pass there, then back to w
    and SGD's step; sharpness-aware when it climbed (not before the first step: no momentum)."""
    climbed = optimizer.climb()
    return replace(sgd_step(passes, optimizer, inputs, targets), sharpness_aware=climbed)


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str = "ascent",
    on_nonfinite: str = "stop",
    ascent_fraction: float = 1.0,
    shard_size: int | None = None,
    precision: Precision = FLOAT32,
    perturbation: str = "global",
    replicas: Replicas = SINGLE_PROCESS,
    accumulate_steps: int = 1,
    sharpness_aware: bool = True,
) -> StepResult:
    """One optimizer step in a loop of one's own; returns the loss and the number of correct
    predictions at w. The trainer runs its method's step instead (ssam/train/kinds.py), built of
    the same functions.

    For a SAM (or Sparse SAM) optimizer ``sharpness_aware_step``, or with
    ``sharpness_aware=False`` (late-phase SAM before its phase) a plain step of its base
    optimizer; for a MomentumSAM its climb along the momentum, then ``sgd_step`` (SGD's with
    ``sharpness_aware=False``); for any other optimizer ``sgd_step``. ``accumulate_steps`` = k splits every pass
    into k micro-batches whose gradients add up before the pass's gradient is used (see
    ``micro_batches``): the step is then the whole batch's, with the memory of B/k. ``bn_stats``
    says which pass updates the BatchNorm running statistics (``ascent``, the default, or
    ``descent``; ``both`` lets both do, counting each batch twice: not advised). Non-finite
    values: see ``guarded_step``.

    Data-parallel (``replicas`` of a model under DDP): the descent pass is plain DDP, its gradient
    averaged by DDP (under accumulation, at its last micro-batch only); the ascent pass runs
    outside DDP's reducer (see ``climb``). The processes agree on every skip, so that they take
    the same passes.
    """
    passes = Passes(model, precision, replicas, accumulate_steps)
    if isinstance(optimizer, SAM) and sharpness_aware:
        options = SharpnessAwareOptions(bn_stats, perturbation, ascent_fraction, shard_size)
        return guarded_step(
            passes,
            lambda: sharpness_aware_step(passes, optimizer, inputs, targets, options),
            optimizer=optimizer,
            on_nonfinite=on_nonfinite,
            abandon=optimizer.restore_weights,
        )
    if isinstance(optimizer, MomentumSAM) and sharpness_aware:
        return guarded_step(
            passes,
            lambda: momentum_sam_step(passes, optimizer, inputs, targets),
            optimizer=optimizer,
            on_nonfinite=on_nonfinite,
            abandon=optimizer.restore_weights,
        )
    base = getattr(optimizer, "base_optimizer", optimizer)
    freeze_stats = bn_stats == "descent" and not isinstance(optimizer, SAM)
    return guarded_step(
        passes,
        lambda: sgd_step(passes, base, inputs, targets, freeze_stats=freeze_stats),
        optimizer=optimizer,
        on_nonfinite=on_nonfinite,
    )
