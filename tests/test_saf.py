"""SAF (optimizer=saf): its steps against a float64 reference loop across the epoch its trajectory
loss starts in, SGD at λ = 0, its stored logits across a resume, accumulation, fp16, two
processes against one, its host reads and its refused settings."""

from __future__ import annotations

import math
import os
import socket
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import assert_bitwise_equal, parameters_of, refusal, small_conv_net
from method_steps import (
    SETTINGS,
    ReferenceSGD,
    build_method,
    resumed_in_process,
    run_steps,
    take_steps,
    tiny_mlp,
)
from test_host_syncs import count_host_reads
from torch.func import functional_call
from torch.utils.data import TensorDataset

from ssam.data.sampling import EpochShuffle
from ssam.train.distributed import Replicas
from ssam.train.kinds import RunContext
from ssam.train.loop import take_step
from ssam.train.passes import Passes
from ssam.train.precision import Precision
from ssam.train.saf import TRAJECTORY_EXAMPLES, TRAJECTORY_LOSS_SUM, SAFMethod

EXAMPLES, BATCH, SEED = 20, 8, 3
STEPS_PER_EPOCH = math.ceil(EXAMPLES / BATCH)  # batches of 8, 8 and 4
EPOCHS = 4
# The trajectory loss from the third epoch on, against the logits of two epochs before.
SAF = dict(trajectory_weight=0.5, temperature=2.0, past_epochs=2, start_epoch=2)


def training_set(dtype: torch.dtype = torch.float64) -> TensorDataset:
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(EXAMPLES, 1, 8, 8, generator=generator, dtype=dtype)
    return TensorDataset(images, torch.randint(0, 3, (EXAMPLES,), generator=generator))


def positions_of(sampler: EpochShuffle, steps_per_epoch: int, index: int) -> torch.Tensor:
    return sampler.batch_positions(*divmod(index, steps_per_epoch))


ORDER = partial(positions_of, EpochShuffle(EXAMPLES, SEED, batch_size=BATCH), STEPS_PER_EPOCH)


def step_batches(train_set: TensorDataset, epochs: int = EPOCHS) -> list:
    """The batches of ``epochs`` epochs in ORDER, as the loader would yield them."""
    images, labels = train_set.tensors
    return [(images[ORDER(index)], labels[ORDER(index)]) for index in range(epochs * STEPS_PER_EPOCH)]


def saf_steps(dtype: torch.dtype = torch.float64, *, model=None, epochs: int = EPOCHS, **options):
    """SAF's steps over ``epochs`` epochs of the training set, on ``model`` (a tiny MLP by default)."""
    train_set = training_set(dtype)
    model = model if model is not None else tiny_mlp(dtype)
    context = dict(epochs=epochs, train_set=train_set, batch_positions=ORDER)
    return run_steps("saf", step_batches(train_set, epochs), model=model, **context, **options)


def reference_saf(model, train_set, *, trajectory_weight, temperature, past_epochs, start_epoch):
    """SAF's weights after EPOCHS epochs, in float64, step by step with torch.autograd, and each
    step's cross-entropy and trajectory loss (None before start_epoch). Past logits are kept by
    (epoch, example), not in slots."""
    sgd = ReferenceSGD(list(model.parameters()))
    names = [name for name, _ in model.named_parameters()]
    kept, cross_entropies, trajectory_losses = {}, [], []
    for index, (x, y) in enumerate(step_batches(train_set)):
        epoch, examples = index // STEPS_PER_EPOCH, ORDER(index).tolist()
        weights = [w.detach().requires_grad_() for w in sgd.weights]
        logits = functional_call(model, dict(zip(names, weights)), (x,))
        cross_entropy = F.cross_entropy(logits, y)
        objective, trajectory = cross_entropy, None
        if epoch >= start_epoch:
            past = torch.softmax(
                torch.stack([kept[epoch - past_epochs, i] for i in examples]) / temperature, 1
            )
            now = torch.softmax(logits / temperature, 1)
            trajectory = temperature**2 * (past * (past.log() - now.log())).sum(1).mean()
            objective = cross_entropy + trajectory_weight * trajectory
        kept |= {(epoch, i): z for i, z in zip(examples, logits.detach())}
        sgd.step(torch.autograd.grad(objective, weights))
        cross_entropies.append(cross_entropy.detach())
        trajectory_losses.append(trajectory)
    return sgd.weights, cross_entropies, trajectory_losses


@pytest.mark.parametrize("settings", [SAF, {**SAF, "past_epochs": 1, "start_epoch": 3}])
def test_saf_steps_as_a_float64_reference_loop_computes(settings):
    expected, cross_entropies, trajectory_losses = reference_saf(tiny_mlp(), training_set(), **settings)
    steps = saf_steps(**settings)
    for mine, theirs in zip(steps.model.parameters(), expected):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-10, atol=1e-12)
    # The recorded loss is the cross-entropy alone; the trajectory loss is a total of its own.
    torch.testing.assert_close(torch.stack([r.loss for r in steps.results]), torch.stack(cross_entropies))
    for result, trajectory in zip(steps.results, trajectory_losses):
        if trajectory is None:
            assert result.totals == {}
        else:
            mean = result.totals[TRAJECTORY_LOSS_SUM] / result.totals[TRAJECTORY_EXAMPLES]
            torch.testing.assert_close(mean, trajectory.detach())


def test_saf_with_weight_0_is_sgd_bit_for_bit():
    data = step_batches(training_set(torch.float32))
    saf = saf_steps(torch.float32, model=small_conv_net(), **{**SAF, "trajectory_weight": 0.0})
    sgd = run_steps("sgd", data)
    assert_bitwise_equal(parameters_of(saf.model), parameters_of(sgd.model))


def test_saf_keeps_its_past_logits_in_its_state_and_a_resumed_run_continues_bit_for_bit():
    train_set = training_set(torch.float32)
    data = step_batches(train_set)
    context = dict(epochs=EPOCHS, train_set=train_set, batch_positions=ORDER, **SAF)
    straight = run_steps("saf", data, **context)
    past_logits = straight.method.state_dict()["past_logits"]
    assert past_logits.shape == (SAF["past_epochs"] + 1, EXAMPLES, 3)
    assert past_logits.dtype == torch.float32
    for stop in (6, 7):  # at the epoch the trajectory loss starts in, and mid-way through it
        resumed = resumed_in_process("saf", data, stop, small_conv_net, **context)
        assert_bitwise_equal(parameters_of(resumed), parameters_of(straight.model))


def test_saf_under_accumulation_takes_the_whole_batch_s_steps():
    whole = saf_steps(**SAF)
    accumulated = saf_steps(**SAF, accumulate_steps=3)
    assert max(accumulated.seen) == 3  # micro-batches of 3, 3 and 2 (and 2, 1, 1 of the last batch)
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_saf_under_fp16_keeps_float32_logits_and_steps_on_the_unscaled_gradient():
    full = saf_steps(torch.float32, **SAF)
    half = saf_steps(torch.float32, **SAF, precision=Precision("fp16", torch.device("cpu")))
    assert not any(result.skipped for result in half.results)
    assert half.method.state_dict()["past_logits"].dtype == torch.float32
    for mine, theirs in zip(half.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-3)


def test_a_saf_step_reads_the_device_once(monkeypatch):
    train_set = training_set(torch.float32)
    data = step_batches(train_set)
    model = small_conv_net()
    method = build_method(
        "saf", model, len(data), epochs=EPOCHS, train_set=train_set, batch_positions=ORDER, **SAF
    )
    take_steps(method, model, data[:6])
    reads = count_host_reads(monkeypatch)
    take_steps(method, model, data[6:], start=6)  # with the trajectory loss
    monkeypatch.undo()
    assert sum(reads.values()) == len(data) - 6, reads


# --- two processes ------------------------------------------------------------------------------


def _train_share(rank: int, port: int, processes: int, out: Path) -> None:
    """SAF's steps on this process's share of every batch (batches of BATCH over all processes)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    replicas = Replicas(rank, processes)
    train_set = training_set()
    sampler = EpochShuffle(EXAMPLES, SEED, rank=rank, world_size=processes, batch_size=BATCH // processes)
    steps_per_epoch = math.ceil(sampler.examples_per_process / sampler.batch_size)
    order = partial(positions_of, sampler, steps_per_epoch)
    model = tiny_mlp()
    values = {key: SETTINGS[key] for key in ("lr", "weight_decay")} | SAF
    method = SAFMethod(values, RunContext(model, train_set, EPOCHS, steps_per_epoch, 0, replicas, order))
    passes = Passes(replicas.wrap(model), replicas=replicas)
    images, labels = train_set.tensors
    for index in range(EPOCHS * steps_per_epoch):
        take_step(method, passes, images[order(index)], labels[order(index)], index)
    torch.save({"weights": parameters_of(model), "past_logits": method.past_logits.table}, out / f"{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_saf_on_two_processes_with_half_batches_trains_as_one_process_with_whole_ones(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_train_share, args=(free_port(), 2, tmp_path), nprocs=2)
    one = saf_steps(**SAF)
    first, second = (torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1))
    # Every process holds every example's logits, the single process's.
    assert_bitwise_equal([first["past_logits"]], [second["past_logits"]])
    torch.testing.assert_close(first["past_logits"], one.method.past_logits.table, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(first["weights"], one.model.parameters()):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-10, atol=1e-12)


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.trajectory_weight=-0.1"], "optimizer.trajectory_weight must be >= 0, got -0.1"),
        (["optimizer.temperature=0"], "optimizer.temperature must be > 0, got 0"),
        (["optimizer.past_epochs=0"], "optimizer.past_epochs must be an integer >= 1, got 0"),
        (
            ["optimizer.past_epochs=4", "optimizer.start_epoch=3"],
            "optimizer.start_epoch (3) must be at least optimizer.past_epochs (4): ",
        ),
        (["epochs=6"], "optimizer.start_epoch (6) must be below epochs (6), counting from 0: "),
    ],
)
def test_a_bad_or_undefined_saf_setting_is_refused_naming_it(overrides, message):
    assert refusal(["optimizer=saf", "epochs=8", *overrides]).startswith(message)
