"""trainer.deterministic: deterministic kernels and TF32 off when asked, and undone for the next
job of a multirun; on the CPU it changes no number."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import ssam.train.resolvers  # noqa: F401  (the declared options and the configs' resolvers)
from ssam.data import missing_data_message
from ssam.train.determinism import CUBLAS_WORKSPACE, WITHOUT_DETERMINISM, set_determinism
from ssam.train.run import run

REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def restored(monkeypatch):
    """torch's global switches and the environment as they were before the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    switches = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    yield
    torch.use_deterministic_algorithms(switches[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = switches[1:3]
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = switches[3:]


def test_deterministic_turns_on_deterministic_kernels_and_off_tf32(restored):
    assert set_determinism(True, CUDA) == []
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()  # a global pool's backward must run
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_without_it_the_next_job_gets_torch_s_defaults_and_a_gpu_run_is_told_what_holds(restored):
    set_determinism(True, CPU)
    assert set_determinism(False, CUDA) == [WITHOUT_DETERMINISM]
    assert set_determinism(False, CPU) == []
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.skipif(missing_data_message("fashion_mnist", None) is not None, reason="needs Fashion-MNIST")
def test_on_the_cpu_a_deterministic_run_is_the_same_run_and_says_so(tmp_path, restored, monkeypatch):
    import ssam.train.run

    peak_resets = []  # each run of a multirun's process measures its own peak (CUDA's: below)
    monkeypatch.setattr(ssam.train.run, "reset_peak_memory", peak_resets.append)
    metrics = {}
    for deterministic in (False, True):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    "optimizer=sam",
                    "dataset.train_size=128",
                    "dataset.test_size=64",
                    "batch_size=32",
                    "epochs=1",
                    "trainer.progress_bar=false",
                    f"trainer.deterministic={str(deterministic).lower()}",
                ],
            )
        run_dir = tmp_path / str(deterministic)
        summary = run(cfg, run_dir)
        assert summary["deterministic"] is deterministic
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        metrics[deterministic] = [
            {k: v for k, v in row.items() if not k.endswith(("time_s", "_per_s"))} for row in rows
        ]
    assert metrics[True] == metrics[False]
    assert peak_resets == [CPU, CPU]


def test_each_run_of_a_multirun_measures_its_own_cuda_peak(monkeypatch):
    """A multirun's jobs share one process: the CUDA peak is reset when a run starts (the device
    is faked here; CPU runs leave the CUDA counters alone)."""
    from ssam.train import records

    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", resets.append)
    records.reset_peak_memory(CPU)
    records.reset_peak_memory(CUDA)
    assert resets == [CUDA]
