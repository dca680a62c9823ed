"""Loss landscapes: the loss on the straight line between two trained models, and on a plane
through one model spanned by two filter-normalised random directions (Li et al., 2018)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from ssam.analysis.loss import Batches, LossFunction, displaced, mean_loss, trainable_parameters


def filter_normalized_direction(model: nn.Module, *, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction d, one tensor per trainable parameter, rescaled filter by filter so
    that ‖d_i‖ = ‖w_i‖ for every filter i (a slice along the first axis: a conv layer's output
    channel, a linear layer's row).

    Why: a ReLU network with BatchNorm computes the same function when a filter is scaled, so
    unnormalised directions make small-weight (not flatter) networks look sharp. As in Li et
    al.'s code, biases and BatchNorm parameters (one-dimensional) are not moved: d = 0 there.
    """
    direction = []
    for p in trainable_parameters(model):
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        weight = p.detach().double().cpu()
        filter_norms = weight.flatten(1).norm(dim=1)
        d_norms = d.flatten(1).norm(dim=1)
        scale = filter_norms / (d_norms + 1e-10)
        direction.append((d * scale.view(-1, *([1] * (p.dim() - 1)))).to(p))
    return direction


def surface_losses(
    model: nn.Module,
    loss_fn: LossFunction,
    batches: Batches,
    directions: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]],
    coordinates: Sequence[float],
) -> list[list[float]]:
    """losses[i][j] = L(w + a_i d₁ + b_j d₂) for a, b in ``coordinates`` (a square grid); the
    weights are put back as they were afterwards."""
    parameters = trainable_parameters(model)
    first, second = directions

    def loss_at(a: float, b: float) -> float:
        with displaced(parameters, [a * d1 + b * d2 for d1, d2 in zip(first, second)]):
            return mean_loss(model, loss_fn, batches)

    return [[loss_at(a, b) for b in coordinates] for a in coordinates]


def interpolated_state(
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    alpha: float,
    *,
    parameters: Collection[str],
) -> dict[str, torch.Tensor]:
    """The state_dict at α on the line from ``start`` (α = 0) to ``end`` (α = 1): exactly
    ``start`` at 0 and ``end`` at 1.

    Parameters (the entries named in ``parameters``) are (1 − α) · start + α · end for any α.
    Other floating-point entries, BatchNorm's running statistics, are interpolated the same way
    within [0, 1] and taken from the nearer model outside it: extrapolated, a running variance
    can turn negative, and the loss there would be NaN. Integer entries (BatchNorm's batch
    counter) come from the nearer model."""
    if start.keys() != end.keys():
        differing = sorted(set(start) ^ set(end))
        raise ValueError(f"the two models have different entries, e.g. {differing[0]!r}: not the same model")
    state = {}
    for key, a in start.items():
        b = end[key]
        if a.shape != b.shape:
            raise ValueError(
                f"{key} has shape {tuple(a.shape)} in one model and {tuple(b.shape)} in the other"
            )
        if not a.is_floating_point():
            state[key] = (a if alpha < 0.5 else b).clone()
            continue
        weight = alpha if key in parameters else min(max(alpha, 0.0), 1.0)
        state[key] = (1 - weight) * a + weight * b.to(a)
    return state


def interpolation_losses(
    model: nn.Module,
    loss_fn: LossFunction,
    batches: Batches,
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    alphas: Sequence[float],
) -> list[float]:
    """L at each α on the line between two state_dicts of ``model``'s architecture (Goodfellow
    et al., 2015; see ``interpolated_state``); ``model`` is given back its own state."""
    own_state = {key: value.clone() for key, value in model.state_dict().items()}
    parameters = {name for name, _ in model.named_parameters()}
    # Copies: ``start`` may be the model's own state_dict, whose tensors loading would overwrite.
    start, end = ({key: value.detach().clone() for key, value in state.items()} for state in (start, end))
    losses = []
    try:
        for alpha in alphas:
            model.load_state_dict(interpolated_state(start, end, alpha, parameters=parameters))
            losses.append(mean_loss(model, loss_fn, batches))
    finally:
        model.load_state_dict(own_state)
    return losses
