"""Host syncs in the training loop, counted on the CPU.

On a GPU every read of a tensor's value on the host (``.item()``, ``bool()``, ``int()``,
``.tolist()``) waits for the kernels queued before it, and the GPU idles while the host then
queues the next ones. A step should wait once: for its non-finite check, after its last pass and
before the weights change (``Passes.settle``). The epoch's totals stay on the device until read.
The CPU runs the same Python, so the reads can be counted here by wrapping the tensor methods
that make them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import batches, small_conv_net
from torch.utils.data import TensorDataset

from ssam.train.kinds import RunContext
from ssam.train.loop import take_step, train_one_epoch
from ssam.train.methods import METHODS
from ssam.train.passes import Passes
from ssam.train.progress import TRAINER_TOTALS, EpochProgress

# The tensor methods through which Python reads a value off the device.
HOST_READS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy")
STEPS, BATCH = 5, 8


def count_host_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    reads = Counter()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _original=original, _name=name, **kwargs):
            reads[_name] += 1
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize(
    "name, settings, accumulate_steps",
    [
        ("sgd", {}, 1),
        ("sam", {}, 1),
        ("sam", {"m": 4}, 1),
        ("sam", {"ascent_fraction": 0.5}, 2),
        ("ssam_f", {"granularity": "tensor", "norm": "masked", "num_samples": 8}, 1),
        ("ssam_d", {}, 2),
        ("looksam", {"k": 2}, 1),  # its cheap steps and its SAM steps alike
        ("sam_on", {}, 2),
        ("msam", {"rho": 3.0}, 1),  # every step counted climbs along v, whose ‖v‖ stays on the device
        ("saf", {}, 2),  # storing its logits; with its trajectory loss on too: tests/test_saf.py
    ],
)
def test_a_step_reads_the_device_once(monkeypatch, name, settings, accumulate_steps):
    """After the first step (which refreshes a Sparse SAM mask and may read more), every step of
    every method reads one value on the host: whether its passes were finite."""
    model = small_conv_net()
    data = batches(STEPS + 1, size=BATCH)
    values = {"lr": 0.1, "weight_decay": 5e-4, "rho": 0.05, "sparsity": 0.5, **settings}
    values = {key: value for key, value in values.items() if key in METHODS[name].settings}
    train_set = TensorDataset(*data[0])
    # Every batch holds the whole training set, the first one's BATCH examples.
    whole_set = torch.arange(BATCH)
    run = RunContext(
        model, train_set, epochs=1, steps_per_epoch=STEPS + 1, seed=0, batch_positions=lambda _: whole_set
    )
    method = METHODS[name](values, run)
    method.start_epoch(0)
    passes = Passes(model, accumulate_steps=accumulate_steps)
    take_step(method, passes, *data[0], 0)
    loader = data[1:]  # batches as a DataLoader yields them (whose seed draw reads a CPU tensor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(method.base_optimizer, lambda _: 1.0)
    progress = EpochProgress.start((*TRAINER_TOTALS, *method.totals))

    reads = count_host_reads(monkeypatch)
    train_one_epoch(method, passes, scheduler, loader, progress=progress, steps_before=1, progress_bar=False)
    assert sum(reads.values()) == STEPS, reads

    monkeypatch.undo()
    assert progress.totals["images"] == STEPS * BATCH * (values.get("ascent_fraction", 1.0))
    assert progress.loss > 0


def test_the_totals_kept_on_the_device_add_up_as_on_the_host():
    """The same float64 sums in the same order, whether the steps' values are numbers or tensors,
    and read mid-way or not."""
    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 2.5e-8, 3.3, 1e7, 0.7)]
    on_host, on_device = EpochProgress(totals={"loss_sum": 0.0}), EpochProgress(totals={"loss_sum": 0.0})
    for index, value in enumerate(values):
        on_host.add({"loss_sum": value.item() * 7})
        on_device.add({"loss_sum": value.double() * 7})
        if index == 2:
            on_device.settle()
    on_device.settle()
    assert on_device.totals["loss_sum"] == on_host.totals["loss_sum"]
    assert isinstance(on_device.totals["loss_sum"], float)
