"""The optimizers of ``optimizer=<name>``, each declared once as a ``MethodSpec``.

A method is of one of three kinds, and its kind brings the settings, checks, optimizer and
records that every method of the kind shares:
- ``SGD_KIND``: one forward-backward per step;
- ``SHARPNESS_AWARE``: SAM's two passes, the descent gradient taken at w + ε;
- ``SPARSE``: Sparse SAM, whose ε is masked; the method says how its mask is chosen.
A method adds its label, its own settings and checks and, for Sparse SAM, the mask strategy.
Everything else (the validator, Hydra's config group, the trainer, sweeps, tables, plots and
the settings reference) reads these declarations. Adding a method: docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ssam.optim import SAM, SSAM, DynamicMask, FisherMask, TensorSelection, estimate_backward_cost
from ssam.optim.fisher import FISHER_METHODS
from ssam.optim.masks import SCORES
from ssam.optim.ssam import NORMS, MaskStrategy
from ssam.optim.tensor_selection import TENSOR_SCORES
from ssam.settings import (
    BOOLEAN,
    FRACTION,
    POSITIVE_INT,
    Check,
    Setting,
    above,
    at_least,
    in_range,
    is_number,
    one_of,
    optional,
    with_defaults,
)
from ssam.train.errors import ConfigError
from ssam.train.loop import BN_STATS, PERTURBATIONS

# How a variant setting names itself in a table's column, e.g. "ascent_fraction=0.25".
KEY_EQUALS_VALUE = "{key}={value}"


@dataclass(frozen=True)
class MaskContext:
    """What a mask strategy may read besides its settings."""

    model: torch.nn.Module
    train_set: Dataset
    epochs: int
    seed: int
    # Whole-tensor masks (optimizer.granularity=tensor) choose with this; None: entry-wise.
    selection: TensorSelection | None


OptimizerBuilder = Callable[
    [list[torch.nn.Parameter], Mapping[str, Any], "MaskStrategy | None"], torch.optim.Optimizer
]
MaskBuilder = Callable[[MaskContext, Mapping[str, Any]], MaskStrategy]
ConfigCheck = Callable[[DictConfig], None]


@dataclass(frozen=True)
class Kind:
    """What the methods of one kind share."""

    name: str
    settings: Mapping[str, Setting]
    optimizer: OptimizerBuilder
    check: ConfigCheck
    records: Callable[[Mapping[str, Any]], dict[str, Any]]  # of its settings, for summary.json


@dataclass(frozen=True)
class MethodSpec:
    """One ``optimizer=<name>``."""

    name: str
    label: str  # in tables and plots
    kind: Kind
    description: str  # one line, for the settings reference
    own_settings: Mapping[str, Setting] = field(default_factory=dict)  # after the kind's
    mask: MaskBuilder | None = None  # Sparse SAM: builds the mask strategy
    # Builds the optimizer in place of its kind's (a SAM flavour of one's own: a subclass of SAM).
    optimizer: OptimizerBuilder | None = None
    checks: tuple[ConfigCheck, ...] = ()  # across settings, or with the rest of the config
    records: tuple[str, ...] = ()  # own settings that summary.json records

    def __post_init__(self) -> None:
        if (self.mask is None) == (self.kind is SPARSE):
            raise ValueError(f"method {self.name!r}: a Sparse SAM method, and only one, declares its mask")
        shared = set(self.kind.settings) & set(self.own_settings)
        if shared:
            raise ValueError(f"method {self.name!r} declares {', '.join(shared)}, which its kind declares")

    @property
    def settings(self) -> dict[str, Setting]:
        return {**self.kind.settings, **self.own_settings}

    def check(self, cfg: DictConfig) -> None:
        self.kind.check(cfg)
        for check in self.checks:
            check(cfg)

    def with_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        return with_defaults(self.settings, given, what=f"optimizer {self.name!r}")

    def build(self, params: list[torch.nn.Parameter], settings: Mapping[str, Any], mask: MaskStrategy | None):
        missing = [key for key, setting in self.settings.items() if setting.reads and key not in settings]
        if missing:
            raise TypeError(f"optimizer {self.name!r} needs {', '.join(missing)}")
        return (self.optimizer or self.kind.optimizer)(params, settings, mask)

    def recorded(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The settings summary.json records (tables tell methods and variants apart by them)."""
        return {**self.kind.records(settings), **{key: settings[key] for key in self.records}}

    def variant(self, recorded: Mapping[str, Any], *, world_size: int = 1) -> str:
        """The recorded variant settings that differ from their defaults, e.g. "tensor, masked
        norm": a column of its own in tables. Perturbation global and local are the same on one
        process."""
        parts = []
        for key, setting in self.settings.items():
            value = recorded.get(key)
            if not setting.variant or value is None or value == setting.default:
                continue
            if key == "perturbation" and world_size == 1:
                continue
            parts.append(setting.variant.format(key=key, value=value))
        return ", ".join(parts)


# --- SGD ----------------------------------------------------------------------------------------


def base_sgd_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The base SGD's keyword arguments, from a method's settings."""
    return {key: settings[key] for key in ("lr", "momentum", "weight_decay", "nesterov")}


def _check_sgd(cfg: DictConfig) -> None:
    if cfg.optimizer.nesterov and cfg.optimizer.momentum == 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0, got 0")


SGD_SETTINGS = {
    "lr": Setting("${lr}", above(0), "peak learning rate of the base SGD"),
    "momentum": Setting(0.9, in_range(0.0, 1.0, high_open=True), "momentum of the base SGD"),
    "nesterov": Setting(False, BOOLEAN, "Nesterov momentum (needs momentum > 0)"),
    "weight_decay": Setting("${weight_decay}", at_least(0), "L2 weight decay, applied inside the base SGD"),
}

SGD_KIND = Kind(
    name="sgd",
    settings=SGD_SETTINGS,
    optimizer=lambda params, settings, _: torch.optim.SGD(params, **base_sgd_options(settings)),
    check=_check_sgd,
    records=lambda settings: {},
)

# --- SAM ----------------------------------------------------------------------------------------


def _check_sharpness_aware(cfg: DictConfig) -> None:
    _check_sgd(cfg)
    optimizer = cfg.optimizer
    if optimizer.m is not None and optimizer.ascent_fraction != 1:
        raise ConfigError(
            "optimizer.m (each shard of m examples climbs its own ε) and optimizer.ascent_fraction "
            f"< 1 (one ε from part of the batch) are two different methods: set one, got m={optimizer.m}, "
            f"ascent_fraction={optimizer.ascent_fraction}"
        )


def sam_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's keyword arguments (ρ, adaptive, and the base SGD's), from a method's settings."""
    return {"rho": settings["rho"], "adaptive": settings["adaptive"], **base_sgd_options(settings)}


def _sharpness_aware_records(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: settings[key] for key in ("ascent_fraction", "perturbation", "sam_from", "m", "adaptive")}


SHARPNESS_AWARE_SETTINGS = {
    **SGD_SETTINGS,
    "rho": Setting("${rho}", at_least(0), "neighbourhood radius ρ"),
    "adaptive": Setting(
        False, BOOLEAN, "true: ASAM (Kwon et al., 2021), perturbation scaled by |w|", variant=KEY_EQUALS_VALUE
    ),
    "ascent_fraction": Setting(
        1.0,
        in_range(0.0, 1.0, low_open=True),
        "ascent gradient from this first fraction of each batch, one ε for all of it; 1.0 = all",
        variant=KEY_EQUALS_VALUE,
    ),
    "m": Setting(
        None,
        optional(POSITIVE_INT),
        "m-sharpness: each shard of m examples climbs its own ε (null: the whole batch climbs one)",
        variant=KEY_EQUALS_VALUE,
    ),
    "sam_from": Setting(
        0.0,
        FRACTION,
        "late-phase SAM: plain SGD steps for this first fraction of training, then sharpness-aware",
        variant=KEY_EQUALS_VALUE,
    ),
    "bn_stats": Setting(
        "ascent",
        one_of(*BN_STATS),
        "which pass updates BatchNorm running statistics (both: not advised)",
    ),
    "perturbation": Setting(
        "global",
        one_of(*PERTURBATIONS),
        "data-parallel: ascent gradient averaged over processes (global) or each its own (local)",
        variant=KEY_EQUALS_VALUE,
    ),
}

SHARPNESS_AWARE = Kind(
    name="sharpness-aware",
    settings=SHARPNESS_AWARE_SETTINGS,
    optimizer=lambda params, settings, _: SAM(params, torch.optim.SGD, **sam_options(settings)),
    check=_check_sharpness_aware,
    records=_sharpness_aware_records,
)

# --- Sparse SAM ---------------------------------------------------------------------------------

GRANULARITIES = ("element", "tensor")
ASCENT_COST = Check(
    lambda value: value == "auto" or is_number(value) and 0 < value <= 1,
    "auto or in (0, 1]",
    "`auto` or (0, 1]",
)


def _sparse_records(settings: Mapping[str, Any]) -> dict[str, Any]:
    recorded = {
        **_sharpness_aware_records(settings),
        "granularity": settings["granularity"],
        "norm": settings["norm"],
    }
    if settings["granularity"] == "tensor":  # the whole-tensor settings mean nothing to entry-wise masks
        recorded |= {"tensor_score": settings["tensor_score"], "ascent_cost": settings["ascent_cost"]}
    return recorded


SPARSE_SETTINGS = {
    **SHARPNESS_AWARE_SETTINGS,
    "sparsity": Setting("${sparsity}", FRACTION, "fraction of weights NOT perturbed"),
    "granularity": Setting(
        "element",
        one_of(*GRANULARITIES),
        "element: the paper's entry-wise mask; tensor: whole tensors (the ascent skips the rest)",
        variant="{value}",
    ),
    "norm": Setting(
        "full",
        one_of(*NORMS),
        "ε = ρ·(m⊙g)/‖g‖ as the paper's code (full), or ρ·(m⊙g)/‖m⊙g‖ (masked: needed for speed)",
        variant="{value} norm",
    ),
    "tensor_score": Setting(
        "sum",
        one_of(*TENSOR_SCORES),
        "granularity=tensor: a tensor's score is its entries' sum or mean",
        variant=KEY_EQUALS_VALUE,
    ),
    "ascent_cost": Setting(
        "auto",
        ASCENT_COST,
        "granularity=tensor: most the ascent backward may cost, as a share of a full one; auto = (1−s)/2",
        variant=KEY_EQUALS_VALUE,
    ),
    "update_freq": Setting(1, POSITIVE_INT, "refresh the mask every this many epochs"),
}

SPARSE = Kind(
    name="sparse",
    settings=SPARSE_SETTINGS,
    optimizer=lambda params, settings, mask: SSAM(
        params,
        torch.optim.SGD,
        sparsity=settings["sparsity"],
        norm=settings["norm"],
        mask_strategy=mask,
        **sam_options(settings),
    ),
    check=_check_sharpness_aware,
    records=_sparse_records,
)


def build_tensor_selection(
    model: torch.nn.Module, train_set: Dataset, *, tensor_score: str, ascent_cost: float | str
) -> TensorSelection:
    """Whole-tensor selection, with the backward-cost model measured on one training example."""
    params = [p for p in model.parameters() if p.requires_grad]
    example = torch.as_tensor(train_set[0][0]).unsqueeze(0).to(params[0].device)
    cost = estimate_backward_cost(model, params, example)
    return TensorSelection(reduce=tensor_score, cost=cost, ascent_cost=ascent_cost)


# --- the methods --------------------------------------------------------------------------------


def _check_fisher_samples(cfg: DictConfig) -> None:
    optimizer = cfg.optimizer
    if cfg.trainer.sync_batchnorm and optimizer.fisher_method != "loop":
        raise ConfigError(
            "trainer.sync_batchnorm=true with optimizer=ssam_f needs optimizer.fisher_method=loop "
            f"(vmap cannot run SyncBatchNorm), got {optimizer.fisher_method!r}"
        )
    train_size = cfg.dataset.train_size
    if train_size is not None and optimizer.num_samples > train_size:
        raise ConfigError(
            f"optimizer.num_samples ({optimizer.num_samples}) is larger than dataset.train_size ({train_size})"
        )


SGD_METHOD = MethodSpec("sgd", "SGD", SGD_KIND, "SGD with momentum; weight decay inside the optimizer")

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
    checks=(_check_fisher_samples,),
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


def run_variant(summary: Mapping[str, Any]) -> str:
    """What makes a run, by its summary.json, another method than its optimizer's own: the
    recorded variant settings that differ from their defaults, and mixed precision; "" for
    none. Tables give each variant a column of its own."""
    method = METHODS.get(summary["optimizer"])
    parts = [method.variant(summary, world_size=summary.get("world_size", 1))] if method else []
    if summary.get("amp", "none") != "none":
        parts.append(f"amp={summary['amp']}")
    return ", ".join(part for part in parts if part)


def method_named(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"optimizer must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


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
    """MethodSpec ``name``'s optimizer over the model's trainable parameters: SGD, or SGD as the base
    optimizer of SAM / Sparse SAM. ``settings`` are the method's (optimizer.<key>); those that
    read a top-level setting (lr, weight_decay, rho, sparsity) must be given, the others default
    as declared."""
    method = method_named(name)
    params = [p for p in model.parameters() if p.requires_grad]
    return method.build(params, method.with_defaults(settings), mask_strategy)
