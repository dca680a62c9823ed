"""The built-in optimizers of ``optimizer=<name>`` (SGD, SAM, SSAM-F, SSAM-D), each declared once
as a ``MethodSpec`` (ssam/train/kinds.py), their table, and what the trainer builds from them.

Everything else (the validator, Hydra's config group, the trainer, sweeps, tables, plots and the
settings reference) reads these declarations. Adding a method: docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from ssam.errors import ConfigError
from ssam.optim import DynamicMask, FisherMask, TensorSelection, estimate_backward_cost
from ssam.optim.fisher import FISHER_METHODS
from ssam.optim.masks import SCORES
from ssam.optim.ssam import MaskStrategy
from ssam.settings import POSITIVE_INT, Setting, in_range, named, one_of
from ssam.train.kinds import SGD, SHARPNESS_AWARE, SPARSE, MaskContext, MethodSpec

# The top-level settings that exist to feed the optimizer's (``${lr}``): a method whose settings
# do not read one ignores it, and a sweep over it runs that method once.
OPTIMIZER_KNOBS = ("lr", "weight_decay", "rho", "sparsity")


def _check_fisher_pass(config: Mapping[str, Any]) -> None:
    optimizer = config["optimizer"]
    if config["trainer"]["sync_batchnorm"] and optimizer["fisher_method"] != "loop":
        raise ConfigError(
            "trainer.sync_batchnorm=true with optimizer=ssam_f needs optimizer.fisher_method=loop "
            f"(vmap cannot run SyncBatchNorm), got {optimizer['fisher_method']!r}"
        )
    train_size = config["dataset"]["train_size"]
    if train_size is not None and optimizer["num_samples"] > train_size:
        raise ConfigError(
            f"optimizer.num_samples ({optimizer['num_samples']}) is larger than dataset.train_size ({train_size})"
        )


SGD_METHOD = MethodSpec("sgd", "SGD", SGD, "SGD with momentum; weight decay inside the optimizer")

SAM_METHOD = MethodSpec(
    "sam", "SAM", SHARPNESS_AWARE, "SAM (Foret et al., 2021) over SGD: two forward-backward passes per step"
)

SSAM_F_METHOD = MethodSpec(
    "ssam_f",
    "SSAM-F",
    SPARSE,
    "Sparse SAM with the Fisher-information mask (SSAM-F, Mi et al., 2022)",
    own_settings={
        "num_samples": Setting(
            128, POSITIVE_INT, "examples in each Fisher estimate (the paper: 128 to 1024)"
        ),
        "fisher_method": Setting(
            "auto", one_of(*FISHER_METHODS), "loop (batch-1 passes), vmap (torch.func), or auto: the faster"
        ),
    },
    mask=lambda context, settings: FisherMask(
        context.model,
        context.train_set,
        num_samples=settings["num_samples"],
        update_freq=settings["update_freq"],
        method=settings["fisher_method"],
        seed=context.seed,
        selection=context.selection,
    ),
    checks=(_check_fisher_pass,),
)

SSAM_D_METHOD = MethodSpec(
    "ssam_d",
    "SSAM-D",
    SPARSE,
    "Sparse SAM with the dynamic sparse mask (SSAM-D, Mi et al., 2022)",
    own_settings={
        "drop_rate": Setting(
            0.5, in_range(0.0, 1.0), "d₀ of the cosine drop-rate schedule d(e) = d₀(1 + cos(πe/T))/2"
        ),
        "drop": Setting("gradient", one_of(*SCORES), "score whose lowest active entries are dropped"),
        "growth": Setting("random", one_of(*SCORES), "score whose highest inactive entries are grown"),
    },
    mask=lambda context, settings: DynamicMask(
        total_epochs=context.epochs,
        drop_rate=settings["drop_rate"],
        update_freq=settings["update_freq"],
        drop=settings["drop"],
        growth=settings["growth"],
        seed=context.seed,
        selection=context.selection,
    ),
    records=("drop_rate",),
)

METHODS: dict[str, MethodSpec] = {
    method.name: method for method in (SGD_METHOD, SAM_METHOD, SSAM_F_METHOD, SSAM_D_METHOD)
}


def method_named(name: str) -> MethodSpec:
    return named(METHODS, name, group="optimizer")


def ignored_settings(optimizer: str) -> set[str]:
    """The top-level settings the optimizer does not read, such as sparsity for SAM and ρ for SGD
    (none for an optimizer not declared)."""
    if optimizer not in METHODS:
        return set()
    read = {setting.reads for setting in METHODS[optimizer].settings.values()}
    return {knob for knob in OPTIMIZER_KNOBS if knob not in read}


def run_variant(summary: Mapping[str, Any]) -> str:
    """What makes a run, by its summary.json, another method than its optimizer's own: the
    recorded variant settings that differ from their defaults, and mixed precision; "" for
    none. Tables give each variant a column of its own."""
    method = METHODS.get(summary["optimizer"])
    parts = [method.variant(summary, world_size=summary.get("world_size", 1))] if method else []
    if summary.get("amp", "none") != "none":
        parts.append(f"amp={summary['amp']}")
    return ", ".join(part for part in parts if part)


def build_tensor_selection(
    model: torch.nn.Module, train_set: Dataset, *, tensor_score: str, ascent_cost: float | str
) -> TensorSelection:
    """Whole-tensor selection, with the backward-cost model measured on one training example."""
    params = [p for p in model.parameters() if p.requires_grad]
    example = torch.as_tensor(train_set[0][0]).unsqueeze(0).to(params[0].device)
    cost = estimate_backward_cost(model, params, example)
    return TensorSelection(reduce=tensor_score, cost=cost, ascent_cost=ascent_cost)


def build_mask_strategy(
    name: str, model: torch.nn.Module, train_set: Dataset, *, epochs: int, seed: int, **settings: Any
) -> MaskStrategy:
    """The mask strategy of Sparse SAM method ``name``; ``settings`` are its own (optimizer.<key>),
    the declared defaults for those not given."""
    method = method_named(name)
    if method.mask is None:
        sparse = [m.name for m in METHODS.values() if m.mask is not None]
        raise ValueError(f"no mask strategy for optimizer {name!r}; those with one: {', '.join(sparse)}")
    settings = method.with_defaults(settings)
    selection = None
    if settings["granularity"] == "tensor":
        selection = build_tensor_selection(
            model, train_set, tensor_score=settings["tensor_score"], ascent_cost=settings["ascent_cost"]
        )
    return method.mask(MaskContext(model, train_set, epochs, seed, selection), settings)


def build_optimizer(
    name: str, model: torch.nn.Module, *, mask_strategy: MaskStrategy | None = None, **settings: Any
) -> torch.optim.Optimizer:
    """Method ``name``'s optimizer over the model's trainable parameters: SGD, or SGD as the base
    optimizer of SAM / Sparse SAM. ``settings`` are the method's (optimizer.<key>); those that
    read a top-level setting (lr, weight_decay, rho, sparsity) must be given, the others default
    as declared."""
    method = method_named(name)
    params = [p for p in model.parameters() if p.requires_grad]
    return method.build(params, method.with_defaults(settings), mask_strategy)
