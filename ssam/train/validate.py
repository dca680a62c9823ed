"""Checks every user-facing setting before anything is built, so a run that was going to fail
fails at once with the key, the value and what is allowed."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ssam.data.catalog import DATASETS, dataset_named
from ssam.devices import resolve_device
from ssam.models.catalog import model_named
from ssam.settings import (
    BOOLEAN,
    FRACTION,
    INTEGER,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    at_least,
    check_section,
    in_range,
    one_of,
)
from ssam.train.errors import ConfigError
from ssam.train.loop import ON_NONFINITE
from ssam.train.methods import method_named
from ssam.train.precision import AMP
from ssam.train.schedulers import SCHEDULERS
from ssam.train.wandb_sink import WANDB_MODES

DEVICES = ("auto", "cpu", "cuda")


def _check_top_level(cfg: DictConfig) -> None:
    one_of(*SCHEDULERS)("scheduler", cfg.scheduler.name)
    one_of(*DEVICES)("device", cfg.device)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    # rho and sparsity are checked even where the optimizer ignores them: a bad value on the
    # command line is a typo worth reporting.
    at_least(0)("rho", cfg.rho)
    FRACTION("sparsity", cfg.sparsity)
    POSITIVE_INT("epochs", cfg.epochs)
    POSITIVE_INT("batch_size", cfg.batch_size)
    INTEGER("seed", cfg.seed)
    if cfg.scheduler.name == "step":
        in_range(0.0, 1.0)("scheduler.gamma", cfg.scheduler.gamma)
        for milestone in cfg.scheduler.milestones:
            in_range(0.0, 1.0)("scheduler.milestones", milestone)
    if cfg.logger.name == "wandb":
        one_of(*WANDB_MODES)("logger.mode", cfg.logger.mode)


def _check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    POSITIVE_INT("trainer.eval_batch_size", trainer.eval_batch_size)
    NON_NEGATIVE_INT("trainer.num_workers", trainer.num_workers)
    NON_NEGATIVE_INT("trainer.checkpoint_every_steps", trainer.checkpoint_every_steps)
    POSITIVE_INT("trainer.accumulate_steps", trainer.accumulate_steps)
    if trainer.accumulate_steps > cfg.batch_size:
        raise ConfigError(
            f"trainer.accumulate_steps ({trainer.accumulate_steps}) must be at most batch_size "
            f"({cfg.batch_size}): each micro-batch needs an example"
        )
    one_of(*ON_NONFINITE)("trainer.on_nonfinite", trainer.on_nonfinite)
    one_of(*AMP)("trainer.amp", trainer.amp)
    for key in ("channels_last", "compile", "sync_batchnorm"):
        BOOLEAN(f"trainer.{key}", trainer[key])
    if trainer.sync_batchnorm and resolve_device(cfg.device).type != "cuda":
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm does not run on the CPU; "
            "set trainer.sync_batchnorm=false"
        )
    NON_NEGATIVE_INT("trainer.track_sharpness_every", trainer.track_sharpness_every)


def _check_dataset(cfg: DictConfig) -> None:
    dataset = dataset_named(cfg.dataset.name)
    check_section("dataset", cfg.dataset, dataset.settings, accepts_more=False)
    # Whether val_size leaves enough training examples is checked where the data is known.
    if cfg.dataset.on_device and not dataset.in_memory:
        in_memory = [name for name, spec in DATASETS.items() if spec.in_memory]
        raise ConfigError(
            f"dataset.on_device=true works for {', '.join(in_memory)} (held in memory), "
            f"not {cfg.dataset.name}, which is read from image files: use dataset.on_device=false"
        )


def validate_config(cfg: DictConfig) -> None:
    """Every setting of ``cfg``, the declared ones of its optimizer, dataset and model included
    (their checks come with their declarations); the data must be there unless it is to be
    downloaded."""
    method = method_named(cfg.optimizer.name)
    model = model_named(cfg.model.name)
    dataset = dataset_named(cfg.dataset.name)
    _check_top_level(cfg)
    _check_trainer(cfg)
    _check_dataset(cfg)
    check_section("optimizer", cfg.optimizer, method.settings, accepts_more=False)
    method.check(cfg)
    check_section("model", cfg.model, model.settings, accepts_more=model.accepts_more)
    model.check(cfg)
    if not cfg.dataset.download:
        message = dataset.missing(cfg.dataset.root)
        if message is not None:
            raise ConfigError(message)
