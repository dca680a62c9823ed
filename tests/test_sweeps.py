"""Experiment presets, sweeps that run each meaningful combination once and resume when
re-launched, the SLURM launcher config, the run-directory lock and wandb grouping."""

import fcntl
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from runs import REPO, read_jsonl, run_env, train

from ssam.data import missing_data_message
from ssam.train.records import setting_name, setting_tags
from ssam.train.resolvers import run_name

PRESETS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


def composed(overrides, hydra_config=False):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra_config)


def test_the_paper_presets_and_the_cpu_family_exist():
    assert {"cifar10_resnet18", "cifar10_wrn28_10", "cifar100_resnet18", "cifar100_wrn28_10"} <= set(PRESETS)
    assert "imagenet_resnet50" in PRESETS and any(p.startswith("fmnist_") for p in PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "ssam_f", "ssam_d"])
def test_every_preset_composes_and_resolves_with_every_optimizer(preset, optimizer):
    cfg = composed([f"experiment={preset}", f"optimizer={optimizer}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["experiment_name"] == preset
    assert resolved["optimizer"]["lr"] == resolved["lr"]


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"), [("sgd", 5e-4), ("sam", 1e-3), ("ssam_f", 1e-3), ("ssam_d", 1e-3)]
)
def test_cifar10_resnet18_has_the_papers_settings(optimizer, weight_decay):
    cfg = composed(["experiment=cifar10_resnet18", f"optimizer={optimizer}", "sparsity=0.9", "seed=4321"])
    assert (cfg.dataset.name, cfg.model.name, cfg.scheduler.name) == ("cifar10", "resnet18", "cosine")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.rho, cfg.seed) == (200, 128, 0.05, 0.1, 4321)
    assert cfg.optimizer.weight_decay == weight_decay
    assert cfg.dataset.cutout is True
    if optimizer.startswith("ssam"):
        assert cfg.optimizer.sparsity == 0.9


def test_imagenet_preset_has_the_papers_settings():
    cfg = composed(["experiment=imagenet_resnet50", "optimizer=ssam_f"])
    assert (cfg.model.name, cfg.epochs, cfg.batch_size, cfg.optimizer.weight_decay, cfg.optimizer.rho) == (
        "resnet50",
        90,
        256,
        1e-4,
        0.7,
    )
    assert (cfg.optimizer.num_samples, cfg.optimizer.update_freq) == (128, 1)


@pytest.mark.parametrize(
    ("overrides", "optimizer", "expected"),
    [
        ("optimizer=sgd,seed=1,sparsity=0.5", "sgd", "optimizer=sgd,seed=1"),
        ("optimizer=sam,sparsity=0.9", "sam", "optimizer=sam"),
        ("optimizer=ssam_f,seed=1,sparsity=0.5", "ssam_f", "optimizer=ssam_f,seed=1,sparsity=0.5"),
        ("", "sgd", "default"),
    ],
)
def test_run_directory_names_drop_sparsity_only_where_it_means_nothing(overrides, optimizer, expected):
    task = overrides.split(",") if overrides else []
    assert run_name(task, optimizer, "fashion_mnist", "compact_resnet") == expected


def test_run_directory_names_leave_out_what_does_not_change_results():
    task = [
        "seed=1",
        "trainer.num_workers=2",
        "trainer.eval_batch_size=64",
        "resume=false",
        "experiment=fmnist_cpu",
        "extensions=[a.py,b/c.py]",
        "logger=wandb",
        "trainer.accumulate_steps=2",
        "dataset.download=true",
    ]
    assert run_name(task, "sam", "fashion_mnist", "compact_resnet") == "seed=1,trainer.accumulate_steps=2"


def test_a_value_that_holds_a_path_stays_one_folder():
    name = run_name(["dataset.root=/data/a/b", "optimizer=sam"], "sam", "fashion_mnist", "compact_resnet")
    assert "/" not in name and name == "dataset.root=%2Fdata%2Fa%2Fb,optimizer=sam"


def test_slurm_launcher_composes_with_requeue():
    cfg = composed(["hydra/launcher=slurm", "experiment=cifar10_resnet18"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout >= 1
    assert launcher.name == "cifar10_resnet18"


def test_wandb_group_is_the_setting_without_the_seed_and_tags_name_it():
    cfg = composed(["experiment=fmnist_cpu", "optimizer=ssam_f", "sparsity=0.9", "seed=3", "logger=wandb"])
    assert setting_name(cfg) == "fmnist_cpu/fashion_mnist/compact_resnet/ssam_f/sparsity=0.9"
    assert setting_tags(cfg) == ["ssam_f", "fashion_mnist", "compact_resnet", "sparsity=0.9"]
    assert "sparsity" not in setting_name(composed(["optimizer=sam", "sparsity=0.9"]))


needs_data = pytest.mark.skipif(
    missing_data_message("fashion_mnist", None) is not None, reason="needs Fashion-MNIST"
)
SWEEP = [
    "experiment=fmnist_cpu",
    "optimizer=sgd,ssam_d",
    "sparsity=0.5,0.9",
    "seed=0",
    "epochs=1",
    "dataset.train_size=256",
    "dataset.test_size=128",
    "trainer.progress_bar=false",
]


def sweep(sweep_dir):
    return subprocess.run(
        [sys.executable, "train.py", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


@pytest.mark.slow
@needs_data
def test_sweep_runs_sgd_once_per_seed_and_a_relaunch_trains_nothing(tmp_path):
    first = sweep(tmp_path)
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "summary.json").exists())
    common = "dataset.test_size=128,dataset.train_size=256,epochs=1,"
    assert runs == [
        common + "optimizer=sgd,seed=0",
        common + "optimizer=ssam_d,seed=0,sparsity=0.5",
        common + "optimizer=ssam_d,seed=0,sparsity=0.9",
    ]
    assert "sgd ignores sparsity" in first.stdout
    metrics_before = {run: read_jsonl(tmp_path / run / "metrics.jsonl") for run in runs}

    again = sweep(tmp_path)
    assert again.stdout.count("is already finished; not training again") == 4
    assert "epoch 1/1" not in again.stdout
    assert {run: read_jsonl(tmp_path / run / "metrics.jsonl") for run in runs} == metrics_before


@needs_data
def test_a_run_directory_in_use_is_skipped_not_trained_twice(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        result = train(run_dir, ["dataset.train_size=256", "dataset.test_size=128", "epochs=1"])
    assert result.returncode == 0
    assert f"skipped: another process is training in {run_dir}" in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()
