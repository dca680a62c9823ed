"""Weights & Biases logging; offline unless the user asks for online, so no run needs the network."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

WANDB_MODES = ("offline", "online", "disabled")


class WandbSink:
    def __init__(
        self,
        *,
        run_dir: Path,
        config: dict[str, Any],
        project: str,
        mode: str = "offline",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
        # Imported here: the optimizers and the rest of the trainer do not need wandb.
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            tags=tags,
            config=config,
            dir=str(run_dir),
            mode=mode,
            resume="allow",
            id=_run_id(run_dir),
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def _run_id(run_dir: Path) -> str:
    """One id per run directory, kept in it, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_id.txt"
    if id_file.exists():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return run_id
