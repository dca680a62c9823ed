"""Two sharpness measures at radius ρ: the worst loss increase SAM's ascent step finds, and the
average increase under random perturbations of the same length.

A flat minimum shows small values for both; SAM and Sparse SAM aim at the first. Both are
measured in eval mode and leave the weights as they were, bit for bit.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn

from ssam.analysis.loss import (
    Batches,
    LossFunction,
    displaced,
    eval_mode,
    flatten,
    mean_loss,
    trainable_parameters,
)
from ssam.optim.sam import NORM_EPS


@dataclass
class LossIncreases:
    """Loss increases L(w + ε) − L(w), one per batch or per random draw, and their summary."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def ascent_sharpness(
    model: nn.Module, loss_fn: LossFunction, batches: Batches, *, rho: float
) -> LossIncreases:
    """m-sharpness (Foret et al., 2021), m = the batch size: for each batch B,
    L_B(w + ε_B) − L_B(w) with SAM's step ε_B = ρ ∇L_B(w) / ‖∇L_B(w)‖, the first-order
    maximiser of L_B within the ball of radius ρ around w."""
    parameters = trainable_parameters(model)
    device = parameters[0].device
    increases = []
    for inputs, targets in batches:
        batch = [(inputs, targets)]
        with eval_mode(model), torch.enable_grad():
            loss = loss_fn(model(inputs.to(device)), targets.to(device))
            gradient = torch.autograd.grad(loss, parameters, allow_unused=True)
        gradient = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, gradient)]
        norm = flatten(gradient).norm()
        step = [rho * g / (norm + NORM_EPS) for g in gradient]
        before = mean_loss(model, loss_fn, batch)
        with displaced(parameters, step):
            increases.append(mean_loss(model, loss_fn, batch) - before)
    return LossIncreases(increases)


def random_sharpness(
    model: nn.Module, loss_fn: LossFunction, batches: Batches, *, rho: float, samples: int = 10, seed: int = 0
) -> LossIncreases:
    """The mean of L(w + ε) − L(w) over all the batches, for random ε = ρ z / ‖z‖, z ~ N(0, I):
    Gaussian directions of length exactly ρ, drawn from a generator seeded by ``seed``.

    Each of the ``samples`` values averages the pair ε, −ε (antithetic sampling): both are equally
    likely, so the mean is unchanged, but the first-order term gᵀε, which is zero on average and
    dwarfs the second-order one at small ρ, cancels exactly. Each value is then ½ εᵀHε + O(ρ⁴),
    whose mean over directions is ½ ρ² tr(H) / N for N weights.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    parameters = trainable_parameters(model)
    generator = torch.Generator().manual_seed(seed)
    before = mean_loss(model, loss_fn, batches)
    increases = []
    for _ in range(samples):
        noise = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in parameters]
        norm = flatten(noise).norm()
        pair = []
        for sign in (1.0, -1.0):
            with displaced(parameters, [(sign * rho * z / norm).to(p) for z, p in zip(noise, parameters)]):
                pair.append(mean_loss(model, loss_fn, batches) - before)
        increases.append(statistics.fmean(pair))
    return LossIncreases(increases)
