"""Momentum-SAM (Becker, Altrock and Risse, 2024, arXiv 2401.12033): SGD with momentum whose
steps take their gradient at w + a, a = −ρ·v/‖v‖ along the momentum v, at SGD's cost of one
forward-backward pass a step. w, not w + a, stays stored between steps.

    optimizer = MomentumSAM(model.parameters(), rho=3.0, lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer.climb()                       # to w + a (nothing before the first step: no v yet)
    loss_fn(model(x), y).backward()         # g = ∇L(w + a)
    optimizer.step()                        # back to w, then SGD's step with g
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ssam.optim.sam import NORM_EPS

# The authors' ρ for CIFAR-100 and ImageNet alike (their README's commands and configs/*.ini), 60
# times SAM's 0.05; a is ρ long, whatever the learning rate.
AUTHORS_RHO = 3.0


class MomentumSAM(torch.optim.SGD):
    """SGD with momentum whose steps take their gradient at w + a, a = −ρ·v/‖v‖ (ρ per parameter
    group, ‖v‖ over all of them), while w is what stays stored between steps.

    ``climb()`` before the forward pass, ``step()`` after the backward (back to w, then SGD's
    step); or ``step(closure)`` with a closure that runs the pass. The momentum buffers are SGD's
    state, so ``state_dict()`` carries all that a resumed run needs to climb the same a."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        rho: float = AUTHORS_RHO,
        **kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, **kwargs)
        self.defaults["rho"] = rho
        for group in self.param_groups:
            group.setdefault("rho", rho)
            if not group["momentum"] > 0:
                raise ValueError(
                    f"MomentumSAM needs momentum > 0 (its perturbation follows the momentum buffer), "
                    f"got {group['momentum']}"
                )
        # w of each parameter moved to w + a, until restore_weights.
        self._origins: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def climb(self) -> bool:
        """Move to w + a, a = −ρ·v/(‖v‖ + 10⁻¹²), keeping a copy of w; returns whether it moved:
        not before the first step (no v yet), nor where ρ = 0, which then stays SGD bit for bit."""
        if self._origins:
            raise RuntimeError("MomentumSAM.climb() twice: step() or restore_weights() first")
        buffers = {
            p: self.state[p]["momentum_buffer"]
            for group in self.param_groups
            for p in group["params"]
            if self.state.get(p, {}).get("momentum_buffer") is not None
        }
        climbing = [group for group in self.param_groups if group["rho"] != 0]
        if not buffers or not climbing:
            return False
        norms = [v.norm(p=2) for v in buffers.values()]
        norm = torch.stack([n.to(norms[0].device) for n in norms]).norm(p=2)
        for group in climbing:
            scale = group["rho"] / (norm + NORM_EPS)
            for p in group["params"]:
                if p in buffers:
                    self._origins[p] = p.clone()
                    p.sub_(buffers[p] * scale.to(p))
        return bool(self._origins)

    @torch.no_grad()
    def restore_weights(self) -> None:
        """Back from w + a to w, bit for bit (a copy, not a subtraction); nothing if not climbed."""
        for p, origin in self._origins.items():
            p.copy_(origin)
        self._origins = {}

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Back to w, then SGD's step with the gradient in ``.grad`` (taken at w + a after
        ``climb()``). ``closure``, if given, is the pass: climb, run it, then the same."""
        loss = None
        if closure is not None:
            self.climb()
            with torch.enable_grad():
                loss = closure()
        self.restore_weights()
        super().step()
        return loss
