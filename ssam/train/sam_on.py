"""SAM-ON (Mueller, Vlaar, Rolnick and Hein, NeurIPS 2023, "Normalization Layers Are All That
Sharpness-Aware Minimization Needs"): SAM whose perturbation touches only the affine parameters of
the normalisation layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm), under 1% of the weights.

    ε = ρ · (m ⊙ g) / ‖m ⊙ g‖      m: every weight and bias of the normalisation layers, nothing else

A Sparse SAM whose mask is structural: chosen once, from the model, whole tensors, with the masked
norm of the authors' code (mueller-mp/SAM-ON, sam_on.py), so that the ascent computes the weight
gradients of those tensors alone. ``optimizer.adaptive=true`` gives their ASAM-ON.
docs/method.md#sam-on has the defaults, ρ and where we differ from that code.

python train.py optimizer=sam_on rho=0.5
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import Dataset

from ssam.errors import ConfigError
from ssam.optim.ssam import MaskStrategy
from ssam.optim.tensor_selection import masks_of
from ssam.train.kinds import MaskContext, SettingValues, SparseSAMMethod, without

# The layers whose affine parameters SAM-ON perturbs (_NormBase: BatchNorm, SyncBatchNorm and
# InstanceNorm, whose parameters exist with affine=True only).
NORMALISATION_LAYERS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# The authors' default ρ (their train.py), far above SAM's 0.05: a perturbation of the
# normalisation layers alone needs a larger radius.
AUTHORS_RHO = 0.5


def normalisation_parameters(model: nn.Module) -> set[torch.Tensor]:
    return {
        p
        for module in model.modules()
        if isinstance(module, NORMALISATION_LAYERS)
        for p in module.parameters(recurse=False)
    }


class NormalisationLayerMask:
    """A mask strategy (ssam.optim.ssam.MaskStrategy) that perturbs every parameter of the
    model's normalisation layers and nothing else, whatever the sparsity; never refreshed."""

    def __init__(self, model: nn.Module) -> None:
        self.perturbed = normalisation_parameters(model)
        if not any(p.requires_grad for p in self.perturbed):
            raise ValueError(
                "optimizer=sam_on perturbs the parameters of normalisation layers (BatchNorm, LayerNorm, "
                "GroupNorm, RMSNorm) only, and this model trains none: choose another model or optimizer"
            )

    def is_due(self, epoch: int) -> bool:
        return False  # SSAM asks for the first mask before the first climb, and never again

    def __call__(self, params, masks, sparsity: float, epoch: int) -> list[torch.Tensor]:
        return masks_of({i for i, p in enumerate(params) if p in self.perturbed}, params)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SAMONMethod(SparseSAMMethod):
    """SAM-ON: Sparse SAM with the normalisation layers' mask, whole tensors and the masked norm
    by default. The mask decides the density, so ``sparsity`` and the settings of chosen masks
    (``update_freq``, ``tensor_score``, ``ascent_cost``) are left out. 2 passes per step, as
    counted in whole passes; the ascent's backward computes no other weight gradient."""

    name = "sam_on"
    label = "SAM-ON"
    description = "SAM-ON (Mueller et al., 2023): SAM perturbing the normalisation layers' parameters alone"
    settings = {
        **without(SparseSAMMethod.settings, "sparsity", "update_freq", "tensor_score", "ascent_cost"),
        "granularity": SparseSAMMethod.settings["granularity"].with_default("tensor"),
        "norm": SparseSAMMethod.settings["norm"].with_default("masked"),
    }

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        granularity = config["optimizer"]["granularity"]
        if granularity != "tensor":
            raise ConfigError(
                "optimizer=sam_on needs optimizer.granularity=tensor (its mask is whole tensors, the "
                f"normalisation layers'), got {granularity}"
            )

    @classmethod
    def advice(cls, values: SettingValues) -> list[str]:
        notes = super().advice(values)
        if values["rho"] < AUTHORS_RHO:
            notes.append(
                f"note: SAM-ON perturbs the normalisation layers alone, so ρ = {values['rho']} moves the "
                f"weights far less than SAM's; its authors' default is ρ = {AUTHORS_RHO} (10 for ASAM-ON, "
                "optimizer.adaptive=true, in their README): set rho"
            )
        return notes

    @classmethod
    def mask_strategy(
        cls, model: nn.Module, train_set: Dataset, *, epochs: int, seed: int, values: SettingValues
    ) -> MaskStrategy:
        # The mask is structural: no tensor selection (nor its cost model) to build.
        return cls.build_mask(MaskContext(model, train_set, epochs, seed, selection=None), values)

    @classmethod
    def build_mask(cls, context: MaskContext, values: SettingValues) -> MaskStrategy:
        return NormalisationLayerMask(context.model)
