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
from collections.abc import Mapping
from typing import Any

import torch

from ssam.errors import ConfigError
from ssam.optim.msam import AUTHORS_RHO, MomentumSAM
from ssam.optim.ssam import MaskStrategy
from ssam.train.kinds import Method, RunContext, SettingValues, SharpnessAwareMethod, sgd_options
from ssam.train.passes import Passes, StepResult
from ssam.train.steps import momentum_sam_step, sgd_step


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
        if index < self.first_climbing_step:
            return sgd_step(passes, self.optimizer, inputs, targets)
        return momentum_sam_step(passes, self.optimizer, inputs, targets)

    def abandon_step(self) -> None:
        self.optimizer.restore_weights()
