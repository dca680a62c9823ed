"""SAM-ON (optimizer=sam_on): its mask, its steps against a float64 reference loop, SAM on a model
that trains its normalisation layers alone, its passes, a resume, accumulation, mixed precision
and its refused settings."""

from __future__ import annotations

import pytest
import torch
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
    tiny_mlp,
)
from runs import train
from test_flops import mean_step_flops
from torch import nn

from ssam.train.methods import METHODS, ignored_settings


def is_normalisation(model: nn.Module) -> list[bool]:
    """For each parameter of ``model``: whether it belongs to a BatchNorm, LayerNorm or GroupNorm."""
    norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    owned = {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters()}
    return [id(p) in owned for p in model.parameters()]


def layer_normed_mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    """LayerNorm and GroupNorm, which normalise each example on its own: a batch's gradient is the
    sum of its micro-batches', as accumulation needs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Tanh(), nn.GroupNorm(2, 8), nn.Linear(8, 3)
    ).to(dtype)


def reference_sam_on(model: nn.Module, data):
    """SAM-ON's weights after ``data``, in float64, with torch.autograd: ε = ρ·g_N/‖g_N‖ on the
    normalisation layers' tensors N, 0 elsewhere."""
    sgd = ReferenceSGD(list(model.parameters()))
    perturbed = is_normalisation(model)
    for x, y in data:
        g = loss_gradient(model, sgd.weights, x, y)
        g_n = [gi if keep else torch.zeros_like(gi) for gi, keep in zip(g, perturbed)]
        scale = RHO / (norm(g_n) + NORM_EPS)
        climbed = [w + scale * d for w, d in zip(sgd.weights, g_n)]
        sgd.step(loss_gradient(model, climbed, x, y))
    return sgd.weights


def test_the_mask_is_the_normalisation_layers_parameters_whole_and_fixed():
    model = layer_normed_mlp(torch.float32)
    steps = run_steps("sam_on", batches(3), model=model)
    optimizer = steps.method.optimizer
    assert [bool(m.all()) for m in optimizer.masks] == [bool(m.any()) for m in optimizer.masks]
    assert [bool(m.all()) for m in optimizer.masks] == is_normalisation(model)
    assert optimizer.mask_updates == 1
    # After the first mask the ascent differentiates those tensors alone.
    assert [id(p) for p in optimizer.ascent_parameters()] == [
        id(p) for p, keep in zip(model.parameters(), is_normalisation(model)) if keep
    ]


def test_sam_on_steps_as_a_float64_reference_loop_computes():
    data = batches(4, dtype=torch.float64)
    expected = reference_sam_on(small_conv_net(torch.float64), data)
    steps = run_steps("sam_on", data, model=small_conv_net(torch.float64))
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)


def normalisation_only() -> nn.Module:
    """The small conv net with every weight outside its BatchNorm layers frozen."""
    model = small_conv_net()
    for p, keep in zip(model.parameters(), is_normalisation(model)):
        p.requires_grad_(keep)
    return model


def test_sam_on_is_sam_bit_for_bit_on_a_model_that_trains_its_normalisation_layers_alone():
    data = batches(4)
    sam_on = run_steps("sam_on", data, model=normalisation_only())
    sam = run_steps("sam", data, model=normalisation_only())
    assert_bitwise_equal(parameters_of(sam_on.model), parameters_of(sam.model))
    assert_bitwise_equal(list(sam_on.model.buffers()), list(sam.model.buffers()))


def test_sam_on_runs_the_passes_it_declares():
    data = batches(4)
    steps = run_steps("sam_on", data, sam_from=0.5)
    assert sum(steps.seen) / (len(data[0][1]) * len(data)) == steps.method.passes_per_step == 1.5


def test_the_ascent_is_charged_only_for_the_normalisation_layers_gradients():
    # Over four steps, the first of which computes every gradient (the mask's refresh).
    assert mean_step_flops("sgd") < mean_step_flops("sam_on") < mean_step_flops("sam")


def test_a_model_without_normalisation_layers_is_refused_naming_the_layers():
    with pytest.raises(ValueError, match="normalisation layers .* only, and this model trains none"):
        build_method("sam_on", tiny_mlp(), 1)


def test_a_resumed_sam_on_run_continues_bit_for_bit():
    data = batches(5)
    straight = run_steps("sam_on", data)
    resumed = resumed_in_process("sam_on", data, 2, small_conv_net)
    assert_bitwise_equal(parameters_of(resumed), parameters_of(straight.model))


def test_sam_on_under_accumulation_takes_the_whole_batch_s_steps():
    data = batches(4, dtype=torch.float64)
    whole = run_steps("sam_on", data, model=layer_normed_mlp())
    accumulated = run_steps("sam_on", data, model=layer_normed_mlp(), accumulate_steps=3)
    assert max(accumulated.seen) == 3
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_sam_on_under_bf16_stays_close_to_float32():
    from ssam.train.precision import Precision

    data = batches(4)
    full = run_steps("sam_on", data)
    half = run_steps("sam_on", data, precision=Precision("bf16", torch.device("cpu")))
    assert not any(result.skipped for result in half.results)
    for mine, theirs in zip(half.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=5e-2, atol=5e-3)


def test_sam_on_follows_rho_and_ignores_sparsity_and_advises_its_authors_rho():
    assert ignored_settings("sam_on") == {"sparsity"}
    defaults = METHODS["sam_on"].with_defaults({"rho": 0.05})
    assert (defaults["granularity"], defaults["norm"]) == ("tensor", "masked")
    assert any("ρ = 0.5" in note for note in METHODS["sam_on"].advice(defaults))
    assert METHODS["sam_on"].advice({**defaults, "rho": 0.5}) == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.granularity=element", "optimizer=sam_on needs optimizer.granularity=tensor (its mask"),
        ("optimizer.norm=half", "optimizer.norm must be one of full, masked, got 'half'"),
        ("+optimizer.sparsity=0.5", "optimizer.sparsity is not a setting of optimizer=sam_on"),
        ("+optimizer.update_freq=2", "optimizer.update_freq is not a setting of optimizer=sam_on"),
    ],
)
def test_a_bad_or_undefined_sam_on_setting_is_refused_naming_it(override, message):
    assert refusal(["optimizer=sam_on", override]).startswith(message)


@pytest.mark.slow
def test_train_py_exits_2_on_a_model_without_normalisation_layers(tmp_path):
    overrides = ["extensions=[tests/extensions/mlp.py]", "model=mlp", "dataset.train_size=64", "epochs=1"]
    result = train(tmp_path / "run", ["optimizer=sam_on", *overrides])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "this model trains none" in result.stdout + result.stderr
