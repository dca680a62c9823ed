"""ESAM (Du, Yan, Feng, Zhou, Zhen, Goh and Tan, ICLR 2022, "Efficient Sharpness-aware Minimization
for Improved Training of Neural Networks"): SAM made cheaper at both of its passes.

    Stochastic Weight Perturbation (SWP)    each parameter tensor joins the ascent with probability
                                            β; ε = ρ·g_S / (β·‖g_S‖) over the drawn tensors S, 0 on
                                            the others, whose weight gradients the ascent skips
    Sharpness-sensitive Data Selection      a pass without gradients at w + ε gives each example's
    (SDS)                                   loss; the descent pass takes the round(γ·B) examples whose
                                            loss rose most, L_i(w + ε) − L_i(w)

Both follow the authors' code (dydjw9/Efficient_SAM, utils/Esam.py), which drops whole tensors
where the paper masks single weights. β = γ = 1 is SAM bit for bit. docs/method.md#esam has the
defaults and every place where we differ from that code.

python train.py optimizer=esam optimizer.beta=0.6 optimizer.gamma=0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim import Optimizer

from ssam.data.sampling import mixed_seed
from ssam.optim import SAM
from ssam.optim.batchnorm import restored_batchnorm_stats
from ssam.optim.ssam import MaskStrategy
from ssam.settings import Setting, in_range
from ssam.train.kinds import (
    KEY_EQUALS_VALUE,
    SettingValues,
    SharpnessAwareMethod,
    require_settings,
    sam_options,
)
from ssam.train.passes import Passes, StepResult, micro_batches
from ssam.train.precision import Precision
from ssam.train.steps import climb, descend, sharpness_aware_totals

# The tensor draws get a stream of their own: the run's seed alone also seeds the data loader.
TENSOR_DRAW_STREAM = 0x4553414D
# A forward pass without gradients, in whole forward-backward passes (a backward costs about
# two forwards).
FORWARD_ONLY_PASS = 1 / 3


class ESAM(SAM):
    """SAM whose ascent reads a random subset S of the parameter tensors, each drawn with
    probability ``beta`` from ``generator``: ε = ρ·g_S / (β·‖g_S‖ + 10⁻¹²) on S, 0 elsewhere.

    The draw is made when a step first asks for its ascent parameters (``ascent_graph``,
    ``ascent_backward``, or ``first_step`` after a plain ``backward()``) and holds until the
    weights are restored, so that a loop written for SAM runs it unchanged. The generator's state
    is in ``state_dict()``: a resumed run draws what it would have drawn."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        *,
        beta: float = 0.6,
        generator: torch.Generator | None = None,
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, **kwargs)
        self.beta = beta
        self.generator = torch.Generator() if generator is None else generator
        self._drawn: list[torch.Tensor] | None = None  # this step's S, in parameter order
        self._drawn_set: set[torch.Tensor] = set()

    def _draw(self) -> list[torch.Tensor]:
        """This step's S: one uniform draw u per tensor, kept when u < β (so β = 1 keeps all).
        A CPU draw, the same on every process that holds the same generator."""
        if self._drawn is None:
            candidates = super().ascent_parameters()
            draws = torch.rand(len(candidates), dtype=torch.float64, generator=self.generator)
            self._drawn = [p for p, u in zip(candidates, draws.tolist()) if u < self.beta]
            self._drawn_set = set(self._drawn)
        return self._drawn

    def ascent_parameters(self) -> list[torch.Tensor]:
        return self._draw()

    def _is_perturbed(self, param: torch.Tensor) -> bool:
        self._draw()
        return param.grad is not None and param in self._drawn_set

    def _perturbation_denominator(self) -> torch.Tensor:
        """β·‖g_S‖, so that ‖ε‖ = ρ/β: the radius of the drawn tensors grows as fewer are drawn."""
        return self._scaled_norm(lambda p: p.grad, self._is_perturbed) * self.beta

    @torch.no_grad()
    def restore_weights(self) -> None:
        super().restore_weights()
        self._drawn = None  # the next step draws anew

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.generator.set_state(state_dict.pop("generator"))
        super().load_state_dict(state_dict)


def selected_count(batch_size: int, gamma: float) -> int:
    """Examples in the descent pass: γ·B rounded to the nearest whole example, at least one."""
    return max(1, round(gamma * batch_size))


@contextmanager
def recorded_logits(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside, every forward of ``model`` appends its output, detached, to the list yielded: the
    ascent pass's logits, micro-batch by micro-batch, give each example's loss at w for free."""
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, inputs, output: logits.append(output.detach()))
    try:
        yield logits
    finally:
        hook.remove()


def example_losses(logits: torch.Tensor, targets: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Each example's cross-entropy, computed as the passes compute the batch's (under autocast)."""
    with precision.autocast():
        return F.cross_entropy(logits, targets, reduction="none")


@torch.no_grad()
def logits_without_gradients(passes: Passes, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The model's outputs at its current weights, in the passes' micro-batches and precision.
    BatchNorm normalises with each micro-batch's statistics, as in the other passes, and its
    running statistics are put back afterwards: this pass only measures."""
    logits = []
    with restored_batchnorm_stats(passes.model):
        for micro_inputs, _, _, _ in micro_batches(inputs, targets, passes.accumulate_steps):
            with passes.precision.autocast():
                logits.append(passes.model(micro_inputs))
    return torch.cat(logits)


def sharpest_examples(sharpness: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` examples of largest sharpness, in batch order; among equal
    values the earlier example wins."""
    chosen = torch.sort(sharpness, descending=True, stable=True).indices[:count]
    return chosen.sort().values


def selected_examples(
    passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, logits_at_w: torch.Tensor, count: int
) -> torch.Tensor:
    """SDS at w + ε: the indices of the ``count`` examples whose loss rose most from w, their
    losses at w read off the ascent pass's ``logits_at_w``."""
    losses_at_w = example_losses(logits_at_w, targets, passes.precision)
    losses_at_w_plus_e = example_losses(
        logits_without_gradients(passes, inputs, targets), targets, passes.precision
    )
    return sharpest_examples(losses_at_w_plus_e - losses_at_w, count)


def esam_step(
    passes: Passes,
    optimizer: ESAM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    selected: int,
    bn_stats: str = "ascent",
    perturbation: str = "global",
) -> StepResult:
    """Climb along the drawn tensors' ascent gradient of the whole batch; unless ``selected``
    covers the batch, keep the ``selected`` examples whose loss rose most; take their descent
    gradient at w + ε, go back to w and step. The loss and accuracy returned are the whole
    batch's, at w. Under data parallelism each process selects from its own share of the batch."""
    with recorded_logits(passes.model) as logits_at_w:
        loss, correct = climb(
            passes, optimizer, inputs, targets, bn_stats=bn_stats, perturbation=perturbation
        )
    descent = (inputs, targets)
    if selected < len(targets):
        chosen = selected_examples(passes, inputs, targets, torch.cat(logits_at_w), selected)
        descent = (inputs[chosen], targets[chosen])
    descend(passes, optimizer, *descent, bn_stats=bn_stats)
    passes.settle()
    optimizer.second_step(zero_grad=True)
    return StepResult(
        loss, correct, len(targets), sharpness_aware=True, totals=sharpness_aware_totals(optimizer)
    )


class ESAMMethod(SharpnessAwareMethod):
    """ESAM: SWP in the ascent (``beta``), SDS in the descent (``gamma``). Late-phase SAM
    (``sam_from``), ASAM (``adaptive``), ``bn_stats``, both perturbations, gradient accumulation
    and mixed precision compose with it; m-sharpness and ``ascent_fraction`` < 1 are refused: the
    selection ranks every example of the batch against one ε. The tensor draws come from a
    generator of the method's own, seeded from the run's seed: every process draws the same."""

    name = "esam"
    label = "ESAM"
    description = (
        "ESAM (Du et al., 2022): the ascent on a random β of the tensors, the descent on the γ of "
        "the batch whose loss rose most"
    )
    settings = {
        **SharpnessAwareMethod.settings,
        "beta": Setting(
            0.6,
            in_range(0.0, 1.0, low_open=True),
            "β: each parameter tensor joins the ascent with this probability (SWP); ‖ε‖ = ρ/β",
            variant=KEY_EQUALS_VALUE,
        ),
        "gamma": Setting(
            0.5,
            in_range(0.0, 1.0, low_open=True),
            "γ: the descent takes this fraction of each batch, the examples whose loss rose most at w + ε",
            variant=KEY_EQUALS_VALUE,
        ),
    }

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        require_settings(
            config,
            {"m": None, "ascent_fraction": 1.0},
            "the data selection compares each example's loss at w + ε with the ascent's at w, over the whole batch",
        )

    @classmethod
    def build_optimizer(
        cls, params: list[torch.nn.Parameter], values: SettingValues, mask: MaskStrategy | None = None
    ) -> ESAM:
        return ESAM(params, torch.optim.SGD, beta=values["beta"], **sam_options(values))

    def build_run_optimizer(self) -> ESAM:
        optimizer = super().build_run_optimizer()
        optimizer.generator.manual_seed(mixed_seed(self.run.seed, TENSOR_DRAW_STREAM))
        return optimizer

    @property
    def passes_per_step(self) -> float:
        """On each ESAM step, the ascent's whole pass, the descent's γ of one and, when γ < 1, the
        selection's forward without gradients, counted as FORWARD_ONLY_PASS (exact when γ·B is a
        whole number). The weight gradients the ascent skips (1 − β of the tensors) are not
        counted as saved, as Sparse SAM's are not: the backward still runs through the network."""
        gamma = self.values["gamma"]
        selection = FORWARD_ONLY_PASS if gamma < 1 else 0.0
        return 1.0 + self.sharpness_aware_share * (gamma + selection)

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        if not self.is_sharpness_aware(index):
            return super().step(passes, inputs, targets, index)
        return esam_step(
            passes,
            self.optimizer,
            inputs,
            targets,
            selected=selected_count(len(targets), self.values["gamma"]),
            bn_stats=self.options.bn_stats,
            perturbation=self.options.perturbation,
        )
