"""Switching between SGD and SAM steps: RST (optimizer=rst) and AE-SAM (optimizer=ae_sam). Their
choices against the rules written out, SAM and SGD at the policies' extremes, the passes and
share of SAM steps they record, their state across a resume, and their refused settings."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from hydra import compose, initialize_config_dir
from method_steps import (
    ReferenceSGD,
    build_method,
    loss_gradient,
    norm,
    resumed_in_process,
    run_steps,
    sam_gradient,
    take_steps,
    tiny_mlp,
)
from runs import REPO, assert_kill_and_resume_is_bit_identical
from test_host_syncs import count_host_reads

from ssam.data.sampling import mixed_seed
from ssam.errors import ConfigError
from ssam.train.precision import Precision
from ssam.train.switching import RANDOM_POLICY_STREAM
from ssam.train.validate import validate_config

ALWAYS, NEVER = (
    {"threshold_start": -1e9, "threshold_end": -1e9},
    {"threshold_start": 1e9, "threshold_end": 1e9},
)


@pytest.mark.parametrize(
    "name, settings, same_as",
    [
        ("rst", {"probability": 1.0}, "sam"),
        ("rst", {"probability": 0.0}, "sgd"),
        ("ae_sam", ALWAYS, "sam"),
        ("ae_sam", NEVER, "sgd"),
    ],
    ids=["rst-p=1-is-sam", "rst-p=0-is-sgd", "ae_sam-always-is-sam", "ae_sam-never-is-sgd"],
)
def test_a_policy_that_always_or_never_climbs_is_sam_or_sgd_bit_for_bit(name, settings, same_as):
    data = batches(4)
    switching = run_steps(name, data, **settings)
    assert switching.climbed == [same_as == "sam"] * len(data)
    assert_bitwise_equal(parameters_of(switching.model), parameters_of(run_steps(same_as, data).model))


# --- RST ---------------------------------------------------------------------------------------


def test_rst_climbs_when_a_uniform_draw_from_its_seeded_generator_is_below_p_t():
    total, seed = 40, 3
    method = build_method("rst", small_conv_net(), total, seed=seed, probability=0.2, probability_end=0.9)
    generator = torch.Generator().manual_seed(mixed_seed(seed, RANDOM_POLICY_STREAM))
    expected = [
        torch.rand((), generator=generator, dtype=torch.float64).item() < 0.2 + 0.7 * index / total
        for index in range(total)
    ]
    assert [method.is_sharpness_aware(index) for index in range(total)] == expected


def test_rst_s_share_of_sam_steps_follows_its_schedule_and_its_seed():
    total = 4000

    def choices(seed, **settings):
        method = build_method("rst", small_conv_net(), total, seed=seed, **settings)
        return torch.tensor([method.is_sharpness_aware(index) for index in range(total)], dtype=torch.float64)

    constant = choices(0, probability=0.3)
    assert constant.mean().item() == pytest.approx(0.3, abs=0.03)  # 4 standard deviations
    assert torch.equal(choices(0, probability=0.3), constant)
    assert not torch.equal(choices(1, probability=0.3), constant)
    rising = choices(0, probability=0.0, probability_end=1.0)
    halves = rising.view(2, -1).mean(dim=1)
    assert halves.tolist() == pytest.approx([0.25, 0.75], abs=0.04)


# --- AE-SAM ------------------------------------------------------------------------------------


def reference_ae_sam(model, data, *, decay=0.9, start=1.0, end=-1.0):
    """AE-SAM's weights, choices and final (μ, σ²) after ``data`` (a run of len(data) steps), in float64."""
    sgd = ReferenceSGD(list(model.parameters()))
    mean = variance = torch.zeros((), dtype=torch.float64)
    choices = []
    for index, (x, y) in enumerate(data):
        g = loss_gradient(model, sgd.weights, x, y)
        squared = norm(g) ** 2
        mean = decay * mean + (1 - decay) * squared
        variance = decay * variance + (1 - decay) * (squared - mean) ** 2
        threshold = start + (end - start) * index / len(data)
        choices.append(bool(squared >= mean + threshold * variance.sqrt()))
        sgd.step(sam_gradient(model, sgd.weights, g, x, y) if choices[-1] else g)
    return sgd.weights, choices, (mean, variance)


def test_ae_sam_steps_and_chooses_as_a_float64_reference_loop_does():
    # δ = 0.5: statistics that start from 0 warm up within these few steps, so that both choices occur.
    data = batches(10, dtype=torch.float64)
    expected, choices, statistics = reference_ae_sam(tiny_mlp(), data, decay=0.5)
    assert True in choices and False in choices
    steps = run_steps("ae_sam", data, model=tiny_mlp(), ema_decay=0.5)
    assert steps.climbed == choices
    kept = steps.method.statistics
    torch.testing.assert_close((kept.mean, kept.variance), statistics, rtol=1e-10, atol=0)
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)


def test_ae_sam_under_accumulation_chooses_and_steps_as_with_the_whole_batch():
    data = batches(6, dtype=torch.float64)
    whole = run_steps("ae_sam", data, model=tiny_mlp(), ema_decay=0.5)
    accumulated = run_steps("ae_sam", data, model=tiny_mlp(), ema_decay=0.5, accumulate_steps=2)
    assert accumulated.climbed == whole.climbed
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_ae_sam_under_fp16_steps_on_the_unscaled_gradients():
    data = batches(5)
    fp16 = Precision("fp16", torch.device("cpu"))
    full = run_steps("ae_sam", data, model=tiny_mlp(torch.float32), ema_decay=0.5)
    half = run_steps("ae_sam", data, model=tiny_mlp(torch.float32), ema_decay=0.5, precision=fp16)
    assert half.climbed == full.climbed and not any(result.skipped for result in half.results)
    for mine, theirs in zip(half.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-3)


def test_an_ae_sam_step_reads_the_device_once_and_its_sam_steps_once_more(monkeypatch):
    """The pass at w's check and the choice in one read; a SAM step's descent, a second."""
    data = batches(4)
    model = small_conv_net()
    method = build_method("ae_sam", model, len(data))
    reads = count_host_reads(monkeypatch)
    take_steps(method, model, data)
    monkeypatch.undo()
    assert sum(reads.values()) == len(data) + method.sharpness_aware_steps_taken, reads


# --- both: passes, records, state ---------------------------------------------------------------


@pytest.mark.parametrize("name, settings", [("rst", {"probability": 0.5}), ("ae_sam", {"ema_decay": 0.5})])
def test_the_passes_per_step_and_the_share_of_sam_steps_are_those_measured(name, settings):
    data = batches(8)
    steps = run_steps(name, data, **settings)
    taken = sum(steps.climbed)
    assert 0 < taken < len(data)
    batch = len(data[0][1])
    assert sum(steps.seen) / (batch * len(data)) == pytest.approx(steps.method.passes_per_step)
    assert steps.method.passes_per_step == 1 + taken / len(data)
    totals = {}
    for result in steps.results:
        for key, value in result.totals.items():
            totals[key] = totals.get(key, 0) + value
    fraction = next(m for m in steps.method.metrics if m.name == "sharpness_aware_fraction")
    assert fraction.value(steps.method, totals) == taken / len(data)


def test_late_phase_switching_takes_sgd_steps_before_its_phase():
    data = batches(8)
    for name in ("rst", "ae_sam"):
        steps = run_steps(name, data, sam_from=0.5, **({"probability": 1.0} if name == "rst" else ALWAYS))
        assert steps.climbed == [False] * 4 + [True] * 4


@pytest.mark.parametrize("name, settings", [("rst", {"probability": 0.5}), ("ae_sam", {"ema_decay": 0.5})])
def test_a_switching_run_resumed_from_its_state_dict_continues_bit_for_bit(name, settings):
    data = batches(7)
    straight = run_steps(name, data, **settings)
    for stop in (1, 4):
        resumed = resumed_in_process(name, data, stop, small_conv_net, **settings)
        assert_bitwise_equal(parameters_of(resumed), parameters_of(straight.model))


# --- refused settings ---------------------------------------------------------------------------


def compose_with(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("rst", "optimizer.probability=1.5", "optimizer.probability must be in [0, 1], got 1.5"),
        ("rst", "optimizer.probability_end=-0.1", "optimizer.probability_end must be in [0, 1], got -0.1"),
        ("ae_sam", "optimizer.ema_decay=1", "optimizer.ema_decay must be in (0, 1), got 1"),
        (
            "ae_sam",
            "optimizer.threshold_start=inf",
            "optimizer.threshold_start must be a finite number, got inf",
        ),
        (
            "ae_sam",
            "optimizer.threshold_end=low",
            "optimizer.threshold_end must be a finite number, got 'low'",
        ),
        ("ae_sam", "optimizer.m=4", "optimizer=ae_sam needs optimizer.m=null (g at w is SGD's gradient"),
        ("ae_sam", "optimizer.ascent_fraction=0.5", "optimizer=ae_sam needs optimizer.ascent_fraction=1.0 "),
        ("ae_sam", "optimizer.perturbation=local", "optimizer=ae_sam needs optimizer.perturbation=global "),
        ("ae_sam", "optimizer.bn_stats=descent", "optimizer=ae_sam needs optimizer.bn_stats=ascent or both "),
    ],
)
def test_a_bad_or_undefined_switching_setting_is_refused_naming_it(name, override, message):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_with([f"optimizer={name}", override]))
    assert str(error.value).startswith(message)


@pytest.mark.slow
def test_a_killed_rst_run_resumes_mid_epoch_bit_for_bit(tmp_path):
    overrides = [
        "optimizer=rst",
        "dataset.train_size=256",
        "dataset.test_size=64",
        "batch_size=32",
        "epochs=2",
        "trainer.checkpoint_every_steps=1",
    ]
    assert_kill_and_resume_is_bit_identical(tmp_path, overrides, kill_seed="rst")
