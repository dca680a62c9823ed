"""Never lose a run: SIGKILL at random steps then resume gives bit-identical results; a full disk
keeps the last good checkpoint; non-finite losses stop (or skip) with a clear message; unknown
settings are named with a suggestion."""

from __future__ import annotations

import errno
import pickle

import pytest
import torch
from hydra import compose, initialize_config_dir
from runs import (
    REPO,
    assert_kill_and_resume_is_bit_identical,
    kill_after_checkpoints,
    read_jsonl,
    train,
    train_ok,
)

import ssam.train.checkpoint as checkpoint_module
from ssam.data import missing_data_message
from ssam.train.checkpoint import load_checkpoint, save_checkpoint
from ssam.train.run import TrainingStopped, run

if missing_data_message("fashion_mnist", None) is not None:
    pytest.skip("needs Fashion-MNIST", allow_module_level=True)

# 8 steps per epoch, 2 epochs, a checkpoint after every step.
TINY = [
    "dataset.train_size=256",
    "dataset.test_size=128",
    "batch_size=32",
    "epochs=2",
    "trainer.checkpoint_every_steps=1",
]
# SGD and SSAM-D are killed and resumed by test_train_end_to_end.py (at an epoch's end); SAM
# here in fp16, which adds the loss scale to SAM's state.
OPTIMIZERS = {
    "ssam_f": ["optimizer=ssam_f", "optimizer.num_samples=8"],
    # fp16's loss scale is part of the state: a resume must continue with the same scale.
    # float16 kernels are slow on a CPU: a quarter-width model, half the images, 16 steps an epoch.
    "sam_fp16": [
        "optimizer=sam",
        "trainer.amp=fp16",
        "model.widths=[4,8,16]",
        "dataset.train_size=256",
        "dataset.test_size=64",
        "batch_size=16",
    ],
    # The whole dataset on the device (here the CPU), augmented there in per-batch-seeded draws;
    # the Fisher mask still reads its examples from the CPU dataset.
    "ssam_f_data_on_device": ["optimizer=ssam_f", "optimizer.num_samples=8", "dataset.on_device=true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(optimizer, tmp_path):
    assert_kill_and_resume_is_bit_identical(tmp_path, [*TINY, *OPTIMIZERS[optimizer]], f"kill-{optimizer}")


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": checkpoint_module.CHECKPOINT_FORMAT, "epoch": 1}, path)

    def disk_full(state, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"format": checkpoint_module.CHECKPOINT_FORMAT, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_training_stops_with_a_clear_message_when_the_disk_is_full(tmp_path, monkeypatch):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "dataset.train_size=256",
                "dataset.test_size=128",
                "epochs=2",
                "trainer.progress_bar=false",
            ],
        )
    writes = []
    real_save = checkpoint_module.torch.save

    def full_after_first(state, f):
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(1)
        real_save(state, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_after_first)
    with pytest.raises(
        TrainingStopped, match="cannot write checkpoint .*last.pt.*The previous checkpoint is kept"
    ):
        run(cfg, tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["history"]["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "pass_name"), [("sgd", "training"), ("sam", "ascent")])
def test_non_finite_loss_stops_naming_epoch_step_and_pass(optimizer, pass_name, tmp_path):
    result = train(tmp_path / "run", ["lr=1e30", f"optimizer={optimizer}", *TINY])
    assert result.returncode == 3
    assert f"non-finite loss or gradient in the {pass_name} pass at epoch 1, step " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_non_finite_steps_can_be_skipped(tmp_path):
    run_dir = tmp_path / "run"
    train_ok(run_dir, ["lr=1e30", "optimizer=sam", "trainer.on_nonfinite=skip", *TINY])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert len(rows) == 2 and all(row["skipped_steps"] > 0 for row in rows)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sparsty=0.5", "unknown setting 'sparsty'; did you mean 'sparsity'?"),
        (
            "optimizer.num_sample=4",
            "unknown setting 'optimizer.num_sample'; did you mean 'optimizer.num_samples'",
        ),
    ],
)
def test_unknown_setting_is_named_with_the_closest_valid_one(override, message, tmp_path):
    extra = ["optimizer=ssam_f"] if override.startswith("optimizer.") else []
    result = train(tmp_path / "run", [*extra, override])
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.slow
def test_resume_with_a_different_number_of_loader_workers_is_bit_identical(tmp_path):
    """Order and augmentation come from (seed, epoch, position), not from worker processes."""
    overrides = [*TINY, "optimizer=sam"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_ok(straight, [*overrides, "trainer.num_workers=0"])
    kill_after_checkpoints(interrupted, [*overrides, "trainer.num_workers=2"], writes=5)
    assert not (interrupted / "summary.json").exists()
    resumed = train_ok(interrupted, [*overrides, "trainer.num_workers=1"])
    assert "resuming" in resumed.stdout
    expected = torch.load(straight / "last.pt", weights_only=True)["model"]
    actual = torch.load(interrupted / "last.pt", weights_only=True)["model"]
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.mark.slow
def test_a_damaged_data_file_is_named_without_a_traceback(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": torch.randint(0, 256, (4, 3072), dtype=torch.uint8).numpy(), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    damaged = folder / "data_batch_3"
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = train(tmp_path / "run", ["dataset=cifar10", f"dataset.root={tmp_path}", "model=compact_resnet"])
    assert result.returncode == 2
    assert f"error: {damaged} is not a readable CIFAR batch file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.train_size=70000"], "subset size 70000 is larger than the dataset (60000 examples)"),
        (
            ["optimizer.nesterov=true", "optimizer.momentum=0"],
            "optimizer.nesterov=true needs optimizer.momentum > 0",
        ),
        (
            ["optimizer=ssam_f", "model=resnet50", "dataset.train_size=256"],
            "one example at a time in training mode",
        ),
    ],
)
def test_settings_only_the_data_or_model_can_check_still_fail_cleanly(overrides, message, tmp_path):
    result = train(tmp_path / "run", overrides)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resuming_under_another_learning_rate_names_the_difference(tmp_path):
    run_dir = tmp_path / "run"
    train_ok(run_dir, ["dataset.train_size=256", "dataset.test_size=128", "epochs=1"])
    result = train(run_dir, ["dataset.train_size=256", "dataset.test_size=128", "epochs=1", "lr=0.5"])
    assert result.returncode == 2
    assert "lr: 0.1 there, 0.5 now" in result.stderr


@pytest.mark.slow
def test_resuming_under_another_precision_names_the_difference(tmp_path):
    run_dir = tmp_path / "run"
    small = ["dataset.train_size=256", "dataset.test_size=128", "epochs=1"]
    train_ok(run_dir, small)
    result = train(run_dir, [*small, "trainer.amp=bf16"])
    assert result.returncode == 2
    assert "trainer.amp: 'none' there, 'bf16' now" in result.stderr


def test_a_checkpoint_of_the_first_format_is_read_in_today_s_layout():
    """last.pt as written before methods kept their own state: the optimizer's state at the top,
    the history a dict, the interrupted epoch's totals as fields, dataset.download in the identity."""
    from ssam.train.resume import _upgraded

    earlier = {
        "format": "ssam-checkpoint-1",
        "identity": {"seed": 0, "dataset": {"name": "fashion_mnist", "download": False}},
        "optimizer": {"state": {}},
        "history": {"epoch": 1, "best_test_acc": 50.0, "train_time_s": 2.0, "step_times_s": [1.0]},
        "epoch_progress": {
            "step": 3,
            "loss_sum": 6.0,
            "correct": 9,
            "images": 12,
            "trained_images": 12,
            "skipped_steps": 0,
            "sharpness_aware_steps": 3,
            "time_s": 1.5,
            "perturbation_norm_sum": 0.3,
            "step_times_s": [0.5, 0.5, 0.5],
            "lr_at_start": 0.1,
            "mask_update_time_at_start": 0.25,
        },
    }
    totals = ["loss_sum", "correct", "images", "trained_images", "skipped_steps", "sharpness_aware_steps"]
    state = _upgraded(earlier, totals)
    assert state["method"] == {"optimizer": {"state": {}}, "mask_update_time_at_epoch_start": 0.25}
    assert state["history"] == earlier["history"]
    assert state["epoch_progress"] == {
        "step": 3,
        "time_s": 1.5,
        "step_times_s": [0.5, 0.5, 0.5],
        "lr_at_start": 0.1,
        "totals": {name: earlier["epoch_progress"][name] for name in totals},
    }
    assert state["identity"] == {"seed": 0, "dataset": {"name": "fashion_mnist"}}
    assert earlier["identity"]["dataset"]["download"] is False  # the original is left alone
