"""Switching between SGD and SAM steps, step by step: SAM's cost only on the steps a policy picks.

- RST, ``optimizer=rst`` (Zhao, Zhang and Hu, AAAI 2023, "Randomized Sharpness-Aware Training
  for Boosting Computational Efficiency in Deep Learning"): each step is SAM's with probability
  p_t, drawn from a generator of the method's own; p_t is constant, or moves linearly over
  training.
- AE-SAM, ``optimizer=ae_sam`` (Jiang, Yang, Zhang and Kwok, ICLR 2023, "An Adaptive Policy to
  Employ Sharpness-Aware Minimization"): a step is SAM's when its squared gradient norm ‖g‖²
  stands out from its running statistics, ‖g‖² ≥ μ_t + c_t·σ_t.

Two methods, not one with a policy setting: they decide at different moments. RST decides before
the step, whose SAM steps are then SAM's with every option of SAM's (m-sharpness,
``ascent_fraction``, a local perturbation); AE-SAM decides after the pass at w, whose gradient is
then either SGD's step or SAM's ascent, which fixes how that pass runs. Both log the epoch's share
of SAM steps (``sharpness_aware_fraction``) and count their passes as measured.
docs/method.md#switching-between-sgd-and-sam-steps-rst-and-ae-sam has the rules, the defaults and
the sources.

python train.py optimizer=rst optimizer.probability=0.5
python train.py optimizer=ae_sam optimizer.threshold_start=1 optimizer.threshold_end=-1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from ssam.data.sampling import mixed_seed
from ssam.errors import ConfigError
from ssam.settings import Check, Setting, in_range, is_number, optional
from ssam.train.kinds import (
    KEY_EQUALS_VALUE,
    WHOLE_BATCH_GRADIENT,
    RunContext,
    SettingValues,
    SharpnessAwareMethod,
    require_settings,
)
from ssam.train.passes import Passes, StepResult
from ssam.train.progress import Metric, Total, ratio
from ssam.train.steps import SHARPNESS_AWARE_STEPS, descend, parameters_of, sharpness_aware_totals

# The steps that went through, which the epoch's share of SAM steps is taken over.
STEPS_TAKEN = "steps_taken"
# RST's draws get a stream of their own: the run's seed alone also seeds the data loader.
RANDOM_POLICY_STREAM = 0x525354
FINITE = Check(lambda value: is_number(value) and math.isfinite(value), "a finite number")


class SwitchingSAMMethod(SharpnessAwareMethod):
    """What RST and AE-SAM share: SAM or SGD per step (``chosen_step``), the epoch's share of SAM
    steps as a metric, and passes per step measured: 1 + the share of the run's steps so far that
    were SAM's (kept in the checkpoint, so a resumed run's summary counts the whole run)."""

    totals = (*SharpnessAwareMethod.totals, Total(STEPS_TAKEN, int))
    metrics = (
        *SharpnessAwareMethod.metrics,
        Metric(
            "sharpness_aware_fraction",
            lambda _, totals: ratio(totals[SHARPNESS_AWARE_STEPS], totals[STEPS_TAKEN]),
        ),
    )

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        super().__init__(values, run)
        self.steps_taken = 0
        self.sharpness_aware_steps_taken = 0

    @property
    def sharpness_aware_share(self) -> float:
        """Measured, not foreseen: the policy decides as the run goes (0 before any step)."""
        return self.sharpness_aware_steps_taken / max(self.steps_taken, 1)

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        result = self.chosen_step(passes, inputs, targets, index)
        self.steps_taken += 1
        self.sharpness_aware_steps_taken += result.sharpness_aware
        return replace(result, totals={**result.totals, STEPS_TAKEN: 1})

    def chosen_step(
        self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int
    ) -> StepResult:
        """SAM's step where ``is_sharpness_aware(index)``, else SGD's."""
        return super().step(passes, inputs, targets, index)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "steps_taken": self.steps_taken,
            "sharpness_aware_steps_taken": self.sharpness_aware_steps_taken,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps_taken = state["steps_taken"]
        self.sharpness_aware_steps_taken = state["sharpness_aware_steps_taken"]


class RandomSwitchingMethod(SwitchingSAMMethod):
    """RST: each step of the sharpness-aware phase is SAM's with probability p_t, else SGD's.
    p_t = p + (p_end − p)·t/T over the run's T steps (constant p without ``probability_end``).
    One uniform draw per step of the phase, from a torch.Generator seeded from the run's seed, in
    step order; its state is kept in the checkpoint, so a resumed run draws what it would have."""

    name = "rst"
    label = "RST"
    description = "RST (Zhao et al., 2023): SAM with probability p_t, else SGD, step by step"
    settings = {
        **SwitchingSAMMethod.settings,
        "probability": Setting(
            0.5,
            in_range(0.0, 1.0),
            "p: the chance that a step is SAM's (at the first step, if probability_end is set)",
            variant=KEY_EQUALS_VALUE,
        ),
        "probability_end": Setting(
            None,
            optional(in_range(0.0, 1.0)),
            "null: p constant; else p moves linearly to this value over training",
            variant=KEY_EQUALS_VALUE,
        ),
    }

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        super().__init__(values, run)
        self.generator = torch.Generator().manual_seed(mixed_seed(run.seed, RANDOM_POLICY_STREAM))

    def probability_at(self, index: int) -> float:
        start, end = self.values["probability"], self.values["probability_end"]
        if end is None:
            return start
        return start + (end - start) * index / self.run.total_steps

    def is_sharpness_aware(self, index: int) -> bool:
        """Draws (so call it once per step, as the step does): u < p_t, u uniform in [0, 1), so
        p = 1 always climbs and p = 0 never does. A CPU draw: no wait for the device."""
        if not super().is_sharpness_aware(index):
            return False
        draw = torch.rand((), generator=self.generator, dtype=torch.float64).item()
        return draw < self.probability_at(index)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


class GradientNormStatistics:
    """The running mean and variance of ‖g‖² (AE-SAM's μ_t and σ_t²), in float64 on the device:

        μ_t  = δ·μ_{t−1}  + (1 − δ)·‖g_t‖²
        σ_t² = δ·σ_{t−1}² + (1 − δ)·(‖g_t‖² − μ_t)²

    from μ = σ² = 0. ``after`` gives the statistics with a new ‖g‖² in, which ``keep`` makes
    current once the step has gone through (a non-finite step leaves them as they were)."""

    def __init__(self, decay: float, device: torch.device) -> None:
        self.decay = decay
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.variance = torch.zeros((), dtype=torch.float64, device=device)

    def after(self, squared_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decay = self.decay
        mean = decay * self.mean + (1 - decay) * squared_norm
        variance = decay * self.variance + (1 - decay) * (squared_norm - mean).square()
        return mean, variance

    def keep(self, mean: torch.Tensor, variance: torch.Tensor) -> None:
        self.mean, self.variance = mean, variance

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "variance": self.variance}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean = state["mean"].to(self.mean)
        self.variance = state["variance"].to(self.variance)


def gradient_squared_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """‖g‖² over every parameter's gradient, in float64."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).double().square()


class AdaptiveSwitchingMethod(SwitchingSAMMethod):
    """AE-SAM: one pass at w gives g; the step is SAM's (climb along g, descend, step) when
    ‖g‖² ≥ μ_t + c_t·σ_t, else SGD's on g. c_t = λ₂ + (λ₁ − λ₂)·t/T moves linearly from
    ``threshold_start`` (λ₂) to ``threshold_end`` (λ₁) over the run's T steps; μ_t and σ_t² are
    the running statistics of ‖g‖², which include the current step's.

    g is measured after the processes average it (the pass at w runs inside DDP), so every
    process holds the same statistics, and they agree on the decision before acting on it. As g is
    SGD's gradient as well as the ascent's, it is the whole batch's, shared by the processes, and
    the pass at w updates the BatchNorm statistics: m-sharpness, ``ascent_fraction`` < 1, a local
    perturbation and ``bn_stats=descent`` are refused."""

    name = "ae_sam"
    label = "AE-SAM"
    description = (
        "AE-SAM (Jiang et al., 2023): SAM when ‖g‖² stands out from its running statistics, else SGD"
    )
    settings = {
        **SwitchingSAMMethod.settings,
        "ema_decay": Setting(
            0.9,
            in_range(0.0, 1.0, low_open=True, high_open=True),
            "δ: decay of the running mean and variance of ‖g‖²",
            variant=KEY_EQUALS_VALUE,
        ),
        "threshold_start": Setting(
            1.0, FINITE, "λ₂: c_t at the first step; SAM when ‖g‖² ≥ μ + c_t·σ", variant=KEY_EQUALS_VALUE
        ),
        "threshold_end": Setting(
            -1.0, FINITE, "λ₁: c_t at the end of training, linear from λ₂", variant=KEY_EQUALS_VALUE
        ),
    }

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        require_settings(
            config,
            WHOLE_BATCH_GRADIENT,
            "g at w is SGD's gradient as well as the ascent's, alike on every process",
        )
        if config["optimizer"]["bn_stats"] == "descent":
            raise ConfigError(
                "optimizer=ae_sam needs optimizer.bn_stats=ascent or both (the pass at w, run before the "
                "step is known to be SAM's, updates the BatchNorm statistics), got descent"
            )

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        super().__init__(values, run)
        device = next(run.model.parameters()).device
        self.statistics = GradientNormStatistics(self.values["ema_decay"], device)

    def threshold_at(self, index: int) -> float:
        """c_t, from λ₂ at the first step towards λ₁ at the last."""
        start, end = self.values["threshold_start"], self.values["threshold_end"]
        return start + (end - start) * index / self.run.total_steps

    def chosen_step(
        self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int
    ) -> StepResult:
        if not self.is_sharpness_aware(index):  # before the late phase: SGD, no statistics yet
            return super().chosen_step(passes, inputs, targets, index)
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss, correct = passes.forward_backward(inputs, targets, freeze_stats=False)
        params = parameters_of(optimizer)
        passes.check(loss, params, "training")
        squared_norm = gradient_squared_norm(params)
        mean, variance = self.statistics.after(squared_norm)
        stands_out = squared_norm >= mean + self.threshold_at(index) * variance.sqrt()
        # The pass at w is checked, and the choice read, in one host sync.
        climbs = passes.settle(choice=stands_out)
        if climbs:
            optimizer.first_step(zero_grad=True)
            descend(passes, optimizer, inputs, targets, bn_stats=self.options.bn_stats)
            passes.settle()
        self.statistics.keep(mean, variance)
        if not climbs:
            optimizer.base_optimizer.step()
            return StepResult(loss, correct, len(targets))
        optimizer.second_step(zero_grad=True)
        return StepResult(
            loss, correct, len(targets), sharpness_aware=True, totals=sharpness_aware_totals(optimizer)
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "gradient_norm_statistics": self.statistics.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.statistics.load_state_dict(state["gradient_norm_statistics"])
