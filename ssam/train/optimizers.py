"""Optimizer builders: SGD, SAM, and Sparse SAM with the Fisher (SSAM-F) or dynamic (SSAM-D) mask."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ssam.optim import SAM, SSAM, DynamicMask, FisherMask, TensorSelection, estimate_backward_cost
from ssam.optim.ssam import MaskStrategy

OPTIMIZERS = ("sgd", "sam", "ssam_f", "ssam_d")
SHARPNESS_AWARE = ("sam", "ssam_f", "ssam_d")
SPARSE = ("ssam_f", "ssam_d")
GRANULARITIES = ("element", "tensor")


def build_tensor_selection(
    model: torch.nn.Module, train_set: Dataset, *, tensor_score: str, ascent_cost: float | str
) -> TensorSelection:
    """Whole-tensor selection, with the backward-cost model measured on one training example."""
    params = [p for p in model.parameters() if p.requires_grad]
    example = torch.as_tensor(train_set[0][0]).unsqueeze(0).to(params[0].device)
    cost = estimate_backward_cost(model, params, example)
    return TensorSelection(reduce=tensor_score, cost=cost, ascent_cost=ascent_cost)


def build_mask_strategy(
    name: str,
    model: torch.nn.Module,
    train_set: Dataset,
    *,
    epochs: int,
    seed: int,
    update_freq: int,
    num_samples: int = 128,
    fisher_method: str = "auto",
    drop_rate: float = 0.5,
    drop: str = "gradient",
    growth: str = "random",
    granularity: str = "element",
    tensor_score: str = "sum",
    ascent_cost: float | str = "auto",
) -> MaskStrategy:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    selection = None
    if granularity == "tensor":
        selection = build_tensor_selection(
            model, train_set, tensor_score=tensor_score, ascent_cost=ascent_cost
        )
    if name == "ssam_f":
        return FisherMask(
            model,
            train_set,
            num_samples=num_samples,
            update_freq=update_freq,
            method=fisher_method,
            seed=seed,
            selection=selection,
        )
    if name == "ssam_d":
        return DynamicMask(
            total_epochs=epochs,
            drop_rate=drop_rate,
            update_freq=update_freq,
            drop=drop,
            growth=growth,
            seed=seed,
            selection=selection,
        )
    raise ValueError(f"no mask strategy for optimizer {name!r}; those with one: {', '.join(SPARSE)}")


def build_optimizer(
    name: str,
    model: torch.nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    rho: float = 0.05,
    adaptive: bool = False,
    sparsity: float = 0.0,
    norm: str = "full",
    mask_strategy: MaskStrategy | None = None,
) -> torch.optim.Optimizer:
    """SGD with momentum, or that SGD as the base optimizer of SAM / Sparse SAM."""
    sgd = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, **sgd)
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=rho, adaptive=adaptive, **sgd)
    if name in SPARSE:
        return SSAM(
            params,
            torch.optim.SGD,
            rho=rho,
            adaptive=adaptive,
            sparsity=sparsity,
            norm=norm,
            mask_strategy=mask_strategy,
            **sgd,
        )
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
