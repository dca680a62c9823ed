"""The trainer: config in, a run directory of metrics, summary and checkpoint out.

This is the one place below train.py that reads the config; everything it calls takes plain
arguments.
"""

from __future__ import annotations

import math
import resource
import statistics
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssam import data
from ssam.analysis.tracking import SharpnessTracker
from ssam.data import DataError
from ssam.data.sampling import EpochShuffle, PerSampleSeeded, mixed_seed
from ssam.devices import device_name
from ssam.errors import ConfigError
from ssam.extensions import load_extensions
from ssam.optim import SAM, SSAM
from ssam.train.builders import (
    build_loaders,
    datasets_from_config,
    eval_loader,
    model_from_config,
    optimizer_from_config,
    step_options_from_config,
)
from ssam.train.checkpoint import (
    CHECKPOINT_FORMAT,
    exclusive_run_directory,
    load_checkpoint,
    save_checkpoint,
)
from ssam.train.distributed import Replicas, join_processes
from ssam.train.loop import EpochProgress, NonFiniteError, evaluate, train_one_epoch
from ssam.train.methods import ignored_settings, method_named, run_variant
from ssam.train.metrics import JsonLines, format_table, read_json, write_json
from ssam.train.precision import Precision
from ssam.train.rng import rng_state, seed_everything, set_rng_state
from ssam.train.schedulers import build_scheduler, fast_forward
from ssam.train.validate import validate_config
from ssam.train.wandb_sink import WandbSink

# Settings that may change between a run and its resumption: they do not change the numbers.
RESUMABLE_UNDER_OTHER = ("trainer", "resume", "device", "logger", "experiment_name", "extensions")
# The trainer settings that do change them (other kernels, other rounding).
NUMERIC_TRAINER_SETTINGS = ("amp", "channels_last", "compile", "sync_batchnorm", "accumulate_steps")


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on the CPU the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _layer_densities(model: torch.nn.Module, optimizer: SSAM) -> dict[str, float]:
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: m.float().mean().item() for p, m in zip(optimizer.params, optimizer.masks)}


def _sparse(cfg: DictConfig) -> bool:
    return method_named(cfg.optimizer.name).sparse


def setting_tags(cfg: DictConfig) -> list[str]:
    tags = [cfg.optimizer.name, cfg.dataset.name, cfg.model.name]
    if _sparse(cfg):
        tags.append(f"sparsity={cfg.optimizer.sparsity}")
    return tags


def setting_name(cfg: DictConfig) -> str:
    """The setting without the seed, e.g. ``fmnist_cpu/ssam_f/sparsity=0.5``: the wandb group
    that gathers a sweep's seeds, as a table row does."""
    parts = [cfg.experiment_name, cfg.dataset.name, cfg.model.name, cfg.optimizer.name]
    if _sparse(cfg):
        parts.append(f"sparsity={cfg.optimizer.sparsity}")
    return "/".join(parts)


def _identity(cfg: DictConfig) -> dict[str, Any]:
    """Every setting that shapes the run's numbers; resuming under other values would mix two
    runs. Settings the optimizer ignores are left out, as they are of its run directory's name."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    trainer = settings["trainer"]
    for key in RESUMABLE_UNDER_OTHER:
        settings.pop(key, None)
    settings["trainer"] = {key: trainer[key] for key in NUMERIC_TRAINER_SETTINGS}
    for key in ignored_settings(cfg.optimizer.name):
        settings.pop(key, None)
    return settings


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: {old!r} there, {new!r} now")
    return differences


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def _resume(
    cfg,
    checkpoint: dict[str, Any],
    run_dir: Path,
    model,
    optimizer,
    scheduler,
    precision: Precision,
    replicas: Replicas,
    steps_per_epoch: int,
) -> tuple[dict, EpochProgress | None]:
    """Load ``checkpoint`` (the run directory's last.pt) into the run's objects and RNGs; the
    run's history so far and the totals of the interrupted epoch (None at an epoch boundary).

    A checkpoint taken at the end of an epoch resumes on any number of processes: the data order
    is one global order whatever their number. One taken within an epoch resumes only on as many
    processes as wrote it, since their shares of the epoch's remaining batches depend on it."""
    saved_world_size = checkpoint.get("world_size", 1)  # absent before data parallelism
    other_world_size = saved_world_size != replicas.world_size
    differences = _differences(checkpoint["identity"], _identity(cfg))
    if differences:
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({'; '.join(differences[:5])}): "
            "use another hydra.run.dir, or resume=false to overwrite it"
        )
    history = checkpoint["history"]
    saved_progress = checkpoint["epoch_progress"]
    if other_world_size and saved_progress is not None:
        raise ConfigError(
            f"{run_dir} holds a checkpoint from the middle of epoch {history['epoch'] + 1}, written by "
            f"{_processes(saved_world_size)}, and this run has {_processes(replicas.world_size)}: "
            f"resume it on {_processes(saved_world_size)} (the number can change once that epoch "
            "ends), or pass resume=false to start over"
        )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if other_world_size:
        # Another number of processes takes another number of steps per epoch: the schedule
        # goes on from the same fraction of training.
        fast_forward(scheduler, history["epoch"] * steps_per_epoch)
    else:
        scheduler.load_state_dict(checkpoint["scheduler"])
    precision.load_state_dict(checkpoint["precision"])
    set_rng_state(checkpoint["rng"])
    progress = None if saved_progress is None else EpochProgress(**saved_progress)
    if progress is not None and not replicas.is_main:
        progress.clear_totals()  # the saved totals are all the processes', carried by the main one
    if history["epoch"] >= cfg.epochs:
        shared = (
            f" ({cfg.optimizer.name} ignores sparsity: sweep jobs that differ only in sparsity share this run)"
            if "sparsity" in ignored_settings(cfg.optimizer.name)
            else ""
        )
        print(f"{run_dir} is already finished; not training again{shared}")
    elif progress:
        print(f"resuming {run_dir} at step {progress.step} of epoch {history['epoch'] + 1} of {cfg.epochs}")
    else:
        print(f"resuming {run_dir} after epoch {history['epoch']} of {cfg.epochs}")
    if other_world_size:
        print(
            f"it ran on {_processes(saved_world_size)} and now on {_processes(replicas.world_size)}: "
            f"{replicas.world_size * cfg.batch_size} images per step from here on"
        )
    return history, progress


BEST_VAL_KEYS = ("best_val_acc", "best_val_epoch", "test_acc_at_best_val")


def _best_validation(history: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The best validation accuracy so far, its epoch (0-based, as metrics' ``epoch``) and that
    epoch's test accuracy; a tie keeps the earlier epoch. Empty without a validation set."""
    if "val_acc" not in record:
        return {}
    if record["val_acc"] > history.get("best_val_acc", float("-inf")):
        return {
            "best_val_acc": record["val_acc"],
            "best_val_epoch": record["epoch"],
            "test_acc_at_best_val": record["test_acc"],
        }
    return {key: history[key] for key in BEST_VAL_KEYS}


class TrainingStopped(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that cannot be written)."""


def _checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        save_checkpoint(state, path)
    except OSError as error:
        raise TrainingStopped(
            f"cannot write checkpoint {path}: {error}. The previous checkpoint is kept; "
            "free disk space and run the same command again to resume"
        ) from error


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate as ``cfg`` says, recording into ``run_dir``; returns the summary.

    Under torchrun every process runs this; rank 0 alone touches ``run_dir`` and the console."""
    load_extensions(cfg.extensions)
    validate_config(cfg)
    run_dir = Path(run_dir)
    replicas = join_processes(cfg.device)
    with replicas.console(), ExitStack() as lock:
        if _sparse(cfg) and cfg.optimizer.granularity == "tensor" and cfg.optimizer.norm == "full":
            print(
                "note: optimizer.norm=full divides ρ by the norm of every weight's gradient, so the "
                "ascent still computes them all and granularity=tensor saves no time; "
                "optimizer.norm=masked does"
            )

        def hold_run_directory() -> None:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.enter_context(exclusive_run_directory(run_dir))

        replicas.on_main(hold_run_directory)
        return _train(cfg, run_dir, replicas)


@dataclass
class _Parts:
    """What a run trains and evaluates, built from its config."""

    train_set: PerSampleSeeded
    sampler: EpochShuffle
    model: torch.nn.Module  # the plain module: checkpoints and the Fisher pass use it
    forward_model: torch.nn.Module  # what training runs: under DDP when data-parallel, compiled if asked
    evaluation_model: torch.nn.Module  # outside DDP, compiled if asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    train_loader: Any
    test_loader: Any
    val_loader: Any
    steps_per_epoch: int
    memory_format: torch.memory_format
    label_noise_changed: float

    @property
    def sparse(self) -> bool:
        return isinstance(self.optimizer, SSAM)


def _build_parts(cfg: DictConfig, replicas: Replicas) -> _Parts:
    """The data, model, optimizer, loaders and schedule, in a fixed order from the run's seed, so
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
    sampler = EpochShuffle(
        len(train_set),
        cfg.seed,
        rank=replicas.rank,
        world_size=replicas.world_size,
        batch_size=cfg.batch_size,
    )
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model_from_config(cfg).to(device, memory_format=memory_format)
    if cfg.trainer.sync_batchnorm and replicas.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Evaluation stays outside DDP: the processes' shares of the test set can differ in size, so
    # nothing in it may wait on the others.
    compiled = torch.compile if cfg.trainer.compile else (lambda module: module)
    training_model = replicas.wrap(model)
    if replicas.world_size > 1:
        # The replicas now hold rank 0's weights; from here each process draws its own random
        # numbers (dropout, say) rather than the same ones as every other.
        seed_everything(mixed_seed(cfg.seed, replicas.rank) % 2**32)  # NumPy takes 32 bits
    forward_model = compiled(training_model)
    evaluation_model = forward_model if training_model is model else compiled(model)
    precision = Precision(cfg.trainer.amp, device)
    try:
        optimizer = optimizer_from_config(cfg, model, train_set, replicas)
    except ValueError as error:  # settings that need the model or data to check
        raise ConfigError(str(error)) from error
    train_loader, test_loader = build_loaders(cfg, train_set, replicas.shard(test_set), sampler, device)
    val_loader = None if val_set is None else eval_loader(cfg, replicas.shard(val_set), device)
    steps_per_epoch = math.ceil(sampler.examples_per_process / cfg.batch_size)
    scheduler_settings = {k: v for k, v in OmegaConf.to_container(cfg.scheduler).items() if k != "name"}
    # The schedule drives the base optimizer, whose step() is the one that runs (SAM calls it in
    # second_step); both share their param_groups, so the learning rate is the same object.
    scheduler = build_scheduler(
        cfg.scheduler.name,
        getattr(optimizer, "base_optimizer", optimizer),
        total_steps=cfg.epochs * steps_per_epoch,
        **scheduler_settings,
    )
    return _Parts(
        train_set,
        sampler,
        model,
        forward_model,
        evaluation_model,
        optimizer,
        scheduler,
        precision,
        train_loader,
        test_loader,
        val_loader,
        steps_per_epoch,
        memory_format,
        label_noise_changed,
    )


class _Training:
    """The epochs of a run from its parts, with their records (metrics.jsonl, masks.jsonl, wandb)
    and checkpoints; rank 0 alone writes. ``history`` is the run so far, ``progress`` the totals of
    an interrupted epoch (None at an epoch boundary)."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        parts: _Parts,
        replicas: Replicas,
        history: dict[str, Any],
        progress: EpochProgress | None,
    ) -> None:
        self.cfg, self.parts, self.replicas = cfg, parts, replicas
        self.history, self.progress = history, progress
        self.run_dir = run_dir
        self.checkpoint_path = run_dir / "last.pt"
        self.metrics = JsonLines(run_dir / "metrics.jsonl")
        self.mask_log = JsonLines(run_dir / "masks.jsonl")
        optimizer = parts.optimizer
        self.logged_mask_updates = optimizer.mask_updates if parts.sparse else 0
        if replicas.is_main:
            self.metrics.keep(lambda record: record["epoch"] < history["epoch"])
            self.mask_log.keep(lambda record: parts.sparse and record["update"] <= optimizer.mask_updates)
        self.sink = None
        if cfg.logger.name == "wandb" and replicas.is_main:
            self.sink = WandbSink(
                run_dir=run_dir,
                config=OmegaConf.to_container(cfg, resolve=True),
                project=cfg.logger.project,
                mode=cfg.logger.mode,
                entity=cfg.logger.entity,
                group=cfg.logger.group or setting_name(cfg),
                tags=[*cfg.logger.tags, *setting_tags(cfg)],
            )
        self.step_options = step_options_from_config(cfg, parts.precision, replicas)
        # Late-phase SAM: the steps before this one (counted from the start of training) are plain.
        total_steps = cfg.epochs * parts.steps_per_epoch
        self.sharpness_aware_from = math.ceil(cfg.optimizer.get("sam_from", 0.0) * total_steps)
        self.track_every = cfg.trainer.track_sharpness_every
        # Made before the first epoch: see its docstring.
        self.tracker = SharpnessTracker(parts.train_set) if self.track_every else None

    def state(self, progress: EpochProgress | None) -> dict[str, Any]:
        parts = self.parts
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": _identity(self.cfg),
            "world_size": self.replicas.world_size,
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "precision": parts.precision.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "epoch_progress": None if progress is None else progress.state_dict(),
        }

    def after_step(self, progress: EpochProgress) -> None:
        """Log a mask refresh, and checkpoint every trainer.checkpoint_every_steps steps."""
        parts, replicas = self.parts, self.replicas
        optimizer = parts.optimizer
        if parts.sparse and optimizer.mask_updates > self.logged_mask_updates and replicas.is_main:
            self.logged_mask_updates = optimizer.mask_updates
            self.mask_log.append(
                {
                    "epoch": self.history["epoch"],
                    "update": optimizer.mask_updates,
                    "mask_density": optimizer.mask_density(),
                    "overlap_with_previous": optimizer.last_mask_overlap,
                    "layers": _layer_densities(parts.model, optimizer),
                }
            )
        every_steps = self.cfg.trainer.checkpoint_every_steps
        if every_steps and progress.step % every_steps == 0 and progress.step < parts.steps_per_epoch:
            # Every process takes the collective steps; then rank 0 writes.
            replicas.average_batchnorm_statistics(parts.model)
            progress.add_up(replicas, onto_main_only=True)
            if replicas.is_main:
                _checkpoint(self.checkpoint_path, self.state(progress))

    def train_epoch(self, epoch: int) -> EpochProgress:
        """The epoch's steps (those not yet done), their totals summed over the processes."""
        cfg, parts = self.cfg, self.parts
        if self.progress is None:
            self.progress = EpochProgress(
                mask_update_time_at_start=parts.optimizer.mask_update_time_s if parts.sparse else 0.0
            )
            if parts.sparse:
                parts.optimizer.set_epoch(epoch)
        progress = self.progress
        if progress.step == 0:
            progress.lr_at_start = parts.optimizer.param_groups[0]["lr"]
        parts.train_set.set_epoch(epoch)
        parts.sampler.set_epoch(epoch, start=progress.step * cfg.batch_size)
        try:
            result = train_one_epoch(
                parts.forward_model,
                parts.optimizer,
                parts.scheduler,
                parts.train_loader,
                self.replicas.device,
                progress=progress,
                step_options=self.step_options,
                memory_format=parts.memory_format,
                after_step=self.after_step,
                sharpness_aware_from=self.sharpness_aware_from - epoch * parts.steps_per_epoch,
                description=f"epoch {epoch + 1}/{cfg.epochs}",
                progress_bar=cfg.trainer.progress_bar and self.replicas.is_main,
            )
        except NonFiniteError as error:
            kept = (
                f"The last good checkpoint, {self.checkpoint_path}, is kept"
                if self.checkpoint_path.exists()
                else "No checkpoint had been written yet"
            )
            raise TrainingStopped(
                f"{error} at epoch {epoch + 1}, step {progress.step + 1}. {kept}. "
                "Lower the learning rate, or set trainer.on_nonfinite=skip to skip such steps"
            ) from error
        result.add_up(self.replicas)
        return result

    def evaluate(self, loader) -> tuple[float, float]:
        parts = self.parts
        return evaluate(
            parts.evaluation_model,
            loader,
            self.replicas.device,
            precision=parts.precision,
            memory_format=parts.memory_format,
            replicas=self.replicas,
        )

    def epoch_record(self, epoch: int, result: EpochProgress) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl: training totals, then test (and validation) sets."""
        parts = self.parts
        self.replicas.average_batchnorm_statistics(parts.model)
        test_loss, test_acc = self.evaluate(parts.test_loader)
        record = {
            "epoch": epoch,
            "lr": result.lr_at_start,
            "train_loss": result.loss,
            "train_acc": result.accuracy,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_time_s": result.time_s,
            "images_per_s": result.trained_images / result.time_s,
            "skipped_steps": result.skipped_steps,
        }
        if parts.val_loader is not None:
            record["val_loss"], record["val_acc"] = self.evaluate(parts.val_loader)
        if isinstance(parts.optimizer, SAM):
            record["perturbation_norm"] = result.perturbation_norm
            record["sharpness_aware_steps"] = result.sharpness_aware_steps
        if parts.sparse:
            record["mask_density"] = parts.optimizer.mask_density()
            record["mask_update_time_s"] = (
                parts.optimizer.mask_update_time_s - result.mask_update_time_at_start
            )
        if self.tracker is not None and (epoch + 1) % self.track_every == 0:
            record["lambda_max"] = self.tracker.lambda_max(parts.model)
        return record

    def end_epoch(self, epoch: int, result: EpochProgress, record: dict[str, Any]) -> None:
        """Record the epoch, add it to the history, and checkpoint."""
        if self.replicas.is_main:
            self.metrics.append(record)
        if self.sink is not None:
            self.sink.log(record, step=epoch)
        print(
            f"epoch {epoch + 1}/{self.cfg.epochs}  train loss {result.loss:.4f} acc {result.accuracy:.2f}  "
            f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.2f}  {result.time_s:.1f}s"
        )
        history = self.history
        self.history = {
            "epoch": epoch + 1,
            "best_test_acc": max(history["best_test_acc"], record["test_acc"]),
            "train_time_s": history["train_time_s"] + result.time_s,
            "step_times_s": history["step_times_s"] + result.step_times_s,
            "final_test_acc": record["test_acc"],
            # A resumed run's processes each see only their own peak: keep the largest.
            "peak_memory_mb": max(history.get("peak_memory_mb", 0.0), peak_memory_mb(self.replicas.device)),
            **_best_validation(history, record),
        }
        self.progress = None
        if self.replicas.is_main:
            _checkpoint(self.checkpoint_path, self.state(None))

    def summary(self) -> dict[str, Any]:
        """summary.json: the results, the settings that shaped them, and where they ran."""
        cfg, history, device = self.cfg, self.history, self.replicas.device
        optimizer = self.parts.optimizer
        method = method_named(cfg.optimizer.name)
        settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
        summary = {
            "final_test_acc": history["final_test_acc"],
            "best_test_acc": history["best_test_acc"],
            "epochs": cfg.epochs,
            "optimizer": method.name,
            "optimizer_label": method.label,
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "model_arch": cfg.model.get("arch"),  # timm models: the architecture
            # None for a method that does not read them, as SGD ρ.
            "sparsity": settings["sparsity"] if "sparsity" in method.settings else None,
            "rho": settings["rho"] if "rho" in method.settings else None,
            "amp": cfg.trainer.amp,
            "accumulate_steps": cfg.trainer.accumulate_steps,
            "seed": cfg.seed,
            "train_time_s": history["train_time_s"],
            "step_time_s": statistics.median(history["step_times_s"]),
            "peak_memory_mb": history["peak_memory_mb"],
            "peak_memory_kind": "cuda_allocated" if device.type == "cuda" else "cpu_max_rss",
            "torch_version": torch.__version__,
            # CPU kernels split their sums by thread, so the count is part of a run's exact numbers.
            "threads": torch.get_num_threads(),
            "device": device_name(device),
            "world_size": self.replicas.world_size,
            "label_noise": cfg.dataset.label_noise,
            "label_noise_seed": cfg.dataset.label_noise_seed,
            "label_noise_changed": self.parts.label_noise_changed,
            "val_size": cfg.dataset.val_size,
            **{key: history[key] for key in BEST_VAL_KEYS if key in history},
            **method.recorded(settings),
        }
        if self.parts.sparse:
            summary["mask_density"] = optimizer.mask_density()
            summary["mask_update_time_s"] = optimizer.mask_update_time_s
        summary["variant"] = run_variant(summary)
        return summary


def _train(cfg: DictConfig, run_dir: Path, replicas: Replicas) -> dict[str, Any]:
    parts = _build_parts(cfg, replicas)
    checkpoint_path = run_dir / "last.pt"
    history = {"epoch": 0, "best_test_acc": float("-inf"), "train_time_s": 0.0, "step_times_s": []}
    progress = None
    checkpoint = replicas.on_main(
        lambda: load_checkpoint(checkpoint_path) if cfg.resume and checkpoint_path.exists() else None
    )
    if checkpoint is not None:
        history, progress = _resume(
            cfg,
            checkpoint,
            run_dir,
            parts.model,
            parts.optimizer,
            parts.scheduler,
            parts.precision,
            replicas,
            parts.steps_per_epoch,
        )
    summary_path = run_dir / "summary.json"
    if history["epoch"] >= cfg.epochs:
        # Finished: its summary stands as written (this process measured nothing).
        summary = replicas.on_main(lambda: read_json(summary_path) if summary_path.exists() else None)
        if summary is not None:
            print(format_table(summary))
            return summary
    training = _Training(cfg, run_dir, parts, replicas, history, progress)
    for epoch in range(history["epoch"], cfg.epochs):
        result = training.train_epoch(epoch)
        training.end_epoch(epoch, result, training.epoch_record(epoch, result))
    summary = training.summary()
    if replicas.is_main:
        write_json(summary_path, summary)
    if training.sink is not None:
        training.sink.finish(summary)
    print(format_table(summary))
    print(f"run directory: {run_dir}")
    return summary
