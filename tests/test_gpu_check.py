"""scripts/gpu_check.py: its parts on the CPU (the CIFAR writer, the Fisher comparison, the weight
comparison, dynamo's log, a failing stage, the report); the stages themselves run on a GPU, or
with `bash scripts/gpu_check.sh --device cpu` (minutes)."""

import json
import pickle
import sys
from pathlib import Path

import torch

from ssam.data.cifar import load_cifar
from ssam.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


def test_synthetic_cifar10_is_read_by_the_trainer_s_reader_in_both_splits(tmp_path):
    gpu_check.write_synthetic_cifar10(tmp_path, images_per_file=4)
    train_images, train_labels = load_cifar("cifar10", str(tmp_path), train=True)
    test_images, test_labels = load_cifar("cifar10", str(tmp_path), train=False)
    assert train_images.shape == (20, 3, 32, 32) and train_images.dtype == torch.uint8
    assert test_images.shape == (4, 3, 32, 32)
    assert int(train_labels.min()) >= 0 and int(test_labels.max()) < 10
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "rb") as f:
        assert len(pickle.load(f)["label_names"]) == 10


def test_an_epoch_of_the_synthetic_set_is_twenty_steps_at_every_scale():
    for scale in gpu_check.SCALES.values():
        assert gpu_check.TRAIN_FILES * scale.images_per_file == 20 * scale.batch_size


def test_in_float64_vmap_and_the_loop_give_the_same_fisher_scores():
    result = gpu_check.compare_fisher_methods("compact_resnet", torch.device("cpu"), 3, torch.float64)
    assert result["max_relative_difference"] <= gpu_check.FISHER_TOLERANCE
    assert result["mask_agreement_s0.5"] == 1.0
    assert result["loop"]["seconds"] > 0 and result["vmap"]["seconds"] > 0


def test_relative_difference_measures_each_tensor_against_its_own_largest_score():
    reference = [torch.tensor([1.0, 2.0]), torch.tensor([0.01, 0.02])]
    scores = [torch.tensor([1.0, 2.0]), torch.tensor([0.01, 0.021])]
    assert abs(gpu_check.relative_difference(scores, reference) - 0.05) < 1e-6


def test_compare_weights_tells_identical_checkpoints_from_different_ones(tmp_path):
    weights = {"layer.weight": torch.ones(3), "layer.bias": torch.zeros(2)}
    for name, bias in (("a.pt", 0.0), ("b.pt", 0.0), ("c.pt", 0.25)):
        model = {**weights, "layer.bias": torch.full((2,), bias)}
        save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model}, tmp_path / name)
    same = gpu_check.compare_weights(tmp_path / "a.pt", tmp_path / "b.pt")
    other = gpu_check.compare_weights(tmp_path / "a.pt", tmp_path / "c.pt")
    assert same == {"identical": True, "max_abs_diff": 0.0, "tensors": 2, "tensors_differing": 0}
    assert other == {"identical": False, "max_abs_diff": 0.25, "tensors": 2, "tensors_differing": 1}


def test_recompiles_are_counted_from_dynamo_s_log_and_the_limit_noticed():
    console = (
        "epoch 1/3 ...\n"
        "V1203 torch/_dynamo/guards.py] [0/1] [__recompiles] Recompiling function forward in resnet.py:50\n"
        "V1203 [0/1] [__recompiles]     triggered by the following guard failure(s): training mode\n"
        "W1203 torch._dynamo hit config.recompile_limit (8)\n"
    )
    assert gpu_check.recompiles(console)["recompiles"] == 1
    assert gpu_check.recompiles(console)["limit_hit"]
    assert not gpu_check.recompiles("epoch 1/3 ...\n")["limit_hit"]


def test_a_run_whose_summary_lacks_compiled_graphs_reports_it_missing(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"final_test_acc": 50.0, "step_time_s": 0.1}))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "epoch_time_s": 2.0}) + "\n")
    facts = gpu_check.Training("run", 0, 3.0, tmp_path, "").facts()
    assert facts["compiled_graphs"] == "missing"
    assert facts["epoch_time_s"] == [2.0] and facts["final_test_acc"] == 50.0


def test_a_stage_that_raises_fails_with_its_traceback_recorded(tmp_path, monkeypatch):
    def broken(scale, device, work, record):
        record["table"] = ["| partial |"]
        raise RuntimeError("no deterministic kernel")

    monkeypatch.setitem(gpu_check.STAGES, "preset", gpu_check.Stage(broken, "a broken check", 1))
    assert gpu_check.run_stage("preset", "cpu", tmp_path, tmp_path) == 1
    record = json.loads((tmp_path / "preset.json").read_text())
    assert record["passed"] is False and record["table"] == ["| partial |"]
    assert record["error"][-1] == "RuntimeError: no deterministic kernel"


def test_stages_without_time_left_are_not_run_and_the_check_fails(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    arguments = ["all", "--device", "cpu", "--results", str(results), "--work", str(work), "--budget", "0"]
    assert gpu_check.main([*arguments, "--stages", "fisher", "preset"]) == 1
    summary = (results / "summary.md").read_text()
    assert "| fisher | " in summary and "## preset: not run: out of time" in summary
    assert (results / "gpu_check.log").exists()


def test_a_stage_past_its_time_limit_is_stopped_and_reported_timed_out(tmp_path):
    (tmp_path / "logs").mkdir()
    args = gpu_check.parse_args(
        ["all", "--device", "cpu", "--results", str(tmp_path), "--work", str(tmp_path)]
    )
    outcome = gpu_check.run_in_process("fisher", 0.5, args)
    assert outcome.status == "timed out" and outcome.wall_s < 10
