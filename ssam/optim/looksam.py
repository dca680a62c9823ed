"""LookSAM (Liu, Mai, Chen, Hsieh and You, CVPR 2022): SAM every k-th step, and in between one
pass whose gradient g is pushed along the part of SAM's gradient that g lacks, kept from the last
SAM step (g_v = g_s − (⟨g, g_s⟩ / ‖g‖²)·g). The optimizer; the step rhythm (which steps are SAM's)
is the caller's, or optimizer=looksam's (ssam/train/looksam.py).

    optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=0.05, alpha=0.7, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()     # g at w, every step
    optimizer.step(closure)             # every k-th step: SAM's (closure: the pass at w + ε), keeping g_v
    optimizer.step()                    # the others: g + α·(‖g‖/‖g_v‖)·g_v, then SGD's step
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from ssam.optim.sam import NORM_EPS, SAM

# g_v from the whole gradient vector (the paper), or from each parameter tensor on its own.
DECOMPOSITIONS = ("global", "tensor")
# (parameter, vector) pairs: a gradient, g or g_v, beside the parameter it belongs to.
Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def _total(values: list[torch.Tensor]) -> torch.Tensor:
    """The sum of 0-d tensors, on the first one's device."""
    return torch.stack([v.to(values[0].device) for v in values]).sum()


def _squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return _total([t.square().sum() for t in tensors])


class LookSAM(SAM):
    """SAM that keeps g_v at every SAM step and reuses it in ``step()`` without a closure.

    With the trainer's functions or by hand, a SAM step is ``first_step`` (which also remembers g),
    the descent pass and ``second_step`` (which first keeps g_v); ``step(closure)`` does the same.
    ``step()`` without a closure is the cheap step: the gradient in ``.grad`` is g at w, to which it
    adds α·(‖g‖ / ‖g_v‖)·g_v before the base optimizer steps (nothing before the first SAM step).
    g_v lives in the optimizer's state, so ``state_dict()`` carries it to a resumed run."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        alpha: float = 0.7,
        decomposition: str = "global",
        **kwargs: Any,
    ) -> None:
        if not alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"decomposition must be one of {', '.join(DECOMPOSITIONS)}, got {decomposition!r}"
            )
        super().__init__(params, base_optimizer, **kwargs)
        self.alpha = alpha
        self.decomposition = decomposition
        # g of the SAM step under way, per parameter (None where it has no gradient).
        self._gradients_at_w: list[torch.Tensor | None] = []

    def _parameters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _blocks(self, pairs: Pairs) -> list[Pairs]:
        """The pairs the decomposition takes together: all of them, or one tensor at a time."""
        return [pairs] if self.decomposition == "global" else [[pair] for pair in pairs]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        # The climb drops g with the gradients; second_step projects g_s on it.
        self._gradients_at_w = [None if p.grad is None else p.grad.clone() for p in self._parameters()]
        super().first_step(zero_grad)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        self._keep_orthogonal_part()
        super().second_step(zero_grad)

    @torch.no_grad()
    def _keep_orthogonal_part(self) -> None:
        """g_v = g_s − (⟨g, g_s⟩ / ‖g‖²)·g per block, g_s being the descent gradient in ``.grad``
        (0 where g = 0: nothing to project on)."""
        pairs = [
            (p, g)
            for p, g in zip(self._parameters(), self._gradients_at_w)
            if g is not None and p.grad is not None
        ]
        for block in self._blocks(pairs):
            inner = _total([(p.grad * g).sum() for p, g in block])
            squared = _squared_norm([g for _, g in block])
            coefficient = torch.where(squared > 0, inner / squared, torch.zeros_like(inner))
            for p, g in block:
                self.state[p]["orthogonal_gradient"] = p.grad - coefficient.to(p) * g
        self._gradients_at_w = []

    @torch.no_grad()
    def _add_orthogonal_part(self) -> None:
        """g ← g + α·(‖g‖ / ‖g_v‖)·g_v per block, norms over the block's tensors."""
        pairs = [
            (p, self.state[p]["orthogonal_gradient"])
            for p in self._parameters()
            if p.grad is not None and "orthogonal_gradient" in self.state[p]
        ]
        for block in self._blocks(pairs):
            gradient_norm = _squared_norm([p.grad for p, _ in block]).sqrt()
            orthogonal_norm = _squared_norm([v for _, v in block]).sqrt()
            scale = self.alpha * gradient_norm / (orthogonal_norm + NORM_EPS)
            for p, orthogonal in block:
                p.grad.add_(orthogonal * scale.to(p))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """With ``closure`` (the descent pass): a SAM step, which keeps g_v. Without: the
        gradient g in ``.grad`` plus α·(‖g‖ / ‖g_v‖)·g_v, and the base optimizer's step."""
        if closure is not None:
            return super().step(closure)
        self._add_orthogonal_part()
        self.base_optimizer.step()
        return None
