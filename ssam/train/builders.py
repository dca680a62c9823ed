"""Building a run's parts from its config: datasets, model, loaders, optimizer, step options.

The trainer (ssam.train.run), ssam.analyze and the scripts build what they need here, so that a
benchmark or an analysis sees exactly what a run trains.
"""

from __future__ import annotations

from dataclasses import fields

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ssam import data
from ssam.data.device_loader import Augmentation, DeviceEvalLoader, DeviceTrainLoader
from ssam.data.sampling import EpochShuffle, PerSampleSeeded
from ssam.models import build_model
from ssam.train.distributed import SINGLE_PROCESS, MasksFromMain, Replicas
from ssam.train.loop import StepOptions
from ssam.train.optimizers import SHARPNESS_AWARE, SPARSE, build_mask_strategy, build_optimizer
from ssam.train.precision import Precision


def datasets_from_config(cfg: DictConfig, *, augment: bool = True) -> data.Splits:
    """The run's (train, test, validation) datasets; ``augment=False`` leaves out the training
    set's random crop, flip and Cutout (for measurements that must see the same images every time)."""
    dataset = cfg.dataset
    if dataset.download and data.missing_data_message(dataset.name, dataset.root) is not None:
        data.download(dataset.name, dataset.root)
    return data.build_datasets(
        dataset.name,
        root=dataset.root,
        image_size=dataset.image_size,
        mean=list(dataset.mean),
        std=list(dataset.std),
        train_size=dataset.train_size,
        test_size=dataset.test_size,
        # Absent from the configs of runs recorded before they existed (ssam.analyze reads those).
        val_size=dataset.get("val_size"),
        label_noise=dataset.get("label_noise", 0.0),
        label_noise_seed=dataset.get("label_noise_seed", 0),
        num_classes=dataset.num_classes,
        crop_padding=dataset.crop_padding if augment else 0,
        hflip=dataset.hflip and augment,
        cutout=dataset.cutout and augment,
    )


def model_from_config(cfg: DictConfig) -> torch.nn.Module:
    """The run's model, freshly initialised (from torch's global random state)."""
    return build_model(
        cfg.model.name,
        num_classes=cfg.dataset.num_classes,
        in_channels=cfg.dataset.in_channels,
        image_size=cfg.dataset.image_size,
        **{key: value for key, value in OmegaConf.to_container(cfg.model).items() if key != "name"},
    )


def eval_loader(
    cfg: DictConfig, dataset: torch.utils.data.Dataset, device: torch.device
) -> DataLoader | DeviceEvalLoader:
    """Batches of an evaluation set (this process's share) in its order, normalised only: on
    ``device`` whole with dataset.on_device, else transformed on the CPU."""
    if cfg.dataset.on_device:
        return DeviceEvalLoader(
            *data.images_and_labels(dataset),
            batch_size=cfg.trainer.eval_batch_size,
            mean=list(cfg.dataset.mean),
            std=list(cfg.dataset.std),
            device=device,
        )
    return DataLoader(dataset, batch_size=cfg.trainer.eval_batch_size, num_workers=cfg.trainer.num_workers)


def build_loaders(
    cfg: DictConfig,
    train_set: PerSampleSeeded,
    test_set: torch.utils.data.Dataset,
    sampler: EpochShuffle,
    device: torch.device,
) -> tuple[DataLoader | DeviceTrainLoader, DataLoader | DeviceEvalLoader]:
    """Training and test batches: DataLoaders that transform on the CPU, or with
    dataset.on_device the whole dataset on ``device``, augmented there (trainer.num_workers
    unused). Either way ``sampler.set_epoch`` chooses the epoch's order and where it starts,
    and ``test_set`` is this process's share."""
    dataset = cfg.dataset
    if dataset.on_device:
        normalisation = dict(mean=list(dataset.mean), std=list(dataset.std), device=device)
        # The stored images, not the per-sample seeded ones: the device loader seeds per batch.
        train_loader = DeviceTrainLoader(
            *data.images_and_labels(train_set.dataset),
            sampler,
            batch_size=cfg.batch_size,
            augmentation=Augmentation(dataset.crop_padding, dataset.hflip, dataset.cutout),
            **normalisation,
        )
        return train_loader, eval_loader(cfg, test_set, device)
    workers = cfg.trainer.num_workers
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        # Its own generator, so that starting an epoch's workers leaves the global RNG alone.
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    return train_loader, eval_loader(cfg, test_set, device)


def optimizer_from_config(
    cfg: DictConfig, model: torch.nn.Module, train_set, replicas: Replicas = SINGLE_PROCESS
) -> torch.optim.Optimizer:
    """The run's optimizer for ``model``, with its mask strategy for Sparse SAM (which reads
    ``train_set``); under data parallelism every process takes rank 0's masks."""
    settings = cfg.optimizer
    strategy = None
    if settings.name in SPARSE:
        strategy = build_mask_strategy(
            settings.name,
            model,
            train_set,
            epochs=cfg.epochs,
            seed=cfg.seed,
            update_freq=settings.update_freq,
            **{
                key: settings[key]
                for key in (
                    "num_samples",
                    "fisher_method",
                    "drop_rate",
                    "drop",
                    "growth",
                    "granularity",
                    "tensor_score",
                    "ascent_cost",
                )
                if key in settings
            },
        )
        if replicas.world_size > 1:
            strategy = MasksFromMain(strategy, replicas)
    sharpness = dict(rho=settings.rho, adaptive=settings.adaptive) if settings.name in SHARPNESS_AWARE else {}
    sparse = dict(sparsity=settings.sparsity, norm=settings.norm) if settings.name in SPARSE else {}
    return build_optimizer(
        settings.name,
        model,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov,
        mask_strategy=strategy,
        **sharpness,
        **sparse,
    )


def step_options_from_config(
    cfg: DictConfig, precision: Precision, replicas: Replicas = SINGLE_PROCESS
) -> StepOptions:
    """How the trainer runs each step: every StepOptions setting the optimizer's config holds
    (bn_stats, ascent_fraction, m, perturbation; SGD's holds none), read by field name so that a
    step setting added to both reaches every caller, and the trainer's own."""
    settings = {
        field.name: cfg.optimizer[field.name] for field in fields(StepOptions) if field.name in cfg.optimizer
    }
    return StepOptions(
        **settings,
        on_nonfinite=cfg.trainer.on_nonfinite,
        accumulate_steps=cfg.trainer.accumulate_steps,
        precision=precision,
        replicas=replicas,
    )
