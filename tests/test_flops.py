"""The FLOPs cost column: FlopCounterMode's count checked by hand on a small network, and a
training run's mean step in FLOPs against what each method's rule says."""

from __future__ import annotations

import pytest
import torch
from helpers import batches, small_conv_net
from torch import nn
from torch.utils.data import TensorDataset

from ssam.analysis.flops import flops_of, training_flops_per_step
from ssam.train.kinds import RunContext
from ssam.train.methods import METHODS
from ssam.train.passes import Passes


def test_a_forward_and_backward_cost_what_a_hand_count_says():
    """2 FLOPs a multiply-add. Conv2d(1→8, 3×3) on 28×28 gives 8×26×26 outputs of 9 products
    each; its backward computes the weight's gradient (same count) and not the input's, which
    needs none. The Linear layer's backward computes both its weight's and its input's."""
    batch = 16
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    inputs = torch.randn(batch, 1, 28, 28)
    conv = 2 * batch * 8 * 26 * 26 * (1 * 3 * 3)
    linear = 2 * batch * (8 * 26 * 26) * 10
    assert flops_of(lambda: model(inputs)) == conv + linear
    assert flops_of(lambda: model(inputs).sum().backward()) == 2 * conv + 3 * linear


def mean_step_flops(name: str, **settings) -> float:
    model = small_conv_net()
    inputs, targets = batches(1, size=16)[0]
    values = {"lr": 0.1, "weight_decay": 0.0, "rho": 0.05, "sparsity": 0.5, **settings}
    values = {key: value for key, value in values.items() if key in METHODS[name].settings}
    run = RunContext(model, TensorDataset(inputs, targets), epochs=2, steps_per_epoch=2, seed=0)
    method = METHODS[name](values, run)
    return training_flops_per_step(method, Passes(model), inputs, targets, epochs=2, steps_per_epoch=2)


def test_the_last_step_of_each_epoch_counts_the_examples_left_for_it():
    """Steps 0, 2 take 16 examples, steps 1, 3 the 8 left: a linear model's FLOPs follow the batch."""
    model = small_conv_net()
    inputs, targets = batches(1, size=16)[0]
    values = {"lr": 0.1, "weight_decay": 0.0}
    run = RunContext(model, TensorDataset(inputs, targets), epochs=2, steps_per_epoch=2, seed=0)
    method = METHODS["sgd"](values, run)
    full = training_flops_per_step(method, Passes(model), inputs, targets, epochs=2, steps_per_epoch=2)
    cut = training_flops_per_step(
        method, Passes(model), inputs, targets, epochs=2, steps_per_epoch=2, last_batch_size=8
    )
    assert cut == pytest.approx(0.75 * full, rel=1e-12)


def test_sam_costs_two_sgd_steps_and_late_phase_sam_its_share():
    sgd = mean_step_flops("sgd")
    assert mean_step_flops("sam") == 2 * sgd
    # Steps 0 and 1 of 4 are plain, 2 and 3 climb.
    assert mean_step_flops("sam", sam_from=0.5) == pytest.approx(1.5 * sgd, rel=1e-12)
    assert mean_step_flops("sam", ascent_fraction=0.5) == pytest.approx(1.5 * sgd, rel=1e-12)


def test_a_restricted_ascent_is_charged_only_for_the_gradients_it_computes():
    """Tensor-granular Sparse SAM whose mask leaves out the first layers: the ascent's backward
    stops early, so a step costs less than two SGD steps, even with the Fisher refresh's
    per-example passes amortised over the run."""
    sgd = mean_step_flops("sgd")
    ssam = mean_step_flops("ssam_f", granularity="tensor", norm="masked", num_samples=4, sparsity=0.9)
    assert sgd < ssam < 2 * sgd
