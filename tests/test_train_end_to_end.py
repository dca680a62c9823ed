"""train.py as a user runs it: a process per run, on small Fashion-MNIST subsets, checking the
run directory it leaves (config, metrics, mask log, summary, checkpoint), determinism, resuming
after a kill, the errors a user can meet, and offline Weights & Biases logging."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from runs import (
    TIMEOUT_S,
    model_weights,
    once_per_worker,
    read_json,
    read_jsonl,
    run_env,
    start_warm,
    train,
    train_ok,
)

from ssam.data import missing_data_message

# End-to-end (left out by make test-fast); its tests share module fixtures, so under
# pytest-xdist they run on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_train_end_to_end")]
MISSING = missing_data_message("fashion_mnist", None)
if MISSING is not None:
    pytest.skip(f"end-to-end training needs Fashion-MNIST: {MISSING}", allow_module_level=True)

# Small enough for a few seconds per epoch on a 2-core CPU, large enough to beat chance clearly.
SMALL = ["dataset.train_size=1024", "dataset.test_size=512", "batch_size=64"]
SPARSE = {
    "ssam_f": ["optimizer=ssam_f", "epochs=1", "sparsity=0.5", "optimizer.num_samples=16"],
    "ssam_d": ["optimizer=ssam_d", "epochs=2", "sparsity=0.5", "optimizer.update_freq=1"],
}
METRIC_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_time_s",
    "images_per_s",
}
SPARSE_METRIC_KEYS = {"mask_density", "perturbation_norm", "mask_update_time_s"}
SUMMARY_KEYS = {
    "final_test_acc",
    "best_test_acc",
    "epochs",
    "optimizer",
    "dataset",
    "model",
    "sparsity",
    "rho",
    "seed",
    "train_time_s",
    "step_time_s",
    "peak_memory_mb",
    "torch_version",
    "threads",
    "device",
    "label_noise",
    "label_noise_seed",
    "label_noise_changed",
    "val_size",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(name, overrides)``: a finished run directory, trained once per module.

    Tests that change a run directory work on a copy (``copy_run``)."""
    runs: dict[str, tuple[Path, subprocess.CompletedProcess]] = once_per_worker("trained", dict)

    def get(name: str, overrides: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
        if name not in runs:
            run_dir = tmp_path_factory.mktemp("runs") / name
            runs[name] = (run_dir, train_ok(run_dir, overrides))
        return runs[name]

    return get


SGD_RUN = ("sgd", [*SMALL, "optimizer=sgd", "epochs=2"])
BASIC_RUNS = {"sgd": SGD_RUN[1], "sam": [*SMALL, "optimizer=sam", "epochs=2"]}


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# 1. A plain run leaves the whole record and learns something.


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_run_directory_holds_config_metrics_summary_and_checkpoint(trained, optimizer):
    overrides = BASIC_RUNS[optimizer]
    run_dir, result = trained(optimizer, overrides)

    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert re.search(rf"^  name: {optimizer}$", config, re.MULTILINE), config

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1]
    for row in rows:
        assert row.keys() >= METRIC_KEYS
        assert 0 <= row["train_acc"] <= 100 and 0 <= row["test_acc"] <= 100
        assert row["epoch_time_s"] > 0 and row["images_per_s"] > 0
    assert rows[0]["lr"] == pytest.approx(0.1)  # the default lr, before the cosine decay
    assert rows[1]["lr"] < rows[0]["lr"]
    if optimizer == "sam":
        # ε = ρ g/‖g‖: every step climbs exactly ρ.
        assert all(row["perturbation_norm"] == pytest.approx(0.05, rel=1e-4) for row in rows)
    else:
        assert all("perturbation_norm" not in row for row in rows)
    assert not (run_dir / "masks.jsonl").exists() or not read_jsonl(run_dir / "masks.jsonl")

    summary = read_json(run_dir / "summary.json")
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["optimizer"] == optimizer
    assert summary["dataset"] == "fashion_mnist"
    assert summary["model"] == "compact_resnet"
    assert summary["epochs"] == 2 and summary["seed"] == 0
    assert summary["sparsity"] is None
    assert summary["rho"] == (0.05 if optimizer == "sam" else None)
    assert summary["torch_version"] == torch.__version__
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_test_acc"] == max(row["test_acc"] for row in rows)
    # Without label noise or a validation split: nothing changed, nothing held out.
    assert (summary["label_noise"], summary["label_noise_changed"], summary["val_size"]) == (0.0, 0.0, None)
    assert "best_val_acc" not in summary and all("val_acc" not in row for row in rows)
    assert summary["train_time_s"] == pytest.approx(sum(row["epoch_time_s"] for row in rows))
    assert summary["step_time_s"] > 0 and summary["peak_memory_mb"] > 0
    # Percent, and well above chance (10 %) after two short epochs.
    assert 30 < summary["final_test_acc"] <= 100, summary

    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["history"]["epoch"] == 2
    assert "conv1.weight" in checkpoint["model"]

    lines = result.stdout.splitlines()
    assert any(line.startswith("final_test_acc") for line in lines), result.stdout
    assert f"run directory: {run_dir}" in result.stdout
    assert "epoch 2/2" in result.stdout
    assert "Traceback" not in result.stderr


# 2. Sparse SAM records the mask.


@pytest.mark.parametrize("optimizer", ["ssam_f", "ssam_d"])
def test_sparse_runs_record_mask_density_and_updates(trained, optimizer):
    from ssam.models import build_model

    run_dir, _ = trained(optimizer, [*SMALL, *SPARSE[optimizer]])
    epochs = 1 if optimizer == "ssam_f" else 2
    model = build_model("compact_resnet", num_classes=10, in_channels=1, image_size=28, widths=[16, 32, 64])
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    total = sum(sizes.values())

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == list(range(epochs))
    for row in rows:
        assert row.keys() >= METRIC_KEYS | SPARSE_METRIC_KEYS
        assert abs(row["mask_density"] - 0.5) < 1e-6
        # norm=full: ε = ρ (m⊙g)/‖g‖, no longer than SAM's ρ, and not zero.
        assert 0 < row["perturbation_norm"] <= 0.05 * (1 + 1e-5)
        assert row["mask_update_time_s"] >= 0
    assert rows[0]["mask_update_time_s"] > 0  # the first mask is made in epoch 0

    # One line per mask update: the first mask in epoch 0, then (ssam_d, update_freq=1) epoch 1.
    updates = read_jsonl(run_dir / "masks.jsonl")
    assert [(u["epoch"], u["update"]) for u in updates] == [(e, e + 1) for e in range(epochs)]
    for update, row in zip(updates, rows):
        assert update["mask_density"] == row["mask_density"]
        layers = update["layers"]
        assert set(layers) == set(sizes)
        assert "conv1.weight" in layers
        assert all(0.0 <= density <= 1.0 for density in layers.values())
        active = sum(layers[name] * sizes[name] for name in sizes)
        assert active == pytest.approx(total * update["mask_density"], abs=0.5)
    assert updates[0]["overlap_with_previous"] is None
    if optimizer == "ssam_d":
        # Pruning and regrowing moves entries between layers but keeps the count.
        assert updates[0]["layers"] != updates[1]["layers"]
        assert 0.0 < updates[1]["overlap_with_previous"] < 1.0

    summary = read_json(run_dir / "summary.json")
    assert summary["optimizer"] == optimizer and summary["sparsity"] == 0.5 and summary["rho"] == 0.05
    assert abs(summary["mask_density"] - 0.5) < 1e-6
    assert summary["mask_update_time_s"] == pytest.approx(sum(row["mask_update_time_s"] for row in rows))
    assert summary["final_test_acc"] > 10


def test_data_on_the_device_trains_as_well_as_the_cpu_loader(trained):
    """Same order, same augmentation recipe, other random draws: other numbers, no worse."""
    run_dir, result = trained("sgd_on_device", [*SGD_RUN[1], "dataset.on_device=true"])
    cpu_dir, _ = trained(*SGD_RUN)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1]
    summary = read_json(run_dir / "summary.json")
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    cpu_accuracy = read_json(cpu_dir / "summary.json")["final_test_acc"]
    assert abs(summary["final_test_acc"] - cpu_accuracy) < 10, (summary, cpu_accuracy)
    assert "Traceback" not in result.stderr


# 3. Determinism.


def test_same_command_twice_gives_identical_results(trained, tmp_path):
    first_dir, _ = trained(*SGD_RUN)
    second_dir = tmp_path / "again"
    # A new interpreter, unlike the first run's fork of a warm one: another hash seed, and
    # nothing imported or initialised before the run.
    train_ok(second_dir, SGD_RUN[1], new_interpreter=True)

    first, second = read_json(first_dir / "summary.json"), read_json(second_dir / "summary.json")
    for key in ("final_test_acc", "best_test_acc"):
        assert first[key] == second[key]
    first_rows, second_rows = (
        read_jsonl(first_dir / "metrics.jsonl"),
        read_jsonl(second_dir / "metrics.jsonl"),
    )
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert [row[key] for row in first_rows] == [row[key] for row in second_rows], key
    for name, tensor in model_weights(first_dir).items():
        assert torch.equal(tensor, model_weights(second_dir)[name]), name


# 4. Resuming after a kill continues exactly.


def _train_and_kill_after_first_epoch(run_dir: Path, overrides: list[str]) -> int:
    """Start a run, SIGKILL it once epoch 1 is recorded and checkpointed; its return code."""
    run_dir.mkdir(parents=True)
    process = start_warm(
        run_dir,
        overrides,
        stdout=run_dir.parent / f"{run_dir.name}.out",
        stderr=run_dir.parent / f"{run_dir.name}.err",
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        metrics = run_dir / "metrics.jsonl"
        while process.poll() is None and time.monotonic() < deadline:
            if (run_dir / "last.pt").exists() and metrics.exists() and metrics.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
    return process.wait(timeout=60)


# The runs a kill interrupts: those of the module's other tests, so that their finished runs
# are the uninterrupted references.
RESUMED_RUNS = {"sgd": SGD_RUN[1], "ssam_d": [*SMALL, *SPARSE["ssam_d"]]}


@pytest.fixture(scope="module")
def resumed(trained, tmp_path_factory):
    """``resumed(optimizer)``: (uninterrupted run, killed-and-resumed run, resume output)."""
    runs = once_per_worker("resumed", dict)

    def get(optimizer: str):
        if optimizer not in runs:
            overrides = RESUMED_RUNS[optimizer]
            straight, _ = trained(optimizer, overrides)
            interrupted = tmp_path_factory.mktemp(f"resume_{optimizer}") / "interrupted"
            returncode = _train_and_kill_after_first_epoch(interrupted, overrides)
            output = [(interrupted.parent / f"interrupted.{stream}").read_text() for stream in ("out", "err")]
            assert returncode == -signal.SIGKILL, output
            assert (interrupted / "last.pt").exists()
            result = train_ok(interrupted, overrides)
            runs[optimizer] = (straight, interrupted, result)
        return runs[optimizer]

    return get


@pytest.mark.parametrize("optimizer", ["sgd", "ssam_d"])
def test_killed_run_resumes_to_the_same_weights(resumed, optimizer):
    straight, interrupted, result = resumed(optimizer)
    match = re.search(r"resuming .* after epoch (\d) of 2", result.stdout)
    assert match, result.stdout
    # The kill lands in epoch 2 (after epoch 1's checkpoint); were it to land after epoch 2's
    # checkpoint the resumed run would have nothing to train, and the checks below still hold.
    assert match.group(1) in ("1", "2")

    rows, resumed_rows = read_jsonl(straight / "metrics.jsonl"), read_jsonl(interrupted / "metrics.jsonl")
    assert [row["epoch"] for row in resumed_rows] == [0, 1]
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert [row[key] for row in rows] == [row[key] for row in resumed_rows], key

    weights, resumed_weights = model_weights(straight), model_weights(interrupted)
    assert weights.keys() == resumed_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name

    summary, resumed_summary = read_json(straight / "summary.json"), read_json(interrupted / "summary.json")
    for key in ("final_test_acc", "best_test_acc", "epochs", "optimizer"):
        assert summary[key] == resumed_summary[key], key
    if optimizer == "ssam_d":
        assert summary["mask_density"] == resumed_summary["mask_density"]
        masks = read_jsonl(straight / "masks.jsonl")
        resumed_masks = read_jsonl(interrupted / "masks.jsonl")
        assert [m["epoch"] for m in resumed_masks] == [0, 1]
        for key in ("epoch", "mask_density", "layers"):
            assert [m[key] for m in masks] == [m[key] for m in resumed_masks], key


def test_resumed_sparse_run_continues_the_mask_update_count(resumed):
    straight, interrupted, _ = resumed("ssam_d")
    assert [m["update"] for m in read_jsonl(straight / "masks.jsonl")] == [1, 2]
    assert [m["update"] for m in read_jsonl(interrupted / "masks.jsonl")] == [1, 2]


def test_resumed_sparse_run_summary_counts_all_mask_update_time(resumed):
    _, interrupted, _ = resumed("ssam_d")
    rows = read_jsonl(interrupted / "metrics.jsonl")
    summary = read_json(interrupted / "summary.json")
    assert summary["mask_update_time_s"] == pytest.approx(sum(row["mask_update_time_s"] for row in rows))


def test_rerunning_a_finished_run_does_not_train_again(trained, tmp_path):
    source, _ = trained(*SGD_RUN)
    run_dir = copy_run(source, tmp_path / "run")
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    summary_before = read_json(run_dir / "summary.json")
    weights_before = model_weights(run_dir)

    result = train_ok(run_dir, SGD_RUN[1])

    assert "is already finished; not training again" in result.stdout
    assert "epoch 1/2" not in result.stdout and "epoch 2/2 " not in result.stdout
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before
    summary = read_json(run_dir / "summary.json")
    for key in ("final_test_acc", "best_test_acc", "train_time_s", "step_time_s", "epochs", "optimizer"):
        assert summary[key] == summary_before[key], key
    for name, tensor in model_weights(run_dir).items():
        assert torch.equal(tensor, weights_before[name]), name


# 5. resume=false starts over.


def test_resume_false_starts_over(trained, tmp_path):
    source, _ = trained(*SGD_RUN)
    run_dir = copy_run(source, tmp_path / "run")
    before = read_jsonl(run_dir / "metrics.jsonl")

    result = train_ok(run_dir, [*SGD_RUN[1], "resume=false"])

    assert "resuming" not in result.stdout
    assert "epoch 1/2" in result.stdout and "epoch 2/2" in result.stdout
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1]
    # Trained again from scratch, so (deterministic) the same numbers as the first time.
    assert [row["train_loss"] for row in rows] == [row["train_loss"] for row in before]


# 6, 7. Errors a user can meet: exit code 2 and one line, no traceback.


def test_resuming_a_run_directory_of_another_run_is_refused(trained, tmp_path):
    source, _ = trained(*SGD_RUN)
    run_dir = copy_run(source, tmp_path / "run")
    metrics_before = (run_dir / "metrics.jsonl").read_text()

    result = train(run_dir, [*SMALL, "optimizer=sam", "epochs=2"])

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(run_dir) in result.stderr
    assert "resume=false" in result.stderr
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before  # nothing overwritten


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_checkpoint_is_reported(trained, tmp_path, damage):
    source, _ = trained(*SGD_RUN)
    run_dir = copy_run(source, tmp_path / "run")
    checkpoint = run_dir / "last.pt"
    if damage == "garbage":
        checkpoint.write_bytes(os.urandom(4096))
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])

    result = train(run_dir, SGD_RUN[1])

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(checkpoint) in result.stderr
    assert result.stderr.startswith("error: ")


# 8. Weights & Biases, offline.


def test_wandb_logger_writes_an_offline_run_into_the_run_directory(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    run_dir = tmp_path / "run"
    env = run_env(HOME=str(home), XDG_CONFIG_HOME=None, XDG_CACHE_HOME=None)

    result = train_ok(run_dir, [*SMALL, "epochs=1", "logger=wandb"], env)

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    assert runs[0].is_dir()
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
    assert list(runs[0].glob("*.wandb")), list(runs[0].iterdir())
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 1
    assert "final_test_acc" in read_json(run_dir / "summary.json")
    assert any(line.startswith("final_test_acc") for line in result.stdout.splitlines())


def test_speed_switches_train_and_checkpoint_the_plain_model(tmp_path):
    run_dir = tmp_path / "fast"
    overrides = [
        "dataset.train_size=256",
        "dataset.test_size=128",
        "epochs=1",
        "batch_size=64",
        *SPARSE["ssam_f"],
        "optimizer.ascent_fraction=0.5",
        "optimizer.granularity=tensor",
        "optimizer.norm=masked",
        "trainer.amp=bf16",
        "trainer.channels_last=true",
        "trainer.compile=true",
        # Dynamo's graphs without inductor's code generation, which takes minutes on some CPUs
        # and torch versions; scripts/gpu_check.sh compiles with inductor on a GPU.
        "trainer.compile_backend=aot_eager",
    ]
    train_ok(run_dir, overrides)
    summary = read_json(run_dir / "summary.json")
    assert summary["final_test_acc"] > 0
    weights = model_weights(run_dir)
    assert "conv1.weight" in weights
    assert not any(key.startswith("_orig_mod") for key in weights)
    [row] = read_jsonl(run_dir / "metrics.jsonl")
    assert row["train_loss"] == row["train_loss"]  # not NaN
    [update] = read_jsonl(run_dir / "masks.jsonl")
    assert set(update["layers"].values()) <= {0.0, 1.0}  # whole tensors
    assert 0 < update["mask_density"] <= 0.5


def test_tensor_granularity_with_the_full_norm_says_it_saves_no_time(tmp_path):
    overrides = [
        "dataset.train_size=128",
        "dataset.test_size=64",
        "batch_size=64",
        *SPARSE["ssam_f"],
        "optimizer.granularity=tensor",
    ]
    result = train_ok(tmp_path / "run", overrides)
    assert "granularity=tensor saves no time; optimizer.norm=masked does" in result.stdout


def test_any_timm_model_trains_end_to_end(tmp_path):
    run_dir = tmp_path / "timm"
    overrides = [
        "dataset.train_size=256",
        "dataset.test_size=128",
        "epochs=1",
        "batch_size=64",
        # Not SSAM-F: resnet10t brings 28×28 images down to 1×1, where its last BatchNorm
        # cannot take the Fisher pass's single examples (the run says so and stops).
        "optimizer=ssam_d",
        "model=timm",
        "model.arch=resnet10t",
    ]
    train_ok(run_dir, overrides)
    summary = read_json(run_dir / "summary.json")
    assert (summary["model"], summary["model_arch"]) == ("timm", "resnet10t")
    assert summary["final_test_acc"] > 0
    [row] = read_jsonl(run_dir / "metrics.jsonl")
    assert row["train_loss"] == row["train_loss"]  # not NaN


def test_an_unknown_timm_architecture_exits_2_naming_the_closest(tmp_path):
    result = train(tmp_path / "run", ["model=timm", "model.arch=resnet10x"])
    assert result.returncode == 2
    assert "model.arch must be one of timm.list_models()" in result.stderr
    assert "resnet10t" in result.stderr
    assert "Traceback" not in result.stderr
