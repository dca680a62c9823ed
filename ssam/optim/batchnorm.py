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
