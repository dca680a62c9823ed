"""Sparse SAM (Mi et al., NeurIPS 2022): SAM whose perturbation touches only masked weights.

    ε = ρ · (m ⊙ g) / ‖g‖₂          norm="full"   (default; the paper's code)
    ε = ρ · (m ⊙ g) / ‖m ⊙ g‖₂      norm="masked" (the radius is exactly ρ)

m is a binary mask with a fraction ``sparsity`` of zeros, chosen by a mask strategy:
FisherMask (SSAM-F) or DynamicMask (SSAM-D), see ssam.optim.masks. Sparsity 0 is SAM bit
for bit; sparsity 1 gives ε = 0, i.e. SGD on the same batch.

Use it like SAM, and tell it when an epoch starts so the mask is refreshed on schedule:

    optimizer = SSAM(model.parameters(), torch.optim.SGD, rho=0.1, sparsity=0.5,
                     mask_strategy=FisherMask(model, train_set, num_samples=128), lr=0.05)
    for epoch in range(epochs):
        optimizer.set_epoch(epoch)
        for x, y in loader:
            ...  # as with SAM: backward, first_step, backward, second_step

The mask is computed (or refreshed) in the first ``first_step`` of a due epoch, where the
ascent gradient that SSAM-D's gradient score needs is at hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch.optim import Optimizer

from ssam.optim.sam import SAM

NORMS = ("full", "masked")


def mask_overlap(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    """Jaccard index of two masks: entries on in both over entries on in either (1 if both empty)."""
    both = sum(int((a & b).sum()) for a, b in zip(first, second))
    either = sum(int((a | b).sum()) for a, b in zip(first, second))
    return both / either if either else 1.0


class MaskStrategy(Protocol):
    def is_due(self, epoch: int) -> bool: ...

    def __call__(
        self, params: list[torch.Tensor], masks: list[torch.Tensor] | None, sparsity: float, epoch: int
    ) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class SSAM(SAM):
    """Sparse SAM: SAM with a perturbation restricted to a mask (see the module docstring)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        *,
        sparsity: float = 0.5,
        mask_strategy: MaskStrategy,
        norm: str = "full",
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, **kwargs)
        self.sparsity = sparsity
        self.norm = norm
        self.mask_strategy = mask_strategy
        self.epoch = 0
        self.masks: list[torch.Tensor] | None = None
        self._mask_of: dict[torch.Tensor, torch.Tensor] = {}
        self._active: set[torch.Tensor] = set()
        self._partial: set[torch.Tensor] = set()
        self._update_due = True
        self.mask_updates = 0
        self.mask_update_time_s = 0.0
        # Jaccard index |m ∧ m'| / |m ∨ m'| of the last refresh's mask with the one before it.
        self.last_mask_overlap: float | None = None

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of every epoch: the mask is refreshed when the strategy is due."""
        self.epoch = epoch
        self._update_due = self.masks is None or self.mask_strategy.is_due(epoch)

    def _set_masks(self, masks: list[torch.Tensor]) -> None:
        params = self.params
        self.masks = [m.to(device=p.device, dtype=torch.bool) for m, p in zip(masks, params)]
        self._mask_of = dict(zip(params, self.masks))
        # One host sync per refresh, so that steps skip fully masked tensors, and the mask
        # multiply on fully unmasked ones, without one.
        self._active = {p for p, m in self._mask_of.items() if bool(m.any())}
        self._partial = {p for p in self._active if not bool(self._mask_of[p].all())}

    @torch.no_grad()
    def update_mask(self) -> None:
        """Ask the strategy for a new mask now (first_step does this when one is due)."""
        started = time.perf_counter()
        previous = self.masks
        self._set_masks(self.mask_strategy(self.params, self.masks, self.sparsity, self.epoch))
        self.mask_update_time_s += time.perf_counter() - started
        self.last_mask_overlap = None if previous is None else mask_overlap(previous, self.masks)
        self.mask_updates += 1
        self._update_due = False

    @property
    def refreshes_mask(self) -> bool:
        return self._update_due

    def mask_density(self) -> float:
        """Fraction of weights that are perturbed."""
        if self.masks is None:
            return float("nan")
        active = sum(int(m.sum()) for m in self.masks)
        return active / sum(m.numel() for m in self.masks)

    def ascent_parameters(self) -> list[torch.Tensor]:
        """The tensors the mask touches, and every one when the step needs more: with
        ``norm="full"`` ρ is divided by the whole gradient's norm, and a due refresh may score
        entries by their gradient (SSAM-D), so those steps compute every gradient."""
        if self.norm == "full" or self._update_due:
            return super().ascent_parameters()
        return [p for p in super().ascent_parameters() if p in self._active]

    def _masked_gradient(self, param: torch.Tensor) -> torch.Tensor:
        return param.grad * self._mask_of[param]

    def _restrict_(self, perturbation: torch.Tensor, param: torch.Tensor) -> None:
        if param in self._partial:
            perturbation.mul_(self._mask_of[param])

    def _is_perturbed(self, param: torch.Tensor) -> bool:
        return param.grad is not None and param in self._active

    def _perturbation_denominator(self) -> torch.Tensor:
        if self.norm == "masked":
            return self._scaled_norm(self._masked_gradient, self._is_perturbed)
        return super()._perturbation_denominator()

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        if self._update_due:
            self.update_mask()
        super().first_step(zero_grad=zero_grad)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["masks"] = None if self.masks is None else [m.clone() for m in self.masks]
        state["mask_strategy"] = self.mask_strategy.state_dict()
        state["epoch"] = self.epoch
        state["mask_update_due"] = self._update_due
        state["mask_updates"] = self.mask_updates
        state["mask_update_time_s"] = self.mask_update_time_s
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        masks = state_dict.pop("masks")
        self.mask_strategy.load_state_dict(state_dict.pop("mask_strategy"))
        self.epoch = state_dict.pop("epoch")
        self._update_due = state_dict.pop("mask_update_due")
        self.mask_updates = state_dict.pop("mask_updates")
        self.mask_update_time_s = state_dict.pop("mask_update_time_s")
        super().load_state_dict(state_dict)
        if masks is None:
            self.masks = None
            return
        for mask, p in zip(masks, self.params):
            if mask.shape != p.shape:
                raise ValueError(
                    f"saved mask of shape {tuple(mask.shape)} does not fit a parameter of shape "
                    f"{tuple(p.shape)}: the checkpoint is from another model"
                )
        self._set_masks(masks)
