"""Forward-backward passes, the bricks every method's step is built of.

A pass runs a batch forward and backward under the run's precision, over ``accumulate_steps``
micro-batches whose gradients add up in ``.grad``, inside DDP's machinery when data-parallel, and
is checked for non-finite values. Its loss is the cross-entropy, plus a method's own term if it
gives one (``ExtraLoss``). What a method does between its passes (climb to w + ε, step the
base optimizer) is the method's (ssam/train/steps.py, ssam/train/kinds.py); how a pass runs is
the same for all of them, and lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ssam.optim.batchnorm import frozen_batchnorm_stats, restored_batchnorm_stats
from ssam.train.distributed import SINGLE_PROCESS, Replicas
from ssam.train.precision import FLOAT32, Precision

BN_STATS = ("ascent", "descent", "both")
ON_NONFINITE = ("stop", "skip")
PERTURBATIONS = ("global", "local")

# A method's own term of the training objective, added to a micro-batch's mean cross-entropy:
# from the micro-batch's logits and the rows of the batch it holds (SAF's trajectory loss).
ExtraLoss = Callable[[torch.Tensor, slice], torch.Tensor]


class NonFiniteError(RuntimeError):
    """A pass produced a loss or gradient that is inf or NaN."""

    def __init__(self, pass_name: str) -> None:
        super().__init__(f"non-finite loss or gradient in the {pass_name} pass")
        self.pass_name = pass_name


class PassFailed(Exception):
    """A pass produced a non-finite loss or gradient: the step is abandoned."""

    def __init__(self, pass_name: str, loss: torch.Tensor) -> None:
        super().__init__(pass_name)
        self.pass_name = pass_name
        self.loss = loss


@dataclass
class StepResult:
    """What one step reports: the loss and correct predictions (over ``examples``), whether it
    was skipped or climbed to w + ε, and what it adds to the epoch's running totals
    (ssam/train/progress.py), such as a sharpness-aware step's ‖ε‖."""

    loss: torch.Tensor
    correct: torch.Tensor
    examples: int
    skipped: bool = False
    sharpness_aware: bool = False
    totals: dict[str, float | int] = field(default_factory=dict)


def _finite_check(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A 0-d bool tensor: the loss and the gradient norm are finite (no host sync here). A
    non-finite entry anywhere makes its tensor's norm, and so the norm of the norms, non-finite."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = torch.isfinite(loss.detach())
    if not grads:
        return finite
    norms = torch._foreach_norm(grads)
    grad_norm = torch.linalg.vector_norm(torch.stack([n.to(loss.device, torch.float32) for n in norms]))
    return finite & torch.isfinite(grad_norm)


class _CheckedPass(NamedTuple):
    name: str
    loss: torch.Tensor
    finite: torch.Tensor  # a 0-d bool tensor, still on the device


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
class Passes:
    """How a run's passes run: its model (under DDP when data-parallel), precision, processes and
    micro-batches. Every method's step runs its passes through one of these."""

    model: torch.nn.Module
    precision: Precision = FLOAT32
    replicas: Replicas = SINGLE_PROCESS
    accumulate_steps: int = 1
    _unsettled: list[_CheckedPass] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        steps = self.accumulate_steps
        if isinstance(steps, bool) or not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"accumulate_steps must be an integer >= 1, got {steps!r}")

    @property
    def compiled(self) -> bool:
        """Whether the model runs under torch.compile, whose graphs guard on every parameter's
        ``requires_grad``: a pass that switched them would compile graphs of its own."""
        return hasattr(self.model, "_orig_mod")

    def _batchnorm_stats(self, freeze: bool) -> AbstractContextManager:
        if not freeze:
            return nullcontext()
        return (restored_batchnorm_stats if self.compiled else frozen_batchnorm_stats)(self.model)

    def forward_backward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
        *,
        freeze_stats: bool,
        weight: float = 1.0,
        extra_loss: ExtraLoss | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the gradient of ``weight`` × the batch's mean loss to ``.grad``, micro-batch by
        micro-batch (scaled under fp16, not yet unscaled); returns the mean loss (detached) and
        the number of correct predictions. BatchNorm statistics, unless frozen, are updated by
        every micro-batch, as in any gradient accumulation.

        The loss is the cross-entropy, plus ``extra_loss`` of each micro-batch if given; the
        returned loss is the cross-entropy alone, comparable across methods."""
        scale = self.precision.loss_scale
        losses, correct = [], []
        start = 0
        for micro_inputs, micro_targets, share, last in micro_batches(inputs, targets, self.accumulate_steps):
            rows = slice(start, start + len(micro_targets))
            start = rows.stop
            with self.replicas.accumulating(self.model, last=last):
                with self._batchnorm_stats(freeze_stats), self.precision.autocast():
                    logits = self.model(micro_inputs)
                    loss = F.cross_entropy(logits, micro_targets)
                    objective = loss if extra_loss is None else loss + extra_loss(logits, rows)
                weighted = objective * (weight * share)
                backward(weighted if scale is None else scale.scaled(weighted))
            losses.append(loss.detach() * share)
            correct.append((logits.argmax(dim=1) == micro_targets).sum())
        return torch.stack(losses).sum(), torch.stack(correct).sum()

    def check(self, loss: torch.Tensor, params: list[torch.Tensor], pass_name: str) -> None:
        """Unscale the pass's gradient under fp16 and check it and the loss, on the device: a
        non-finite value in any micro-batch makes the sum non-finite. The host learns of it at
        the next ``settle``, which a step calls before it changes the weights for good."""
        if self.precision.loss_scale is not None:
            self.precision.loss_scale.unscale_(params)
        self._unsettled.append(_CheckedPass(pass_name, loss, _finite_check(loss, self.model)))

    def settle(self, choice: torch.Tensor | None = None) -> bool:
        """Wait for the checks since the last settle, in one host sync (and, data-parallel, one
        collective): if any pass was non-finite on any process, abandon the step (PassFailed,
        naming the first such pass). A GPU runs a step's passes without waiting for the host
        in between; a non-finite ascent gradient climbs to a non-finite w + ε, which the descent's
        check then sees too, and the method's ``abandon_step`` puts back w exactly.

        ``choice``, a 0-d bool tensor the step must read now too (AE-SAM's: climb or not), is
        read in the same sync; returns whether it is true on every process (True without one)."""
        checked, self._unsettled = self._unsettled, []
        finite = [torch.stack([c.finite for c in checked]).all()] if checked else []
        chosen = [] if choice is None else [choice]
        if not finite and not chosen:
            return True
        answers = self.replicas.all_true_each([*finite, *chosen])
        if all(answers[: len(finite)]):
            return answers[-1] if chosen else True
        for check in checked:  # the failure's path only: one sync a pass, to name the first
            if not self.replicas.all_true(check.finite):
                raise PassFailed(check.name, check.loss)
