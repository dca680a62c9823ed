"""Running train.py as a subprocess, as a user does, and reading what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def run_env(**changes: str | None) -> dict[str, str]:
    """The caller's environment with ``changes`` (None removes a variable).

    One intra-op thread: on a 2-core machine shared with other processes (another pytest, a
    second test worker) two OpenMP threads per run can stall on each other's time slices and
    make SAM's many small per-parameter ops tens of times slower. Both runs that a test compares
    get the same setting, so determinism and resume checks are unaffected."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME"):
        env.pop(key, None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def train_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "train.py",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "trainer.progress_bar=false",
    ]


def train(run_dir: Path, overrides: list[str], env: dict[str, str] | None = None):
    return subprocess.run(
        train_command(run_dir, overrides),
        cwd=REPO,
        env=env or run_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def train_ok(run_dir: Path, overrides: list[str], env: dict[str, str] | None = None):
    result = train(run_dir, overrides, env)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout}\n{result.stderr}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
