"""Data-parallel training on two CPU processes (gloo): the replicas stay identical for every
optimizer and perturbation mode, global-perturbation SAM on 2 processes × batch B is one process
with batch 2B, rank 0 alone records, and a checkpoint moves from 2 processes to 1."""

from __future__ import annotations

import json
import os
import socket
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from helpers import assert_bitwise_equal, batches, parameters_of, small_conv_net
from hydra import compose, initialize_config_dir
from runs import (
    REPO,
    comparable,
    kill_after_checkpoints,
    once_per_worker,
    read_json,
    read_jsonl,
    train,
    train_ok,
)
from torch import nn

import ssam.registry  # noqa: F401  (the declared options, for the spawned processes that compose)
import ssam.train.builders as builders_module
import ssam.train.parts as parts_module
import ssam.train.run as run_module
from ssam.data import missing_data_message
from ssam.data.sampling import EpochShuffle
from ssam.optim import SAM
from ssam.train.passes import PERTURBATIONS
from ssam.train.steps import training_step

if missing_data_message("fashion_mnist", None) is not None:
    pytest.skip("needs Fashion-MNIST", allow_module_level=True)

# Its tests share module fixtures: under pytest-xdist they run on one worker.
pytestmark = pytest.mark.xdist_group("test_distributed")
PROCESSES = 2
BATCH = 32
# 4 steps per process and epoch; a test set that does not divide by 2 (shards of 51 and 50).
TINY = ["dataset.train_size=256", "dataset.test_size=101", f"batch_size={BATCH}", "epochs=1"]
# Trained by both processes in one launch; each process reports its own weights and masks.
REPLICA_RUNS = {
    "sgd": ["optimizer=sgd"],
    "sam_global": ["optimizer=sam"],
    "sam_local": ["optimizer=sam", "optimizer.perturbation=local"],
    # norm=masked: the ascent differentiates only the tensors the mask perturbs.
    "ssam_f": ["optimizer=ssam_f", "optimizer.num_samples=8", "optimizer.norm=masked", "sparsity=0.9"],
    # A second epoch refreshes the mask by |g|: under local perturbation each process's own g.
    "ssam_d_local": ["optimizer=ssam_d", "optimizer.perturbation=local", "epochs=2"],
    # Gradient accumulation: DDP all-reduces at each pass's last micro-batch only.
    "ssam_f_accumulated": ["optimizer=ssam_f", "optimizer.num_samples=8", "trainer.accumulate_steps=3"],
    # Methods whose steps read the averaged gradient beyond SAM's climb: LookSAM's g_v, and
    # AE-SAM's ‖g‖², on which the processes must take the same decision.
    "looksam": ["optimizer=looksam", "optimizer.k=2"],
    "ae_sam": ["optimizer=ae_sam", "optimizer.ema_decay=0.5"],
    # ESAM's tensor draws, alike on every process (the ascent all-reduces the drawn tensors'
    # gradients), and its selection from each process's own share of the batch; SAM-ON's mask.
    "esam": ["optimizer=esam"],
    "sam_on": ["optimizer=sam_on", "rho=0.5"],
    # Momentum-SAM's a = −ρ·v/‖v‖, from the momentum of the averaged gradients: alike everywhere.
    "msam": ["optimizer=msam", "rho=3"],
    # LookSAM's g_v taken from SSAM-F's masked step: rank 0's mask, and g_v alike everywhere.
    "ssam_f_looksam": ["optimizer=ssam_f_looksam", "optimizer.k=2", "optimizer.num_samples=8"],
    # fmnist_noisy's data under torchrun: label noise and a validation split, held on the device;
    # each process evaluates its shard of the split.
    "noisy_on_device": [
        "optimizer=sgd",
        "dataset.label_noise=0.4",
        "dataset.val_size=63",
        "dataset.on_device=true",
        "trainer.num_workers=0",
    ],
}
# Without BatchNorm (whose batch statistics depend on how the batch is split): SAM on 2 × B.
EQUIVALENCE_RUN = ["optimizer=sam"]
# ... also when each process accumulates its batch over micro-batches.
EQUIVALENCE_RUNS = {
    "equivalence": EQUIVALENCE_RUN,
    "equivalence_accumulated": [*EQUIVALENCE_RUN, "trainer.accumulate_steps=4"],
}


def batchnorm_free_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides, "trainer.progress_bar=false"])


@contextmanager
def run_objects(model=None):
    """The model and optimizer that run() builds; with ``model``, that module instead of the
    configured one."""
    seen = {}

    def recorded(cfg, built_model, train_set, **options):
        method = builders_module.method_from_config(cfg, built_model, train_set, **options)
        seen["model"], seen["optimizer"] = built_model, method.optimizer
        return method

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(parts_module, "method_from_config", recorded))
        if model is not None:
            stack.enter_context(mock.patch.object(builders_module, "build_model", lambda *_, **__: model()))
        yield seen


def report(seen: dict) -> dict:
    return {"state": seen["model"].state_dict(), "masks": getattr(seen["optimizer"], "masks", None)}


def train_in_process(rank: int, port: int, root: Path) -> None:
    """One of the two processes: every run of REPLICA_RUNS, then the equivalence run. Rank 0
    records into root/<run>; the others are handed root/<run>-rank<r>, which must stay absent."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(PROCESSES),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    # run() joins this group; the timeout turns a collective one process misses into an error.
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    runs = {name: (overrides, None) for name, overrides in REPLICA_RUNS.items()}
    runs.update({name: (overrides, batchnorm_free_model) for name, overrides in EQUIVALENCE_RUNS.items()})
    for name, (overrides, model) in runs.items():
        run_dir = root / (name if rank == 0 else f"{name}-rank{rank}")
        with run_objects(model) as seen:
            run_module.run(config(overrides), run_dir)
        torch.save(report(seen), root / "reports" / f"{name}-rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Where the in-process runs on two processes left their run directories and reports."""

    def make() -> Path:
        root = tmp_path_factory.mktemp("two_processes")
        (root / "reports").mkdir()
        torch.multiprocessing.spawn(train_in_process, args=(free_port(), root), nprocs=PROCESSES)
        return root

    return once_per_worker("two_processes", make)


def reports(root: Path, name: str) -> list[dict]:
    return [torch.load(root / "reports" / f"{name}-rank{rank}.pt") for rank in range(PROCESSES)]


# 1. The data order.


@pytest.mark.parametrize(("examples", "processes", "batch"), [(24, 2, 3), (25, 2, 3), (7, 3, 2), (3, 4, 2)])
def test_each_step_takes_the_single_process_batch_of_w_times_b_cut_into_one_block_per_process(
    examples, processes, batch
):
    shares = [
        list(EpochShuffle(examples, seed=5, rank=rank, world_size=processes, batch_size=batch))
        for rank in range(processes)
    ]
    single = list(EpochShuffle(examples, seed=5))
    assert len({len(share) for share in shares}) == 1  # the same number of steps everywhere
    steps = -(-len(shares[0]) // batch)
    in_step_order = [
        i for step in range(steps) for share in shares for i in share[step * batch : (step + 1) * batch]
    ]
    # The single process's order, padded with its own first examples to a multiple of W.
    assert in_step_order == [single[i % examples] for i in range(len(in_step_order))]
    assert len(in_step_order) - examples < processes


# 2. The replicas stay identical.


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REPLICA_RUNS))
def test_weights_and_buffers_are_identical_on_both_processes_after_training(two_processes, name):
    first, second = reports(two_processes, name)
    assert first["state"].keys() == second["state"].keys()
    for key, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssam_f", "ssam_d_local", "ssam_f_looksam"])
def test_sparse_masks_are_identical_on_both_processes(two_processes, name):
    first, second = reports(two_processes, name)
    assert first["masks"] is not None
    for mine, theirs in zip(first["masks"], second["masks"]):
        assert torch.equal(mine, theirs)
    updates = read_jsonl(two_processes / name / "masks.jsonl")
    assert len(updates) == (2 if name == "ssam_d_local" else 1)


@pytest.mark.slow
def test_the_processes_validate_on_the_single_process_split_with_its_noisy_labels(two_processes):
    """The two processes' shards of the validation split, evaluated with the final weights, give
    the accuracy that one process gets on the whole split: the same examples, the same labels."""
    from ssam.train.distributed import SINGLE_PROCESS
    from ssam.train.loop import evaluate
    from ssam.train.parts import build_parts

    name = "noisy_on_device"
    recorded = read_jsonl(two_processes / name / "metrics.jsonl")[-1]
    parts = build_parts(config(REPLICA_RUNS[name]), SINGLE_PROCESS)
    parts.model.load_state_dict(reports(two_processes, name)[0]["state"])
    _, accuracy = evaluate(parts.evaluation_model, parts.val_loader, SINGLE_PROCESS.device)
    assert accuracy == recorded["val_acc"]
    summary = json.loads((two_processes / name / "summary.json").read_text())
    assert summary["label_noise_changed"] == parts.label_noise_changed > 0


@pytest.mark.slow
def test_local_perturbation_trains_other_weights_than_global(two_processes):
    global_state = reports(two_processes, "sam_global")[0]["state"]
    local_state = reports(two_processes, "sam_local")[0]["state"]
    assert any(not torch.equal(global_state[key], local_state[key]) for key in global_state)


def test_on_one_process_local_perturbation_is_global():
    trained = []
    for perturbation in PERTURBATIONS:
        model = small_conv_net()
        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        for inputs, targets in batches(3):
            training_step(model, optimizer, inputs, targets, perturbation=perturbation)
        trained.append(parameters_of(model))
    assert_bitwise_equal(*trained)


# 3. Global-perturbation SAM on 2 × B is SAM on 2B.


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EQUIVALENCE_RUNS))
def test_global_sam_on_two_processes_with_batch_b_equals_one_process_with_batch_2b(
    two_processes, tmp_path, name
):
    with run_objects(batchnorm_free_model) as seen:
        run_module.run(config([*EQUIVALENCE_RUN, f"batch_size={PROCESSES * BATCH}"]), tmp_path / "one")
    single = report(seen)["state"]
    parallel = reports(two_processes, name)[0]["state"]
    for key, tensor in single.items():
        torch.testing.assert_close(parallel[key], tensor, rtol=1e-5, atol=1e-6)
    one = read_jsonl(tmp_path / "one" / "metrics.jsonl")[0]
    two = read_jsonl(two_processes / name / "metrics.jsonl")[0]
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "perturbation_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


# 4. Rank 0 alone records.


@pytest.mark.slow
@pytest.mark.parametrize("name", [*REPLICA_RUNS, *EQUIVALENCE_RUNS])
def test_only_rank_0_writes_a_run_directory(two_processes, name):
    assert not (two_processes / f"{name}-rank1").exists()
    assert {path.name for path in (two_processes / name).iterdir()} >= {
        "last.pt",
        "metrics.jsonl",
        "summary.json",
    }


SPARSE_RUN = [*TINY, "optimizer=ssam_f", "optimizer.num_samples=8", "epochs=2"]
# A checkpoint after every step: mid-epoch ones hold the totals summed onto rank 0.
EVERY_STEP = [*SPARSE_RUN, "trainer.checkpoint_every_steps=1"]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """A finished run of train.py under torchrun on two processes, and its output."""

    def make():
        run_dir = tmp_path_factory.mktemp("torchrun") / "run"
        return run_dir, train_ok(run_dir, EVERY_STEP, processes=PROCESSES)

    return once_per_worker("torchrun_run", make)


@pytest.mark.slow
def test_torchrun_on_two_processes_records_once_from_rank_0(torchrun_run):
    run_dir, result = torchrun_run
    assert result.stdout.count("epoch 1/2") == 1 and result.stdout.count("final_test_acc") == 1
    assert read_json(run_dir / "summary.json")["world_size"] == PROCESSES
    assert [row["epoch"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]
    assert [update["update"] for update in read_jsonl(run_dir / "masks.jsonl")] == [1, 2]
    # Hydra's record too: rank 1 (run directory ".", the working directory) saves no config.
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert not (REPO / ".hydra").exists()


# 5. Checkpoints move between numbers of processes.


@pytest.mark.slow
def test_a_checkpoint_from_two_processes_resumes_on_one_and_trains_to_the_end(tmp_path):
    run_dir = tmp_path / "run"
    kill_after_checkpoints(run_dir, SPARSE_RUN, writes=1, processes=PROCESSES)
    assert not (run_dir / "summary.json").exists(), "the stop must land before the run ends"
    assert torch.load(run_dir / "last.pt", weights_only=True)["world_size"] == PROCESSES
    result = train_ok(run_dir, SPARSE_RUN)
    assert "resuming" in result.stdout and "it ran on 2 processes and now on 1 process" in result.stdout
    assert [row["epoch"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 1 and summary["epochs"] == 2
    assert torch.load(run_dir / "last.pt", weights_only=True)["history"]["epoch"] == 2


@pytest.mark.slow
def test_stopped_in_mid_epoch_and_resumed_on_two_processes_is_bit_identical(torchrun_run, tmp_path):
    straight, _ = torchrun_run
    run_dir = tmp_path / "run"
    kill_after_checkpoints(run_dir, EVERY_STEP, writes=2, processes=PROCESSES)
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch_progress"] is not None
    assert "resuming" in train_ok(run_dir, EVERY_STEP, processes=PROCESSES).stdout
    expected = torch.load(straight / "last.pt", weights_only=True)
    actual = torch.load(run_dir / "last.pt", weights_only=True)
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    for mine, theirs in zip(actual["method"]["optimizer"]["masks"], expected["method"]["optimizer"]["masks"]):
        assert torch.equal(mine, theirs)
    assert comparable(read_jsonl(run_dir / "metrics.jsonl")) == comparable(
        read_jsonl(straight / "metrics.jsonl")
    )


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_does_not_resume_on_another_number_of_processes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.checkpoint_every_steps=1"]
    kill_after_checkpoints(run_dir, overrides, writes=2)
    result = train(run_dir, overrides, processes=PROCESSES)
    assert result.returncode != 0
    assert "written by 1 process, and this run has 2 processes: resume it on 1 process" in result.stderr


# 6. The SLURM route: the Hydra submitit launcher, one task per GPU, each task one process.


def test_the_slurm_launcher_starts_one_task_per_gpu():
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher.tasks_per_node == 4


@pytest.mark.slow
def test_a_submitit_job_of_two_tasks_trains_as_two_processes(tmp_path):
    """submitit's local executor stands in for SLURM: the same job environment, on this machine."""
    sweep = tmp_path / "sweep"
    launcher = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={sweep}",
    ]
    train_ok(tmp_path / "unused", [*launcher, *TINY, "optimizer=sam"])
    (summary,) = [read_json(path) for path in sweep.glob("*/summary.json")]
    assert summary["world_size"] == 2


def test_synchronised_batchnorm_keeps_a_timm_model_s_activations():
    """timm's BatchNormAct2d holds its activation; torch's converter would drop it."""
    import copy

    import timm

    from ssam.train.parts import synchronised_batchnorm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # statistics that make the layers matter
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
        x = torch.randn(2, 3, 32, 32)
        converted = synchronised_batchnorm(copy.deepcopy(model)).eval()
        assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
        assert torch.equal(converted(x), model(x))
