"""The trainer: config in, a run directory of metrics, summary and checkpoint out.

This is the one place below train.py that reads the config; everything it calls takes plain
arguments. A run is built (ssam/train/parts.py), resumed if its directory holds a checkpoint
(ssam/train/resume.py), trained epoch by epoch (ssam/train/loop.py) and recorded
(ssam/train/records.py). It runs any method the same way: the method's own step, hooks, metrics
and state are the method's (ssam/train/kinds.py).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssam.analysis.tracking import SharpnessTracker
from ssam.extensions import load_extensions
from ssam.train.checkpoint import CHECKPOINT_FORMAT, exclusive_run_directory, load_checkpoint, save_checkpoint
from ssam.train.compiling import CompileWatch
from ssam.train.determinism import set_determinism
from ssam.train.distributed import Replicas, join_processes
from ssam.train.loop import evaluate, train_one_epoch
from ssam.train.methods import method_named
from ssam.train.metrics import format_table, read_json, write_json
from ssam.train.parts import RunParts, build_parts
from ssam.train.passes import NonFiniteError
from ssam.train.progress import EpochProgress
from ssam.train.records import RunHistory, RunRecords, peak_memory_mb, reset_peak_memory, run_summary
from ssam.train.resume import resume, run_identity
from ssam.train.rng import rng_state
from ssam.train.validate import validate_config


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
        notes = method_named(cfg.optimizer.name).advice(OmegaConf.to_container(cfg.optimizer, resolve=True))
        notes += set_determinism(cfg.trainer.deterministic, replicas.device)
        reset_peak_memory(replicas.device)
        for note in notes:
            print(note)

        def hold_run_directory() -> None:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.enter_context(exclusive_run_directory(run_dir))

        replicas.on_main(hold_run_directory)
        return _train(cfg, run_dir, replicas)


class _Training:
    """The epochs of a run from its parts, with their records and checkpoints. ``history`` is the
    run so far, ``progress`` the interrupted epoch's (None at an epoch boundary)."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        parts: RunParts,
        history: RunHistory,
        progress: EpochProgress | None,
        best_val_weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.cfg, self.parts, self.replicas = cfg, parts, parts.replicas
        self.history, self.progress = history, progress
        # trainer.test_every_epoch=false: the model's state at the best validation epoch so far,
        # on the CPU, tested once at the end (None while there is none, and when testing each epoch).
        self.test_every_epoch = cfg.trainer.test_every_epoch
        self.best_val_weights = best_val_weights
        self.checkpoint_path = run_dir / "last.pt"
        self.records = RunRecords(cfg, run_dir, parts.replicas, history.epoch)
        parts.method.open_records(self.records.open_lines)
        self.track_every = cfg.trainer.track_sharpness_every
        # Made before the first epoch: see its docstring.
        self.tracker = SharpnessTracker(parts.train_set) if self.track_every else None
        self.compile_watch = CompileWatch() if cfg.trainer.compile else None

    def state(self, progress: EpochProgress | None) -> dict[str, Any]:
        parts = self.parts
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": run_identity(self.cfg),
            "world_size": self.replicas.world_size,
            "model": parts.model.state_dict(),
            "method": parts.method.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "precision": parts.precision.state_dict(),
            "rng": rng_state(),
            "history": self.history.state_dict(),
            "epoch_progress": None if progress is None else progress.state_dict(),
            "best_val_weights": self.best_val_weights,
        }

    def after_step(self, progress: EpochProgress) -> None:
        """The method's records of the step, and a checkpoint every trainer.checkpoint_every_steps steps."""
        parts, replicas = self.parts, self.replicas
        parts.method.after_step(self.history.epoch)
        every_steps = self.cfg.trainer.checkpoint_every_steps
        if every_steps and progress.step % every_steps == 0 and progress.step < parts.steps_per_epoch:
            # Every process takes the collective steps; then rank 0 writes.
            replicas.average_batchnorm_statistics(parts.model)
            progress.add_up(replicas, parts.totals, onto_main_only=True)
            if replicas.is_main:
                _checkpoint(self.checkpoint_path, self.state(progress))

    def train_epoch(self, epoch: int) -> EpochProgress:
        """The epoch's steps (those not yet done), their totals summed over the processes."""
        cfg, parts = self.cfg, self.parts
        if self.progress is None:
            self.progress = EpochProgress.start(parts.totals)
            parts.method.start_epoch(epoch)
        progress = self.progress
        if progress.step == 0:
            progress.lr_at_start = parts.method.optimizer.param_groups[0]["lr"]
        parts.train_set.set_epoch(epoch)
        parts.sampler.set_epoch(epoch, start=progress.step * cfg.batch_size)
        try:
            train_one_epoch(
                parts.method,
                parts.passes,
                parts.scheduler,
                parts.train_loader,
                progress=progress,
                steps_before=epoch * parts.steps_per_epoch,
                on_nonfinite=cfg.trainer.on_nonfinite,
                memory_format=parts.memory_format,
                after_step=self.after_step,
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
        progress.add_up(self.replicas, parts.totals)
        return progress

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

    def epoch_record(self, epoch: int, progress: EpochProgress) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl: the declared metrics of its training totals, then
        the test (and validation) sets."""
        parts = self.parts
        self.replicas.average_batchnorm_statistics(parts.model)
        record = {"epoch": epoch, "lr": progress.lr_at_start}
        if self.test_every_epoch:
            record["test_loss"], record["test_acc"] = self.evaluate(parts.test_loader)
        record |= {
            "epoch_time_s": progress.time_s,
            "images_per_s": progress.totals["trained_images"] / progress.time_s,
        }
        record |= {metric.name: metric.value(parts.method, progress.totals) for metric in parts.metrics}
        if parts.val_loader is not None:
            record["val_loss"], record["val_acc"] = self.evaluate(parts.val_loader)
        if self.compile_watch is not None:
            record["compiled_graphs"] = self.compile_watch.graphs
        if self.tracker is not None and (epoch + 1) % self.track_every == 0:
            record["lambda_max"] = self.tracker.lambda_max(parts.model)
        return record

    def end_epoch(self, progress: EpochProgress, record: dict[str, Any]) -> None:
        """Record the epoch, add it to the history, and checkpoint."""
        if self.replicas.is_main:
            self.records.epoch(record)
        self.history = self.history.after_epoch(
            record,
            time_s=progress.time_s,
            step_times_s=progress.step_times_s,
            peak_memory_mb=peak_memory_mb(self.replicas.device),
            metrics=self.parts.metrics,
        )
        self.progress = None
        if not self.test_every_epoch and self.history.is_best_val_epoch:
            self.best_val_weights = {
                key: value.detach().to("cpu", copy=True)
                for key, value in self.parts.model.state_dict().items()
            }
        if self.replicas.is_main:
            _checkpoint(self.checkpoint_path, self.state(None))
        for warning in self.compile_watch.new_warnings() if self.compile_watch else ():
            print(warning)

    def test_once(self) -> None:
        """trainer.test_every_epoch=false: the test set, once, on the final weights and on the best
        validation epoch's (then the final weights again), into the history."""
        model, loader = self.parts.model, self.parts.test_loader
        final_acc = self.evaluate(loader)[1]
        at_best_val = None
        if self.best_val_weights is not None:
            final_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
            model.load_state_dict(self.best_val_weights)
            at_best_val = self.evaluate(loader)[1]
            model.load_state_dict(final_weights)
        self.history = self.history.with_test(final=final_acc, at_best_val=at_best_val)


def _train(cfg: DictConfig, run_dir: Path, replicas: Replicas) -> dict[str, Any]:
    parts = build_parts(cfg, replicas)
    checkpoint_path = run_dir / "last.pt"
    history, progress, best_val_weights = RunHistory(), None, None
    checkpoint = replicas.on_main(
        lambda: load_checkpoint(checkpoint_path) if cfg.resume and checkpoint_path.exists() else None
    )
    if checkpoint is not None:
        history, progress = resume(cfg, checkpoint, run_dir, parts)
        best_val_weights = checkpoint.get("best_val_weights")
    summary_path = run_dir / "summary.json"
    if history.epoch >= cfg.epochs:
        # Finished: its summary stands as written (this process measured nothing).
        summary = replicas.on_main(lambda: read_json(summary_path) if summary_path.exists() else None)
        if summary is not None:
            print(format_table(summary))
            return summary
    training = _Training(cfg, run_dir, parts, history, progress, best_val_weights)
    for epoch in range(history.epoch, cfg.epochs):
        progress = training.train_epoch(epoch)
        training.end_epoch(progress, training.epoch_record(epoch, progress))
    if not training.test_every_epoch:
        training.test_once()
    watch = training.compile_watch
    summary = run_summary(
        cfg,
        training.history,
        parts.method,
        replicas,
        parts.label_noise_changed,
        compiled_graphs=None if watch is None else watch.graphs,
    )
    if watch is not None:
        watch.close()
    if replicas.is_main:
        write_json(summary_path, summary)
    training.records.finish(summary)
    print(format_table(summary))
    print(f"run directory: {run_dir}")
    return summary
