"""SAM: against a float64 reference, against SGD at ρ = 0, and across a state_dict round trip."""

import io
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from torch import nn
from torch.func import functional_call

from ssam import SAM
from ssam.train.steps import training_step

LR, MOMENTUM, WEIGHT_DECAY, RHO = 0.1, 0.9, 5e-4, 0.05


def bn_free_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 8 * 8, 3)
    ).double()


def reference_sam(model, data, *, rho, adaptive, steps_lr=LR) -> dict[str, torch.Tensor]:
    """SAM with SGD (momentum, weight decay) written out by hand, float64, one dict of weights."""
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    momentum = {name: None for name in weights}

    def gradient(at, x, y):
        at = {name: w.clone().requires_grad_(True) for name, w in at.items()}
        loss = F.cross_entropy(functional_call(model, at, (x,)), y)
        return dict(zip(at, torch.autograd.grad(loss, list(at.values()))))

    for x, y in data:
        g = gradient(weights, x, y)
        scale = {name: weights[name].abs() if adaptive else torch.ones_like(w) for name, w in weights.items()}
        norm = torch.sqrt(sum(((scale[n] * g[n]) ** 2).sum() for n in g))
        climbed = {n: weights[n] + rho * scale[n] ** 2 * g[n] / (norm + 1e-12) for n in weights}
        g_sharp = gradient(climbed, x, y)
        for n in weights:
            d_p = g_sharp[n] + WEIGHT_DECAY * weights[n]
            momentum[n] = d_p.clone() if momentum[n] is None else MOMENTUM * momentum[n] + d_p
            weights[n] = weights[n] - steps_lr * momentum[n]
    return weights


def run_sam(model, data, **sam_options):
    optimizer = SAM(
        model.parameters(),
        torch.optim.SGD,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        **sam_options,
    )
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.second_step(zero_grad=True)
    return optimizer


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_matches_float64_reference_over_three_steps(adaptive):
    data = batches(3, dtype=torch.float64)
    expected = reference_sam(bn_free_net(), data, rho=RHO, adaptive=adaptive)
    model = bn_free_net()
    run_sam(model, data, rho=RHO, adaptive=adaptive)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-12)


def test_first_step_climbs_exactly_rho_and_second_step_restores_weights_bitwise():
    model = small_conv_net(torch.float64)
    before = parameters_of(model)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.0)
    x, y = batches(1, dtype=torch.float64)[0]
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    distance = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert distance.item() == pytest.approx(RHO, rel=1e-9)
    assert optimizer.last_perturbation_norm.item() == pytest.approx(RHO, rel=1e-9)
    F.cross_entropy(model(x), y).backward()
    optimizer.second_step(zero_grad=True)  # lr 0: the base step changes nothing
    assert_bitwise_equal(parameters_of(model), before)


def test_sam_with_rho_zero_equals_sgd_bitwise():
    data = batches(4)
    sgd_model, sam_model = small_conv_net(), small_conv_net()
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sam = SAM(
        sam_model.parameters(), torch.optim.SGD, rho=0.0, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    for x, y in data:
        training_step(sgd_model, sgd, x, y)
        training_step(sam_model, sam, x, y)
    assert_bitwise_equal(parameters_of(sam_model), parameters_of(sgd_model))
    assert_bitwise_equal(list(sam_model.buffers()), list(sgd_model.buffers()))


def test_step_with_closure_equals_first_and_second_step():
    data = batches(3)
    manual_model, closure_model = small_conv_net(), small_conv_net()
    run_sam(manual_model, data, rho=RHO)
    optimizer = SAM(
        closure_model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )
    for x, y in data:
        F.cross_entropy(closure_model(x), y).backward()
        optimizer.step(lambda x=x, y=y: F.cross_entropy(closure_model(x), y).backward())
        optimizer.zero_grad()
    assert_bitwise_equal(parameters_of(closure_model), parameters_of(manual_model))


def test_step_without_closure_explains_what_is_needed():
    model = small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        optimizer.step()


def test_negative_rho_is_rejected():
    with pytest.raises(ValueError, match="rho must be >= 0, got -0.1"):
        SAM(small_conv_net().parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)


def test_state_dict_round_trip_continues_bitwise_with_momentum():
    data = batches(6)
    model = small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    for x, y in data[:3]:
        training_step(model, optimizer, x, y)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    for x, y in data[3:]:
        training_step(model, optimizer, x, y)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["optimizer"]["base_optimizer"]["state"], "momentum buffers must be saved"
    resumed_model = small_conv_net(seed=99)
    resumed = SAM(resumed_model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["optimizer"])
    for x, y in data[3:]:
        training_step(resumed_model, resumed, x, y)
    assert_bitwise_equal(parameters_of(resumed_model), parameters_of(model))
    assert resumed.param_groups is resumed.base_optimizer.param_groups


def test_descent_pass_leaves_batchnorm_statistics_alone_by_default():
    x, y = batches(1)[0]
    model = small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    reference = small_conv_net()
    reference.train()
    reference(x)  # one forward at w: the ascent pass's update of the running statistics
    training_step(model, optimizer, x, y, bn_stats="ascent")
    assert_bitwise_equal(list(model.buffers()), list(reference.buffers()))


def test_both_passes_update_batchnorm_statistics_when_asked():
    x, y = batches(1)[0]
    model = small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    training_step(model, optimizer, x, y, bn_stats="both")
    assert model[1].num_batches_tracked.item() == 2


def test_optimizers_import_without_hydra_wandb_or_data_code():
    code = (
        "import sys; from ssam import SAM, SSAM, FisherMask, DynamicMask; "
        "heavy = [m for m in ('hydra', 'omegaconf', 'wandb', 'torchvision', 'timm', 'ssam.data', 'ssam.train')"
        " if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_descent_only_batchnorm_statistics_are_counted_once():
    x, y = batches(1)[0]
    model = small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    training_step(model, optimizer, x, y, bn_stats="descent")
    assert model[1].num_batches_tracked.item() == 1


def test_a_skipped_non_finite_step_leaves_weights_and_batchnorm_statistics_alone():
    x, y = batches(1)[0]
    x[0, 0, 0, 0] = float("inf")
    model = small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    weights, stats = parameters_of(model), [b.clone() for b in model.buffers()]
    result = training_step(model, optimizer, x, y, on_nonfinite="skip")
    assert result.skipped
    assert_bitwise_equal(parameters_of(model), weights)
    assert_bitwise_equal(list(model.buffers()), stats)
