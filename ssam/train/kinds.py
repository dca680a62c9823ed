"""What an ``optimizer=<name>`` is: a subclass of ``Method``, declaration and behaviour in one.

A method class declares, as class attributes, its name, label and settings (with defaults, checks
and help), and says, in methods, what it builds and what it does: its training step, what happens
at epoch and step boundaries, what it records and what it keeps in the checkpoint. The trainer
builds one instance per run and calls it; it never asks which method it runs.

Three methods here are the bases the others extend by ordinary inheritance:
- ``Method``: plain SGD, one forward-backward per step;
- ``SharpnessAwareMethod``: SAM's two passes, the descent gradient taken at w + ε, with what
  every sharpness-aware method shares (late phase, ascent_fraction, m-sharpness, ASAM);
- ``SparseSAMMethod``: Sparse SAM, whose ε is masked; a subclass says how its mask is chosen.
The built-in methods are in ssam/train/methods.py; adding one: docs/extending.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from ssam.errors import ConfigError
from ssam.optim import SAM, SSAM, TensorSelection, estimate_backward_cost
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
from ssam.train.distributed import SINGLE_PROCESS, MasksFromMain, Replicas
from ssam.train.metrics import JsonLines
from ssam.train.passes import BN_STATS, PERTURBATIONS, Passes, StepResult
from ssam.train.progress import Metric, Total, ratio
from ssam.train.steps import (
    PERTURBATION_NORM_SUM,
    SHARPNESS_AWARE_STEPS,
    SharpnessAwareOptions,
    sgd_step,
    sharpness_aware_step,
)

# How a variant setting names itself in a table's column, e.g. "ascent_fraction=0.25".
KEY_EQUALS_VALUE = "{key}={value}"
# A method's settings cannot take these names: the config's own, and the mask builder's.
RESERVED_NAMES = ("name", "epochs", "seed", "mask_strategy")
# The top-level settings that exist to feed the optimizer's (``${lr}``): a method none of whose
# settings follows one ignores it, and a sweep over it runs that method once.
OPTIMIZER_KNOBS = ("lr", "weight_decay", "rho", "sparsity")

# A method's values of its settings (``settings`` are their declarations).
SettingValues = Mapping[str, Any]
# Opens one of the run directory's JSON-lines files by name (None off the main process).
OpenLines = Callable[[str], "JsonLines | None"]


@dataclass(frozen=True)
class RunContext:
    """What a method is built from, besides its settings."""

    model: torch.nn.Module  # the plain module (not under DDP): its parameters are the optimizer's
    train_set: Dataset
    epochs: int
    steps_per_epoch: int
    seed: int
    replicas: Replicas = SINGLE_PROCESS
    # The indices in ``train_set`` of this process's batch at a step (counted from the start of
    # training), as the loader yields them: for a method that keeps something per example. None
    # where the batches do not come from the trainer's sampler (a loop of one's own).
    batch_positions: Callable[[int], torch.Tensor] | None = None

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class MaskContext:
    """What a mask strategy may read besides its settings."""

    model: torch.nn.Module
    train_set: Dataset
    epochs: int
    seed: int
    # Whole-tensor masks (optimizer.granularity=tensor) choose with this; None: entry-wise.
    selection: TensorSelection | None


def require_settings(config: Mapping[str, Any], required: Mapping[str, Any], why: str) -> None:
    """Refuse (ConfigError) an optimizer setting other than its ``required`` value, saying ``why``."""
    optimizer = config["optimizer"]
    for key, value in required.items():
        if optimizer[key] != value:
            wanted = "null" if value is None else value
            raise ConfigError(
                f"optimizer={optimizer['name']} needs optimizer.{key}={wanted} ({why}), got {optimizer[key]}"
            )


# What a method that uses the ascent gradient g beyond the climb needs: g is the whole batch's
# gradient at w, the same on every process.
WHOLE_BATCH_GRADIENT = {"m": None, "ascent_fraction": 1.0, "perturbation": "global"}


def without(settings: Mapping[str, Setting], *keys: str) -> dict[str, Setting]:
    """``settings`` less ``keys``: for a method that ignores settings of the class it extends
    (the sparsity of a mask that is structural), which then leaves them out of its records,
    run names and table column."""
    return {key: setting for key, setting in settings.items() if key not in keys}


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def sgd_options(values: SettingValues) -> dict[str, Any]:
    """The base SGD's keyword arguments, from a method's values of its settings."""
    return {key: values[key] for key in ("lr", "momentum", "weight_decay", "nesterov")}


def sam_options(values: SettingValues) -> dict[str, Any]:
    """SAM's keyword arguments (ρ, adaptive, and the base SGD's), from a method's values of its settings."""
    return {"rho": values["rho"], "adaptive": values["adaptive"], **sgd_options(values)}


def sparse_sam_options(method: str, values: SettingValues, mask: MaskStrategy | None) -> dict[str, Any]:
    """SSAM's keyword arguments (its mask strategy, sparsity and norm, and SAM's), from Sparse SAM
    method ``method``'s values of its settings."""
    if mask is None:
        raise TypeError(f"optimizer {method!r} needs a mask strategy")
    # A method whose mask is structural declares no sparsity: its strategy ignores it.
    sparsity = values.get("sparsity", 0.0)
    return {"sparsity": sparsity, "norm": values["norm"], "mask_strategy": mask, **sam_options(values)}


def _method_classes(method: type[Method]) -> list[type[Method]]:
    """``method``, its parent method class, and so on up to ``Method``."""
    return [klass for klass in method.__mro__ if isinstance(klass, type) and issubclass(klass, Method)]


class Method:
    """Plain SGD with momentum, weight decay inside the optimizer, and the base of every method.

    A subclass sets ``name``, ``label`` and ``description``, extends ``settings`` (a dictionary
    of ``Setting``, its parent's first: ``{**Parent.settings, "key": Setting(...)}``), and
    overrides the methods below that it does differently, calling ``super()`` where it adds to
    its parent's behaviour."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # in tables and plots
    description: ClassVar[str] = ""  # one line, for the settings reference
    settings: ClassVar[dict[str, Setting]] = {
        "lr": Setting("${lr}", above(0), "peak learning rate of the base SGD"),
        "momentum": Setting(0.9, in_range(0.0, 1.0, high_open=True), "momentum of the base SGD"),
        "nesterov": Setting(False, BOOLEAN, "Nesterov momentum (needs momentum > 0)"),
        "weight_decay": Setting(
            "${weight_decay}", at_least(0), "L2 weight decay, applied inside the base SGD"
        ),
    }
    # Settings summary.json records besides the variant ones, which it always records.
    summary_settings: ClassVar[tuple[str, ...]] = ()
    # Running totals its steps add to, and the per-epoch metrics it adds (ssam/train/progress.py).
    totals: ClassVar[tuple[Total, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()

    # --- the declaration: read without a run (validation, Hydra, sweeps, tables) ------------

    @classmethod
    def check_declaration(cls) -> None:
        """Refuse a class that cannot be an ``optimizer=<name>`` (ssam.registry.register)."""
        if not cls.name or not cls.label:
            raise ValueError(f"method class {cls.__name__} needs a name and a label")
        refuse_taken_names(
            f"method {cls.name!r}", cls.settings, "the config and the mask builder", RESERVED_NAMES
        )

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        """Checks across settings, or with the rest of the config (resolved into plain
        dictionaries), after each setting's own check; raise ConfigError. Extend with super()."""
        optimizer = config["optimizer"]
        if optimizer["nesterov"] and optimizer["momentum"] == 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0, got 0")

    @classmethod
    def advice(cls, values: SettingValues) -> list[str]:
        """Notes for the console at the start of a run with these settings."""
        return []

    @classmethod
    def with_defaults(cls, given: SettingValues) -> dict[str, Any]:
        return with_defaults(cls.settings, given, what=f"optimizer {cls.name!r}")

    @classmethod
    def complete_settings(cls, given: SettingValues) -> dict[str, Any]:
        """``given`` and the declared default of every other setting, for building: the settings
        that follow a top-level one (lr, weight_decay, rho, sparsity) have no default of their
        own, and a missing one is a TypeError."""
        missing = [key for key, setting in cls.settings.items() if setting.follows and key not in given]
        if missing:
            raise TypeError(f"optimizer {cls.name!r} needs {', '.join(missing)}")
        return cls.with_defaults(given)

    @classmethod
    def ignored_knobs(cls) -> set[str]:
        """The top-level optimizer knobs none of its settings follows (sparsity for SAM)."""
        followed = {setting.follows for setting in cls.settings.values()}
        return {knob for knob in OPTIMIZER_KNOBS if knob not in followed}

    @classmethod
    def recorded_settings(cls, values: SettingValues) -> dict[str, Any]:
        """The settings summary.json records: tables tell methods and variants apart by them."""
        return {
            key: values[key]
            for key, setting in cls.settings.items()
            if setting.variant or key in cls.summary_settings
        }

    @classmethod
    def variant(cls, recorded: SettingValues, *, world_size: int = 1) -> str:
        """The recorded variant settings that differ from this method's defaults, the most
        specific first (this class's own, then its parent's, and so on), e.g. "tensor, masked
        norm": a column of its own in tables."""
        parts = []
        for klass in _method_classes(cls):
            for key in klass.settings:
                if key in _inherited(klass) or key not in cls.settings:
                    continue
                setting, value = cls.settings[key], recorded.get(key)
                if not setting.variant or value is None or value == setting.default:
                    continue
                if setting.alike_on_one_process and world_size == 1:
                    continue
                parts.append(setting.variant.format(key=key, value=value))
        return ", ".join(parts)

    @classmethod
    def build_optimizer(
        cls, params: list[torch.nn.Parameter], values: SettingValues, mask: MaskStrategy | None = None
    ) -> torch.optim.Optimizer:
        """The optimizer over ``params``; ``mask`` is Sparse SAM's mask strategy."""
        return torch.optim.SGD(params, **sgd_options(values))

    # --- the behaviour: one instance per run ----------------------------------------------

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        self.values = self.complete_settings(values)  # this run's value of each setting
        self.run = run
        self.optimizer = self.build_run_optimizer()

    def build_run_optimizer(self) -> torch.optim.Optimizer:
        """This run's optimizer, over the model's trainable parameters."""
        return self.build_optimizer(trainable_parameters(self.run.model), self.values)

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose ``step()`` moves the weights, which the schedule drives."""
        return self.optimizer

    @property
    def passes_per_step(self) -> float:
        """Forward-backward passes over the whole batch in one step, on average over training
        (mask refreshes not counted): SGD's 1."""
        return 1.0

    def start_epoch(self, epoch: int) -> None:
        """Called when epoch ``epoch`` (0-based) starts, not when a run resumes within it."""

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        """One optimizer step on the batch; ``index`` counts the steps from the start of
        training (0-based). Raise nothing on a non-finite pass: ``passes.check`` does, and the
        trainer skips or stops (after ``abandon_step``)."""
        return sgd_step(passes, self.base_optimizer, inputs, targets)

    def abandon_step(self) -> None:
        """A pass of the step failed: leave the weights as they were before it."""

    def open_records(self, open_lines: OpenLines) -> None:
        """Open the JSON-lines files it writes in the run directory (after a resume's state is
        loaded: drop the records it is about to write again). Off the main process
        ``open_lines`` gives None: write nothing there."""

    def after_step(self, epoch: int) -> None:
        """Called after every step, before any checkpoint: write what the step changed."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (the optimizer's state with it)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def _inherited(klass: type[Method]) -> dict[str, Setting]:
    """The settings ``klass`` has from its parent method classes (one, or the two a combination
    of methods extends; {} for ``Method``)."""
    parents = [base for base in klass.__bases__ if issubclass(base, Method)]
    return {key: setting for parent in parents for key, setting in parent.settings.items()}


class SharpnessAwareMethod(Method):
    """SAM (Foret et al., 2021) over SGD: ascent pass at w, climb to w + ε, descent pass there,
    step. Every sharpness-aware method shares what this class adds: ASAM, late-phase SAM
    (``sam_from``), the ascent on part of the batch (``ascent_fraction``) and m-sharpness."""

    settings = {
        **Method.settings,
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
    }
    totals = (Total(SHARPNESS_AWARE_STEPS, int), Total(PERTURBATION_NORM_SUM, float))
    metrics = (
        # Mean ‖ε‖ over the epoch's sharpness-aware steps (None without any).
        Metric(
            "perturbation_norm",
            lambda _, totals: ratio(totals[PERTURBATION_NORM_SUM], totals[SHARPNESS_AWARE_STEPS]),
        ),
        Metric("sharpness_aware_steps", lambda _, totals: totals[SHARPNESS_AWARE_STEPS], summary="sum"),
    )

    @classmethod
    def check_settings(cls, config: Mapping[str, Any]) -> None:
        super().check_settings(config)
        optimizer = config["optimizer"]
        if optimizer["m"] is not None and optimizer["ascent_fraction"] != 1:
            raise ConfigError(
                "optimizer.m (each shard of m examples climbs its own ε) and optimizer.ascent_fraction "
                f"< 1 (one ε from part of the batch) are two different methods: set one, got "
                f"m={optimizer['m']}, ascent_fraction={optimizer['ascent_fraction']}"
            )

    @classmethod
    def build_optimizer(
        cls, params: list[torch.nn.Parameter], values: SettingValues, mask: MaskStrategy | None = None
    ) -> SAM:
        return SAM(params, torch.optim.SGD, **sam_options(values))

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        super().__init__(values, run)
        values = self.values
        self.options = SharpnessAwareOptions(
            bn_stats=values["bn_stats"],
            perturbation=values["perturbation"],
            ascent_fraction=values["ascent_fraction"],
            shard_size=values["m"],
        )
        # Late-phase SAM: the steps before this one (counted from the start of training) are plain.
        self.first_sharpness_aware_step = math.ceil(values["sam_from"] * run.total_steps)

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.base_optimizer

    @property
    def sharpness_aware_share(self) -> float:
        """The share of training's steps that climb to w + ε, counted with ``is_sharpness_aware``
        (so a subclass that climbs less often is counted right)."""
        total = self.run.total_steps
        return sum(map(self.is_sharpness_aware, range(total))) / total

    @property
    def passes_per_step(self) -> float:
        """1 + the ascent's share of the batch, on the sharpness-aware share of the steps
        (m-sharpness: every shard's ascent adds up to one whole pass)."""
        return 1.0 + self.sharpness_aware_share * self.options.ascent_fraction

    def is_sharpness_aware(self, index: int) -> bool:
        """Whether the step of this ``index`` (from the start of training) climbs to w + ε."""
        return index >= self.first_sharpness_aware_step

    def step(self, passes: Passes, inputs: torch.Tensor, targets: torch.Tensor, index: int) -> StepResult:
        if not self.is_sharpness_aware(index):
            return super().step(passes, inputs, targets, index)
        return sharpness_aware_step(passes, self.optimizer, inputs, targets, self.options)

    def abandon_step(self) -> None:
        self.optimizer.restore_weights()


# --- Sparse SAM ----------------------------------------------------------------------------

GRANULARITIES = ("element", "tensor")
ASCENT_COST = Check(
    lambda value: value == "auto" or (is_number(value) and 0 < value <= 1),
    "auto or in (0, 1]",
    "`auto` or (0, 1]",
)
TENSOR_ONLY_SETTINGS = ("tensor_score", "ascent_cost")


def build_tensor_selection(
    model: torch.nn.Module, train_set: Dataset, *, tensor_score: str, ascent_cost: float | str
) -> TensorSelection:
    """Whole-tensor selection, with the backward-cost model measured on one training example."""
    params = trainable_parameters(model)
    example = torch.as_tensor(train_set[0][0]).unsqueeze(0).to(params[0].device)
    cost = estimate_backward_cost(model, params, example)
    return TensorSelection(reduce=tensor_score, cost=cost, ascent_cost=ascent_cost)


def _layer_densities(model: torch.nn.Module, optimizer: SSAM) -> dict[str, float]:
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: m.float().mean().item() for p, m in zip(optimizer.params, optimizer.masks)}


class SparseSAMMethod(SharpnessAwareMethod):
    """Sparse SAM (Mi et al., 2022): SAM whose ε touches only the weights a mask selects. A
    subclass says how the mask is chosen (``build_mask``); the sparsity, the mask's granularity,
    the normalisation of ε and the refresh schedule are shared. Records every mask refresh in
    masks.jsonl."""

    settings = {
        **SharpnessAwareMethod.settings,
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
    metrics = (
        *SharpnessAwareMethod.metrics,
        # None before the first mask (late-phase Sparse SAM before its phase).
        Metric(
            "mask_density",
            lambda method, _: None if method.optimizer.masks is None else method.optimizer.mask_density(),
            summary="last",
        ),
        Metric(
            "mask_update_time_s",
            lambda method, _: method.optimizer.mask_update_time_s - method.mask_update_time_at_epoch_start,
            summary="sum",
        ),
    )

    @classmethod
    def check_declaration(cls) -> None:
        super().check_declaration()
        if cls.build_mask.__func__ is SparseSAMMethod.build_mask.__func__:
            raise ValueError(f"method {cls.name!r}: a Sparse SAM method defines build_mask")

    @classmethod
    def build_mask(cls, context: MaskContext, values: SettingValues) -> MaskStrategy:
        """The mask strategy, from the method's values of its settings (see ssam.optim.ssam.MaskStrategy)."""
        raise NotImplementedError(f"{cls.__name__} does not say how its mask is chosen (build_mask)")

    @classmethod
    def advice(cls, values: SettingValues) -> list[str]:
        if values["granularity"] == "tensor" and values["norm"] == "full":
            return [
                "note: optimizer.norm=full divides ρ by the norm of every weight's gradient, so the "
                "ascent still computes them all and granularity=tensor saves no time; "
                "optimizer.norm=masked does"
            ]
        return []

    @classmethod
    def recorded_settings(cls, values: SettingValues) -> dict[str, Any]:
        recorded = super().recorded_settings(values)
        if values["granularity"] != "tensor":  # the whole-tensor settings mean nothing to entry-wise masks
            for key in TENSOR_ONLY_SETTINGS:
                recorded.pop(key, None)
        return recorded

    @classmethod
    def mask_strategy(
        cls, model: torch.nn.Module, train_set: Dataset, *, epochs: int, seed: int, values: SettingValues
    ) -> MaskStrategy:
        """The mask strategy for ``model`` (with the whole-tensor selection if asked)."""
        selection = None
        if values["granularity"] == "tensor":
            selection = build_tensor_selection(
                model, train_set, tensor_score=values["tensor_score"], ascent_cost=values["ascent_cost"]
            )
        return cls.build_mask(MaskContext(model, train_set, epochs, seed, selection), values)

    @classmethod
    def build_optimizer(
        cls, params: list[torch.nn.Parameter], values: SettingValues, mask: MaskStrategy | None = None
    ) -> SSAM:
        return SSAM(params, torch.optim.SGD, **sparse_sam_options(cls.name, values, mask))

    def __init__(self, values: SettingValues, run: RunContext) -> None:
        self.mask_update_time_at_epoch_start = 0.0
        self.logged_mask_updates = 0
        self.mask_log: JsonLines | None = None
        super().__init__(values, run)

    def build_run_optimizer(self) -> SSAM:
        run = self.run
        strategy = self.mask_strategy(
            run.model, run.train_set, epochs=run.epochs, seed=run.seed, values=self.values
        )
        if run.replicas.world_size > 1:  # every process takes rank 0's masks
            strategy = MasksFromMain(strategy, run.replicas)
        return self.build_optimizer(trainable_parameters(run.model), self.values, strategy)

    def start_epoch(self, epoch: int) -> None:
        self.optimizer.set_epoch(epoch)
        self.mask_update_time_at_epoch_start = self.optimizer.mask_update_time_s

    def open_records(self, open_lines: OpenLines) -> None:
        self.mask_log = open_lines("masks.jsonl")
        if self.mask_log is not None:
            self.mask_log.keep(lambda record: record["update"] <= self.optimizer.mask_updates)
        self.logged_mask_updates = self.optimizer.mask_updates

    def after_step(self, epoch: int) -> None:
        optimizer = self.optimizer
        if optimizer.mask_updates == self.logged_mask_updates or self.mask_log is None:
            return
        self.logged_mask_updates = optimizer.mask_updates
        self.mask_log.append(
            {
                "epoch": epoch,
                "update": optimizer.mask_updates,
                "mask_density": optimizer.mask_density(),
                "overlap_with_previous": optimizer.last_mask_overlap,
                "layers": _layer_densities(self.run.model, optimizer),
            }
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "mask_update_time_at_epoch_start": self.mask_update_time_at_epoch_start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mask_update_time_at_epoch_start = state["mask_update_time_at_epoch_start"]
