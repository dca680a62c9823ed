"""The loss the analysis tools measure: a model's mean loss on a fixed list of batches, in eval
mode, at its own weights or at weights displaced along a direction.

Every tool below takes ``loss_fn(outputs, targets) -> mean loss`` (e.g. ``F.cross_entropy``)
and ``batches``, a list of (inputs, targets) pairs, and measures

    L(w) = Σ_b n_b · L_b(w) / Σ_b n_b        (n_b = examples in batch b),

the mean over all the examples, so that batches of unequal size weigh what they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import Dataset

from ssam.data import fixed_subset

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights a perturbation moves: every parameter that trains, as SAM perturbs them."""
    return [p for p in model.parameters() if p.requires_grad]


def fixed_batches(
    dataset: Dataset, *, examples: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``examples`` examples in batches of ``batch_size`` (the last may be smaller), the same
    whenever asked: the fixed random subset that ``ssam.data.fixed_subset`` draws (as for
    ``dataset.train_size``), cut in order."""
    subset = fixed_subset(dataset, examples)
    chunks = [range(start, min(start + batch_size, examples)) for start in range(0, examples, batch_size)]
    return [
        (
            torch.stack([subset[index][0] for index in chunk]),
            torch.tensor([subset[index][1] for index in chunk]),
        )
        for chunk in chunks
    ]


def batch_weights(batches: Batches) -> list[float]:
    """n_b / Σ n_b for each batch."""
    sizes = [len(targets) for _, targets in batches]
    total = sum(sizes)
    if total == 0:
        raise ValueError("batches must hold at least one example")
    return [size / total for size in sizes]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Inside, every module is in eval mode: BatchNorm normalises with its running statistics and
    never updates them, dropout is off. Each module's own mode is put back afterwards (a model
    may mix modes, e.g. a frozen BatchNorm in a training model)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFunction, batches: Batches) -> float:
    """L(w) over all the batches' examples, in eval mode, as a Python float (summed in float64)."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    with eval_mode(model):
        for weight, (inputs, targets) in zip(batch_weights(batches), batches):
            total += weight * loss_fn(model(inputs.to(device)), targets.to(device)).double()
    return total.item()


@contextmanager
def displaced(parameters: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside, each parameter p is p + d (d from ``direction``, same shapes); afterwards p is
    its old value bit for bit (copied back, not subtracted, which rounding would change)."""
    originals = [p.detach().clone() for p in parameters]
    try:
        with torch.no_grad():
            for p, d in zip(parameters, direction):
                p.add_(d.to(p))
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(parameters, originals):
                p.copy_(original)


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector holding the tensors' entries one after the other."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of ``flatten``: pieces of ``vector`` shaped as the tensors of ``like``."""
    pieces = torch.split(vector, [t.numel() for t in like])
    return [piece.view_as(t) for piece, t in zip(pieces, like)]
