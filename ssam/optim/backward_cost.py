"""What the ascent backward costs for a given set of perturbed tensors: an estimate in FLOPs.

Autograd computes a weight gradient only for the tensors it is asked for, but it must pass the
gradient down through every layer above the lowest of them. So the cost of perturbing a set S
of parameter tensors is

    cost(S) = Σ_{modules m after the lowest tensor of S} input_grad(m) + Σ_{t ∈ S} weight_grad(t)

with modules in the order the forward pass runs them. Per example, a convolution or linear
layer costs 2·(output entries)·(inputs per output) FLOPs for each of its forward, input-gradient
and weight-gradient computations; any other layer (BatchNorm, activations) one FLOP per output
entry. Work outside modules (residual additions, attention products) is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import nn


@dataclass(frozen=True)
class BackwardCost:
    """``position[i]``: where parameter i's module runs in the forward pass (0 = first);
    ``weight_grad[i]``: FLOPs of parameter i's gradient; ``input_grad[k]``: FLOPs of passing
    the gradient down through the module at position k."""

    position: list[int]
    weight_grad: list[float]
    input_grad: list[float]

    def __post_init__(self) -> None:
        # above[k] = Σ input_grad[k + 1:], the pass-through work above position k.
        totals = list(accumulate(reversed(self.input_grad)))[::-1] + [0.0]
        object.__setattr__(self, "_above", totals[1:])

    def of(self, chosen: set[int], depth: int | None = None) -> float:
        """Estimated FLOPs of the ascent backward with gradients for parameters ``chosen``,
        passing the gradient down at least to the module at position ``depth``."""
        positions = [self.position[i] for i in chosen] + ([] if depth is None else [depth])
        if not positions:
            return 0.0
        return self._above[min(positions)] + sum(self.weight_grad[i] for i in chosen)

    @property
    def full(self) -> float:
        return self.of(set(range(len(self.position))))


def _forward_flops(module: nn.Module, output: torch.Tensor) -> float:
    if isinstance(module, nn.modules.conv._ConvNd):
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        return 2.0 * output.numel() * fan_in
    if isinstance(module, nn.Linear):
        return 2.0 * output.numel() * module.in_features
    return float(output.numel())


def estimate_backward_cost(
    model: nn.Module, params: list[torch.Tensor], example: torch.Tensor
) -> BackwardCost:
    """Measure layer sizes with one forward pass of ``example`` (a batch of one, in eval mode,
    without gradients; the model's modes are restored) and return the cost model for
    ``params``. A parameter whose module is not a layer that ran (e.g. a ViT's position
    embedding) is placed first: reaching it is taken to need the whole backward."""
    leaves = {m for m in model.modules() if not list(m.children())}
    positions: dict[nn.Module, int] = {}
    forward_flops: list[float] = []
    output_sizes: list[int] = []

    def record(module: nn.Module, inputs, output) -> None:
        if module in positions or not isinstance(output, torch.Tensor):
            return
        positions[module] = len(forward_flops)
        forward_flops.append(_forward_flops(module, output))
        output_sizes.append(output.numel())

    modes = {m: m.training for m in model.modules()}
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)

    owner = {id(p): m for m in positions for p in m.parameters(recurse=False)}
    position, weight_grad = [], []
    for p in params:
        module = owner.get(id(p))
        if module is None:
            position.append(0)
            weight_grad.append(float(p.numel()))
            continue
        where = positions[module]
        position.append(where)
        # A conv or linear weight's gradient is a product as large as the forward's; a bias's or
        # a BatchNorm parameter's is a sum over the layer's outputs.
        weighted = isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and p is module.weight
        weight_grad.append(forward_flops[where] if weighted else float(output_sizes[where]))
    return BackwardCost(position=position, weight_grad=weight_grad, input_grad=forward_flops)
