"""The built-in optimizers of ``optimizer=<name>``, each a ``Method`` class (ssam/train/kinds.py):
SGD and SAM here; the paper's SSAM-F and SSAM-D, the cheaper SAMs they are compared with
(LookSAM, RST and AE-SAM, ESAM, SAM-ON, Momentum-SAM, SAF) and Sparse SAM combined with their
mechanisms, in modules of their own; their table, and helpers to build one outside the trainer.

Everything else (the validator, Hydra's config group, the trainer, sweeps, tables, plots and the
settings reference) reads these classes. Adding a method: docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from ssam.optim.ssam import MaskStrategy
from ssam.settings import named
from ssam.train.combinations import FisherMaskedLookSAMMethod, FisherMaskedRSTMethod
from ssam.train.esam import ESAMMethod
from ssam.train.kinds import (
    Method,
    SharpnessAwareMethod,
    SparseSAMMethod,
    build_tensor_selection,
    trainable_parameters,
)
from ssam.train.looksam import LookSAMMethod
from ssam.train.msam import MSAMMethod
from ssam.train.saf import SAFMethod
from ssam.train.sam_on import SAMONMethod
from ssam.train.sparse_sam import SSAMDMethod, SSAMFMethod
from ssam.train.switching import AdaptiveSwitchingMethod, RandomSwitchingMethod

__all__ = ["METHODS", "build_mask_strategy", "build_optimizer", "build_tensor_selection", "method_named"]


class SGDMethod(Method):
    name = "sgd"
    label = "SGD"
    description = "SGD with momentum; weight decay inside the optimizer"


class SAMMethod(SharpnessAwareMethod):
    name = "sam"
    label = "SAM"
    description = "SAM (Foret et al., 2021) over SGD: two forward-backward passes per step"


METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (
        SGDMethod,
        SAMMethod,
        SSAMFMethod,
        SSAMDMethod,
        LookSAMMethod,
        RandomSwitchingMethod,
        AdaptiveSwitchingMethod,
        ESAMMethod,
        SAMONMethod,
        MSAMMethod,
        SAFMethod,
        FisherMaskedRSTMethod,
        FisherMaskedLookSAMMethod,
    )
}


def method_named(name: str) -> type[Method]:
    return named(METHODS, name, group="optimizer")


def ignored_settings(optimizer: str) -> set[str]:
    """The top-level settings the optimizer does not read, such as sparsity for SAM and ρ for SGD
    (none for an optimizer not declared)."""
    return METHODS[optimizer].ignored_knobs() if optimizer in METHODS else set()


def run_variant(summary: Mapping[str, Any]) -> str:
    """What makes a run, by its summary.json, another method than its optimizer's own: the
    recorded variant settings that differ from their defaults, and mixed precision; "" for
    none. Tables give each variant a column of its own."""
    method = METHODS.get(summary["optimizer"])
    parts = [method.variant(summary, world_size=summary.get("world_size", 1))] if method else []
    if summary.get("amp", "none") != "none":
        parts.append(f"amp={summary['amp']}")
    return ", ".join(part for part in parts if part)


def build_mask_strategy(
    name: str, model: torch.nn.Module, train_set: Dataset, *, epochs: int, seed: int, **settings: Any
) -> MaskStrategy:
    """The mask strategy of Sparse SAM method ``name``; ``settings`` are its own (optimizer.<key>),
    the declared defaults for those not given."""
    method = method_named(name)
    if not issubclass(method, SparseSAMMethod):
        sparse = [m.name for m in METHODS.values() if issubclass(m, SparseSAMMethod)]
        raise ValueError(f"no mask strategy for optimizer {name!r}; those with one: {', '.join(sparse)}")
    return method.mask_strategy(
        model, train_set, epochs=epochs, seed=seed, values=method.with_defaults(settings)
    )


def build_optimizer(
    name: str, model: torch.nn.Module, *, mask_strategy: MaskStrategy | None = None, **settings: Any
) -> torch.optim.Optimizer:
    """Method ``name``'s optimizer over the model's trainable parameters, for a loop of one's own:
    SGD, or SGD as the base optimizer of SAM / Sparse SAM. ``settings`` are the method's
    (optimizer.<key>); those that follow a top-level setting (lr, weight_decay, rho, sparsity) must
    be given, the others default as declared."""
    method = method_named(name)
    return method.build_optimizer(
        trainable_parameters(model), method.complete_settings(settings), mask_strategy
    )
