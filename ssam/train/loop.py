"""One training step, one epoch of them (resumable mid-way), and evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssam.optim import SAM, frozen_batchnorm_stats
from ssam.train.distributed import SINGLE_PROCESS, Replicas
from ssam.train.precision import FLOAT32, Precision

BN_STATS = ("ascent", "descent", "both")
ON_NONFINITE = ("stop", "skip")
PERTURBATIONS = ("global", "local")


class NonFiniteError(RuntimeError):
    """A pass produced a loss or gradient that is inf or NaN."""

    def __init__(self, pass_name: str) -> None:
        super().__init__(f"non-finite loss or gradient in the {pass_name} pass")
        self.pass_name = pass_name


@dataclass
class StepResult:
    loss: torch.Tensor
    correct: torch.Tensor
    examples: int  # that the loss and the count of correct predictions are over
    skipped: bool = False
    sharpness_aware: bool = False  # the step climbed to w + ε (False: a plain step)


class _PassFailed(Exception):
    """A pass produced a non-finite loss or gradient: the step is abandoned."""

    def __init__(self, pass_name: str, loss: torch.Tensor) -> None:
        super().__init__(pass_name)
        self.pass_name = pass_name
        self.loss = loss


def _finite_check(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A 0-d bool tensor: the loss and the gradient norm are finite (no host sync here)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
    return torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.to(loss.device))


def _batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]


def ascent_batch_size(batch_size: int, ascent_fraction: float) -> int:
    """Examples in the ascent pass: the first ⌈fraction·B⌉ of the batch (at least one)."""
    return max(1, math.ceil(ascent_fraction * batch_size))


def micro_batches(
    inputs: torch.Tensor, targets: torch.Tensor, count: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float, bool]]:
    """The batch in ``count`` consecutive micro-batches (fewer when it has fewer examples), their
    sizes differing by at most one; yields each with its share of the batch's examples and
    whether it is the last. Weighting each micro-batch's mean loss by its share makes the summed
    gradient the whole batch's mean-loss gradient, whether or not ``count`` divides the batch.
    One micro-batch is the batch itself, with share 1.0 (multiplying by it is exact)."""
    size = len(targets)
    count = min(count, size)
    pieces = zip(inputs.tensor_split(count), targets.tensor_split(count))
    for index, (micro_inputs, micro_targets) in enumerate(pieces):
        yield micro_inputs, micro_targets, len(micro_targets) / size, index == count - 1


@dataclass
class _Passes:
    """The forward-backward passes of one step, each checked for non-finite values, each run
    over ``accumulate_steps`` micro-batches whose gradients add up in ``.grad``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    replicas: Replicas
    accumulate_steps: int = 1

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def forward_backward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        backward: Callable[[torch.Tensor], None],
        *,
        freeze_stats: bool,
        weight: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the gradient of ``weight`` × the batch's mean loss to ``.grad``, micro-batch by
        micro-batch (scaled under fp16, not yet unscaled); returns the mean loss (detached) and
        the number of correct predictions. BatchNorm statistics, unless frozen, are updated by
        every micro-batch, as in any gradient accumulation."""
        scale = self.precision.loss_scale
        losses, correct = [], []
        for micro_inputs, micro_targets, share, last in micro_batches(inputs, targets, self.accumulate_steps):
            with self.replicas.accumulating(self.model, last=last):
                with (
                    frozen_batchnorm_stats(self.model) if freeze_stats else nullcontext(),
                    self.precision.autocast(),
                ):
                    logits = self.model(micro_inputs)
                    loss = F.cross_entropy(logits, micro_targets)
                weighted = loss * (weight * share)
                backward(weighted if scale is None else scale.scaled(weighted))
            losses.append(loss.detach() * share)
            correct.append((logits.argmax(dim=1) == micro_targets).sum())
        return torch.stack(losses).sum(), torch.stack(correct).sum()

    def check(self, loss: torch.Tensor, pass_name: str) -> None:
        """Unscale the pass's gradient under fp16 and check it and the loss: a non-finite value in
        any micro-batch makes the sum non-finite, and abandons the step."""
        if self.precision.loss_scale is not None:
            self.precision.loss_scale.unscale_(self.params)
        if not self.replicas.all_true(_finite_check(loss, self.model)):
            raise _PassFailed(pass_name, loss)

    def plain(self, inputs: torch.Tensor, targets: torch.Tensor, freeze_stats: bool) -> StepResult:
        """One forward-backward at w and the base optimizer's step: an SGD step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, correct = self.forward_backward(
            inputs, targets, torch.Tensor.backward, freeze_stats=freeze_stats
        )
        self.check(loss, "training")
        getattr(self.optimizer, "base_optimizer", self.optimizer).step()
        return StepResult(loss, correct, len(targets))

    def ascent(
        self, inputs: torch.Tensor, targets: torch.Tensor, *, bn_stats: str, perturbation: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ascent gradient at w into ``.grad``, then the climb to w + ε; returns the loss at w
        and the number of correct predictions.

        It runs outside DDP's reducer; with ``perturbation="global"`` its gradients are then
        averaged by hand, so every process climbs the same ε, with ``"local"`` each climbs along
        its own batch's gradient. Under accumulation the gradient of every micro-batch is summed
        first, and the climb is taken once, from the whole batch's gradient."""
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        with self.replicas.ascent_pass(self.model), optimizer.ascent_graph():
            loss, correct = self.forward_backward(
                inputs, targets, optimizer.ascent_backward, freeze_stats=bn_stats == "descent"
            )
        if perturbation == "global":
            self.replicas.average_gradients(self.params)
        # Checked before the climb, so that a bad ascent gradient never reaches a mask refresh.
        self.check(loss, "ascent")
        optimizer.first_step(zero_grad=True)
        return loss, correct

    def descent(
        self, inputs: torch.Tensor, targets: torch.Tensor, *, bn_stats: str, weight: float = 1.0
    ) -> None:
        """The descent gradient at w + ε into ``.grad``, of the loss times ``weight``."""
        loss, _ = self.forward_backward(
            inputs, targets, torch.Tensor.backward, freeze_stats=bn_stats == "ascent", weight=weight
        )
        self.check(loss, "descent")

    def sharpness_aware(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        bn_stats: str,
        perturbation: str,
        ascent_fraction: float,
    ) -> StepResult:
        """Climb along the ascent gradient of the first ⌈fraction·B⌉ examples, take the whole
        batch's descent gradient at w + ε, go back to w and step."""
        size = ascent_batch_size(len(targets), ascent_fraction)
        loss, correct = self.ascent(
            inputs[:size], targets[:size], bn_stats=bn_stats, perturbation=perturbation
        )
        self.descent(inputs, targets, bn_stats=bn_stats)
        self.optimizer.second_step(zero_grad=True)
        return StepResult(loss, correct, size, sharpness_aware=True)

    def per_shard(
        self, inputs: torch.Tensor, targets: torch.Tensor, *, bn_stats: str, perturbation: str, m: int
    ) -> StepResult:
        """m-sharpness: each shard of m consecutive examples climbs its own ε_i along its own
        ascent gradient and takes its descent gradient at w + ε_i; the step uses their mean,
        each shard weighted by its size (a last, smaller shard when m does not divide the
        batch), so every example counts once, as in one batch. ‖ε‖ is logged as the shards' mean."""
        optimizer = self.optimizer
        batch = len(targets)
        descent_sum: list[torch.Tensor | None] = [None] * len(self.params)
        loss_sum = torch.zeros((), device=inputs.device)
        correct = torch.zeros((), dtype=torch.long, device=inputs.device)
        norms = []
        for start in range(0, batch, m):
            shard_inputs, shard_targets = inputs[start : start + m], targets[start : start + m]
            weight = len(shard_targets) / batch
            loss, shard_correct = self.ascent(
                shard_inputs, shard_targets, bn_stats=bn_stats, perturbation=perturbation
            )
            loss_sum += loss.float() * weight
            correct += shard_correct
            norms.append(optimizer.last_perturbation_norm)
            self.descent(shard_inputs, shard_targets, bn_stats=bn_stats, weight=weight)
            optimizer.restore_weights()
            for index, p in enumerate(self.params):
                if p.grad is not None:
                    descent_sum[index] = (
                        p.grad if descent_sum[index] is None else descent_sum[index].add_(p.grad)
                    )
                p.grad = None
        for p, grad in zip(self.params, descent_sum):
            p.grad = grad
        optimizer.second_step(zero_grad=True)
        optimizer.last_perturbation_norm = torch.stack([n.to(norms[0].device) for n in norms]).mean()
        return StepResult(loss_sum, correct, batch, sharpness_aware=True)


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str = "ascent",
    on_nonfinite: str = "stop",
    ascent_fraction: float = 1.0,
    m: int | None = None,
    precision: Precision = FLOAT32,
    perturbation: str = "global",
    replicas: Replicas = SINGLE_PROCESS,
    accumulate_steps: int = 1,
    sharpness_aware: bool = True,
) -> StepResult:
    """One optimizer step; returns the loss and the number of correct predictions at w.

    For SAM and Sparse SAM: ascent pass at w, climb to w + ε, descent pass there, step;
    with ``sharpness_aware=False`` (late-phase SAM before its phase) a plain SGD step instead,
    one forward-backward and the base optimizer's step.
    ``ascent_fraction`` < 1 takes the ascent gradient from the first part of the batch only,
    one ε for the whole batch; the loss and accuracy returned are then that part's.
    ``m`` (m-sharpness, Foret et al., Sec. 4) gives each shard of m examples its own ε
    (see ``_Passes.per_shard``).
    ``accumulate_steps`` = k splits every pass into k micro-batches (see ``micro_batches``) whose
    gradients add up before the pass's gradient is used: the ascent's before the one climb, the
    descent's before the step. The step is then the whole batch's, with the memory of B/k.
    ``bn_stats`` says which pass updates the BatchNorm running statistics (``ascent``, the
    default, or ``descent``; ``both`` lets both do, counting each batch twice: not advised).
    A non-finite loss or gradient leaves the weights and BatchNorm statistics as they were and
    raises NonFiniteError (``on_nonfinite="stop"``) or skips the step (``"skip"``). Under fp16
    a finite loss with an overflowing gradient skips the step and halves the loss scale.

    Data-parallel (``replicas`` of a model under DDP): the descent pass is plain DDP, its gradient
    averaged by DDP (under accumulation, at its last micro-batch only); the ascent pass runs
    outside DDP's reducer (see ``_Passes.ascent``). The processes agree on every skip, so that
    they take the same passes.
    """
    sharpness_aware = sharpness_aware and isinstance(optimizer, SAM)
    loss_scale = precision.loss_scale
    saved_stats = (
        [b.clone() for b in _batchnorm_buffers(model)] if on_nonfinite == "skip" or loss_scale else None
    )
    if isinstance(accumulate_steps, bool) or not (
        isinstance(accumulate_steps, int) and accumulate_steps >= 1
    ):
        raise ValueError(f"accumulate_steps must be an integer >= 1, got {accumulate_steps!r}")
    passes = _Passes(model, optimizer, precision, replicas, accumulate_steps)
    try:
        if not sharpness_aware:
            result = passes.plain(
                inputs, targets, freeze_stats=bn_stats == "descent" and not isinstance(optimizer, SAM)
            )
        elif m is None:
            result = passes.sharpness_aware(
                inputs, targets, bn_stats=bn_stats, perturbation=perturbation, ascent_fraction=ascent_fraction
            )
        else:
            result = passes.per_shard(inputs, targets, bn_stats=bn_stats, perturbation=perturbation, m=m)
    except _PassFailed as failure:
        return _skip_step(
            failure, model, optimizer, saved_stats, on_nonfinite, precision, replicas, sharpness_aware
        )
    if loss_scale is not None:
        loss_scale.update(overflowed=False)
    return result


def _skip_step(
    failure: _PassFailed,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    saved_stats: list[torch.Tensor] | None,
    on_nonfinite: str,
    precision: Precision,
    replicas: Replicas,
    sharpness_aware: bool,
) -> StepResult:
    """Give up the step (or raise), with weights and BatchNorm statistics as they were."""
    if sharpness_aware:
        optimizer.restore_weights()
    optimizer.zero_grad(set_to_none=True)
    loss_scale = precision.loss_scale
    # Under fp16 a finite loss whose gradient overflowed is the scale's fault, not the run's.
    overflowed = loss_scale is not None and replicas.all_true(torch.isfinite(failure.loss))
    if loss_scale is not None:
        loss_scale.update(overflowed=True)
    if on_nonfinite == "stop" and not overflowed:
        raise NonFiniteError(failure.pass_name)
    with torch.no_grad():
        for buffer, saved in zip(_batchnorm_buffers(model), saved_stats):
            buffer.copy_(saved)
    return StepResult(failure.loss.detach(), torch.zeros((), dtype=torch.long), 0, skipped=True)


# The totals each process counts over its own share of the batches. (The mean ‖ε‖ stays the
# main process's: the same on every process under global perturbation.)
_PER_PROCESS_TOTALS = ("loss_sum", "correct", "images", "trained_images")


@dataclass
class EpochProgress:
    """Running totals of the epoch so far, saved with mid-epoch checkpoints."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    images: int = 0  # that loss_sum and correct are over (the ascent part of each batch)
    trained_images: int = 0  # in the batches, whole
    skipped_steps: int = 0
    sharpness_aware_steps: int = 0  # not skipped, and climbed to w + ε (late-phase SAM: not all)
    time_s: float = 0.0
    perturbation_norm_sum: float = 0.0
    step_times_s: list[float] = field(default_factory=list)
    lr_at_start: float = 0.0
    mask_update_time_at_start: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add_up(self, replicas: Replicas, *, onto_main_only: bool = False) -> None:
        """Replace the totals by their sums over the processes: on every process (the epoch's
        end), or on the main one only, the others starting again from zero (before a mid-epoch
        checkpoint, which holds the main process's totals: resumed or not, the epoch then adds
        up the same numbers in the same order)."""
        sums = replicas.sum([getattr(self, name) for name in _PER_PROCESS_TOTALS])
        if onto_main_only and not replicas.is_main:
            self.clear_totals()
            return
        for name, value in zip(_PER_PROCESS_TOTALS, sums):
            setattr(self, name, type(getattr(self, name))(value))

    def clear_totals(self) -> None:
        for name in _PER_PROCESS_TOTALS:
            setattr(self, name, type(getattr(self, name))())

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.images, 1)

    @property
    def perturbation_norm(self) -> float | None:
        """Mean ‖ε‖ over the sharpness-aware steps; None when there was none."""
        if not self.sharpness_aware_steps:
            return None
        return self.perturbation_norm_sum / self.sharpness_aware_steps


@dataclass(frozen=True)
class StepOptions:
    """How each training step runs (see training_step)."""

    bn_stats: str = "ascent"
    on_nonfinite: str = "stop"
    ascent_fraction: float = 1.0
    m: int | None = None
    precision: Precision = FLOAT32
    perturbation: str = "global"
    replicas: Replicas = SINGLE_PROCESS
    accumulate_steps: int = 1


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    *,
    progress: EpochProgress,
    step_options: StepOptions = StepOptions(),
    memory_format: torch.memory_format = torch.contiguous_format,
    after_step: Callable[[EpochProgress], None] | None = None,
    sharpness_aware_from: int = 0,
    description: str = "",
    progress_bar: bool = True,
) -> EpochProgress:
    """Continue the epoch from ``progress`` (the loader yields the batches not yet done);
    ``after_step`` sees the totals after every step (e.g. to checkpoint). Steps before the
    epoch's step ``sharpness_aware_from`` are plain SGD steps (late-phase SAM)."""
    model.train()
    bar = tqdm(
        loader,
        desc=description,
        leave=False,
        disable=not progress_bar,
        dynamic_ncols=True,
        initial=progress.step,
        total=progress.step + len(loader),
    )
    previous_end = time.perf_counter()
    for inputs, targets in bar:
        started = time.perf_counter()
        inputs = inputs.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        result = training_step(
            model,
            optimizer,
            inputs,
            targets,
            sharpness_aware=progress.step >= sharpness_aware_from,
            **step_options.__dict__,
        )
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        finished = time.perf_counter()
        progress.step += 1
        progress.time_s += finished - previous_end  # with the wait for the batch
        progress.step_times_s.append(finished - started)  # the step's compute alone
        previous_end = finished
        progress.trained_images += len(targets)
        if result.skipped:
            progress.skipped_steps += 1
        else:
            progress.loss_sum += result.loss.item() * result.examples
            progress.correct += int(result.correct)
            progress.images += result.examples
            if result.sharpness_aware:
                progress.sharpness_aware_steps += 1
                progress.perturbation_norm_sum += optimizer.last_perturbation_norm.item()
        if progress.step % 20 == 0:
            bar.set_postfix(loss=f"{progress.loss:.4f}", acc=f"{progress.accuracy:.2f}")
        if after_step is not None:
            after_step(progress)
    bar.close()
    return progress


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    precision: Precision = FLOAT32,
    memory_format: torch.memory_format = torch.contiguous_format,
    replicas: Replicas = SINGLE_PROCESS,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in percent, in eval mode, over the examples of every
    process's ``loader`` (each its own share of the set)."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, memory_format=memory_format), targets.to(device)
        with precision.autocast():
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        correct += (logits.argmax(dim=1) == targets).sum()
        count += len(targets)
    loss_sum, correct, count = replicas.sum([loss_sum.item(), correct.item(), count])
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)
