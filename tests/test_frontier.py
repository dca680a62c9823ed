"""scripts/frontier.py and frontier_report.py: the report's arithmetic on summary.json files
the test writes, the configuration table against the real configs, and the step-cost benchmark
end to end."""

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssam.train.steps import SharpnessAwareOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import frontier  # noqa: E402
import frontier_report  # noqa: E402

PRESET = "fmnist_noisy"


def write_run(out: Path, config: str, seed: int, summary: dict | None) -> None:
    folder = out / config / f"seed={seed}"
    folder.mkdir(parents=True)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def summary(best_val: float | None, final: float, train_time_s: float) -> dict:
    record = {
        "final_test_acc": final,
        "train_time_s": train_time_s,
        "step_time_s": 0.1,
        "dataset": "fashion_mnist",
    }
    if best_val is not None:
        record["test_acc_at_best_val"] = best_val
    return record


@pytest.fixture
def frontier_out(tmp_path):
    """SGD 80/82/84, SAM 88/90/92, SSAM-F s=0.5 86/88 (seed 2 unfinished), a tensor run without
    validation; step costs 1, 2, 1.2, 1.5; FLOPs 1, 2, 1.5 (none for the tensor run); sweep.json
    also asked for ssam_d_s0.5 seed 0."""
    out = tmp_path / "frontier"
    for seed, (sgd, sam) in enumerate([(80.0, 88.0), (82.0, 90.0), (84.0, 92.0)]):
        write_run(out, "sgd", seed, summary(sgd, sgd - 1, 10.0))
        write_run(out, "sam", seed, summary(sam, sam - 1, 20.0 + seed))
    write_run(out, "ssam_f_s0.5", 0, summary(86.0, 85.0, 15.0))
    write_run(out, "ssam_f_s0.5", 1, summary(88.0, 87.0, 17.0))
    write_run(out, "ssam_f_s0.5", 2, None)
    write_run(out, "ssam_f_tensor_s0.5", 0, summary(None, 83.0, 12.0))
    costs = {"sgd": 1.0, "sam": 2.0, "ssam_f_s0.5": 1.2, "ssam_f_tensor_s0.5": 1.5}
    step_cost = {
        "device": "test CPU",
        "torch": "x",
        "threads": 1,
        "model": "compact_resnet",
        "batch_size": 128,
        "repeats": 3,
        "configs": {name: {"ratio_vs_sgd": ratio} for name, ratio in costs.items()},
    }
    (out / "step_cost.json").write_text(json.dumps(step_cost))
    counted = {"sgd": (1.0, 1.0), "sam": (2.0, 2.0), "ssam_f_s0.5": (1.5, 2.0)}
    flops = {"configs": {name: {"flops_vs_sgd": f, "passes_per_step": p} for name, (f, p) in counted.items()}}
    (out / "flops.json").write_text(json.dumps(flops))
    sweep = {
        "invocations": [
            {"configs": ["sgd", "sam", "ssam_f_s0.5", "ssam_d_s0.5"], "seeds": [0], "wall_s": 60.0}
        ]
    }
    (out / "sweep.json").write_text(json.dumps(sweep))
    return out


def run_report(out: Path, tmp_path: Path) -> tuple[list[dict], str]:
    markdown = tmp_path / "frontier.md"
    arguments = ["report", "--out", str(out), "--csv", str(tmp_path / "frontier.csv")]
    arguments += ["--figure", str(tmp_path / "figures" / "frontier.png"), "--markdown", str(markdown)]
    assert frontier.main(arguments) == 0
    with open(tmp_path / "frontier.csv") as f:
        return list(csv.DictReader(f)), markdown.read_text()


def test_report_csv_has_exactly_the_listed_columns_sorted_by_step_cost(frontier_out, tmp_path):
    rows, _ = run_report(frontier_out, tmp_path)
    assert list(rows[0]) == list(frontier_report.CSV_COLUMNS)
    assert [row["config"] for row in rows] == ["sgd", "ssam_f_s0.5", "ssam_f_tensor_s0.5", "sam"]
    assert [row["n"] for row in rows] == ["3", "2", "1", "3"]


def test_report_means_sample_stds_and_ratios_to_sgd(frontier_out, tmp_path):
    rows = {row["config"]: row for row in run_report(frontier_out, tmp_path)[0]}
    assert float(rows["sgd"]["test_acc_at_best_val_mean"]) == 82.0
    assert float(rows["sgd"]["test_acc_at_best_val_std"]) == 2.0  # sample std of 80, 82, 84
    assert float(rows["sam"]["final_test_acc_mean"]) == 89.0
    assert float(rows["ssam_f_s0.5"]["test_acc_at_best_val_std"]) == pytest.approx(math.sqrt(2), abs=1e-3)
    assert float(rows["ssam_f_s0.5"]["step_cost_vs_sgd"]) == 1.2
    assert float(rows["sam"]["run_time_vs_sgd"]) == 2.1  # mean(20, 21, 22) / 10
    assert float(rows["ssam_f_s0.5"]["run_time_vs_sgd"]) == 1.6
    assert float(rows["ssam_f_s0.5"]["flops_vs_sgd"]) == 1.5
    assert float(rows["ssam_f_s0.5"]["passes_per_step"]) == 2.0
    assert rows["ssam_f_tensor_s0.5"]["flops_vs_sgd"] == ""  # not counted: missing
    assert rows["ssam_f_tensor_s0.5"]["test_acc_at_best_val_mean"] == ""  # no validation: missing
    assert rows["ssam_f_tensor_s0.5"]["final_test_acc_std"] == ""  # one run: no sample std


def test_report_markdown_has_sams_gain_kept_and_the_difference_in_standard_errors(frontier_out, tmp_path):
    markdown = run_report(frontier_out, tmp_path)[1]
    # (87 − 82) / (90 − 82) = 0.625; (87 − 90) / sqrt(2/2 + 4/3) = −1.96
    assert (
        "| ssam_f_s0.5 | 2 | 87.00 ± 1.41 | 86.00 ± 1.41 | 1.200 | 1.500 | 1.600 | 0.62 | -1.96 |" in markdown
    )
    assert "| sgd | 3 | 82.00 ± 2.00 | 81.00 ± 2.00 | 1.000 | 1.000 | 1.000 | 0.00 | -4.90 |" in markdown
    assert "| sam | 3 | 90.00 ± 2.00 | 89.00 ± 2.00 | 2.000 | 2.000 | 2.100 | 1.00 | — |" in markdown
    assert "| ssam_f_tensor_s0.5 | 1 | missing | 83.00 | 1.500 | missing | 1.200 | — | — |" in markdown
    lines = markdown.splitlines()
    assert lines.index(
        "| sgd | 3 | 82.00 ± 2.00 | 81.00 ± 2.00 | 1.000 | 1.000 | 1.000 | 0.00 | -4.90 |"
    ) < lines.index("| sam | 3 | 90.00 ± 2.00 | 89.00 ± 2.00 | 2.000 | 2.000 | 2.100 | 1.00 | — |")


def test_report_lists_unfinished_never_started_and_unvalidated_runs(frontier_out, tmp_path):
    markdown = run_report(frontier_out, tmp_path)[1]
    missing = markdown.split("Missing or unfinished runs:")[1]
    assert "- ssam_f_s0.5 seed=2: no summary.json" in missing
    assert "- ssam_d_s0.5 seed=0: never started" in missing
    assert "- ssam_f_tensor_s0.5 seed=0: summary.json has no test_acc_at_best_val" in missing
    assert "- late_sam_0.5: not run" in missing
    assert "- sgd" not in missing


def test_report_writes_the_figure_as_png(frontier_out, tmp_path):
    run_report(frontier_out, tmp_path)
    assert (tmp_path / "figures" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_folder_without_runs_exits_non_zero(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stopped:
        frontier.main(["report", "--out", str(tmp_path / "empty"), "--csv", str(tmp_path / "f.csv")])
    assert stopped.value.code not in (0, None)
    assert "no finished runs" in str(stopped.value.code)


@pytest.mark.parametrize("config", list(frontier.CONFIGS))
def test_every_configuration_composes_with_the_real_configs(config):
    cfg = frontier.compose_config(frontier.run_overrides(PRESET, config, []))
    OmegaConf.to_container(cfg, resolve=True)
    for override in frontier.CONFIGS[config]:
        key, value = override.split("=")
        composed = cfg.optimizer.name if key == "optimizer" else OmegaConf.select(cfg, key)
        assert str(composed) == value, (config, key)


def test_bench_steps_with_the_settings_of_each_configuration():
    """The bench builds each configuration's method and passes as the trainer does."""
    batches = {}
    sgd = frontier.BenchedConfig(frontier.compose_config(["optimizer=sgd"]), batches)
    assert sgd.passes.accumulate_steps == 1 and not hasattr(sgd.method, "options")
    overrides = frontier.run_overrides(
        PRESET,
        "ssam_f_tensor_s0.5_af0.25",
        ["optimizer.num_samples=8", "trainer.on_nonfinite=skip", "trainer.accumulate_steps=2"],
    )
    sparse = frontier.BenchedConfig(frontier.compose_config(overrides), batches)
    assert sparse.method.options == SharpnessAwareOptions(ascent_fraction=0.25)
    assert (sparse.passes.accumulate_steps, sparse.cfg.trainer.on_nonfinite) == (2, "skip")


@pytest.fixture
def one_thread():
    """One intra-op thread, as tests/runs.py gives the runs: on a shared 2-core machine two
    stall on each other, and the Fisher mask's batch-1 passes get tens of times slower."""
    threads = torch.get_num_threads()
    yield ["--threads", "1"]
    torch.set_num_threads(threads)


def test_bench_writes_a_positive_step_cost_ratio_for_every_configuration(tmp_path, one_thread):
    tiny = [
        "dataset.train_size=128",
        "dataset.val_size=32",
        "dataset.test_size=32",
        "batch_size=32",
        "epochs=2",
    ]
    tiny.append("model.widths=[4,4,4]")
    arguments = ["bench", "--preset", PRESET, "--set", *tiny, *one_thread]
    assert frontier.main([*arguments, "--warmup", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "step_cost.json").read_text())
    assert set(record["configs"]) == set(frontier.CONFIGS)
    assert record["configs"]["sgd"]["ratio_vs_sgd"] == 1.0
    assert all(result["ratio_vs_sgd"] > 0 for result in record["configs"].values())
    assert (record["steps_per_epoch"], record["batch_size"], record["input_shape"]) == (4, 32, [1, 28, 28])
    fisher = record["configs"]["ssam_f_s0.5"]
    # Two epochs, a mask each: the first mask and one refresh, amortised over 8 steps.
    assert fisher["refreshes_after_first"] == 1
    assert fisher["masks_per_step_s"] == pytest.approx((fisher["first_mask_s"] + fisher["refresh_s"]) / 8)
    assert fisher["cost_s"] == pytest.approx(fisher["step_s"] + fisher["masks_per_step_s"])
    assert record["configs"]["sam"]["masks_per_step_s"] == 0.0
    late = record["configs"]["late_ssam_f_tensor_s0.5_0.8"]
    # ⌈0.8 · 8⌉ = 7 plain steps; the mask is built in the second epoch, the last: no refresh.
    assert (late["plain_share"], late["refreshes_after_first"]) == (7 / 8, 0)
    assert late["cost_s"] == pytest.approx(
        7 / 8 * late["plain_step_s"] + 1 / 8 * late["step_s"] + late["first_mask_s"] / 8
    )


@pytest.mark.slow
def test_flops_counts_every_step_of_training_relative_to_sgd(tmp_path):
    tiny = ["dataset.train_size=128", "dataset.val_size=32", "dataset.test_size=32", "batch_size=32"]
    tiny += ["epochs=2", "model.widths=[4,4,4]"]
    arguments = ["flops", "--preset", PRESET, "--configs", "late_sam_0.5", "--set", *tiny]
    assert frontier.main([*arguments, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "flops.json").read_text())
    ratios = {name: result["flops_vs_sgd"] for name, result in record["configs"].items()}
    # 8 steps, the first 4 of them plain under late-phase SAM from 0.5.
    assert ratios == {"sgd": 1.0, "late_sam_0.5": 1.5}
    assert record["configs"]["late_sam_0.5"]["passes_per_step"] == 1.5
