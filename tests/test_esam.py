"""ESAM (optimizer=esam): its steps against a float64 reference loop, SAM at β = γ = 1, the passes
it declares, its tensor draws across a resume, accumulation, mixed precision and its refused
settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_bitwise_equal, batches, parameters_of, refusal, small_conv_net
from method_steps import (
    NORM_EPS,
    RHO,
    ReferenceSGD,
    build_method,
    loss_gradient,
    norm,
    resumed_in_process,
    run_steps,
    take_steps,
    tiny_mlp,
)
from test_flops import mean_step_flops
from test_host_syncs import count_host_reads
from torch.func import functional_call

from ssam.analysis.flops import flops_of
from ssam.train.esam import selected_count, sharpest_examples
from ssam.train.precision import Precision

BETA, GAMMA = 0.5, 0.5


def example_losses(model, weights, x, y) -> torch.Tensor:
    names = [name for name, _ in model.named_parameters()]
    return F.cross_entropy(functional_call(model, dict(zip(names, weights)), (x,)), y, reduction="none")


def reference_esam(model, data, generator: torch.Generator):
    """ESAM's weights after ``data`` in float64, written out with torch.autograd, and the tensors
    each step drew (True: in the ascent)."""
    sgd = ReferenceSGD(list(model.parameters()))
    draws = []
    for x, y in data:
        w = sgd.weights
        g = loss_gradient(model, w, x, y)
        drawn = (torch.rand(len(w), dtype=torch.float64, generator=generator) < BETA).tolist()
        g_s = [gi if keep else torch.zeros_like(gi) for gi, keep in zip(g, drawn)]
        scale = RHO / (BETA * norm(g_s) + NORM_EPS)
        climbed = [wi + scale * gi for wi, gi in zip(w, g_s)]
        with torch.no_grad():
            rise = example_losses(model, climbed, x, y) - example_losses(model, w, x, y)
        chosen = sorted(rise.argsort(descending=True)[: round(GAMMA * len(y))].tolist())
        sgd.step(loss_gradient(model, climbed, x[chosen], y[chosen]))
        draws.append(drawn)
    return sgd.weights, draws


def test_esam_steps_as_a_float64_reference_loop_computes():
    data = batches(6, dtype=torch.float64)
    method = build_method("esam", tiny_mlp(), len(data), beta=BETA, gamma=GAMMA)
    generator = torch.Generator()
    generator.set_state(method.optimizer.generator.get_state())
    expected, draws = reference_esam(tiny_mlp(), data, generator)
    assert any(0 < sum(drawn) < len(drawn) for drawn in draws)  # some steps drop some tensors
    steps = take_steps(method, method.run.model, data)
    assert all(steps.climbed)
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("accumulate_steps", [1, 3])
def test_esam_with_beta_and_gamma_1_is_sam_bit_for_bit_with_no_pass_of_its_own(accumulate_steps):
    data = batches(4)
    esam = run_steps("esam", data, beta=1.0, gamma=1.0, accumulate_steps=accumulate_steps)
    sam = run_steps("sam", data, accumulate_steps=accumulate_steps)
    assert_bitwise_equal(parameters_of(esam.model), parameters_of(sam.model))
    assert_bitwise_equal(list(esam.model.buffers()), list(sam.model.buffers()))
    assert esam.seen == sam.seen


def test_the_descent_takes_the_round_gamma_b_examples_whose_loss_rose_most_in_batch_order():
    assert [selected_count(8, gamma) for gamma in (0.5, 0.3, 0.01, 1.0)] == [4, 2, 1, 8]
    sharpness = torch.tensor([0.1, 0.9, -0.2, 0.9, 0.5])
    assert sharpest_examples(sharpness, 3).tolist() == [1, 3, 4]
    assert sharpest_examples(sharpness, 1).tolist() == [1]  # a tie: the earlier example


def forward_passes(model) -> tuple[list, object]:
    """(examples, with gradients?) for each forward of ``model``, and the hook's handle."""
    seen = []
    handle = model.register_forward_hook(
        lambda module, inputs, output: seen.append((len(inputs[0]), torch.is_grad_enabled()))
    )
    return seen, handle


def test_esam_runs_the_passes_it_declares_counting_a_forward_without_gradients_as_a_third():
    data = batches(8, size=8)
    model = small_conv_net()
    method = build_method("esam", model, len(data), gamma=0.5, sam_from=0.25)
    seen, handle = forward_passes(model)
    steps = take_steps(method, model, data)
    handle.remove()
    passes = sum(count if with_gradients else count / 3 for count, with_gradients in seen)
    assert steps.climbed == [False, False, *[True] * 6]
    assert passes / (8 * len(data)) == pytest.approx(method.passes_per_step) == 1 + 6 / 8 * (0.5 + 1 / 3)


def test_the_selection_costs_a_forward_and_the_tensor_draws_save_backward_flops():
    sgd = mean_step_flops("sgd")
    forward = flops_of(lambda: small_conv_net()(batches(1, size=16)[0][0]))
    assert mean_step_flops("esam", beta=1.0, gamma=1.0) == mean_step_flops("sam") == 2 * sgd
    # The ascent's whole pass, the selection's forward, the descent's half of a pass.
    selecting = mean_step_flops("esam", beta=1.0, gamma=0.5)
    assert selecting == pytest.approx(sgd + forward + 0.5 * sgd, rel=1e-12)
    assert mean_step_flops("esam", beta=0.6, gamma=0.5) < selecting


def test_the_selection_pass_leaves_batchnorm_statistics_to_the_ascent_s_update():
    # From the same weights, SAM's ascent and ESAM's (β = 1) update the statistics alike; the
    # pass at w + ε that ranks the examples must then leave them as they are.
    data = batches(1)
    esam = run_steps("esam", data, beta=1.0, gamma=0.5)
    sam = run_steps("sam", data)
    assert_bitwise_equal(list(esam.model.buffers()), list(sam.model.buffers()))


def test_the_tensor_draws_are_in_the_state_and_a_resumed_run_continues_bit_for_bit():
    data = batches(6)
    straight = run_steps("esam", data, beta=BETA, gamma=GAMMA)
    state = straight.method.state_dict()["optimizer"]
    fresh = build_method("esam", small_conv_net(), len(data), beta=BETA, gamma=GAMMA)
    assert not torch.equal(fresh.optimizer.generator.get_state(), state["generator"])
    fresh.load_state_dict(straight.method.state_dict())
    assert torch.equal(fresh.optimizer.generator.get_state(), state["generator"])
    for stop in (1, 4):
        resumed = resumed_in_process("esam", data, stop, small_conv_net, beta=BETA, gamma=GAMMA)
        assert_bitwise_equal(parameters_of(resumed), parameters_of(straight.model))


def test_the_draws_follow_the_run_s_seed_alike_in_every_process():
    def draws(seed: int) -> list[int]:
        method = build_method("esam", small_conv_net(), 10, seed=seed, beta=BETA)
        drawn = []
        for _ in range(10):
            drawn.append(len(method.optimizer.ascent_parameters()))
            method.optimizer.restore_weights()
        return drawn

    assert draws(0) == draws(0) != draws(1)


@pytest.mark.parametrize("accumulate_steps", [2, 3])
def test_esam_under_accumulation_takes_the_whole_batch_s_steps(accumulate_steps):
    data = batches(5, dtype=torch.float64)
    whole = run_steps("esam", data, model=tiny_mlp(), beta=BETA, gamma=GAMMA)
    accumulated = run_steps(
        "esam", data, model=tiny_mlp(), beta=BETA, gamma=GAMMA, accumulate_steps=accumulate_steps
    )
    assert max(accumulated.seen) == math.ceil(len(data[0][1]) / accumulate_steps)
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_esam_trains_under_mixed_precision(amp):
    data = batches(4)
    full = run_steps("esam", data, beta=BETA, gamma=GAMMA)
    mixed = run_steps("esam", data, beta=BETA, gamma=GAMMA, precision=Precision(amp, torch.device("cpu")))
    assert not any(result.skipped for result in mixed.results)
    start = parameters_of(small_conv_net())
    assert all(torch.isfinite(p).all() for p in mixed.model.parameters())
    # Rounding may change which examples are selected, not the size of the steps.
    moved = [
        norm([p.detach() - s for p, s in zip(steps.model.parameters(), start)]) for steps in (mixed, full)
    ]
    assert moved[0].item() == pytest.approx(moved[1].item(), rel=0.1)


def test_an_esam_step_reads_the_device_once_besides_its_cpu_draw(monkeypatch):
    data = batches(4)
    model = small_conv_net()
    method = build_method("esam", model, len(data), beta=BETA, gamma=GAMMA)
    reads = count_host_reads(monkeypatch)
    take_steps(method, model, data)
    monkeypatch.undo()
    # Each step: its settle, and the tensor draw, made on the CPU (no wait for a device).
    assert sum(reads.values()) == 2 * len(data), reads


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.beta=0", "optimizer.beta must be in (0, 1], got 0"),
        ("optimizer.gamma=1.5", "optimizer.gamma must be in (0, 1], got 1.5"),
        ("optimizer.m=4", "optimizer=esam needs optimizer.m=null (the data selection compares"),
        ("optimizer.ascent_fraction=0.5", "optimizer=esam needs optimizer.ascent_fraction=1.0 (the data"),
    ],
)
def test_a_bad_or_undefined_esam_setting_is_refused_naming_it(override, message):
    assert refusal(["optimizer=esam", override]).startswith(message)
