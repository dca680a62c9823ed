"""LookSAM (Liu, Mai, Chen, Hsieh and You, CVPR 2022, "Towards Efficient and Scalable
Sharpness-Aware Minimization"): a SAM step every k-th step, and in between one pass whose
gradient g is pushed along the part of SAM's gradient that g lacks, kept from the last SAM step.

    every k-th step    g = ∇L(w), g_s = ∇L(w + ε) with ε = ρ·g/‖g‖, a step on g_s (SAM's),
                       and keep g_v = g_s − (⟨g, g_s⟩ / ‖g‖²)·g, the part of g_s orthogonal to g
    the other steps    g = ∇L(w), a step on g + α·(‖g‖ / ‖g_v‖)·g_v

The paper writes the rule over the whole gradient vector (``decomposition=global``, as the code of
Leminhbinh0209/LookSAM); rollovd/LookSAM takes each parameter tensor apart on its own
(``decomposition=tensor``). The step counts from the start of the sharpness-aware phase
(``sam_from``), so that the phase opens with a SAM step and g_v exists at every step after it.
docs/method.md#looksam has the defaults, the sources and where we differ from them.

python train.py optimizer=looksam optimizer.k=5 optimizer.alpha=0.7
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ssam.optim.looksam import DECOMPOSITIONS, LookSAM
from ssam.optim.ssam import MaskStrategy
from ssam.settings import POSITIVE_INT, Setting, at_least, one_of
from ssam.train.kinds import (
    KEY_EQUALS_VALUE,
    WHOLE_BATCH_GRADIENT,
    SettingValues,
    SharpnessAwareMethod,
    require_settings,
    sam_options,
)
from ssam.train.passes import Passes, StepResult
from ssam.train.steps import sgd_step


class LookSAMMethod(SharpnessAwareMethod):
    """LookSAM: SAM every k-th step of the sharpness-aware phase, a reused g_v in between.
    1 + 1/k passes per step (counted over the run's steps). Late-phase SAM (``sam_from``) and ASAM
    (``adaptive``) compose with it; m-sharpness, ``ascent_fraction`` < 1 and a local
    perturbation are refused: g must be the whole batch's gradient, the same on every process."""

    name = "looksam"
    label = "LookSAM"
    description = "LookSAM (Liu et al., 2022): SAM every k-th step, its orthogonal gradient reused in between"
    settings = {
        **SharpnessAwareMethod.settings,
        "k": Setting(
            5, POSITIVE_INT, "a SAM step every k-th step, g_v reused in between", variant=KEY_EQUALS_VALUE
        ),
        "alpha": Setting(
            0.7, at_least(0), "α: weight of the reused g_v, scaled to ‖g‖", variant=KEY_EQUALS_VALUE
        ),
        "decomposition": Setting(
            "global",
            one_of(*DECOMPOSITIONS),
            "g_v from the whole gradient vector (global, the paper) or from each tensor on its own",
            variant=KEY_EQUALS_VALUE,
        ),
    }

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        require_settings(
            config,
            WHOLE_BATCH_GRADIENT,
            "g_v is taken against the whole batch's gradient, alike on every process",
        )

    # A LookSAM whose SAM steps perturb otherwise (Sparse SAM's mask) changes these two, and keeps
    # LookSAM's own settings.
    optimizer_class: ClassVar[type[LookSAM]] = LookSAM

    @classmethod
    def perturbation_options(cls, values: SettingValues, mask: MaskStrategy | None) -> dict[str, Any]:
        return sam_options(values)

    @classmethod
    def build_optimizer(
        cls, params: list[torch.nn.Parameter], values: SettingValues, mask: MaskStrategy | None = None
    ) -> LookSAM:
        return cls.optimizer_class(
            params,
            torch.optim.SGD,
            alpha=values["alpha"],
            decomposition=values["decomposition"],
            **cls.perturbation_options(values, mask),
        )

    def is_sharpness_aware(self, index: int) -> bool:
        # Counted from the phase's first step, which is then a SAM step: g_v exists after it.
        phase_step = index - self.first_sharpness_aware_step
        return super().is_sharpness_aware(index) and phase_step % self.values["k"] == 0

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        in_phase = index >= self.first_sharpness_aware_step
        if in_phase and not self.is_sharpness_aware(index):
            return sgd_step(passes, self.optimizer, inputs, targets)  # LookSAM.step(): g plus the reused g_v
        return super().step(passes, inputs, targets, index)
