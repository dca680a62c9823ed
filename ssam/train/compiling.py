"""torch.compile for the trainer: the backend, and a watch on what dynamo compiled.

Dynamo compiles a new graph whenever what its guards check changes: input shapes, the model's
training mode, a parameter's ``requires_grad``, a module attribute its code reads. Past
``recompile_limit`` graphs for one function it stops compiling that function and runs it
eagerly, saying so in one log line among the run's output. ``CompileWatch`` counts the graphs
and catches that line, so that a run can say so plainly and record how many graphs it took.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")

# Where dynamo logs that it hit a recompile limit ("torch._dynamo hit config.recompile_limit").
DYNAMO_LOGGER = "torch._dynamo.convert_frame"


def compiler(backend: str) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """torch.compile with ``backend``, dynamo's caches cleared first: in a multirun's process
    the earlier jobs' graphs, which guard on their own models, would count towards the limit."""
    torch._dynamo.reset()
    return lambda module: torch.compile(module, backend=backend)


def _graphs_so_far() -> int:
    from torch._dynamo.utils import counters  # dynamo is imported only by runs that compile

    return int(counters["stats"]["unique_graphs"])


class _LimitHits(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "hit config." in message:
            self.messages.append(message.splitlines()[0] + " in " + message.splitlines()[1].strip())


class CompileWatch:
    """The graphs dynamo compiles from now on, and the recompile limits it hits."""

    def __init__(self) -> None:
        self.graphs_before = _graphs_so_far()
        self.limit_hits = _LimitHits()
        logging.getLogger(DYNAMO_LOGGER).addHandler(self.limit_hits)
        self.reported = 0

    @property
    def graphs(self) -> int:
        return _graphs_so_far() - self.graphs_before

    @property
    def hit_limit(self) -> bool:
        return bool(self.limit_hits.messages)

    def new_warnings(self) -> list[str]:
        """A console line for each limit hit since the last call."""
        fresh = self.limit_hits.messages[self.reported :]
        self.reported = len(self.limit_hits.messages)
        return [
            f"warning: trainer.compile: {message}; that function now runs uncompiled, without the "
            f"speed-up ({self.graphs} graphs compiled so far; TORCH_LOGS=recompiles says why)"
            for message in fresh
        ]

    def close(self) -> None:
        logging.getLogger(DYNAMO_LOGGER).removeHandler(self.limit_hits)
