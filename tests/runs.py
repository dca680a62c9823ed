"""Running train.py in a process of its own, as a user does, and reading what it leaves behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import warm_launch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
T = TypeVar("T")
TIMING_KEYS = {"epoch_time_s", "images_per_s", "mask_update_time_s"}


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


_MADE_ONCE: dict[str, object] = {}


def once_per_worker(key: str, make: Callable[[], T]) -> T:
    """``make()`` the first time this test worker asks for ``key``, the same result after. A
    module-scoped fixture alone trains its runs more than once: pytest-xdist tears a worker's
    fixtures down whenever its queue of tests runs empty, and the module's next test sets them
    up again (27 s for the two-process runs, each time)."""
    if key not in _MADE_ONCE:
        _MADE_ONCE[key] = make()
    return _MADE_ONCE[key]


def train_arguments(run_dir: Path, overrides: list[str]) -> list[str]:
    return [*overrides, f"hydra.run.dir={run_dir}", "trainer.progress_bar=false"]


def train_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "train.py", *train_arguments(run_dir, overrides)]


def torchrun_command(run_dir: Path, overrides: list[str], processes: int) -> list[str]:
    """train.py as ``processes`` data-parallel processes on this machine (torchrun, gloo)."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    return [*launcher, *train_command(run_dir, overrides)[1:]]


def command(run_dir: Path, overrides: list[str], processes: int = 1) -> list[str]:
    if processes == 1:
        return train_command(run_dir, overrides)
    return torchrun_command(run_dir, overrides, processes)


def start_warm(run_dir: Path, overrides: list[str], *, stdout: str | Path, stderr: str | Path):
    """train.py as one process in run_env(), forked from a warm interpreter (warm_launch), its
    streams written to the files ``stdout`` and ``stderr``."""
    arguments = train_arguments(run_dir, overrides)
    return warm_launch.WarmProcess(
        REPO / "train.py", arguments, cwd=REPO, env=run_env(), stdout=stdout, stderr=stderr
    )


def train(
    run_dir: Path,
    overrides: list[str],
    env: dict[str, str] | None = None,
    *,
    processes: int = 1,
    new_interpreter: bool = False,
):
    """train.py's run and output. One process in run_env() is forked from a warm interpreter
    (warm_launch); ``new_interpreter``, an ``env`` of the caller's, or torchrun start a new one."""
    if processes == 1 and env is None and not new_interpreter:
        arguments = train_arguments(run_dir, overrides)
        return warm_launch.run(REPO / "train.py", arguments, cwd=REPO, env=run_env(), timeout=TIMEOUT_S)
    return subprocess.run(
        command(run_dir, overrides, processes),
        cwd=REPO,
        env=env or run_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def train_ok(
    run_dir: Path,
    overrides: list[str],
    env: dict[str, str] | None = None,
    *,
    processes: int = 1,
    new_interpreter: bool = False,
):
    result = train(run_dir, overrides, env, processes=processes, new_interpreter=new_interpreter)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout}\n{result.stderr}"
    return result


def kill_after_checkpoints(run_dir: Path, overrides: list[str], writes: int, *, processes: int = 1) -> None:
    """Run train.py and stop it once last.pt has been (re)written ``writes`` times: SIGKILL for
    one process (a crash); for several, SIGTERM to torchrun, which ends its workers with it (a
    preemption; they run in sessions of their own, so a SIGKILL would leave them training)."""
    checkpoint = run_dir / "last.pt"
    run_dir.mkdir(parents=True)
    if processes == 1:
        process = start_warm(run_dir, overrides, stdout=os.devnull, stderr=os.devnull)
    else:
        process = subprocess.Popen(
            command(run_dir, overrides, processes),
            cwd=REPO,
            env=run_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    seen, last_stamp = 0, None
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while process.poll() is None and time.monotonic() < deadline and seen < writes:
            if checkpoint.exists():
                stamp = checkpoint.stat().st_mtime_ns
                if stamp != last_stamp:
                    seen, last_stamp = seen + 1, stamp
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL if processes == 1 else signal.SIGTERM)
    finally:
        process.wait()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def comparable(rows: list[dict]) -> list[dict]:
    """Metric rows without the times, which differ from run to run."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_kill_and_resume_is_bit_identical(tmp_path: Path, overrides: list[str], kill_seed: str) -> None:
    """A run SIGKILLed after a random number (1-14, drawn from ``kill_seed``) of its checkpoints,
    then resumed, ends with the weights, optimizer state, masks, loss scale and metrics of the
    same run left alone. ``overrides`` must checkpoint every step over at least 15 steps."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_ok(straight, overrides)
    kill_after_checkpoints(interrupted, overrides, random.Random(kill_seed).randint(1, 14))
    assert not (interrupted / "summary.json").exists(), "the kill must land before the run ends"
    resumed = train_ok(interrupted, overrides)
    assert "resuming" in resumed.stdout

    expected = torch.load(straight / "last.pt", weights_only=True)
    actual = torch.load(interrupted / "last.pt", weights_only=True)
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    expected_optimizer, actual_optimizer = expected["method"]["optimizer"], actual["method"]["optimizer"]
    if "base_optimizer" in expected_optimizer:
        for mine, theirs in zip(
            actual_optimizer["base_optimizer"]["state"].values(),
            expected_optimizer["base_optimizer"]["state"].values(),
        ):
            assert torch.equal(mine["momentum_buffer"], theirs["momentum_buffer"])
    assert actual["precision"] == expected["precision"]
    for mine, theirs in zip(actual_optimizer.get("masks") or [], expected_optimizer.get("masks") or []):
        assert torch.equal(mine, theirs)
    assert comparable(read_jsonl(interrupted / "metrics.jsonl")) == comparable(
        read_jsonl(straight / "metrics.jsonl")
    )
    assert (
        read_json(interrupted / "summary.json")["final_test_acc"]
        == read_json(straight / "summary.json")["final_test_acc"]
    )
