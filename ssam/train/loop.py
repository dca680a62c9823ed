"""Running epochs: a method's steps over the loader (resumable mid-way), and evaluation.

Nothing here knows which method it runs: each step is ``method.step``, guarded against
non-finite values, and what a step reports adds to the epoch's declared totals.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssam.train.distributed import SINGLE_PROCESS, Replicas
from ssam.train.kinds import Method
from ssam.train.passes import Passes, StepResult
from ssam.train.precision import FLOAT32, Precision
from ssam.train.progress import EpochProgress
from ssam.train.steps import guarded_step


def take_step(
    method: Method,
    passes: Passes,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    index: int,
    *,
    on_nonfinite: str = "stop",
) -> StepResult:
    """Method ``method``'s step of this ``index`` (counted from the start of training) on the
    batch, with a failed pass abandoned and skipped or stopped at (see ``guarded_step``)."""
    return guarded_step(
        passes,
        lambda: method.step(passes, inputs, targets, index),
        optimizer=method.optimizer,
        on_nonfinite=on_nonfinite,
        abandon=method.abandon_step,
    )


def _step_totals(result: StepResult, trained_images: int) -> dict[str, float | int]:
    """What one step adds to the trainer's totals (ssam.train.progress.TRAINER_TOTALS), and the
    method's own totals of a step that went through."""
    if result.skipped:
        return {"trained_images": trained_images, "skipped_steps": 1}
    return {  # the loss and count stay on the device (EpochProgress.settle)
        "trained_images": trained_images,
        "loss_sum": result.loss.double() * result.examples,
        "correct": result.correct,
        "images": result.examples,
        **result.totals,
    }


def train_one_epoch(
    method: Method,
    passes: Passes,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    *,
    progress: EpochProgress,
    steps_before: int,
    on_nonfinite: str = "stop",
    memory_format: torch.memory_format = torch.contiguous_format,
    after_step: Callable[[EpochProgress], None] | None = None,
    description: str = "",
    progress_bar: bool = True,
) -> EpochProgress:
    """Continue the epoch from ``progress`` (the loader yields the batches not yet done), whose
    epochs before took ``steps_before`` steps. ``after_step`` sees the totals after every step
    (e.g. to checkpoint)."""
    device = passes.replicas.device
    passes.model.train()
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
        result = take_step(
            method, passes, inputs, targets, steps_before + progress.step, on_nonfinite=on_nonfinite
        )
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        finished = time.perf_counter()
        progress.step += 1
        progress.time_s += finished - previous_end  # with the wait for the batch
        progress.step_times_s.append(finished - started)  # the step's compute alone
        previous_end = finished
        progress.add(_step_totals(result, len(targets)))
        if progress_bar and progress.step % 20 == 0:  # reading the totals waits for the device
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
