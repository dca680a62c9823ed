"""Momentum-SAM (optimizer=msam): its steps against a float64 reference loop and against its
authors' stored-perturbed form, SGD at ρ = 0 and at its first step, w kept between steps, late
phase, a resume in process and of a killed train.py run, accumulation, fp16, a non-finite pass,
its optimizer in a loop of one's own, and its refused settings."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import assert_bitwise_equal, batches, parameters_of, refusal, small_conv_net
from method_steps import (
    LR,
    MOMENTUM,
    NORM_EPS,
    ReferenceSGD,
    build_method,
    loss_gradient,
    norm,
    resumed_in_process,
    run_steps,
    tiny_mlp,
)

from ssam import MomentumSAM
from ssam.train.loop import take_step
from ssam.train.methods import METHODS, ignored_settings
from ssam.train.passes import NonFiniteError, Passes
from ssam.train.precision import Precision
from ssam.train.steps import training_step

# Large beside SAM's 0.05 on these small models, as the authors' ρ = 3 is on theirs.
RHO = 0.5


def perturbation(buffers: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """a = −ρ·v / (‖v‖ + 10⁻¹²)."""
    scale = rho / (norm(buffers) + NORM_EPS)
    return [-scale * v for v in buffers]


def reference_msam(model, data, *, rho=RHO):
    """Momentum-SAM's weights after ``data``, in float64 with torch.autograd: w stored, each
    gradient taken at w + a, none before the first step (no momentum yet)."""
    sgd = ReferenceSGD(list(model.parameters()))
    for x, y in data:
        point = sgd.weights
        if sgd.buffers is not None:
            point = [w + a for w, a in zip(sgd.weights, perturbation(sgd.buffers, rho))]
        sgd.step(loss_gradient(model, point, x, y))
    return sgd.weights


def authors_msam(model, data, *, rho=RHO):
    """The authors' form, without weight decay (which they take at w + a): the stored weights are
    p = w + a; a step takes ∇L(p), goes back by the last a, steps, and stores p + the new a.
    Returns the weights they evaluate, p − a."""
    stored = [w.detach().clone() for w in model.parameters()]
    buffers = [torch.zeros_like(p) for p in stored]  # their zero buffers: no a at the first step
    a = [torch.zeros_like(p) for p in stored]
    for x, y in data:
        g = loss_gradient(model, stored, x, y)
        buffers = [MOMENTUM * v + gi for v, gi in zip(buffers, g)]
        new_a = perturbation(buffers, rho)
        stored = [p - ai - LR * v + ni for p, ai, v, ni in zip(stored, a, buffers, new_a)]
        a = new_a
    return [p - ai for p, ai in zip(stored, a)]


def test_msam_steps_as_a_float64_reference_loop_computes():
    data = batches(6, dtype=torch.float64)
    expected = reference_msam(tiny_mlp(), data)
    steps = run_steps("msam", data, model=tiny_mlp(), rho=RHO)
    assert steps.climbed == [False, True, True, True, True, True]
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)


def test_without_weight_decay_msam_is_its_authors_stored_perturbed_form():
    data = batches(6, dtype=torch.float64)
    expected = authors_msam(tiny_mlp(), data)
    steps = run_steps("msam", data, model=tiny_mlp(), rho=RHO, weight_decay=0.0)
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)


def test_msam_with_rho_0_is_sgd_bit_for_bit():
    data = batches(4)
    msam = run_steps("msam", data, rho=0.0)
    assert not any(msam.climbed)
    assert_bitwise_equal(parameters_of(msam.model), parameters_of(run_steps("sgd", data).model))


def test_the_first_step_has_no_momentum_to_climb_along_and_is_sgd_s():
    data = batches(1)
    msam = run_steps("msam", data, rho=RHO)
    assert msam.climbed == [False]
    assert_bitwise_equal(parameters_of(msam.model), parameters_of(run_steps("sgd", data).model))


def test_the_pass_sees_w_plus_a_and_the_step_leaves_sgd_s_w_stored():
    data = batches(2, dtype=torch.float64)
    model = tiny_mlp()
    method = build_method("msam", model, len(data), rho=RHO)
    take_step(method, Passes(model), *data[0], 0)
    w = parameters_of(model)
    v = [method.optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(parameters_of(module)))
    take_step(method, Passes(model), *data[1], 1)
    for point, wi, ai in zip(seen[0], w, perturbation(v, RHO)):
        torch.testing.assert_close(point, wi + ai, rtol=0, atol=1e-15)
    # SGD's step from w, not from w + a: w − η·v with the new buffer.
    for p, wi in zip(model.parameters(), w):
        new_v = method.optimizer.state[p]["momentum_buffer"]
        torch.testing.assert_close(p.detach(), wi - LR * new_v, rtol=0, atol=1e-15)


def test_late_phase_msam_takes_sgd_steps_then_climbs_along_their_momentum():
    data = batches(4)
    steps = run_steps("msam", data, rho=RHO, sam_from=0.5)
    assert steps.climbed == [False, False, True, True]


@pytest.mark.parametrize("stop", [1, 3])  # right after the first step (v exists), and mid-way
def test_a_resumed_msam_run_climbs_along_the_saved_momentum_and_continues_bit_for_bit(stop):
    data = batches(5)
    straight = run_steps("msam", data, rho=RHO)
    resumed = resumed_in_process("msam", data, stop, small_conv_net, rho=RHO)
    assert_bitwise_equal(parameters_of(resumed), parameters_of(straight.model))


def test_msam_under_accumulation_takes_the_whole_batch_s_steps():
    data = batches(4, dtype=torch.float64)
    whole = run_steps("msam", data, model=tiny_mlp(), rho=RHO)
    accumulated = run_steps("msam", data, model=tiny_mlp(), rho=RHO, accumulate_steps=2)
    assert max(accumulated.seen) == len(data[0][1]) // 2
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_msam_under_fp16_steps_on_the_unscaled_gradient():
    # With the loss scaled by 2¹⁶, a gradient stepped on unscaled would move the weights far more.
    data = batches(4)
    full = run_steps("msam", data, model=tiny_mlp(torch.float32), rho=RHO)
    half = run_steps(
        "msam", data, model=tiny_mlp(torch.float32), rho=RHO, precision=Precision("fp16", torch.device("cpu"))
    )
    assert not any(result.skipped for result in half.results)
    for mine, theirs in zip(half.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("on_nonfinite", ["skip", "stop"])
def test_a_non_finite_pass_at_w_plus_a_leaves_w_and_the_momentum_exactly_as_they_were(on_nonfinite):
    data = batches(2)
    model = small_conv_net()
    method = build_method("msam", model, len(data), rho=RHO)
    take_step(method, Passes(model), *data[0], 0)
    weights = parameters_of(model)
    momentum = [method.optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    x, y = data[1]
    x = x.clone()
    x[3] = float("nan")
    if on_nonfinite == "skip":
        assert take_step(method, Passes(model), x, y, 1, on_nonfinite="skip").skipped
    else:
        with pytest.raises(NonFiniteError, match="in the training pass"):
            take_step(method, Passes(model), x, y, 1)
    assert_bitwise_equal(parameters_of(model), weights)
    assert_bitwise_equal([method.optimizer.state[p]["momentum_buffer"] for p in model.parameters()], momentum)


def backward_pass(model, optimizer, x, y) -> torch.Tensor:
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


@pytest.mark.parametrize("form", ["climb and step", "closure", "training_step"])
def test_momentum_sam_in_a_loop_of_one_s_own_takes_the_method_s_steps(form):
    data = batches(4, dtype=torch.float64)
    model = tiny_mlp()
    optimizer = MomentumSAM(model.parameters(), rho=RHO, lr=LR, momentum=MOMENTUM, weight_decay=5e-4)
    for x, y in data:
        the_pass = partial(backward_pass, model, optimizer, x, y)
        if form == "closure":
            optimizer.step(the_pass)
        elif form == "training_step":
            training_step(model, optimizer, x, y)
        else:
            optimizer.climb()
            the_pass()
            optimizer.step()
    steps = run_steps("msam", data, model=tiny_mlp(), rho=RHO)
    assert_bitwise_equal(parameters_of(model), parameters_of(steps.model))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(rho=-1.0), "rho must be >= 0, got -1.0"),
        (dict(momentum=0.0), "MomentumSAM needs momentum > 0 (its perturbation follows the momentum buffer)"),
    ],
)
def test_momentum_sam_refuses_a_negative_rho_and_no_momentum(options, message):
    with pytest.raises(ValueError) as error:
        MomentumSAM(small_conv_net().parameters(), lr=LR, **{"momentum": MOMENTUM, **options})
    assert str(error.value).startswith(message)


def test_msam_follows_rho_and_advises_its_authors_rho():
    assert ignored_settings("msam") == {"sparsity"}
    defaults = METHODS["msam"].with_defaults({"lr": LR, "weight_decay": 5e-4, "rho": 0.05})
    assert any("ρ = 3" in note for note in METHODS["msam"].advice(defaults))
    assert METHODS["msam"].advice({**defaults, "rho": 3.0}) == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.momentum=0", "optimizer=msam needs optimizer.momentum > 0 (its perturbation follows"),
        ("optimizer.rho=-1", "optimizer.rho must be >= 0, got -1"),
        ("optimizer.sam_from=1.0", "optimizer.sam_from must be in [0, 1), got 1.0"),
        ("+optimizer.m=4", "optimizer.m is not a setting of optimizer=msam"),
        ("+optimizer.bn_stats=descent", "optimizer.bn_stats is not a setting of optimizer=msam"),
    ],
)
def test_a_bad_or_undefined_msam_setting_is_refused_naming_it(override, message):
    assert refusal(["optimizer=msam", override]).startswith(message)
