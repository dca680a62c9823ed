"""m-sharpness (Foret et al., Sec. 4): each shard of m examples climbs its own ε and takes its
own descent gradient; the step uses their mean, weighted by shard size."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_a_non_finite_example_skips_the_whole_step,
    assert_bitwise_equal,
    batches,
    parameters_of,
    small_conv_net,
)
from test_ssam import LR, MOMENTUM, RHO, SGD_OPTIONS, WEIGHT_DECAY, FixedMask, random_masks
from torch import nn

from ssam import SAM, SSAM
from ssam.train.steps import training_step


def net_without_batchnorm(seed: int = 0) -> nn.Module:
    """Float64, no BatchNorm: every shard's passes are then independent of the others."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 64, 3)
    ).double()


def reference_steps(model, data, m, masks=None, steps_rho=RHO):
    """The definition, in a plain loop: per shard ε_i = ρ·(m⊙g_i)/‖g_i‖, descent gradient at
    w + ε_i, their size-weighted mean, then SGD with momentum and weight decay."""
    params = list(model.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    for x, y in data:
        mean_grad = [torch.zeros_like(p) for p in params]
        origin = [p.detach().clone() for p in params]
        for start in range(0, len(y), m):
            xs, ys = x[start : start + m], y[start : start + m]
            grads = torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            with torch.no_grad():
                for index, (p, g) in enumerate(zip(params, grads)):
                    mask = 1.0 if masks is None else masks[index]
                    p.add_(steps_rho * mask * g / (norm + 1e-12))
            descent = torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
            with torch.no_grad():
                for p, w, total, g in zip(params, origin, mean_grad, descent):
                    p.copy_(w)
                    total.add_(g * len(ys) / len(y))
        with torch.no_grad():
            for p, b, g in zip(params, momentum, mean_grad):
                b.mul_(MOMENTUM).add_(g + WEIGHT_DECAY * p)
                p.sub_(LR * b)


def sam(model):
    return SAM(model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS)


@pytest.mark.parametrize("m", [1, 3, 4])
def test_each_shard_climbs_its_own_perturbation(m):
    data = batches(3, size=8, dtype=torch.float64)
    model = net_without_batchnorm()
    reference = copy.deepcopy(model)
    optimizer = sam(model)
    for x, y in data:
        training_step(model, optimizer, x, y, shard_size=m)
    reference_steps(reference, data, m)
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


def test_sparse_sam_shards_share_one_mask():
    data = batches(2, size=8, dtype=torch.float64)
    model = net_without_batchnorm()
    reference = copy.deepcopy(model)
    masks = random_masks(model)
    optimizer = SSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=0.5,
        mask_strategy=FixedMask(masks),
        **SGD_OPTIONS,
    )
    for x, y in data:
        training_step(model, optimizer, x, y, shard_size=4)
    reference_steps(reference, data, 4, masks=[mask.double() for mask in masks])
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


def test_shards_of_the_whole_batch_are_plain_sam_bit_for_bit():
    data = batches(3, size=8)
    model, reference = small_conv_net(), small_conv_net()
    optimizer, reference_optimizer = sam(model), sam(reference)
    for x, y in data:
        result = training_step(model, optimizer, x, y, shard_size=8)
        expected = training_step(reference, reference_optimizer, x, y)
        assert torch.equal(result.loss, expected.loss)
    assert_bitwise_equal(parameters_of(model), parameters_of(reference))
    assert torch.equal(optimizer.last_perturbation_norm, reference_optimizer.last_perturbation_norm)


def test_loss_and_accuracy_are_over_the_whole_batch_at_w():
    x, y = batches(1, size=8)[0]
    model = small_conv_net()
    # Train-mode BatchNorm normalises each shard by its own statistics: the loss at w is the
    # shards' losses, weighted by their sizes (3, 3 and a remainder of 2).
    shards = [(x[s : s + 3], y[s : s + 3]) for s in (0, 3, 6)]
    with torch.no_grad():
        expected_loss = sum(F.cross_entropy(model(xs), ys) * len(ys) / 8 for xs, ys in shards)
        expected_correct = sum(int((model(xs).argmax(1) == ys).sum()) for xs, ys in shards)
    model = small_conv_net()
    result = training_step(model, sam(model), x, y, shard_size=3)
    assert result.examples == 8
    assert result.sharpness_aware
    assert int(result.correct) == expected_correct
    torch.testing.assert_close(result.loss, expected_loss, rtol=1e-6, atol=1e-6)


def test_a_non_finite_shard_skips_the_whole_step():
    assert_a_non_finite_example_skips_the_whole_step(
        sam, poisoned=10, shard_size=3
    )  # in the last of 4 shards
