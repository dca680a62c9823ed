"""The Hessian H = ∇²L(w) of the loss over fixed batches, seen through products H v only:
its top eigenvalues by Lanczos and its trace by Hutchinson's estimator.

H is never formed (it would be N × N for N weights). A product H v costs about two
forward-backward passes per batch: differentiate the gradient's inner product with v,
H v = ∇(∇L(w)ᵀ v) (Pearlmutter, 1994). Everything runs in eval mode (``loss.eval_mode``):
BatchNorm uses its running statistics, so H is the Hessian of the loss the model is evaluated
with, and the running statistics are left as they were. The weights are not changed, no
``.grad`` is written, and the random probes come from a generator of their own, so a training
run that calls these functions continues exactly as it would have without.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ssam.analysis.loss import (
    Batches,
    LossFunction,
    batch_weights,
    eval_mode,
    flatten,
    trainable_parameters,
    unflatten,
)


def hessian_vector_product(
    model: nn.Module, loss_fn: LossFunction, batches: Batches, vector: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """H v, with ``vector`` shaped as the trainable parameters (one tensor each)."""
    parameters = trainable_parameters(model)
    device = parameters[0].device
    product = [torch.zeros_like(p) for p in parameters]
    with eval_mode(model), torch.enable_grad():
        for weight, (inputs, targets) in zip(batch_weights(batches), batches):
            loss = loss_fn(model(inputs.to(device)), targets.to(device))
            # allow_unused: a parameter the loss does not reach has zero rows in H.
            gradient = torch.autograd.grad(loss, parameters, create_graph=True, allow_unused=True)
            inner = sum((g * v).sum() for g, v in zip(gradient, vector) if g is not None)
            if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
                continue  # the loss is at most linear in the weights here: H = 0 on this batch
            for total, piece in zip(product, torch.autograd.grad(inner, parameters, allow_unused=True)):
                if piece is not None:
                    total.add_(piece, alpha=weight)
    return product


@dataclass
class Spectrum:
    """The largest eigenvalues of H, from the largest down, as Lanczos estimates them."""

    eigenvalues: list[float]
    # ‖H y − θ y‖ for each Ritz pair (θ, y), a bound on its distance to an eigenvalue of H; never
    # below the rounding of the products (machine epsilon × λ_max), which limits any estimate.
    residuals: list[float]
    # Lanczos steps taken: fewer than asked when the Krylov space ran out (H has fewer
    # distinct eigenvalues along the start vector), in which case the values are exact.
    steps: int


def top_eigenvalues(
    model: nn.Module, loss_fn: LossFunction, batches: Batches, *, k: int = 5, steps: int = 30, seed: int = 0
) -> Spectrum:
    """The k largest eigenvalues of H by ``steps`` Lanczos iterations (one H v each) from a
    random start vector, with full re-orthogonalisation.

    Lanczos builds an orthonormal basis V of the Krylov space {v, Hv, H²v, ...} in which H is
    the tridiagonal T = Vᵀ H V; the eigenvalues of T (Ritz values) converge to H's extreme
    eigenvalues first, much faster than power iteration with the same number of products.
    Each Ritz value is a lower bound on the eigenvalue it approaches.
    """
    parameters = trainable_parameters(model)
    size = sum(p.numel() for p in parameters)
    steps = min(steps, size)
    if not 1 <= k <= steps:
        raise ValueError(f"k must be in [1, steps] = [1, {steps}], got {k}")
    reference = parameters[0]

    def apply_hessian(vector: torch.Tensor) -> torch.Tensor:
        return flatten(hessian_vector_product(model, loss_fn, batches, unflatten(vector, parameters)))

    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(size, generator=generator, dtype=torch.float64).to(reference)
    basis = [start / start.norm()]
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    last_beta = 0.0
    for step in range(steps):
        w = apply_hessian(basis[-1])
        alpha = torch.dot(w, basis[-1])
        diagonal.append(alpha.item())
        # Full re-orthogonalisation against the whole basis, twice ("twice is enough",
        # Parlett): without it rounding brings back converged directions as ghost copies.
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        last_beta = w.norm().item()
        scale = max(max(abs(a) for a in diagonal), max(off_diagonal, default=0.0))
        exhausted = last_beta <= 100 * torch.finfo(reference.dtype).eps * max(scale, 1e-30)
        if step == steps - 1 or exhausted:
            if exhausted:
                last_beta = 0.0
            break
        off_diagonal.append(last_beta)
        basis.append(w / last_beta)

    tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    if off_diagonal:
        betas = torch.tensor(off_diagonal, dtype=torch.float64)
        tridiagonal += torch.diag(betas, 1) + torch.diag(betas, -1)
    ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
    order = torch.argsort(ritz_values, descending=True)[:k]
    rounding = torch.finfo(reference.dtype).eps * ritz_values.abs().max()
    return Spectrum(
        eigenvalues=ritz_values[order].tolist(),
        residuals=torch.clamp(last_beta * ritz_vectors[-1, order].abs(), min=rounding).tolist(),
        steps=len(diagonal),
    )


@dataclass
class TraceEstimate:
    trace: float  # the mean of vᵀ H v over the probes
    std_error: float  # the standard error of that mean (0 with a single probe)
    probes: int


def hutchinson_trace(
    model: nn.Module, loss_fn: LossFunction, batches: Batches, *, probes: int = 20, seed: int = 0
) -> TraceEstimate:
    """tr(H) ≈ (1/m) Σᵢ vᵢᵀ H vᵢ over m probes vᵢ with independent ±1 entries (Hutchinson, 1989).

    Unbiased; one probe's variance is 2 Σ_{i≠j} H_ij², so the estimate is exact when H is
    diagonal and otherwise shrinks as 1/√m.
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    parameters = trainable_parameters(model)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        probe = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in parameters]
        product = hessian_vector_product(model, loss_fn, batches, probe)
        samples.append(sum((v.double() * hv.double()).sum() for v, hv in zip(probe, product)).item())
    values = torch.tensor(samples, dtype=torch.float64)
    std_error = (values.std() / probes**0.5).item() if probes > 1 else 0.0
    return TraceEstimate(trace=values.mean().item(), std_error=std_error, probes=probes)
