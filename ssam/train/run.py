"""The trainer: config in, a run directory of metrics, summary and checkpoint out.

This is the one place below train.py that reads the config; everything it calls takes plain
arguments.
"""

from __future__ import annotations

import math
import resource
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssam import data
from ssam.analysis.tracking import SharpnessTracker
from ssam.data import DataError
from ssam.data.sampling import EpochShuffle, PerSampleSeeded, mixed_seed
from ssam.devices import device_name
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
from ssam.train.metrics import JsonLines, format_table, read_json, write_json
from ssam.train.optimizers import SHARPNESS_AWARE, SPARSE
from ssam.train.precision import Precision
from ssam.train.resolvers import IGNORE_SPARSITY, ignored_settings
from ssam.train.rng import rng_state, seed_everything, set_rng_state
from ssam.train.schedulers import build_scheduler, fast_forward
from ssam.train.validate import ConfigError, validate_config
from ssam.train.wandb_sink import WandbSink

# Settings that may change between a run and its resumption: they do not change the numbers.
RESUMABLE_UNDER_OTHER = ("trainer", "resume", "device", "logger", "experiment_name")
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


def setting_tags(cfg: DictConfig) -> list[str]:
    tags = [cfg.optimizer.name, cfg.dataset.name, cfg.model.name]
    if cfg.optimizer.name in SPARSE:
        tags.append(f"sparsity={cfg.optimizer.sparsity}")
    return tags


def setting_name(cfg: DictConfig) -> str:
    """The setting without the seed, e.g. ``fmnist_cpu/ssam_f/sparsity=0.5``: the wandb group
    that gathers a sweep's seeds, as a table row does."""
    parts = [cfg.experiment_name, cfg.dataset.name, cfg.model.name, cfg.optimizer.name]
    if cfg.optimizer.name in SPARSE:
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
        settings.pop(key)
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
            if cfg.optimizer.name in IGNORE_SPARSITY
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
    validate_config(cfg)
    run_dir = Path(run_dir)
    replicas = join_processes(cfg.device)
    with replicas.console(), ExitStack() as lock:
        if (
            cfg.optimizer.name in SPARSE
            and cfg.optimizer.granularity == "tensor"
            and cfg.optimizer.norm == "full"
        ):
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


def _train(cfg: DictConfig, run_dir: Path, replicas: Replicas) -> dict[str, Any]:
    checkpoint_path = run_dir / "last.pt"
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
    # Training runs the replica (DDP when data-parallel) and evaluation the module, compiled if
    # asked; checkpoints and the Fisher pass use the plain module, whose state_dict keys stay
    # those of the model. Evaluation stays outside DDP: the processes' shares of the test set can
    # differ in size, so nothing in it may wait on the others.
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

    metrics = JsonLines(run_dir / "metrics.jsonl")
    mask_log = JsonLines(run_dir / "masks.jsonl")
    sparse = isinstance(optimizer, SSAM)
    history = {"epoch": 0, "best_test_acc": float("-inf"), "train_time_s": 0.0, "step_times_s": []}
    epoch_progress = None
    checkpoint = replicas.on_main(
        lambda: load_checkpoint(checkpoint_path) if cfg.resume and checkpoint_path.exists() else None
    )
    if checkpoint is not None:
        history, epoch_progress = _resume(
            cfg, checkpoint, run_dir, model, optimizer, scheduler, precision, replicas, steps_per_epoch
        )
    summary_path = run_dir / "summary.json"
    if history["epoch"] >= cfg.epochs:
        # Finished: its summary stands as written (this process measured nothing).
        summary = replicas.on_main(lambda: read_json(summary_path) if summary_path.exists() else None)
        if summary is not None:
            print(format_table(summary))
            return summary
    if replicas.is_main:
        metrics.keep(lambda record: record["epoch"] < history["epoch"])
        mask_log.keep(lambda record: sparse and record["update"] <= optimizer.mask_updates)

    sink = None
    if cfg.logger.name == "wandb" and replicas.is_main:
        sink = WandbSink(
            run_dir=run_dir,
            config=OmegaConf.to_container(cfg, resolve=True),
            project=cfg.logger.project,
            mode=cfg.logger.mode,
            entity=cfg.logger.entity,
            group=cfg.logger.group or setting_name(cfg),
            tags=[*cfg.logger.tags, *setting_tags(cfg)],
        )

    def state(epoch_progress: EpochProgress | None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": _identity(cfg),
            "world_size": replicas.world_size,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "precision": precision.state_dict(),
            "rng": rng_state(),
            "history": history,
            "epoch_progress": None if epoch_progress is None else epoch_progress.state_dict(),
        }

    every_steps = cfg.trainer.checkpoint_every_steps
    logged_mask_updates = optimizer.mask_updates if sparse else 0

    def after_step(progress: EpochProgress) -> None:
        nonlocal logged_mask_updates
        if sparse and optimizer.mask_updates > logged_mask_updates and replicas.is_main:
            logged_mask_updates = optimizer.mask_updates
            mask_log.append(
                {
                    "epoch": history["epoch"],
                    "update": optimizer.mask_updates,
                    "mask_density": optimizer.mask_density(),
                    "overlap_with_previous": optimizer.last_mask_overlap,
                    "layers": _layer_densities(model, optimizer),
                }
            )
        if every_steps and progress.step % every_steps == 0 and progress.step < steps_per_epoch:
            # Every process takes the collective steps; then rank 0 writes.
            replicas.average_batchnorm_statistics(model)
            progress.add_up(replicas, onto_main_only=True)
            if replicas.is_main:
                _checkpoint(checkpoint_path, state(progress))

    step_options = step_options_from_config(cfg, precision, replicas)
    # Late-phase SAM: the steps before this one (counted from the start of training) are plain.
    sharpness_aware_from = math.ceil(cfg.optimizer.get("sam_from", 0.0) * cfg.epochs * steps_per_epoch)
    track_every = cfg.trainer.track_sharpness_every
    tracker = SharpnessTracker(train_set) if track_every else None  # before the loop: see its docstring
    for epoch in range(history["epoch"], cfg.epochs):
        if epoch_progress is None:
            epoch_progress = EpochProgress(
                mask_update_time_at_start=optimizer.mask_update_time_s if sparse else 0.0
            )
            if sparse:
                optimizer.set_epoch(epoch)
        if epoch_progress.step == 0:
            epoch_progress.lr_at_start = optimizer.param_groups[0]["lr"]
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start=epoch_progress.step * cfg.batch_size)
        try:
            result = train_one_epoch(
                forward_model,
                optimizer,
                scheduler,
                train_loader,
                device,
                progress=epoch_progress,
                step_options=step_options,
                memory_format=memory_format,
                after_step=after_step,
                sharpness_aware_from=sharpness_aware_from - epoch * steps_per_epoch,
                description=f"epoch {epoch + 1}/{cfg.epochs}",
                progress_bar=cfg.trainer.progress_bar and replicas.is_main,
            )
        except NonFiniteError as error:
            kept = (
                f"The last good checkpoint, {checkpoint_path}, is kept"
                if checkpoint_path.exists()
                else "No checkpoint had been written yet"
            )
            raise TrainingStopped(
                f"{error} at epoch {epoch + 1}, step {epoch_progress.step + 1}. {kept}. "
                "Lower the learning rate, or set trainer.on_nonfinite=skip to skip such steps"
            ) from error
        result.add_up(replicas)
        replicas.average_batchnorm_statistics(model)
        test_loss, test_acc = evaluate(
            evaluation_model,
            test_loader,
            device,
            precision=precision,
            memory_format=memory_format,
            replicas=replicas,
        )
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
        if val_loader is not None:
            record["val_loss"], record["val_acc"] = evaluate(
                evaluation_model,
                val_loader,
                device,
                precision=precision,
                memory_format=memory_format,
                replicas=replicas,
            )
        if isinstance(optimizer, SAM):
            record["perturbation_norm"] = result.perturbation_norm
            record["sharpness_aware_steps"] = result.sharpness_aware_steps
        if sparse:
            record["mask_density"] = optimizer.mask_density()
            record["mask_update_time_s"] = optimizer.mask_update_time_s - result.mask_update_time_at_start
        if tracker is not None and (epoch + 1) % track_every == 0:
            record["lambda_max"] = tracker.lambda_max(model)
        if replicas.is_main:
            metrics.append(record)
        if sink is not None:
            sink.log(record, step=epoch)
        print(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {result.loss:.4f} acc {result.accuracy:.2f}  "
            f"test loss {test_loss:.4f} acc {test_acc:.2f}  {result.time_s:.1f}s"
        )
        history = {
            "epoch": epoch + 1,
            "best_test_acc": max(history["best_test_acc"], test_acc),
            "train_time_s": history["train_time_s"] + result.time_s,
            "step_times_s": history["step_times_s"] + result.step_times_s,
            "final_test_acc": test_acc,
            # A resumed run's processes each see only their own peak: keep the largest.
            "peak_memory_mb": max(history.get("peak_memory_mb", 0.0), peak_memory_mb(device)),
            **_best_validation(history, record),
        }
        epoch_progress = None
        if replicas.is_main:
            _checkpoint(checkpoint_path, state(None))

    summary = {
        "final_test_acc": history["final_test_acc"],
        "best_test_acc": history["best_test_acc"],
        "epochs": cfg.epochs,
        "optimizer": cfg.optimizer.name,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "model_arch": cfg.model.get("arch"),  # timm models: the architecture
        "sparsity": cfg.optimizer.sparsity if cfg.optimizer.name in SPARSE else None,
        "rho": cfg.optimizer.rho if cfg.optimizer.name in SHARPNESS_AWARE else None,
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
        "world_size": replicas.world_size,
        "label_noise": cfg.dataset.label_noise,
        "label_noise_seed": cfg.dataset.label_noise_seed,
        "label_noise_changed": label_noise_changed,
        "val_size": cfg.dataset.val_size,
        **{key: history[key] for key in BEST_VAL_KEYS if key in history},
    }
    if cfg.optimizer.name in SHARPNESS_AWARE:
        summary["ascent_fraction"] = cfg.optimizer.ascent_fraction
        summary["perturbation"] = cfg.optimizer.perturbation
        summary["sam_from"] = cfg.optimizer.sam_from
        summary["m"] = cfg.optimizer.m
    if sparse:
        summary["granularity"] = cfg.optimizer.granularity
        summary["norm"] = cfg.optimizer.norm
        if cfg.optimizer.granularity == "tensor":
            summary["tensor_score"] = cfg.optimizer.tensor_score
            summary["ascent_cost"] = cfg.optimizer.ascent_cost
        if cfg.optimizer.name == "ssam_d":
            summary["drop_rate"] = cfg.optimizer.drop_rate
        summary["mask_density"] = optimizer.mask_density()
        summary["mask_update_time_s"] = optimizer.mask_update_time_s
    if replicas.is_main:
        write_json(summary_path, summary)
    if sink is not None:
        sink.finish(summary)
    print(format_table(summary))
    print(f"run directory: {run_dir}")
    return summary
