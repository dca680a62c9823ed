"""One training step, one epoch of them, and evaluation."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssam.optim import SAM, frozen_batchnorm_stats

BN_STATS = ("ascent", "both")


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bn_stats: str = "ascent",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns the loss and the number of correct predictions at w.

    For SAM and Sparse SAM: ascent pass at w, climb to w + ε, descent pass there, step.
    ``bn_stats="ascent"`` keeps the descent pass from updating BatchNorm running statistics.
    """
    logits = model(inputs)
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if isinstance(optimizer, SAM):
        optimizer.first_step(zero_grad=True)
        with frozen_batchnorm_stats(model) if bn_stats == "ascent" else nullcontext():
            F.cross_entropy(model(inputs), targets).backward()
        optimizer.second_step(zero_grad=True)
    else:
        optimizer.step()
    return loss.detach(), (logits.argmax(dim=1) == targets).sum()


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    time_s: float
    step_times_s: list[float] = field(default_factory=list)
    perturbation_norm: float | None = None


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    *,
    bn_stats: str,
    description: str,
    progress_bar: bool = True,
) -> EpochResult:
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    perturbation_norm_sum = torch.zeros((), device=device)
    images = 0
    step_times = []
    started = time.perf_counter()
    bar = tqdm(loader, desc=description, leave=False, disable=not progress_bar, dynamic_ncols=True)
    for step, (inputs, targets) in enumerate(bar):
        step_started = time.perf_counter()
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        loss, batch_correct = training_step(model, optimizer, inputs, targets, bn_stats=bn_stats)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - step_started)
        loss_sum += loss * len(targets)
        correct += batch_correct
        images += len(targets)
        if isinstance(optimizer, SAM):
            perturbation_norm_sum += optimizer.last_perturbation_norm.to(device)
        if step % 20 == 0:
            bar.set_postfix(
                loss=f"{loss_sum.item() / images:.4f}", acc=f"{100 * correct.item() / images:.2f}"
            )
    bar.close()
    return EpochResult(
        loss=loss_sum.item() / max(images, 1),
        accuracy=100.0 * correct.item() / max(images, 1),
        images=images,
        time_s=time.perf_counter() - started,
        step_times_s=step_times,
        perturbation_norm=perturbation_norm_sum.item() / max(len(step_times), 1)
        if isinstance(optimizer, SAM)
        else None,
    )


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
