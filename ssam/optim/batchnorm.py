"""Keeping BatchNorm running statistics out of passes that must not change them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def frozen_batchnorm_stats(model: torch.nn.Module) -> Iterator[None]:
    """Inside, BatchNorm layers in training mode still normalise with the batch's statistics,
    but leave ``running_mean``, ``running_var`` and ``num_batches_tracked`` untouched.

    Turning ``track_running_stats`` off for the duration does exactly that in PyTorch's
    BatchNorm (it neither reads nor writes the buffers in training mode); setting the momentum
    to 0, the common trick, would still count ``num_batches_tracked`` up.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


@contextmanager
def restored_batchnorm_stats(model: torch.nn.Module) -> Iterator[None]:
    """What ``frozen_batchnorm_stats`` does, for a pass under torch.compile: the layers update
    their statistics as in any training pass, and get their saved values back when it ends.

    Dynamo's graphs guard on ``track_running_stats``, so switching it would compile a graph of
    its own for every frozen pass; this keeps the one graph of a training pass. (Under
    torch.func transforms, which forbid writing the buffers, use ``frozen_batchnorm_stats``.)
    """
    buffers = [
        buffer
        for layer in model.modules()
        if isinstance(layer, _BatchNorm) and layer.track_running_stats
        for buffer in (layer.running_mean, layer.running_var, layer.num_batches_tracked)
        if buffer is not None
    ]
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        # Through .data, which autograd does not version: the pass's backward, often run after
        # this ends, holds the buffers (and in training mode never reads their values).
        for buffer, value in zip(buffers, saved):
            buffer.data.copy_(value)
