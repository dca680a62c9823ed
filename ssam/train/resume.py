"""Resuming a run from its checkpoint: refuse one made under settings that change its results,
then load it into the run's objects and random number generators."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssam.data.catalog import dataset_named
from ssam.errors import ConfigError
from ssam.models.catalog import model_named
from ssam.train.checkpoint import CHECKPOINT_FORMAT
from ssam.train.kinds import OPTIMIZER_KNOBS
from ssam.train.methods import method_named
from ssam.train.parts import RunParts
from ssam.train.progress import EpochProgress
from ssam.train.records import RunHistory
from ssam.train.rng import set_rng_state
from ssam.train.run_settings import results_identity
from ssam.train.schedulers import fast_forward


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """Every setting that shapes the run's numbers (``Setting.changes_results``); the top-level
    knobs the method ignores are left out, as they are of its sweep run's name."""
    method = method_named(cfg.optimizer.name)
    model = model_named(cfg.model.name)
    sections = {
        "optimizer": method.settings,
        "dataset": dataset_named(cfg.dataset.name).settings,
        "model": model.settings,
    }
    return results_identity(OmegaConf.to_container(cfg, resolve=True), sections, method.ignored_knobs())


def _upgraded(checkpoint: dict[str, Any], totals: list[str]) -> dict[str, Any]:
    """A checkpoint in today's layout. One written before methods kept their own state (format 1)
    held the optimizer's state at the top, the history as a dict, and the interrupted epoch's
    totals as fields; its identity also held dataset.download, which no longer changes results.
    Its run's summary then reports the mask refreshes' time from the resumption on only."""
    if checkpoint["format"] == CHECKPOINT_FORMAT:
        return checkpoint
    state = dict(checkpoint)
    progress = state["epoch_progress"]
    state["method"] = {
        "optimizer": state.pop("optimizer"),
        "mask_update_time_at_epoch_start": progress["mask_update_time_at_start"] if progress else 0.0,
    }
    known = {field.name for field in fields(RunHistory)}
    state["history"] = {key: value for key, value in state["history"].items() if key in known}
    if progress is not None:
        kept = ("step", "time_s", "step_times_s", "lr_at_start")
        state["epoch_progress"] = {
            **{key: progress[key] for key in kept},
            "totals": {name: progress[name] for name in totals},
        }
    state["identity"] = dict(state["identity"], dataset=dict(state["identity"]["dataset"]))
    state["identity"]["dataset"].pop("download", None)
    return state


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


def resume(
    cfg: DictConfig, checkpoint: dict[str, Any], run_dir: Path, parts: RunParts
) -> tuple[RunHistory, EpochProgress | None]:
    """Load ``checkpoint`` (the run directory's last.pt) into the run's objects and RNGs; the
    run's history so far and the progress of the interrupted epoch (None at an epoch boundary).

    A checkpoint taken at the end of an epoch resumes on any number of processes: the data order
    is one global order whatever their number. One taken within an epoch resumes only on as many
    processes as wrote it, since their shares of the epoch's remaining batches depend on it."""
    replicas = parts.replicas
    checkpoint = _upgraded(checkpoint, [total.name for total in parts.totals])
    saved_world_size = checkpoint["world_size"]
    other_world_size = saved_world_size != replicas.world_size
    differences = _differences(checkpoint["identity"], run_identity(cfg))
    if differences:
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({'; '.join(differences[:5])}): "
            "use another hydra.run.dir, or resume=false to overwrite it"
        )
    history = RunHistory.from_state_dict(checkpoint["history"])
    saved_progress = checkpoint["epoch_progress"]
    if other_world_size and saved_progress is not None:
        raise ConfigError(
            f"{run_dir} holds a checkpoint from the middle of epoch {history.epoch + 1}, written by "
            f"{_processes(saved_world_size)}, and this run has {_processes(replicas.world_size)}: "
            f"resume it on {_processes(saved_world_size)} (the number can change once that epoch "
            "ends), or pass resume=false to start over"
        )
    parts.model.load_state_dict(checkpoint["model"])
    parts.method.load_state_dict(checkpoint["method"])
    if other_world_size:
        # Another number of processes takes another number of steps per epoch: the schedule
        # goes on from the same fraction of training.
        fast_forward(parts.scheduler, history.epoch * parts.steps_per_epoch)
    else:
        parts.scheduler.load_state_dict(checkpoint["scheduler"])
    parts.precision.load_state_dict(checkpoint["precision"])
    set_rng_state(checkpoint["rng"])
    progress = None if saved_progress is None else EpochProgress(**saved_progress)
    if progress is not None and not replicas.is_main:
        # The saved totals are all the processes', carried by the main one.
        progress.clear(total for total in parts.totals if total.per_process)
    _say_where(cfg, run_dir, history, progress)
    if other_world_size:
        print(
            f"it ran on {_processes(saved_world_size)} and now on {_processes(replicas.world_size)}: "
            f"{replicas.world_size * cfg.batch_size} images per step from here on"
        )
    return history, progress


def _say_where(cfg: DictConfig, run_dir: Path, history: RunHistory, progress: EpochProgress | None) -> None:
    if history.epoch >= cfg.epochs:
        # The knobs sweeps vary most often first.
        ignored = [
            knob
            for knob in reversed(OPTIMIZER_KNOBS)
            if knob in method_named(cfg.optimizer.name).ignored_knobs()
        ]
        shared = (
            f" ({cfg.optimizer.name} ignores {', '.join(ignored)}: sweep jobs that differ only in "
            "these settings share this run)"
            if ignored
            else ""
        )
        print(f"{run_dir} is already finished; not training again{shared}")
    elif progress:
        print(f"resuming {run_dir} at step {progress.step} of epoch {history.epoch + 1} of {cfg.epochs}")
    else:
        print(f"resuming {run_dir} after epoch {history.epoch} of {cfg.epochs}")
