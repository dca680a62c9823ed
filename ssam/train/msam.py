"""Momentum-SAM (Becker, Altrock and Risse, 2024, "Momentum-SAM: Sharpness Aware Minimization
without Computational Overhead", arXiv 2401.12033): SAM's perturbation taken along the momentum
rather than along a gradient of its own, so that a step costs SGD's one forward-backward pass.

    a = −ρ · v / (‖v‖₂ + 10⁻¹²)      v: the base SGD's momentum buffer, the norm over all parameters
    g = ∇L_B(w + a)                  the step's one pass
    w ← w (restored by copy), then SGD's step with g: v ← μ·v + g + λ·w, w ← w − η·v

Before SGD's first step there is no v, and no a: that step is SGD's. The authors' code
(MarlonBecker/MSAM, optimizer/msam.py) keeps w + a stored between steps and moves back to w to
evaluate; keeping w stored takes the same gradients at the same points (their weight decay, taken
at w + a, aside) and leaves w to evaluation and checkpoints with no hook in the trainer.
docs/method.md#momentum-sam has the defaults, ρ and where we differ from that code.

python train.py optimizer=msam rho=3
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch

from ssam.errors import ConfigError
from ssam.optim.sam import NORM_EPS
from ssam.optim.ssam import MaskStrategy
from ssam.train.kinds import Method, RunContext, SettingValues, SharpnessAwareMethod, sgd_options
from ssam.train.passes import Passes, StepResult
from ssam.train.steps import sgd_step

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


class MSAMMethod(Method):
    """Momentum-SAM over SGD: one pass per step, at w + a. Its radius follows the top-level
    ``rho``; late-phase (``sam_from``) steps are SGD's before the phase, whose first step then
    climbs along the momentum gathered so far. SAM's ascent settings (``m``, ``ascent_fraction``,
    ``bn_stats``, ``perturbation``, ``adaptive``) mean nothing without an ascent pass and are not
    its settings; it needs momentum."""

    name = "msam"
    label = "MSAM"
    description = "Momentum-SAM (Becker et al., 2024): one pass per step, at w − ρ·v/‖v‖, v the momentum"
    settings = {
        **Method.settings,
        "rho": SharpnessAwareMethod.settings["rho"],
        "sam_from": SharpnessAwareMethod.settings["sam_from"],
    }

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        momentum = config["optimizer"]["momentum"]
        if momentum == 0:
            raise ConfigError(
                "optimizer=msam needs optimizer.momentum > 0 (its perturbation follows the momentum "
                f"buffer), got {momentum}"
            )

    @classmethod
    def advice(cls, values: SettingValues) -> list[str]:
        if values["rho"] < AUTHORS_RHO:
            return [
                f"note: Momentum-SAM's authors take ρ = {AUTHORS_RHO:g} on CIFAR-100 and ImageNet (60 times "
                f"SAM's 0.05); ρ = {values['rho']} perturbs far less: set rho, e.g. rho={AUTHORS_RHO:g}"
            ]
        return []

    @classmethod
    def build_optimizer(
        cls, params: list[torch.nn.Parameter], values: SettingValues, mask: MaskStrategy | None = None
    ) -> MomentumSAM:
        return MomentumSAM(params, rho=values["rho"], **sgd_options(values))

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        super().__init__(values, run)
        # Late phase: the steps before this one (counted from the start of training) are SGD's.
        self.first_climbing_step = math.ceil(self.values["sam_from"] * run.total_steps)

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        climbed = index >= self.first_climbing_step and self.optimizer.climb()
        result = sgd_step(passes, self.optimizer, inputs, targets)  # MomentumSAM.step: back to w, step
        return replace(result, sharpness_aware=climbed)

    def abandon_step(self) -> None:
        self.optimizer.restore_weights()
