"""Checkpoints written atomically and read back safely.

A checkpoint is a plain dict of tensors and containers, so it loads with
``torch.load(weights_only=True)``; it goes to a temporary file in the same folder, is flushed
to disk, then renamed over the old one, so a crash leaves either the old or the new file whole.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "ssam-checkpoint-2"
# Written by earlier versions, still read (ssam/train/resume.py brings them up to date).
EARLIER_FORMATS = ("ssam-checkpoint-1",)


class CheckpointError(RuntimeError):
    """The checkpoint file exists but cannot be used."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0]}. "
            "It is truncated or was not written by ssam; delete it (or pass resume=false) to start over"
        ) from error
    if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, *EARLIER_FORMATS):
        raise CheckpointError(f"{path} is not an ssam checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


class RunDirectoryBusy(RuntimeError):
    """Another process is training in this run directory."""


@contextmanager
def exclusive_run_directory(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the whole run, so that two jobs of a sweep that
    share it (sgd at two sparsities, a requeued job next to a stale one) never write it at once.

    A POSIX record lock (lockf), not flock: data-loader workers forked during the run do not
    inherit it, so a killed run's lingering workers cannot block its resumption."""
    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunDirectoryBusy(f"another process is training in {run_dir}") from None
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
