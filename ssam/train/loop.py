"""One training step, one epoch of them (resumable mid-way), and evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssam.optim import SAM, frozen_batchnorm_stats

BN_STATS = ("ascent", "descent", "both")
ON_NONFINITE = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A pass produced a loss or gradient that is inf or NaN."""

    def __init__(self, pass_name: str) -> None:
        super().__init__(f"non-finite loss or gradient in the {pass_name} pass")
        self.pass_name = pass_name


@dataclass
class StepResult:
    loss: torch.Tensor
    correct: torch.Tensor
    skipped: bool = False


def _finite_check(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A 0-d bool tensor: the loss and the gradient norm are finite (no host sync here)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
    return torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.to(loss.device))


def _batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str = "ascent",
    on_nonfinite: str = "stop",
) -> StepResult:
    """One optimizer step; returns the loss and the number of correct predictions at w.

    For SAM and Sparse SAM: ascent pass at w, climb to w + ε, descent pass there, step.
    ``bn_stats`` says which pass updates the BatchNorm running statistics (``ascent``, the
    default, or ``descent``; ``both`` lets both do, which the method's spec advises against).
    A non-finite loss or gradient leaves the weights and BatchNorm statistics as they were and
    raises NonFiniteError (``on_nonfinite="stop"``) or skips the step (``"skip"``).
    """
    sharpness_aware = isinstance(optimizer, SAM)
    saved_stats = [b.clone() for b in _batchnorm_buffers(model)] if on_nonfinite == "skip" else None

    def give_up(pass_name: str, loss: torch.Tensor, correct: torch.Tensor) -> StepResult:
        optimizer.zero_grad(set_to_none=True)
        if on_nonfinite == "stop":
            raise NonFiniteError(pass_name)
        with torch.no_grad():
            for buffer, saved in zip(_batchnorm_buffers(model), saved_stats):
                buffer.copy_(saved)
        return StepResult(loss.detach(), correct, skipped=True)

    with frozen_batchnorm_stats(model) if bn_stats == "descent" else nullcontext():
        logits = model(inputs)
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if sharpness_aware:
        optimizer.ascent_backward(loss)
    else:
        loss.backward()
    correct = (logits.argmax(dim=1) == targets).sum()
    # Checked before the climb, so that a bad ascent gradient never reaches a mask refresh.
    if not bool(_finite_check(loss, model)):
        return give_up("ascent" if sharpness_aware else "training", loss, correct)
    if sharpness_aware:
        optimizer.first_step(zero_grad=True)
        with frozen_batchnorm_stats(model) if bn_stats == "ascent" else nullcontext():
            descent_loss = F.cross_entropy(model(inputs), targets)
            descent_loss.backward()
        if not bool(_finite_check(descent_loss, model)):
            optimizer.restore_weights()
            return give_up("descent", loss, correct)
        optimizer.second_step(zero_grad=True)
    else:
        optimizer.step()
    return StepResult(loss.detach(), correct)


@dataclass
class EpochProgress:
    """Running totals of the epoch so far, saved with mid-epoch checkpoints."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    images: int = 0
    skipped_steps: int = 0
    time_s: float = 0.0
    perturbation_norm_sum: float = 0.0
    step_times_s: list[float] = field(default_factory=list)
    lr_at_start: float = 0.0
    mask_update_time_at_start: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.images, 1)

    @property
    def perturbation_norm(self) -> float:
        return self.perturbation_norm_sum / max(self.step - self.skipped_steps, 1)


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    *,
    progress: EpochProgress,
    bn_stats: str,
    on_nonfinite: str = "stop",
    after_step: Callable[[EpochProgress], None] | None = None,
    description: str = "",
    progress_bar: bool = True,
) -> EpochProgress:
    """Continue the epoch from ``progress`` (the loader yields the batches not yet done);
    ``after_step`` sees the totals after every step (e.g. to checkpoint)."""
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
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        result = training_step(
            model, optimizer, inputs, targets, bn_stats=bn_stats, on_nonfinite=on_nonfinite
        )
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        finished = time.perf_counter()
        progress.step += 1
        progress.time_s += finished - previous_end  # with the wait for the batch
        progress.step_times_s.append(finished - started)  # the step's compute alone
        previous_end = finished
        if result.skipped:
            progress.skipped_steps += 1
        else:
            progress.loss_sum += result.loss.item() * len(targets)
            progress.correct += int(result.correct)
            progress.images += len(targets)
            if isinstance(optimizer, SAM):
                progress.perturbation_norm_sum += optimizer.last_perturbation_norm.item()
        if progress.step % 20 == 0:
            bar.set_postfix(loss=f"{progress.loss:.4f}", acc=f"{progress.accuracy:.2f}")
        if after_step is not None:
            after_step(progress)
    bar.close()
    return progress


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in percent, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        correct += (logits.argmax(dim=1) == targets).sum()
        count += len(targets)
    return loss_sum.item() / max(count, 1), 100.0 * correct.item() / max(count, 1)
