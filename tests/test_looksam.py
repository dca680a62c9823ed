"""LookSAM (optimizer=looksam): its steps against a float64 reference loop, SAM at k = 1, its
rhythm and passes, its state across a resume, accumulation, fp16 and its refused settings."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from hydra import compose, initialize_config_dir
from method_steps import (
    LR,
    MOMENTUM,
    NORM_EPS,
    RHO,
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
from runs import REPO
from test_host_syncs import count_host_reads

from ssam import LookSAM
from ssam.errors import ConfigError
from ssam.train.precision import Precision
from ssam.train.validate import validate_config

ALPHA = 0.7


def blocks(vectors: list[torch.Tensor], decomposition: str) -> list[list[int]]:
    """The indices of the tensors each decomposition takes together."""
    indices = list(range(len(vectors)))
    return [indices] if decomposition == "global" else [[i] for i in indices]


def orthogonal_part(g, g_s, decomposition):
    """g_v = g_s − (⟨g, g_s⟩ / ‖g‖²)·g, per block."""
    g_v = [None] * len(g)
    for block in blocks(g, decomposition):
        inner = sum((g[i] * g_s[i]).sum() for i in block)
        coefficient = inner / norm([g[i] for i in block]) ** 2
        for i in block:
            g_v[i] = g_s[i] - coefficient * g[i]
    return g_v


def with_orthogonal_part(g, g_v, decomposition):
    """g + α·(‖g‖ / ‖g_v‖)·g_v, per block."""
    direction = list(g)
    for block in blocks(g, decomposition):
        scale = ALPHA * norm([g[i] for i in block]) / (norm([g_v[i] for i in block]) + NORM_EPS)
        for i in block:
            direction[i] = g[i] + scale * g_v[i]
    return direction


def reference_looksam(model, data, *, k, decomposition):
    """LookSAM's weights after ``data``, in float64, step by step with torch.autograd."""
    sgd = ReferenceSGD(list(model.parameters()))
    g_v = None
    for index, (x, y) in enumerate(data):
        g = loss_gradient(model, sgd.weights, x, y)
        if index % k == 0:
            g_s = sam_gradient(model, sgd.weights, g, x, y)
            g_v = orthogonal_part(g, g_s, decomposition)
            sgd.step(g_s)
        else:
            sgd.step(with_orthogonal_part(g, g_v, decomposition))
    return sgd.weights


@pytest.mark.parametrize("decomposition", ["global", "tensor"])
def test_looksam_steps_as_a_float64_reference_loop_computes(decomposition):
    data = batches(7, dtype=torch.float64)
    expected = reference_looksam(tiny_mlp(), data, k=3, decomposition=decomposition)
    steps = run_steps("looksam", data, model=tiny_mlp(), k=3, alpha=ALPHA, decomposition=decomposition)
    assert steps.climbed == [True, False, False, True, False, False, True]
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)


def test_looksam_with_k_1_is_sam_bit_for_bit():
    data = batches(4)
    looksam = run_steps("looksam", data, k=1)
    sam = run_steps("sam", data)
    assert_bitwise_equal(parameters_of(looksam.model), parameters_of(sam.model))


def test_looksam_in_a_loop_of_one_s_own_takes_the_method_s_steps():
    data = batches(5, dtype=torch.float64)
    model = tiny_mlp()
    optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, alpha=ALPHA, lr=LR, momentum=MOMENTUM)
    for index, (x, y) in enumerate(data):

        def loss_at_the_weights(x=x, y=y):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss_at_the_weights()
        optimizer.step(loss_at_the_weights if index % 3 == 0 else None)
    steps = run_steps("looksam", data, model=tiny_mlp(), k=3, alpha=ALPHA, weight_decay=0.0)
    assert_bitwise_equal(parameters_of(model), parameters_of(steps.model))


def test_looksam_climbs_every_k_th_step_of_its_phase_and_runs_the_passes_it_declares():
    data = batches(8)
    steps = run_steps("looksam", data, k=3, sam_from=0.25)
    # Steps 0-1 come before the phase (⌈0.25·8⌉ = 2), which opens with a SAM step, then every third.
    assert steps.climbed == [False, False, True, False, False, True, False, False]
    batch = len(data[0][1])
    assert sum(steps.seen) / (batch * len(data)) == pytest.approx(steps.method.passes_per_step) == 1 + 2 / 8


def test_looksam_keeps_g_v_in_its_state_and_a_resumed_run_continues_bit_for_bit():
    data = batches(7)
    straight = run_steps("looksam", data, k=3)
    state = straight.method.state_dict()["optimizer"]["state"]
    assert len(state) == len(list(straight.model.parameters()))
    assert all(set(entry) == {"orthogonal_gradient"} for entry in state.values())
    for stop in (2, 4):  # mid-way between SAM steps, and right after one
        resumed = resumed_in_process("looksam", data, stop, small_conv_net, k=3)
        assert_bitwise_equal(parameters_of(resumed), parameters_of(straight.model))


def test_looksam_under_accumulation_takes_the_whole_batch_s_steps():
    data = batches(5, dtype=torch.float64)
    whole = run_steps("looksam", data, model=tiny_mlp(), k=2)
    accumulated = run_steps("looksam", data, model=tiny_mlp(), k=2, accumulate_steps=2)
    assert max(accumulated.seen) == len(data[0][1]) // 2
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_looksam_under_fp16_uses_g_and_g_v_unscaled():
    # With the loss scaled by 2¹⁶, a g or g_v read before unscaling would move the weights by far
    # more than fp16's rounding does.
    data = batches(5)
    full = run_steps("looksam", data, model=tiny_mlp(torch.float32), k=2)
    half = run_steps(
        "looksam", data, model=tiny_mlp(torch.float32), k=2, precision=Precision("fp16", torch.device("cpu"))
    )
    assert not any(result.skipped for result in half.results)
    for mine, theirs in zip(half.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-3)


def test_a_looksam_step_reads_the_device_once(monkeypatch):
    data = batches(4)
    model = small_conv_net()
    method = build_method("looksam", model, len(data), k=2)
    reads = count_host_reads(monkeypatch)
    take_steps(method, model, data)  # SAM, reuse, SAM, reuse
    monkeypatch.undo()
    assert sum(reads.values()) == len(data), reads


def compose_with(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=["optimizer=looksam", *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.k=0", "optimizer.k must be an integer >= 1, got 0"),
        ("optimizer.alpha=-0.5", "optimizer.alpha must be >= 0, got -0.5"),
        ("optimizer.decomposition=rows", "optimizer.decomposition must be one of global, tensor, got 'rows'"),
        ("optimizer.m=4", "optimizer=looksam needs optimizer.m=null (g_v is taken against the whole batch's"),
        ("optimizer.ascent_fraction=0.5", "optimizer=looksam needs optimizer.ascent_fraction=1.0 "),
        ("optimizer.perturbation=local", "optimizer=looksam needs optimizer.perturbation=global "),
    ],
)
def test_a_bad_or_undefined_looksam_setting_is_refused_naming_it(override, message):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_with([override]))
    assert str(error.value).startswith(message)
