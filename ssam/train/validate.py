"""Checks every user-facing setting before anything is built, so a run that was going to fail
fails at once with the key, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssam.data.catalog import DATASETS, DatasetSpec, dataset_named
from ssam.devices import resolve_device
from ssam.errors import ConfigError
from ssam.models.catalog import model_named
from ssam.settings import check_section, in_range, one_of
from ssam.train.methods import method_named
from ssam.train.run_settings import TOP_LEVEL_SETTINGS, TRAINER_SETTINGS
from ssam.train.schedulers import SCHEDULERS
from ssam.train.wandb_sink import WANDB_MODES


def _check_top_level(cfg: DictConfig) -> None:
    # Every declared top-level setting is checked, even one the optimizer ignores: the key a user
    # typed is the one to name, and a typo in rho or sparsity is reported whatever the method.
    for key, setting in TOP_LEVEL_SETTINGS.items():
        setting.check(key, cfg[key])
    one_of(*SCHEDULERS)("scheduler", cfg.scheduler.name)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    if cfg.scheduler.name == "step":
        in_range(0.0, 1.0)("scheduler.gamma", cfg.scheduler.gamma)
        for milestone in cfg.scheduler.milestones:
            in_range(0.0, 1.0)("scheduler.milestones", milestone)
    if cfg.logger.name == "wandb":
        one_of(*WANDB_MODES)("logger.mode", cfg.logger.mode)


def _check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    check_section("trainer", trainer, TRAINER_SETTINGS, accepts_more=False)
    if trainer.accumulate_steps > cfg.batch_size:
        raise ConfigError(
            f"trainer.accumulate_steps ({trainer.accumulate_steps}) must be at most batch_size "
            f"({cfg.batch_size}): each micro-batch needs an example"
        )
    if trainer.sync_batchnorm and resolve_device(cfg.device).type != "cuda":
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm does not run on the CPU; "
            "set trainer.sync_batchnorm=false"
        )


def _check_data(config: Mapping[str, Any], spec: DatasetSpec) -> None:
    """What only the dataset's declaration knows: whether it can be held on the device, and
    whether it is there (or can be fetched). Whether val_size leaves enough training examples
    is checked where the data is known."""
    dataset = config["dataset"]
    if dataset["on_device"] and not spec.in_memory:
        in_memory = [name for name, other in DATASETS.items() if other.in_memory]
        raise ConfigError(
            f"dataset.on_device=true works for {', '.join(in_memory)} (held in memory), "
            f"not {spec.name}, which is read from image files: use dataset.on_device=false"
        )
    missing = spec.missing(dataset["root"])
    if missing is None:
        return
    if not dataset["download"]:
        raise ConfigError(missing)
    if spec.download is None:
        raise ConfigError(
            f"dataset.download=true, but {spec.name} cannot be downloaded automatically: {missing}"
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
    check_section("dataset", cfg.dataset, dataset.settings, accepts_more=False)
    check_section("optimizer", cfg.optimizer, method.settings, accepts_more=False)
    check_section("model", cfg.model, model.settings, accepts_more=model.accepts_more)
    # The declarations' checks read plain values, not the config object.
    config = OmegaConf.to_container(cfg, resolve=True)
    method.check_settings(config)
    model.check_settings(config)
    _check_data(config, dataset)
