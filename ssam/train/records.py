"""Keeping a run's records: its history (in the checkpoint), metrics.jsonl and the method's own
JSON-lines files, wandb, the console, and summary.json. Rank 0 alone writes."""

from __future__ import annotations

import resource
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssam.devices import device_name
from ssam.train.distributed import Replicas
from ssam.train.kinds import Method
from ssam.train.methods import run_variant
from ssam.train.metrics import JsonLines
from ssam.train.progress import Metric
from ssam.train.wandb_sink import WandbSink


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring this run's CUDA peak: a multirun's jobs share one process, and each would
    otherwise report the largest peak of the jobs before it too. (The CPU's peak resident size
    cannot be reset: under a multirun it is the process's.)"""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on the CPU the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class RunHistory:
    """The run so far, epoch by epoch: what summary.json reports, kept in the checkpoint."""

    epoch: int = 0  # epochs done
    # The test set's accuracies; None where it was not evaluated (trainer.test_every_epoch=false
    # measures the final and the best-validation epoch's once, at the end: ``with_test``).
    best_test_acc: float | None = None
    final_test_acc: float | None = None
    train_time_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list)
    peak_memory_mb: float = 0.0  # a resumed run's processes each see only their own: the largest
    # The best validation accuracy, its epoch (0-based, as metrics' ``epoch``) and that epoch's
    # test accuracy; a tie keeps the earlier epoch. None without a validation set.
    best_val_acc: float | None = None
    best_val_epoch: int | None = None
    test_acc_at_best_val: float | None = None
    # The summary.json values of the metrics that declare one (``Metric.summary``).
    metric_summaries: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunHistory:
        return cls(**state)

    def after_epoch(
        self,
        record: dict[str, Any],
        *,
        time_s: float,
        step_times_s: list[float],
        peak_memory_mb: float,
        metrics: tuple[Metric, ...],
    ) -> RunHistory:
        """The history with the epoch of ``record`` (its line of metrics.jsonl) added."""
        test_acc = record.get("test_acc")
        best_val = {}
        if "val_acc" in record and (self.best_val_acc is None or record["val_acc"] > self.best_val_acc):
            best_val = dict(
                best_val_acc=record["val_acc"], best_val_epoch=record["epoch"], test_acc_at_best_val=test_acc
            )
        return replace(
            self,
            epoch=self.epoch + 1,
            best_test_acc=test_acc if self.best_test_acc is None else max(self.best_test_acc, test_acc),
            final_test_acc=test_acc,
            train_time_s=self.train_time_s + time_s,
            step_times_s=self.step_times_s + step_times_s,
            peak_memory_mb=max(self.peak_memory_mb, peak_memory_mb),
            metric_summaries=_summarised(self.metric_summaries, record, metrics),
            **best_val,
        )

    def with_test(self, *, final: float, at_best_val: float | None) -> RunHistory:
        """The history with the test accuracies measured once, at the end of the run."""
        return replace(self, final_test_acc=final, test_acc_at_best_val=at_best_val)

    @property
    def is_best_val_epoch(self) -> bool:
        """Whether the last epoch added is the best on validation data so far."""
        return self.best_val_epoch is not None and self.best_val_epoch == self.epoch - 1


def _summarised(
    summaries: dict[str, Any], record: dict[str, Any], metrics: tuple[Metric, ...]
) -> dict[str, Any]:
    summaries = dict(summaries)
    for metric in metrics:
        value = record.get(metric.name)
        if metric.summary == "last":
            summaries[metric.name] = value
        elif metric.summary == "sum" and value is not None:
            summaries[metric.name] = summaries.get(metric.name, 0) + value
    return summaries


def setting_tags(cfg: DictConfig) -> list[str]:
    tags = [cfg.optimizer.name, cfg.dataset.name, cfg.model.name]
    if "sparsity" in cfg.optimizer:
        tags.append(f"sparsity={cfg.optimizer.sparsity}")
    return tags


def setting_name(cfg: DictConfig) -> str:
    """The setting without the seed, e.g. ``fmnist_cpu/ssam_f/sparsity=0.5``: the wandb group
    that gathers a sweep's seeds, as a table row does."""
    parts = [cfg.experiment_name, cfg.dataset.name, cfg.model.name, cfg.optimizer.name]
    if "sparsity" in cfg.optimizer:
        parts.append(f"sparsity={cfg.optimizer.sparsity}")
    return "/".join(parts)


class RunRecords:
    """Where a run's records go: metrics.jsonl and the method's files in ``run_dir``, wandb if
    asked, the console. Off the main process nothing is written."""

    def __init__(self, cfg: DictConfig, run_dir: Path, replicas: Replicas, epochs_done: int) -> None:
        self.cfg, self.run_dir, self.is_main = cfg, run_dir, replicas.is_main
        self.metrics = self.open_lines("metrics.jsonl")
        if self.metrics is not None:
            self.metrics.keep(lambda record: record["epoch"] < epochs_done)
        self.sink = None
        if cfg.logger.name == "wandb" and self.is_main:
            self.sink = WandbSink(
                run_dir=run_dir,
                config=OmegaConf.to_container(cfg, resolve=True),
                project=cfg.logger.project,
                mode=cfg.logger.mode,
                entity=cfg.logger.entity,
                group=cfg.logger.group or setting_name(cfg),
                tags=[*cfg.logger.tags, *setting_tags(cfg)],
            )

    def open_lines(self, name: str) -> JsonLines | None:
        """A JSON-lines file of the run directory, by name; None off the main process, which
        writes nothing."""
        return JsonLines(self.run_dir / name) if self.is_main else None

    def epoch(self, record: dict[str, Any]) -> None:
        """Record an epoch's line (on the main process): metrics.jsonl, wandb and the console."""
        self.metrics.append(record)
        if self.sink is not None:
            self.sink.log(record, step=record["epoch"])
        evaluated = " ".join(
            f"{split} loss {record[f'{split}_loss']:.4f} acc {record[f'{split}_acc']:.2f} "
            for split in ("test", "val")
            if f"{split}_acc" in record
        )
        print(
            f"epoch {record['epoch'] + 1}/{self.cfg.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2f}  {evaluated} {record['epoch_time_s']:.1f}s"
        )

    def finish(self, summary: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.finish(summary)


def run_summary(
    cfg: DictConfig,
    history: RunHistory,
    method: Method,
    replicas: Replicas,
    label_noise_changed: float,
    *,
    compiled_graphs: int | None = None,
) -> dict[str, Any]:
    """summary.json: the results, the settings that shaped them, and where they ran.
    ``compiled_graphs``: under trainer.compile, the graphs this process compiled."""
    device = replicas.device
    settings = method.values
    summary = {
        "final_test_acc": history.final_test_acc,
        "best_test_acc": history.best_test_acc,
        "epochs": cfg.epochs,
        "optimizer": method.name,
        "optimizer_label": method.label,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "model_arch": cfg.model.get("arch"),  # timm models: the architecture
        # None for a method that does not read them, as SGD ρ.
        "sparsity": settings.get("sparsity"),
        "rho": settings.get("rho"),
        "amp": cfg.trainer.amp,
        "accumulate_steps": cfg.trainer.accumulate_steps,
        "deterministic": cfg.trainer.deterministic,
        "compiled_graphs": compiled_graphs,
        "seed": cfg.seed,
        "train_time_s": history.train_time_s,
        "step_time_s": statistics.median(history.step_times_s),
        "passes_per_step": method.passes_per_step,
        "peak_memory_mb": history.peak_memory_mb,
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
        **method.recorded_settings(settings),
        **history.metric_summaries,
    }
    if history.best_val_acc is not None:
        summary |= {
            "best_val_acc": history.best_val_acc,
            "best_val_epoch": history.best_val_epoch,
            "test_acc_at_best_val": history.test_acc_at_best_val,
        }
    summary["variant"] = run_variant(summary)
    return summary
