"""The empirical diagonal Fisher information, computed exactly from per-sample gradients.

    F̂ = Σᵢ (∇_w ℓ(f(xᵢ), yᵢ))²        over the given samples, with their true labels

Each sample is its own batch of one, as in the paper's code: BatchNorm layers normalise with
that sample's statistics (training mode) but their running statistics are left untouched.
Two exact methods compute the same sums:

- ``loop``: one forward and backward per sample (the paper's method);
- ``vmap``: torch.func per-sample gradients, vectorised over chunks of samples.

In float64 they agree to about 1e-15; in float32 their kernels round differently, and a score
near zero can differ by a few percent of its tensor's largest (WRN-28-10: one tensor by 5%, the
whole score by 0.07%, the s = 0.5 masks on 0.002% of the weights; scripts/gpu_check.py).

Which is faster depends on the device (scripts/bench_mask.py measures it); ``auto`` picks the
loop on the CPU and vmap on accelerators, the winners in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ssam.optim.batchnorm import frozen_batchnorm_stats

FISHER_METHODS = ("auto", "loop", "vmap")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_fisher_method(method: str, device: torch.device) -> str:
    if method not in FISHER_METHODS:
        raise ValueError(f"fisher method must be one of {', '.join(FISHER_METHODS)}, got {method!r}")
    if method == "auto":
        return "loop" if device.type == "cpu" else "vmap"
    return method


def fisher_scores(
    model: torch.nn.Module,
    params: list[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    method: str = "auto",
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 32,
) -> list[torch.Tensor]:
    """Σᵢ gᵢ² for each tensor in ``params`` (parameters of ``model``), one entry per sample.

    The model's parameters, buffers, mode and the global random state are as they were after
    the call.
    """
    if len(inputs) == 0:
        raise ValueError("fisher_scores needs at least one sample")
    method = resolve_fisher_method(method, inputs.device)
    modes = [(module, module.training) for module in model.modules()]
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    model.train()
    try:
        # enable_grad: SSAM refreshes its mask from inside first_step, under no_grad.
        with torch.random.fork_rng(devices=devices), frozen_batchnorm_stats(model), torch.enable_grad():
            if method == "loop":
                return _fisher_by_loop(model, params, inputs, targets, loss_fn)
            return _fisher_by_vmap(model, params, inputs, targets, loss_fn, chunk_size)
    finally:
        for module, training in modes:
            module.training = training


def _fisher_by_loop(model, params, inputs, targets, loss_fn) -> list[torch.Tensor]:
    scores = [torch.zeros_like(p) for p in params]
    for x, y in zip(inputs, targets):
        loss = loss_fn(model(x.unsqueeze(0)), y.unsqueeze(0))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for score, g in zip(scores, grads):
            if g is not None:
                score.add_(g.square())
    return scores


def _fisher_by_vmap(model, params, inputs, targets, loss_fn, chunk_size) -> list[torch.Tensor]:
    wanted = {id(p) for p in params}
    named = dict(model.named_parameters())
    trainable = {name: p.detach() for name, p in named.items() if id(p) in wanted}
    constants = {name: p.detach() for name, p in named.items() if id(p) not in wanted}
    constants.update(dict(model.named_buffers()))
    if len(trainable) != len(params):
        raise ValueError("every tensor in params must be a parameter of the model")

    def sample_loss(weights, x, y):
        logits = functional_call(model, {**weights, **constants}, (x.unsqueeze(0),))
        return loss_fn(logits, y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")
    totals = {name: torch.zeros_like(w) for name, w in trainable.items()}
    for start in range(0, len(inputs), chunk_size):
        chunk = per_sample_grads(
            trainable, inputs[start : start + chunk_size], targets[start : start + chunk_size]
        )
        for name, g in chunk.items():
            totals[name].add_(g.square().sum(dim=0))
    by_id = {id(named[name]): total for name, total in totals.items()}
    return [by_id[id(p)] for p in params]
