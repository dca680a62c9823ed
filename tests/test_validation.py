"""validate_config rejects each bad setting with a message naming it, and train.py turns that into
exit code 2 before any data is read."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from runs import train

from ssam.data import missing_data_message
from ssam.train.validate import ConfigError, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO_ROOT / "configs")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="module")
def fake_fashion_mnist_root(tmp_path_factory) -> Path:
    """A folder with the four Fashion-MNIST file names (validation only checks they exist).
    The files hold garbage, so anything that tried to read them would fail loudly."""
    root = tmp_path_factory.mktemp("fake_fashion_mnist")
    for name in FASHION_MNIST_FILES:
        with gzip.open(root / name, "wb") as f:
            f.write(b"not an IDX file")
    return root


def compose_validation_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _config(root: Path, overrides: list[str]) -> DictConfig:
    return compose_validation_config([f"dataset.root={root}", *overrides])


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["optimizer=sam"],
        ["optimizer=ssam_f"],
        ["optimizer=ssam_d"],
        ["scheduler=step", "logger=wandb", "device=cpu"],
        ["rho=0", "sparsity=0", "optimizer=ssam_d", "optimizer.drop_rate=1.0"],
        ["optimizer=ssam_f", "optimizer.num_samples=100", "dataset.train_size=100"],
        ["dataset.on_device=true"],
        ["optimizer=ssam_d", "optimizer.perturbation=local"],
        ["dataset.label_noise=0.4", "dataset.label_noise_seed=3", "dataset.val_size=5000"],
        ["dataset.label_noise=0", "dataset.val_size=1", "dataset.train_size=100"],
        ["optimizer=ssam_f", "batch_size=10", "trainer.accumulate_steps=10"],
    ],
    ids=[
        "defaults",
        "sam",
        "ssam_f",
        "ssam_d",
        "step-wandb-cpu",
        "boundaries",
        "num_samples-equal-train_size",
        "on_device",
        "local-perturbation",
        "label-noise-and-validation",
        "smallest-validation",
        "one-example-micro-batches",
    ],
)
def test_valid_config_passes(fake_fashion_mnist_root, overrides):
    assert validate_config(_config(fake_fashion_mnist_root, overrides)) is None


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["lr=0"], "lr must be > 0, got 0"),
        (["lr=-0.1"], "lr must be > 0, got -0.1"),
        (["rho=-0.01"], "rho must be >= 0, got -0.01"),
        (["sparsity=1.5"], "sparsity must be in [0, 1), got 1.5"),
        (["sparsity=1.0"], "sparsity must be in [0, 1), got 1.0"),
        (["sparsity=-0.1"], "sparsity must be in [0, 1), got -0.1"),
        (["optimizer=ssam_f", "sparsity=1.0"], "sparsity must be in [0, 1)"),
        (["optimizer=ssam_f", "optimizer.sparsity=1.5"], "optimizer.sparsity must be in [0, 1), got 1.5"),
        (["weight_decay=-1"], "weight_decay must be >= 0, got -1"),
        (["optimizer.momentum=1.0"], "optimizer.momentum must be in [0, 1), got 1.0"),
        (["epochs=0"], "epochs must be an integer >= 1, got 0"),
        (["batch_size=0"], "batch_size must be an integer >= 1, got 0"),
        (["device=tpu"], "device must be one of auto, cpu, cuda, got 'tpu'"),
        (
            ["optimizer=sam", "optimizer.bn_stats=bogus"],
            "optimizer.bn_stats must be one of ascent, descent, both",
        ),
        (["optimizer=ssam_f", "optimizer.num_samples=0"], "optimizer.num_samples must be an integer >= 1"),
        (["optimizer=sam", "optimizer.sam_from=1.0"], "optimizer.sam_from must be in [0, 1), got 1.0"),
        (["optimizer=ssam_f", "optimizer.sam_from=-0.1"], "optimizer.sam_from must be in [0, 1), got -0.1"),
        (["optimizer=sam", "optimizer.m=0"], "optimizer.m must be an integer >= 1, got 0"),
        (["optimizer=ssam_d", "optimizer.m=2.5"], "optimizer.m must be an integer >= 1, got 2.5"),
        (
            ["optimizer=sam", "optimizer.m=8", "optimizer.ascent_fraction=0.5"],
            "optimizer.m (each shard of m examples climbs its own ε) and optimizer.ascent_fraction",
        ),
        (["optimizer=ssam_f", "optimizer.update_freq=0"], "optimizer.update_freq must be an integer >= 1"),
        (
            ["optimizer=ssam_f", "optimizer.fisher_method=bogus"],
            "optimizer.fisher_method must be one of auto, loop, vmap, got 'bogus'",
        ),
        (["optimizer=ssam_f", "optimizer.norm=bogus"], "optimizer.norm must be one of full, masked"),
        (["optimizer=ssam_d", "optimizer.norm=bogus"], "optimizer.norm must be one of full, masked"),
        (["optimizer=ssam_d", "optimizer.drop_rate=1.5"], "optimizer.drop_rate must be in [0, 1], got 1.5"),
        (
            ["optimizer=ssam_d", "optimizer.drop=bogus"],
            "optimizer.drop must be one of gradient, weight, random, got 'bogus'",
        ),
        (
            ["optimizer=ssam_d", "optimizer.growth=bogus"],
            "optimizer.growth must be one of gradient, weight, random, got 'bogus'",
        ),
        (
            ["optimizer=ssam_f", "optimizer.num_samples=200", "dataset.train_size=100"],
            "optimizer.num_samples (200) is larger than dataset.train_size (100)",
        ),
        (["dataset.train_size=0"], "dataset.train_size must be an integer >= 1"),
        (["trainer.checkpoint_every_steps=-1"], "trainer.checkpoint_every_steps must be an integer >= 0"),
        (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite must be one of stop, skip, got 'ignore'"),
        (["trainer.amp=fp8"], "trainer.amp must be one of none, bf16, fp16, got 'fp8'"),
        (
            ["optimizer=ssam_f", "optimizer.granularity=channel"],
            "optimizer.granularity must be one of element, tensor, got 'channel'",
        ),
        (
            ["optimizer=ssam_d", "optimizer.tensor_score=max"],
            "optimizer.tensor_score must be one of sum, mean, got 'max'",
        ),
        (
            ["optimizer=ssam_f", "optimizer.ascent_cost=0"],
            "optimizer.ascent_cost must be auto or in (0, 1], got 0",
        ),
        (["trainer.channels_last=yes"], "trainer.channels_last must be true or false, got 'yes'"),
        (["trainer.compile=1"], "trainer.compile must be true or false, got 1"),
        (["trainer.sync_batchnorm=1"], "trainer.sync_batchnorm must be true or false, got 1"),
        (
            ["optimizer=sam", "optimizer.perturbation=mean"],
            "optimizer.perturbation must be one of global, local, got 'mean'",
        ),
        (
            ["optimizer=sam", "optimizer.ascent_fraction=0"],
            "optimizer.ascent_fraction must be in (0, 1], got 0",
        ),
        (
            ["optimizer=ssam_f", "optimizer.ascent_fraction=1.5"],
            "optimizer.ascent_fraction must be in (0, 1], got 1.5",
        ),
        (
            ["trainer.track_sharpness_every=-1"],
            "trainer.track_sharpness_every must be an integer >= 0, got -1",
        ),
        (["scheduler=step", "scheduler.gamma=2"], "scheduler.gamma must be in [0, 1]"),
        (["logger=wandb", "logger.mode=bogus"], "logger.mode must be one of offline, online, disabled"),
        (["dataset.on_device=maybe"], "dataset.on_device must be true or false, got 'maybe'"),
        (["dataset.label_noise=1.0"], "dataset.label_noise must be in [0, 1), got 1.0"),
        (["dataset.label_noise=-0.1"], "dataset.label_noise must be in [0, 1), got -0.1"),
        (["dataset.label_noise=lots"], "dataset.label_noise must be in [0, 1), got 'lots'"),
        (["dataset.label_noise_seed=1.5"], "dataset.label_noise_seed must be an integer, got 1.5"),
        (["dataset.label_noise_seed=null"], "dataset.label_noise_seed must be an integer, got None"),
        (["trainer.accumulate_steps=0"], "trainer.accumulate_steps must be an integer >= 1, got 0"),
        (["trainer.accumulate_steps=2.5"], "trainer.accumulate_steps must be an integer >= 1, got 2.5"),
        (
            ["batch_size=8", "trainer.accumulate_steps=9"],
            "trainer.accumulate_steps (9) must be at most batch_size (8): each micro-batch needs an example",
        ),
        (["dataset.val_size=0"], "dataset.val_size must be an integer >= 1, got 0"),
        (["dataset.val_size=0.1"], "dataset.val_size must be an integer >= 1, got 0.1"),
        (
            ["dataset=imagenet", "dataset.download=true"],
            "dataset.download=true, but imagenet cannot be downloaded automatically: no folder",
        ),
        (
            ["dataset=imagenet", "dataset.on_device=true"],
            "dataset.on_device=true works for fashion_mnist, cifar10, cifar100 (held in memory), not imagenet",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_invalid_setting_is_rejected_with_its_message(fake_fashion_mnist_root, overrides, fragment):
    cfg = _config(fake_fashion_mnist_root, overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert fragment in str(info.value)


def test_negative_optimizer_rho_override_is_rejected(fake_fashion_mnist_root):
    cfg = _config(fake_fashion_mnist_root, ["optimizer=sam", "optimizer.rho=-0.1"])
    with pytest.raises(ConfigError, match="rho must be >= 0"):
        validate_config(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_rejected(fake_fashion_mnist_root):
    with pytest.raises(ConfigError, match="device=cuda but no CUDA device is available"):
        validate_config(_config(fake_fashion_mnist_root, ["device=cuda"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sync_batchnorm_on_the_cpu_is_rejected(fake_fashion_mnist_root):
    with pytest.raises(ConfigError, match="trainer.sync_batchnorm=true needs GPUs"):
        validate_config(_config(fake_fashion_mnist_root, ["trainer.sync_batchnorm=true"]))


def test_sync_batchnorm_with_the_fisher_mask_needs_the_loop_method(fake_fashion_mnist_root, monkeypatch):
    monkeypatch.setattr("ssam.train.validate.resolve_device", lambda setting: torch.device("cuda"))
    synced = ["optimizer=ssam_f", "trainer.sync_batchnorm=true"]
    with pytest.raises(ConfigError, match="needs optimizer.fisher_method=loop .*got 'auto'"):
        validate_config(_config(fake_fashion_mnist_root, synced))
    validate_config(_config(fake_fashion_mnist_root, [*synced, "optimizer.fisher_method=loop"]))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_cifar_folder_names_the_folder_and_the_download_override(tmp_path, name, folder):
    cfg = compose_validation_config([f"dataset={name}", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert str(tmp_path / folder) in message
    assert "dataset.download=true" in message


def test_missing_cifar_folder_is_accepted_when_download_is_requested(tmp_path):
    cfg = compose_validation_config(["dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=true"])
    assert validate_config(cfg) is None


def test_missing_fashion_mnist_files_name_the_folder(tmp_path):
    cfg = compose_validation_config([f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match="Fashion-MNIST not found") as info:
        validate_config(cfg)
    assert str(tmp_path) in str(info.value)


def test_train_py_with_bad_lr_exits_2_with_the_message_and_no_traceback(tmp_path, fake_fashion_mnist_root):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "lr=-1",
            f"dataset.root={fake_fashion_mnist_root}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert "lr must be > 0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing was trained or recorded: the run stopped at validation (the data files are garbage,
    # so reading them first would have failed with another error).
    assert not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "last.pt").exists()
    assert elapsed < 60


@pytest.mark.slow
@pytest.mark.skipif(missing_data_message("fashion_mnist", None) is not None, reason="needs Fashion-MNIST")
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset.val_size=60000"],
            "dataset.val_size (60000) must leave at least 1 training example: the training split has 60000",
        ),
        (
            ["dataset.val_size=10000", "dataset.train_size=50001"],
            "dataset.val_size (10000) + dataset.train_size (50001) is larger than the training split "
            "(60000 examples)",
        ),
    ],
)
def test_train_py_refuses_a_validation_split_too_large_with_exit_code_2(tmp_path, overrides, message):
    result = train(tmp_path / "run", overrides)
    assert result.returncode == 2, result.stderr
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_py_refuses_imagenet_on_the_device_with_exit_code_2(tmp_path):
    result = train(tmp_path / "run", ["dataset=imagenet", "dataset.on_device=true"])
    assert result.returncode == 2, result.stderr
    assert "error: dataset.on_device=true works for fashion_mnist, cifar10, cifar100" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_override_is_named_with_the_closest_valid_key():
    from ssam.train.overrides import unknown_key_message

    message = unknown_key_message(["sparsty=0.5"], REPO_ROOT / "configs")
    assert message.startswith("unknown setting 'sparsty'; did you mean 'sparsity'")
    assert unknown_key_message(["sparsity=0.5", "optimizer=sam"], REPO_ROOT / "configs") is None
