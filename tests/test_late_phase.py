"""Late-phase SAM (optimizer.sam_from): plain SGD steps for the first fraction of training, the
sharpness-aware step after; the plain steps are those of an SGD run, bit for bit."""

import pytest
import torch
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from runs import kill_after_checkpoints, model_weights, read_json, read_jsonl, train_ok
from test_ssam import RHO, SGD_OPTIONS

from ssam import SAM
from ssam.data import missing_data_message
from ssam.train.steps import training_step

needs_data = pytest.mark.skipif(
    missing_data_message("fashion_mnist", None) is not None, reason="needs Fashion-MNIST"
)
# 8 steps per epoch, 2 epochs: sam_from=0.5 makes epoch 1 plain and epoch 2 sharpness-aware.
TINY = ["dataset.train_size=256", "dataset.test_size=128", "batch_size=32", "epochs=2"]


def test_a_plain_step_of_sam_is_an_sgd_step_bit_for_bit():
    data = batches(3, size=8)
    model, reference = small_conv_net(), small_conv_net()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **SGD_OPTIONS)
    sgd = torch.optim.SGD(reference.parameters(), **SGD_OPTIONS)
    for x, y in data:
        result = training_step(model, optimizer, x, y, sharpness_aware=False, bn_stats="descent")
        training_step(reference, sgd, x, y)
        assert not result.sharpness_aware
    assert_bitwise_equal(parameters_of(model), parameters_of(reference))
    assert_bitwise_equal(list(model.buffers()), list(reference.buffers()))


@pytest.mark.slow
@needs_data
def test_before_the_phase_the_run_is_the_sgd_run(tmp_path):
    train_ok(tmp_path / "sgd", [*TINY, "optimizer=sgd"])
    train_ok(tmp_path / "late", [*TINY, "optimizer=sam", "optimizer.sam_from=0.5"])
    sgd, late = read_jsonl(tmp_path / "sgd/metrics.jsonl"), read_jsonl(tmp_path / "late/metrics.jsonl")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert late[0][key] == sgd[0][key], key
    assert late[1]["train_loss"] != sgd[1]["train_loss"]
    assert [row["sharpness_aware_steps"] for row in late] == [0, 8]
    assert late[0]["perturbation_norm"] is None and late[1]["perturbation_norm"] > 0
    assert read_json(tmp_path / "late/summary.json")["sam_from"] == 0.5


@pytest.mark.slow
@needs_data
def test_sparse_sam_computes_its_first_mask_when_the_phase_starts(tmp_path):
    run_dir = tmp_path / "late_ssam_f"
    # 0.75 of 16 steps: the phase starts at step 5 of epoch 2.
    train_ok(run_dir, [*TINY, "optimizer=ssam_f", "optimizer.num_samples=8", "optimizer.sam_from=0.75"])
    updates = read_jsonl(run_dir / "masks.jsonl")
    assert [row["epoch"] for row in updates] == [1]
    assert [row["sharpness_aware_steps"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [0, 4]


@pytest.mark.slow
@needs_data
def test_a_kill_and_resume_across_the_phase_boundary_is_bit_identical(tmp_path):
    overrides = [*TINY, "optimizer=sam", "optimizer.sam_from=0.5", "trainer.checkpoint_every_steps=1"]
    train_ok(tmp_path / "straight", overrides)
    kill_after_checkpoints(tmp_path / "interrupted", overrides, writes=6)  # before the boundary
    assert not (tmp_path / "interrupted/summary.json").exists()
    train_ok(tmp_path / "interrupted", overrides)
    expected, actual = model_weights(tmp_path / "straight"), model_weights(tmp_path / "interrupted")
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
