"""A script run in a new process forked from a warm interpreter, for tests that run train.py many
times. The process is new, as with ``python train.py``: its own memory, pid, standard streams and
exit code, and SIGKILL ends it. Only the imports are shared: torch, torchvision, Hydra and the
package are imported once per test worker, by a fork server, instead of once per run, which took
about 4 of the 5 seconds that a run that exits at once takes on a 2-core machine.

What a forked process does not get anew is what an interpreter sets up when it starts: the
variables that libraries read when they are loaded (of those, the intra-op thread count is set
again from OMP_NUM_THREADS) and the seed of str hashes, shared by every process of one fork
server. A test of anything that may depend on those (the environment, the same results from two
interpreters) runs the script in a new interpreter."""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# What train.py imports, imported once, in the fork server.
PRELOAD = ["torch", "torchvision", "hydra", "ssam.train.resolvers", "ssam.train.run"]
TESTS = str(Path(__file__).resolve().parent)
_context: multiprocessing.context.ForkServerContext | None = None


def _fork_server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_status(code: object) -> int:
    """The exit status that ``python`` gives a SystemExit with ``code``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _redirect(fd: int, path: str) -> io.TextIOWrapper:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(target, fd)
    os.close(target)
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", line_buffering=True)


def _run_script(script: str, arguments: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str):
    """In the forked process: ``python script *arguments`` from the point where the interpreter
    has started, then the interpreter's exit (its atexit functions, its exit status)."""
    sys.stdout, sys.stderr = _redirect(1, stdout), _redirect(2, stderr)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    # A script's own folder leads sys.path; this module's folder is not there for a user.
    sys.path[:] = [str(Path(script).parent), *(entry for entry in sys.path if entry != TESTS)]
    sys.argv = [script, *arguments]
    # The fork server made itself the default way to start processes; a new interpreter has
    # the platform's (DataLoader workers are forked on Linux, not sent through the server).
    multiprocessing.set_start_method(None, force=True)
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class WarmProcess:
    """``python script *arguments`` started from the fork server, with subprocess.Popen's
    poll, send_signal and wait."""

    def __init__(self, script: Path, arguments: list[str], *, cwd: Path, env: dict[str, str], stdout, stderr):
        self.args = [sys.executable, str(script), *arguments]
        self._process = _fork_server().Process(
            target=_run_script,
            args=(str(script), arguments, str(cwd), env, str(stdout), str(stderr)),
        )
        self._process.start()

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, signal_number: int) -> None:
        if self._process.exitcode is None:
            os.kill(self._process.pid, signal_number)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode


def run(script: Path, arguments: list[str], *, cwd: Path, env: dict[str, str], timeout: float):
    """subprocess.run(capture_output=True, text=True) of ``python script *arguments``."""
    with tempfile.TemporaryDirectory() as streams:
        stdout, stderr = Path(streams, "stdout"), Path(streams, "stderr")
        stdout.touch()
        stderr.touch()
        process = WarmProcess(script, arguments, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            raise
        return subprocess.CompletedProcess(process.args, status, stdout.read_text(), stderr.read_text())
