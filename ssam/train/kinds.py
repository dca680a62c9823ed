"""What an ``optimizer=<name>`` is: a ``MethodSpec``, of one of three kinds.

A kind brings the settings, checks, optimizer and records that every method of the kind shares,
and adds them to its parent kind's:
- ``SGD``: one forward-backward per step;
- ``SHARPNESS_AWARE`` (adds to SGD's): SAM's two passes, the descent gradient taken at w + ε;
- ``SPARSE`` (adds to SAM's): Sparse SAM, whose ε is masked; the method says how its mask is
  chosen.
A method adds its label, its own settings and checks and, for Sparse SAM, the mask strategy.
The built-in methods are in ssam/train/methods.py; adding one: docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ssam.errors import ConfigError
from ssam.optim import SAM, SSAM, TensorSelection
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
    refuse_taken_names,
    with_defaults,
)
from ssam.train.loop import BN_STATS, PERTURBATIONS

# How a variant setting names itself in a table's column, e.g. "ascent_fraction=0.25".
KEY_EQUALS_VALUE = "{key}={value}"
# A method's own settings cannot take these names: the config's, and the mask builder's.
RESERVED_NAMES = ("name", "epochs", "seed", "mask_strategy")


@dataclass(frozen=True)
class MaskContext:
    """What a mask strategy may read besides its settings."""

    model: torch.nn.Module
    train_set: Dataset
    epochs: int
    seed: int
    # Whole-tensor masks (optimizer.granularity=tensor) choose with this; None: entry-wise.
    selection: TensorSelection | None


Settings = Mapping[str, Any]
OptimizerBuilder = Callable[
    [list[torch.nn.Parameter], Settings, "MaskStrategy | None"], torch.optim.Optimizer
]
MaskBuilder = Callable[[MaskContext, Settings], MaskStrategy]
# A check across settings: it reads the whole config, resolved into plain dictionaries.
ConfigCheck = Callable[[Mapping[str, Any]], None]


def _no_check(config: Mapping[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class Kind:
    """What the methods of one kind share, on top of what its parent kind's share."""

    name: str
    added_settings: Mapping[str, Setting]
    optimizer: OptimizerBuilder
    check: ConfigCheck = _no_check
    records: Callable[[Settings], dict[str, Any]] = lambda settings: {}  # for summary.json
    parent: Kind | None = None

    @property
    def lineage(self) -> list[Kind]:
        """This kind, its parent, and so on up."""
        return [self, *(self.parent.lineage if self.parent else [])]

    @property
    def settings(self) -> dict[str, Setting]:
        """Every setting of the kind, its parent's first."""
        return {key: s for kind in reversed(self.lineage) for key, s in kind.added_settings.items()}

    def check_config(self, config: Mapping[str, Any]) -> None:
        for kind in reversed(self.lineage):
            kind.check(config)

    def recorded(self, settings: Settings) -> dict[str, Any]:
        return {
            key: value for kind in reversed(self.lineage) for key, value in kind.records(settings).items()
        }


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
    # Own settings that summary.json records besides the variant ones, which it always records.
    records: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.mask is None) == self.sparse:
            raise ValueError(f"method {self.name!r}: a Sparse SAM method, and only one, declares its mask")
        refuse_taken_names(
            f"method {self.name!r}",
            self.own_settings,
            f"its kind's settings or {', '.join(RESERVED_NAMES)}",
            [*self.kind.settings, *RESERVED_NAMES],
        )

    @property
    def settings(self) -> dict[str, Setting]:
        return {**self.kind.settings, **self.own_settings}

    @property
    def sparse(self) -> bool:
        """A Sparse SAM method (of the kind SPARSE, or of one made from it)."""
        return SPARSE in self.kind.lineage

    def check(self, config: Mapping[str, Any]) -> None:
        self.kind.check_config(config)
        for check in self.checks:
            check(config)

    def with_defaults(self, given: Settings) -> dict[str, Any]:
        return with_defaults(self.settings, given, what=f"optimizer {self.name!r}")

    def build(self, params: list[torch.nn.Parameter], settings: Settings, mask: MaskStrategy | None):
        missing = [key for key, setting in self.settings.items() if setting.reads and key not in settings]
        if missing:
            raise TypeError(f"optimizer {self.name!r} needs {', '.join(missing)}")
        return (self.optimizer or self.kind.optimizer)(params, settings, mask)

    def recorded(self, settings: Settings) -> dict[str, Any]:
        """The settings summary.json records (tables tell methods and variants apart by them)."""
        own = [key for key, setting in self.own_settings.items() if setting.variant or key in self.records]
        return {**self.kind.recorded(settings), **{key: settings[key] for key in own}}

    def variant(self, recorded: Settings, *, world_size: int = 1) -> str:
        """The recorded variant settings that differ from their defaults, the most specific
        first (the method's own, then its kind's, then the parent kind's), e.g. "tensor, masked
        norm": a column of its own in tables."""
        layers = [self.own_settings, *(kind.added_settings for kind in self.kind.lineage)]
        parts = []
        for settings in layers:
            for key, setting in settings.items():
                value = recorded.get(key)
                if not setting.variant or value is None or value == setting.default:
                    continue
                if setting.alike_on_one_process and world_size == 1:
                    continue
                parts.append(setting.variant.format(key=key, value=value))
        return ", ".join(parts)


def sgd_options(settings: Settings) -> dict[str, Any]:
    """The base SGD's keyword arguments, from a method's settings."""
    return {key: settings[key] for key in ("lr", "momentum", "weight_decay", "nesterov")}


def sam_options(settings: Settings) -> dict[str, Any]:
    """SAM's keyword arguments (ρ, adaptive, and the base SGD's), from a method's settings."""
    return {"rho": settings["rho"], "adaptive": settings["adaptive"], **sgd_options(settings)}


# --- SGD ----------------------------------------------------------------------------------------


def _check_nesterov(config: Mapping[str, Any]) -> None:
    optimizer = config["optimizer"]
    if optimizer["nesterov"] and optimizer["momentum"] == 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0, got 0")


SGD = Kind(
    name="sgd",
    added_settings={
        "lr": Setting("${lr}", above(0), "peak learning rate of the base SGD"),
        "momentum": Setting(0.9, in_range(0.0, 1.0, high_open=True), "momentum of the base SGD"),
        "nesterov": Setting(False, BOOLEAN, "Nesterov momentum (needs momentum > 0)"),
        "weight_decay": Setting(
            "${weight_decay}", at_least(0), "L2 weight decay, applied inside the base SGD"
        ),
    },
    optimizer=lambda params, settings, _: torch.optim.SGD(params, **sgd_options(settings)),
    check=_check_nesterov,
)

# --- SAM ----------------------------------------------------------------------------------------


def _check_one_climb_per_shard(config: Mapping[str, Any]) -> None:
    optimizer = config["optimizer"]
    if optimizer["m"] is not None and optimizer["ascent_fraction"] != 1:
        raise ConfigError(
            "optimizer.m (each shard of m examples climbs its own ε) and optimizer.ascent_fraction "
            f"< 1 (one ε from part of the batch) are two different methods: set one, got m={optimizer['m']}, "
            f"ascent_fraction={optimizer['ascent_fraction']}"
        )


SHARPNESS_AWARE = Kind(
    name="sharpness-aware",
    parent=SGD,
    added_settings={
        "rho": Setting("${rho}", at_least(0), "neighbourhood radius ρ"),
        "adaptive": Setting(
            False,
            BOOLEAN,
            "true: ASAM (Kwon et al., 2021), perturbation scaled by |w|",
            variant=KEY_EQUALS_VALUE,
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
            "ascent", one_of(*BN_STATS), "which pass updates BatchNorm running statistics (both: not advised)"
        ),
        "perturbation": Setting(
            "global",
            one_of(*PERTURBATIONS),
            "data-parallel: ascent gradient averaged over processes (global) or each its own (local)",
            variant=KEY_EQUALS_VALUE,
            alike_on_one_process=True,
        ),
    },
    optimizer=lambda params, settings, _: SAM(params, torch.optim.SGD, **sam_options(settings)),
    check=_check_one_climb_per_shard,
    records=lambda settings: {
        key: settings[key] for key in ("ascent_fraction", "perturbation", "sam_from", "m", "adaptive")
    },
)

# --- Sparse SAM ---------------------------------------------------------------------------------

GRANULARITIES = ("element", "tensor")
ASCENT_COST = Check(
    lambda value: value == "auto" or (is_number(value) and 0 < value <= 1),
    "auto or in (0, 1]",
    "`auto` or (0, 1]",
)


def _sparse_records(settings: Settings) -> dict[str, Any]:
    recorded = {"granularity": settings["granularity"], "norm": settings["norm"]}
    if settings["granularity"] == "tensor":  # the whole-tensor settings mean nothing to entry-wise masks
        recorded |= {"tensor_score": settings["tensor_score"], "ascent_cost": settings["ascent_cost"]}
    return recorded


SPARSE = Kind(
    name="sparse",
    parent=SHARPNESS_AWARE,
    added_settings={
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
    },
    optimizer=lambda params, settings, mask: SSAM(
        params,
        torch.optim.SGD,
        sparsity=settings["sparsity"],
        norm=settings["norm"],
        mask_strategy=mask,
        **sam_options(settings),
    ),
    records=_sparse_records,
)
