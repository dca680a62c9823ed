"""Building a run's parts from its config: datasets, model, loaders, method, passes.

The trainer (ssam.train.run), ssam.analyze and the scripts build what they need here, so that a
benchmark or an analysis sees exactly what a run trains.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ssam import data
from ssam.data.device_loader import Augmentation, DeviceEvalLoader, DeviceTrainLoader
from ssam.data.sampling import EpochShuffle, PerSampleSeeded
from ssam.models import build_model
from ssam.train.distributed import SINGLE_PROCESS, Replicas
from ssam.train.kinds import Method, RunContext
from ssam.train.methods import method_named
from ssam.train.passes import Passes
from ssam.train.precision import Precision


def _section(cfg: DictConfig, group: str) -> dict:
    """A group's settings (the config under ``group`` but its name), resolved."""
    settings = OmegaConf.to_container(cfg[group], resolve=True)
    settings.pop("name")
    return settings


def datasets_from_config(cfg: DictConfig, *, augment: bool = True) -> data.Splits:
    """The run's (train, test, validation) datasets; ``augment=False`` leaves out the training
    set's random crop, flip and Cutout (for measurements that must see the same images every time).
    A setting absent from the config (a run recorded before it existed, read by ssam.analyze)
    takes its declared default."""
    name = cfg.dataset.name
    spec = data.dataset_named(name)
    settings = spec.with_defaults(_section(cfg, "dataset"))
    if settings.pop("download") and spec.missing(settings["root"]) is not None:
        data.download(name, settings["root"])
    settings.pop("in_channels")
    settings.pop("on_device")
    if not augment:
        settings.update(crop_padding=0, hflip=False, cutout=False)
    return data.build_datasets(name, **settings)


def model_from_config(cfg: DictConfig) -> torch.nn.Module:
    """The run's model, freshly initialised (from torch's global random state)."""
    return build_model(
        cfg.model.name,
        num_classes=cfg.dataset.num_classes,
        in_channels=cfg.dataset.in_channels,
        image_size=cfg.dataset.image_size,
        **_section(cfg, "model"),
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


def sampler_from_config(
    cfg: DictConfig, num_examples: int, replicas: Replicas = SINGLE_PROCESS
) -> EpochShuffle:
    """The training order of this process: a permutation of (seed, epoch), cut into batches."""
    return EpochShuffle(
        num_examples, cfg.seed, rank=replicas.rank, world_size=replicas.world_size, batch_size=cfg.batch_size
    )


def method_from_config(
    cfg: DictConfig,
    model: torch.nn.Module,
    train_set: torch.utils.data.Dataset,
    *,
    steps_per_epoch: int,
    replicas: Replicas = SINGLE_PROCESS,
    sampler: EpochShuffle | None = None,
) -> Method:
    """The run's method, its optimizer built over ``model`` (Sparse SAM's mask strategy reads
    ``train_set``; under data parallelism every process takes rank 0's masks). ``sampler``, the
    loader's (by default one made as the trainer makes it), tells it which examples each step's
    batch holds."""
    method = method_named(cfg.optimizer.name)
    if sampler is None:
        sampler = sampler_from_config(cfg, len(train_set), replicas)

    def batch_positions(index: int) -> torch.Tensor:
        return sampler.batch_positions(*divmod(index, steps_per_epoch))

    run = RunContext(model, train_set, cfg.epochs, steps_per_epoch, cfg.seed, replicas, batch_positions)
    return method(_section(cfg, "optimizer"), run)


def passes_from_config(
    cfg: DictConfig, model: torch.nn.Module, precision: Precision, replicas: Replicas = SINGLE_PROCESS
) -> Passes:
    """How the run's passes run: through ``model`` (under DDP, compiled if asked), in its
    precision, over trainer.accumulate_steps micro-batches."""
    return Passes(model, precision, replicas, cfg.trainer.accumulate_steps)
