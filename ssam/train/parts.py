"""Building a run: its data, model, method, passes, loaders and schedule, from its config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssam import data
from ssam.data import DataError
from ssam.data.sampling import EpochShuffle, PerSampleSeeded, mixed_seed
from ssam.errors import ConfigError
from ssam.train.builders import (
    build_loaders,
    datasets_from_config,
    eval_loader,
    method_from_config,
    model_from_config,
    passes_from_config,
    sampler_from_config,
)
from ssam.train.compiling import compiler
from ssam.train.distributed import Replicas
from ssam.train.kinds import Method
from ssam.train.passes import Passes
from ssam.train.precision import Precision
from ssam.train.progress import TRAINER_METRICS, TRAINER_TOTALS, Metric, Total
from ssam.train.rng import seed_everything
from ssam.train.schedulers import build_scheduler


@dataclass
class RunParts:
    """What a run trains and evaluates, built from its config."""

    replicas: Replicas
    train_set: PerSampleSeeded
    sampler: EpochShuffle
    model: torch.nn.Module  # the plain module: checkpoints and the Fisher pass use it
    evaluation_model: torch.nn.Module  # outside DDP, compiled if asked
    method: Method
    passes: Passes  # through the training model: under DDP when data-parallel, compiled if asked
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    train_loader: Any
    test_loader: Any
    val_loader: Any
    steps_per_epoch: int
    memory_format: torch.memory_format
    label_noise_changed: float

    @property
    def totals(self) -> tuple[Total, ...]:
        """The epoch's running totals: the trainer's and the method's."""
        return (*TRAINER_TOTALS, *self.method.totals)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """The per-epoch metrics made from them: the trainer's and the method's."""
        return (*TRAINER_METRICS, *self.method.metrics)


def synchronised_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm layer synchronised over the processes. timm's converter,
    not torch's: torch's turns timm's BatchNormAct2d (a norm with its activation) into a plain
    SyncBatchNorm and so drops the activation (efficientnet_b0 has 49 of them); timm's keeps it,
    and converts plain BatchNorm layers as torch does. (Imported here: timm takes a second to
    import, and most runs need none of it.)"""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def build_parts(cfg: DictConfig, replicas: Replicas) -> RunParts:
    """The data, model, method, loaders and schedule, in a fixed order from the run's seed, so
    that a resumed run rebuilds the same objects before loading its checkpoint into them."""
    device = replicas.device
    seed_everything(cfg.seed)
    try:
        train_set, test_set, val_set = datasets_from_config(cfg)
    except DataError:
        raise
    except ValueError as error:  # a setting that only the data can check (a subset too large)
        raise ConfigError(str(error)) from error
    label_noise_changed = data.changed_label_fraction(train_set)
    # Order and augmentation depend on (seed, epoch, position) only: resumable at any step.
    train_set = PerSampleSeeded(train_set, cfg.seed)
    sampler = sampler_from_config(cfg, len(train_set), replicas)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model_from_config(cfg).to(device, memory_format=memory_format)
    if cfg.trainer.sync_batchnorm and replicas.world_size > 1:
        model = synchronised_batchnorm(model)
    # Evaluation stays outside DDP: the processes' shares of the test set can differ in size, so
    # nothing in it may wait on the others.
    compiled = compiler(cfg.trainer.compile_backend) if cfg.trainer.compile else (lambda module: module)
    training_model = replicas.wrap(model)
    if replicas.world_size > 1:
        # The replicas now hold rank 0's weights; from here each process draws its own random
        # numbers (dropout, say) rather than the same ones as every other.
        seed_everything(mixed_seed(cfg.seed, replicas.rank) % 2**32)  # NumPy takes 32 bits
    forward_model = compiled(training_model)
    evaluation_model = forward_model if training_model is model else compiled(model)
    precision = Precision(cfg.trainer.amp, device)
    steps_per_epoch = math.ceil(sampler.examples_per_process / cfg.batch_size)
    try:
        method = method_from_config(
            cfg, model, train_set, steps_per_epoch=steps_per_epoch, replicas=replicas, sampler=sampler
        )
    except ValueError as error:  # settings that need the model or data to check
        raise ConfigError(str(error)) from error
    train_loader, test_loader = build_loaders(cfg, train_set, replicas.shard(test_set), sampler, device)
    val_loader = None if val_set is None else eval_loader(cfg, replicas.shard(val_set), device)
    scheduler_settings = {k: v for k, v in OmegaConf.to_container(cfg.scheduler).items() if k != "name"}
    # The schedule drives the base optimizer, whose step() moves the weights; a SAM shares its
    # param_groups, so the learning rate is the same object.
    scheduler = build_scheduler(
        cfg.scheduler.name,
        method.base_optimizer,
        total_steps=cfg.epochs * steps_per_epoch,
        **scheduler_settings,
    )
    return RunParts(
        replicas=replicas,
        train_set=train_set,
        sampler=sampler,
        model=model,
        evaluation_model=evaluation_model,
        method=method,
        passes=passes_from_config(cfg, forward_model, precision, replicas),
        scheduler=scheduler,
        precision=precision,
        train_loader=train_loader,
        test_loader=test_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        memory_format=memory_format,
        label_noise_changed=label_noise_changed,
    )
