"""Checks every user-facing setting before anything is built, so a run that was going to fail
fails at once with the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ssam.data import DATASETS, IN_MEMORY_DATASETS, missing_data_message
from ssam.devices import resolve_device
from ssam.models import MODELS, TIMM_MODELS
from ssam.models.timm_models import unknown_architecture_message
from ssam.optim.fisher import FISHER_METHODS
from ssam.optim.masks import SCORES
from ssam.optim.ssam import NORMS
from ssam.optim.tensor_selection import TENSOR_SCORES
from ssam.train.errors import ConfigError
from ssam.train.loop import BN_STATS, ON_NONFINITE, PERTURBATIONS
from ssam.train.optimizers import GRANULARITIES, OPTIMIZERS, SHARPNESS_AWARE, SPARSE
from ssam.train.precision import AMP
from ssam.train.schedulers import SCHEDULERS
from ssam.train.wandb_sink import WANDB_MODES

DEVICES = ("auto", "cpu", "cuda")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def _boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _positive_int(key: str, value: Any) -> None:
    if not (_is_int(value) and value >= 1):
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


def _optional_positive_int(key: str, value: Any) -> None:
    if value is not None:
        _positive_int(key, value)


def _in_range(key: str, value: Any, low: float, high: float, *, high_open: bool = False) -> None:
    inside = _is_number(value) and low <= value and (value < high if high_open else value <= high)
    if not inside:
        closing = ")" if high_open else "]"
        raise ConfigError(f"{key} must be in [{low:g}, {high:g}{closing}, got {value!r}")


def validate_config(cfg: DictConfig) -> None:
    optimizer = cfg.optimizer
    _one_of("optimizer", optimizer.name, OPTIMIZERS)
    _one_of("model", cfg.model.name, MODELS)
    if cfg.model.name in TIMM_MODELS:
        message = unknown_architecture_message(cfg.model.arch)
        if message is not None:
            raise ConfigError(message)
    _one_of("dataset", cfg.dataset.name, DATASETS)
    _one_of("scheduler", cfg.scheduler.name, SCHEDULERS)
    _one_of("device", cfg.device, DEVICES)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    if not (_is_number(optimizer.lr) and optimizer.lr > 0):
        raise ConfigError(f"lr must be > 0, got {optimizer.lr!r}")
    if not (_is_number(optimizer.weight_decay) and optimizer.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {optimizer.weight_decay!r}")
    _in_range("optimizer.momentum", optimizer.momentum, 0.0, 1.0, high_open=True)
    if optimizer.nesterov and optimizer.momentum == 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0, got 0")
    # The top-level rho and sparsity are checked even where the optimizer ignores them: a bad
    # value on the command line is a typo worth reporting.
    if not (_is_number(cfg.rho) and cfg.rho >= 0):
        raise ConfigError(f"rho must be >= 0, got {cfg.rho!r}")
    _in_range("sparsity", cfg.sparsity, 0.0, 1.0, high_open=True)
    _positive_int("epochs", cfg.epochs)
    _positive_int("batch_size", cfg.batch_size)
    if not _is_int(cfg.seed):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    _positive_int("trainer.eval_batch_size", cfg.trainer.eval_batch_size)
    if not (_is_int(cfg.trainer.num_workers) and cfg.trainer.num_workers >= 0):
        raise ConfigError(f"trainer.num_workers must be an integer >= 0, got {cfg.trainer.num_workers!r}")
    every_steps = cfg.trainer.checkpoint_every_steps
    if not (_is_int(every_steps) and every_steps >= 0):
        raise ConfigError(f"trainer.checkpoint_every_steps must be an integer >= 0, got {every_steps!r}")
    _positive_int("trainer.accumulate_steps", cfg.trainer.accumulate_steps)
    if cfg.trainer.accumulate_steps > cfg.batch_size:
        raise ConfigError(
            f"trainer.accumulate_steps ({cfg.trainer.accumulate_steps}) must be at most batch_size "
            f"({cfg.batch_size}): each micro-batch needs an example"
        )
    _one_of("trainer.on_nonfinite", cfg.trainer.on_nonfinite, ON_NONFINITE)
    _one_of("trainer.amp", cfg.trainer.amp, AMP)
    _boolean("trainer.channels_last", cfg.trainer.channels_last)
    _boolean("trainer.compile", cfg.trainer.compile)
    _boolean("trainer.sync_batchnorm", cfg.trainer.sync_batchnorm)
    if cfg.trainer.sync_batchnorm and resolve_device(cfg.device).type != "cuda":
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm does not run on the CPU; "
            "set trainer.sync_batchnorm=false"
        )
    track_every = cfg.trainer.track_sharpness_every
    if not (_is_int(track_every) and track_every >= 0):
        raise ConfigError(f"trainer.track_sharpness_every must be an integer >= 0, got {track_every!r}")
    _optional_positive_int("dataset.train_size", cfg.dataset.train_size)
    _optional_positive_int("dataset.test_size", cfg.dataset.test_size)
    # Whether val_size leaves enough training examples is checked where the data is known.
    _optional_positive_int("dataset.val_size", cfg.dataset.val_size)
    _in_range("dataset.label_noise", cfg.dataset.label_noise, 0.0, 1.0, high_open=True)
    if not _is_int(cfg.dataset.label_noise_seed):
        raise ConfigError(
            f"dataset.label_noise_seed must be an integer, got {cfg.dataset.label_noise_seed!r}"
        )
    _boolean("dataset.on_device", cfg.dataset.on_device)
    if cfg.dataset.on_device and cfg.dataset.name not in IN_MEMORY_DATASETS:
        raise ConfigError(
            f"dataset.on_device=true works for {', '.join(IN_MEMORY_DATASETS)} (held in memory), "
            f"not {cfg.dataset.name}, which is read from image files: use dataset.on_device=false"
        )
    if cfg.scheduler.name == "step":
        _in_range("scheduler.gamma", cfg.scheduler.gamma, 0.0, 1.0)
        for milestone in cfg.scheduler.milestones:
            _in_range("scheduler.milestones", milestone, 0.0, 1.0)
    if optimizer.name in SHARPNESS_AWARE:
        if not (_is_number(optimizer.rho) and optimizer.rho >= 0):
            raise ConfigError(f"optimizer.rho must be >= 0, got {optimizer.rho!r}")
        _one_of("optimizer.bn_stats", optimizer.bn_stats, BN_STATS)
        _one_of("optimizer.perturbation", optimizer.perturbation, PERTURBATIONS)
        if not (_is_number(optimizer.ascent_fraction) and 0 < optimizer.ascent_fraction <= 1):
            raise ConfigError(
                f"optimizer.ascent_fraction must be in (0, 1], got {optimizer.ascent_fraction!r}"
            )
        _in_range("optimizer.sam_from", optimizer.sam_from, 0.0, 1.0, high_open=True)
        _optional_positive_int("optimizer.m", optimizer.m)
        if optimizer.m is not None and optimizer.ascent_fraction != 1:
            raise ConfigError(
                "optimizer.m (each shard of m examples climbs its own ε) and optimizer.ascent_fraction "
                f"< 1 (one ε from part of the batch) are two different methods: set one, got m={optimizer.m}, "
                f"ascent_fraction={optimizer.ascent_fraction}"
            )
    if optimizer.name in SPARSE:
        _in_range("optimizer.sparsity", optimizer.sparsity, 0.0, 1.0, high_open=True)
        _one_of("optimizer.norm", optimizer.norm, NORMS)
        _positive_int("optimizer.update_freq", optimizer.update_freq)
        _one_of("optimizer.granularity", optimizer.granularity, GRANULARITIES)
        _one_of("optimizer.tensor_score", optimizer.tensor_score, TENSOR_SCORES)
        ascent_cost = optimizer.ascent_cost
        if not (ascent_cost == "auto" or _is_number(ascent_cost) and 0 < ascent_cost <= 1):
            raise ConfigError(f"optimizer.ascent_cost must be auto or in (0, 1], got {ascent_cost!r}")
    if optimizer.name == "ssam_f":
        _positive_int("optimizer.num_samples", optimizer.num_samples)
        _one_of("optimizer.fisher_method", optimizer.fisher_method, FISHER_METHODS)
        if cfg.trainer.sync_batchnorm and optimizer.fisher_method != "loop":
            raise ConfigError(
                "trainer.sync_batchnorm=true with optimizer=ssam_f needs optimizer.fisher_method=loop "
                f"(vmap cannot run SyncBatchNorm), got {optimizer.fisher_method!r}"
            )
        train_size = cfg.dataset.train_size
        if train_size is not None and optimizer.num_samples > train_size:
            raise ConfigError(
                f"optimizer.num_samples ({optimizer.num_samples}) is larger than "
                f"dataset.train_size ({train_size})"
            )
    if optimizer.name == "ssam_d":
        _in_range("optimizer.drop_rate", optimizer.drop_rate, 0.0, 1.0)
        _one_of("optimizer.drop", optimizer.drop, SCORES)
        _one_of("optimizer.growth", optimizer.growth, SCORES)
    if cfg.logger.name == "wandb":
        _one_of("logger.mode", cfg.logger.mode, WANDB_MODES)
    if not cfg.dataset.download:
        message = missing_data_message(cfg.dataset.name, cfg.dataset.root)
        if message is not None:
            raise ConfigError(message)
