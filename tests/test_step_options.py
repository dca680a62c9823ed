"""How a step can be made cheaper: the m-sharpness ascent on part of the batch, mixed precision
with a loss scale that covers both SAM passes, and the channels-last layout."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from test_ssam import RHO, SGD_OPTIONS

from ssam import SAM
from ssam.optim import frozen_batchnorm_stats
from ssam.train.passes import NonFiniteError
from ssam.train.precision import DynamicLossScale, Precision
from ssam.train.steps import ascent_batch_size, training_step

CPU = torch.device("cpu")


def sam(model):
    return SAM(model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS)


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_ascent_batch_is_the_first_fraction_rounded_up():
    assert ascent_batch_size(128, 1.0) == 128
    assert ascent_batch_size(128, 0.25) == 32
    assert ascent_batch_size(10, 0.25) == 3
    assert ascent_batch_size(4, 0.01) == 1


def test_ascent_fraction_takes_the_ascent_gradient_from_the_first_part_of_the_batch():
    x, y = batches(1, size=8)[0]
    model = small_conv_net()
    reference = copy.deepcopy(model)
    result = training_step(model, sam(model), x, y, ascent_fraction=0.5)

    optimizer = sam(reference)
    loss = F.cross_entropy(reference(x[:4]), y[:4])
    loss.backward()
    optimizer.first_step(zero_grad=True)
    with frozen_batchnorm_stats(reference):
        F.cross_entropy(reference(x), y).backward()
    optimizer.second_step(zero_grad=True)

    assert_bitwise_equal(parameters_of(model), parameters_of(reference))
    assert result.examples == 4
    assert torch.equal(result.loss, loss.detach())


@pytest.mark.parametrize("amp, tolerance", [("bf16", 0.1), ("fp16", 0.02)])
def test_mixed_precision_steps_stay_close_to_float32(amp, tolerance):
    data = batches(3, size=8)
    reference, model = small_conv_net(), small_conv_net()
    precision = Precision(amp, CPU)
    reference_optimizer, optimizer = sam(reference), sam(model)
    for x, y in data:
        training_step(reference, reference_optimizer, x, y)
        result = training_step(model, optimizer, x, y, precision=precision)
        assert not result.skipped
    start, low, full = (flat_parameters(m) for m in (small_conv_net(), model, reference))
    # The low-precision update is the float32 one to within its precision (bf16: 8 bits of
    # mantissa, fp16: 11), relative to the update's size.
    assert (low - full).norm() <= tolerance * (full - start).norm()


def test_fp16_overflow_skips_the_step_halves_the_scale_and_does_not_stop():
    model = small_conv_net()
    optimizer = sam(model)
    before = parameters_of(model)
    bn_before = [b.clone() for b in model.buffers()]
    precision = Precision("fp16", CPU)
    precision.loss_scale.scale = 2.0**60  # scaled float16 gradients overflow
    x, y = batches(1, size=8)[0]
    result = training_step(model, optimizer, x, y, precision=precision, on_nonfinite="stop")
    assert result.skipped
    assert precision.loss_scale.scale == 2.0**59
    assert_bitwise_equal(parameters_of(model), before)
    assert_bitwise_equal([b.clone() for b in model.buffers()], bn_before)
    assert all(p.grad is None for p in model.parameters())


def test_fp16_still_stops_on_a_non_finite_loss():
    model = small_conv_net()
    x, y = batches(1, size=8)[0]
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="ascent"):
        training_step(model, sam(model), x, y, precision=Precision("fp16", CPU))


def test_loss_scale_grows_after_a_run_of_good_steps_and_halves_on_overflow():
    scale = DynamicLossScale(init_scale=8.0, growth_interval=3)
    for _ in range(3):
        scale.update(overflowed=False)
    assert scale.scale == 16.0
    scale.update(overflowed=False)
    scale.update(overflowed=True)
    assert scale.scale == 8.0 and scale.good_steps == 0
    restored = DynamicLossScale()
    restored.load_state_dict(scale.state_dict())
    assert (restored.scale, restored.good_steps) == (8.0, 0)


def test_unknown_amp_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16, got 'fp8'"):
        Precision("fp8", CPU)


def test_channels_last_gives_the_same_step_to_rounding():
    x, y = batches(1, size=8)[0]
    reference, model = small_conv_net(), small_conv_net().to(memory_format=torch.channels_last)
    training_step(reference, sam(reference), x, y)
    training_step(model, sam(model), x.to(memory_format=torch.channels_last), y)
    for a, b in zip(parameters_of(model), parameters_of(reference)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
