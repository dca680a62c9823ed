"""Gradient accumulation (trainer.accumulate_steps = k): every pass of a step runs over k
micro-batches whose gradients add up before they are used, the ascent's before the one climb and
the descent's before the step, so that the step is the whole batch's."""

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
from runs import assert_kill_and_resume_is_bit_identical, read_json, read_jsonl
from test_ssam import RHO, SGD_OPTIONS, FixedMask, random_masks
from torch import nn
from torch.utils.data import TensorDataset

from ssam import SAM, SSAM
from ssam.data import missing_data_message
from ssam.optim import DynamicMask, FisherMask, frozen_batchnorm_stats
from ssam.train.passes import micro_batches
from ssam.train.precision import Precision
from ssam.train.steps import training_step

CPU = torch.device("cpu")
BATCH = 12
STEPS = 10
EPOCHS = 2  # the 10 steps as 2 epochs of 5, so that Sparse SAM refreshes its mask once


def group_norm_net(dtype: torch.dtype) -> nn.Module:
    """No BatchNorm: the micro-batches' passes are then independent of how the batch is cut."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    ).to(dtype)


def sgd(model, dtype):
    return torch.optim.SGD(model.parameters(), **SGD_OPTIONS)


def sam(model, dtype=torch.float32):
    return SAM(model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS)


def ssam_f(model, dtype):
    generator = torch.Generator().manual_seed(5)
    examples = TensorDataset(
        torch.randn(16, 1, 8, 8, generator=generator, dtype=dtype),
        torch.randint(0, 3, (16,), generator=generator),
    )
    strategy = FisherMask(model, examples, num_samples=8, method="loop")
    return SSAM(
        model.parameters(), torch.optim.SGD, rho=RHO, sparsity=0.5, mask_strategy=strategy, **SGD_OPTIONS
    )


def ssam_d(model, dtype):
    strategy = DynamicMask(total_epochs=EPOCHS, drop_rate=0.5)
    return SSAM(
        model.parameters(), torch.optim.SGD, rho=RHO, sparsity=0.5, mask_strategy=strategy, **SGD_OPTIONS
    )


def ssam_masked_norm(model, dtype):
    """Sparse SAM whose ascent differentiates only the tensors its mask perturbs (norm=masked,
    whole tensors masked off): the restricted ascent's backward, accumulated."""
    masks = random_masks(model)
    masks[0] = torch.zeros_like(masks[0])
    masks[1] = torch.zeros_like(masks[1])
    return SSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        sparsity=0.5,
        norm="masked",
        mask_strategy=FixedMask(masks),
        **SGD_OPTIONS,
    )


OPTIMIZERS = {
    "sgd": sgd,
    "sam": sam,
    "ssam_f": ssam_f,
    "ssam_d": ssam_d,
    "ssam_masked_norm": ssam_masked_norm,
}


def train(build, accumulate_steps, dtype, **options):
    model = group_norm_net(dtype)
    optimizer = build(model, dtype)
    data = batches(STEPS, size=BATCH, dtype=dtype)
    results = []
    for step, (x, y) in enumerate(data):
        if isinstance(optimizer, SSAM) and step % (STEPS // EPOCHS) == 0:
            optimizer.set_epoch(step // (STEPS // EPOCHS))
        results.append(training_step(model, optimizer, x, y, accumulate_steps=accumulate_steps, **options))
    return model, optimizer, results


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("accumulate_steps", [2, 3, 5])  # 5 does not divide 12: micro-batches of 3 and 2
def test_micro_batches_give_the_whole_batch_step_in_float64(name, accumulate_steps):
    whole, whole_optimizer, whole_results = train(OPTIMIZERS[name], 1, torch.float64)
    micro, micro_optimizer, micro_results = train(OPTIMIZERS[name], accumulate_steps, torch.float64)
    for a, b in zip(parameters_of(micro), parameters_of(whole)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for mine, theirs in zip(micro_results, whole_results):
        torch.testing.assert_close(mine.loss, theirs.loss, rtol=0, atol=1e-12)
        assert int(mine.correct) == int(theirs.correct)
        assert mine.examples == theirs.examples == BATCH
    if isinstance(whole_optimizer, SSAM):
        assert whole_optimizer.mask_updates == micro_optimizer.mask_updates == EPOCHS
        assert_bitwise_equal(micro_optimizer.masks, whole_optimizer.masks)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_micro_batches_give_the_whole_batch_step_in_float32(name):
    whole, _, _ = train(OPTIMIZERS[name], 1, torch.float32)
    micro, _, _ = train(OPTIMIZERS[name], 4, torch.float32)
    for a, b in zip(parameters_of(micro), parameters_of(whole)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_ascent_on_part_of_the_batch_is_accumulated_too():
    whole, _, whole_results = train(sam, 1, torch.float64, ascent_fraction=0.5)
    micro, _, micro_results = train(sam, 4, torch.float64, ascent_fraction=0.5)
    for a, b in zip(parameters_of(micro), parameters_of(whole)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert micro_results[0].examples == whole_results[0].examples == BATCH // 2


def test_m_sharpness_shards_are_accumulated_each_on_its_own():
    whole, _, _ = train(sam, 1, torch.float64, shard_size=6)
    micro, _, _ = train(sam, 3, torch.float64, shard_size=6)
    for a, b in zip(parameters_of(micro), parameters_of(whole)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_micro_batches_split_any_batch_into_near_equal_parts_weighted_by_size():
    x, y = torch.arange(10.0), torch.arange(10)
    parts = list(micro_batches(x, y, 4))
    assert [len(part[1]) for part in parts] == [3, 3, 2, 2]
    assert [part[2] for part in parts] == [0.3, 0.3, 0.2, 0.2]
    assert [part[3] for part in parts] == [False, False, False, True]
    assert torch.equal(torch.cat([part[0] for part in parts]), x)
    # A last batch smaller than k is cut into one micro-batch per example.
    assert [len(part[1]) for part in micro_batches(x[:2], y[:2], 4)] == [1, 1]
    assert list(micro_batches(x, y, 1))[0][2:] == (1.0, True)


@pytest.mark.parametrize(("bn_stats", "updates"), [("ascent", 2), ("descent", 2), ("both", 4)])
def test_batchnorm_statistics_are_updated_by_each_micro_batch_of_the_passes_that_update_them(
    bn_stats, updates
):
    x, y = batches(1, size=BATCH)[0]
    model = small_conv_net()
    reference = copy.deepcopy(model)
    training_step(model, sam(model), x, y, accumulate_steps=2, bn_stats=bn_stats)
    layer = model[1]
    assert int(layer.num_batches_tracked) == updates
    if bn_stats == "ascent":  # both micro-batches' forwards at w, in order
        with torch.no_grad():
            reference(x[:6])
            reference(x[6:])
        assert_bitwise_equal(list(model.buffers()), list(reference.buffers()))


def test_a_non_finite_micro_batch_skips_the_whole_step():
    assert_a_non_finite_example_skips_the_whole_step(sam, poisoned=10, accumulate_steps=3)  # the last of 3


def test_the_fp16_loss_scale_covers_every_micro_batch_of_both_passes():
    x, y = batches(1, size=BATCH)[0]
    start, full, low = (group_norm_net(torch.float32) for _ in range(3))
    training_step(full, sam(full), x, y)
    result = training_step(low, sam(low), x, y, accumulate_steps=3, precision=Precision("fp16", CPU))
    assert not result.skipped
    flat = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in (start, full, low)]
    assert (flat[2] - flat[1]).norm() <= 0.02 * (flat[1] - flat[0]).norm()

    precision = Precision("fp16", CPU)
    precision.loss_scale.scale = 2.0**60  # scaled float16 gradients overflow
    before = parameters_of(low)
    assert training_step(low, sam(low), x, y, accumulate_steps=3, precision=precision).skipped
    assert precision.loss_scale.scale == 2.0**59  # halved once for the step, not per micro-batch
    assert_bitwise_equal(parameters_of(low), before)


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_a_bad_number_of_micro_batches_is_refused(value):
    model = small_conv_net()
    x, y = batches(1, size=BATCH)[0]
    with pytest.raises(ValueError, match="accumulate_steps must be an integer >= 1"):
        training_step(model, sam(model), x, y, accumulate_steps=value)


@pytest.mark.slow
@pytest.mark.skipif(missing_data_message("fashion_mnist", None) is not None, reason="needs Fashion-MNIST")
def test_killed_and_resumed_in_mid_epoch_under_accumulation_is_bit_identical(tmp_path):
    # 8 steps an epoch of 3 micro-batches (11, 11, 10), 2 epochs (SSAM-D refreshes its mask
    # from the accumulated ascent gradient), a checkpoint after every step.
    overrides = [
        "dataset.train_size=256",
        "dataset.test_size=128",
        "batch_size=32",
        "epochs=2",
        "trainer.checkpoint_every_steps=1",
        "optimizer=ssam_d",
        "trainer.accumulate_steps=3",
    ]
    assert_kill_and_resume_is_bit_identical(tmp_path, overrides, "kill-accumulated")
    assert read_json(tmp_path / "straight" / "summary.json")["accumulate_steps"] == 3
    # The schedule and the metrics count optimizer steps: the epoch's 8, not 24 micro-batches.
    assert [
        row["skipped_steps"] + row["sharpness_aware_steps"]
        for row in read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    ] == [8, 8]


def readme_loop_step(model, optimizer, x, y, k):
    """The README's accumulation loop, one step."""
    micro = list(zip(x.tensor_split(k), y.tensor_split(k)))
    for xs, ys in micro:
        optimizer.ascent_backward(F.cross_entropy(model(xs), ys) * (len(ys) / len(y)))
    optimizer.first_step(zero_grad=True)
    for xs, ys in micro:
        with frozen_batchnorm_stats(model):
            (F.cross_entropy(model(xs), ys) * (len(ys) / len(y))).backward()
    optimizer.second_step(zero_grad=True)


def readme_grad_scaler_step(model, optimizer, scaler, x, y, k):
    """The README's accumulation loop with torch.amp.GradScaler, one step (on the CPU)."""
    micro = list(zip(x.tensor_split(k), y.tensor_split(k)))
    for xs, ys in micro:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(xs), ys) * (len(ys) / len(y))
        optimizer.ascent_backward(scaler.scale(loss))
    scaler.unscale_(optimizer)
    optimizer.first_step(zero_grad=True)
    for xs, ys in micro:
        with frozen_batchnorm_stats(model), torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(xs), ys) * (len(ys) / len(y))
        scaler.scale(loss).backward()
    optimizer.restore_weights()
    scaler.step(optimizer.base_optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("accumulate_steps", [1, 5])  # 1: the two-pass loop every SAM user writes
@pytest.mark.parametrize("build", [sam, ssam_d], ids=["sam", "ssam_d"])
def test_the_readme_loop_is_the_trainers_accumulated_step_bit_for_bit(build, accumulate_steps):
    trainer_model, loop_model = small_conv_net(), small_conv_net()
    trainer_optimizer, loop_optimizer = build(trainer_model, torch.float32), build(loop_model, torch.float32)
    for x, y in batches(3, size=BATCH):
        training_step(trainer_model, trainer_optimizer, x, y, accumulate_steps=accumulate_steps)
        readme_loop_step(loop_model, loop_optimizer, x, y, accumulate_steps)
    assert_bitwise_equal(parameters_of(loop_model), parameters_of(trainer_model))
    assert_bitwise_equal(list(loop_model.buffers()), list(trainer_model.buffers()))


def test_the_readme_grad_scaler_loop_steps_close_to_float32_and_skips_overflows():
    x, y = batches(1, size=BATCH)[0]
    start, full, low = (group_norm_net(torch.float32) for _ in range(3))
    training_step(full, sam(full), x, y)
    scaler = torch.amp.GradScaler("cpu")
    optimizer = sam(low)
    readme_grad_scaler_step(low, optimizer, scaler, x, y, 3)
    flat = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in (start, full, low)]
    assert (flat[2] - flat[1]).norm() <= 0.02 * (flat[1] - flat[0]).norm()

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # scaled float16 gradients overflow
    before = parameters_of(low)
    readme_grad_scaler_step(low, optimizer, scaler, x, y, 3)
    assert_bitwise_equal(parameters_of(low), before)
    assert scaler.get_scale() < 2.0**60
