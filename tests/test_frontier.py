"""scripts/frontier.py and frontier_report.py: the report's arithmetic on summary.json files
the test writes, the radius tuning's choice on such files (no training), the configuration table
against the real configs, the pairing of runs by seed, and the step-cost benchmark end to end."""

import csv
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssam.data import labels_of
from ssam.train.distributed import SINGLE_PROCESS
from ssam.train.methods import METHODS
from ssam.train.parts import build_parts
from ssam.train.steps import SharpnessAwareOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import frontier  # noqa: E402
import frontier_report  # noqa: E402

PRESET = "fmnist_noisy"
# The configurations whose optimizer this checkout declares (methods being added may be missing).
REGISTERED = [config for config in frontier.CONFIGS if frontier.method_of(config) in METHODS]
TINY = ["dataset.train_size=128", "dataset.val_size=32", "dataset.test_size=32", "batch_size=32", "epochs=2"]
TINY.append("model.widths=[4,4,4]")


def write_run(out: Path, config: str, seed: int, summary: dict | None) -> None:
    folder = out / config / f"seed={seed}"
    folder.mkdir(parents=True)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def summary(
    best_val: float | None, final: float, train_time_s: float, seed: int = 0, rho: float | None = 0.1
) -> dict:
    record = {
        "final_test_acc": final,
        "train_time_s": train_time_s,
        "step_time_s": 0.1,
        "dataset": "fashion_mnist",
        "seed": seed,
        "rho": rho,
        "label_noise": 0.4,
        "label_noise_seed": 0,
    }
    if best_val is not None:
        record["test_acc_at_best_val"] = best_val
    return record


@pytest.fixture
def frontier_out(tmp_path):
    """Test accuracy at the best validation epoch, by seed 0, 1, 2: SGD 80/82/84, SAM at a tuned
    ρ = 0.2 89/90/91, SSAM-F s=0.5 86/90 (seed 2 unfinished); a tensor run without validation;
    step costs 1, 2, 1.2, 1.5; FLOPs 1, 2, 1.5 (none for the tensor run); sweep.json also asked
    for ssam_d_s0.5 seed 0."""
    out = tmp_path / "frontier"
    for seed, (sgd, sam) in enumerate([(80.0, 89.0), (82.0, 90.0), (84.0, 91.0)]):
        write_run(out, "sgd", seed, summary(sgd, sgd - 1, 10.0, seed, rho=None))
        write_run(out, "sam", seed, summary(sam, sam - 1, 20.0 + seed, seed, rho=0.2))
    write_run(out, "ssam_f_s0.5", 0, summary(86.0, 85.0, 15.0, 0))
    write_run(out, "ssam_f_s0.5", 1, summary(90.0, 89.0, 17.0, 1))
    write_run(out, "ssam_f_s0.5", 2, None)
    write_run(out, "ssam_f_tensor_s0.5", 0, summary(None, 83.0, 12.0))
    costs = {"sgd": 1.0, "sam": 2.0, "ssam_f_s0.5": 1.2, "ssam_f_tensor_s0.5": 1.5}
    step_cost = {
        "preset": PRESET,
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
    asked = {"preset": PRESET, "configs": ["sgd", "sam", "ssam_f_s0.5", "ssam_d_s0.5"], "seeds": [0]}
    sweep = {"invocations": [{**asked, "tuned": {"sam": ["rho=0.2"]}, "wall_s": 60.0}]}
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
    assert float(rows["ssam_f_s0.5"]["test_acc_at_best_val_std"]) == pytest.approx(2 * math.sqrt(2), abs=1e-3)
    assert float(rows["ssam_f_s0.5"]["step_cost_vs_sgd"]) == 1.2
    assert float(rows["sam"]["run_time_vs_sgd"]) == 2.1  # mean(20, 21, 22) / 10
    assert float(rows["ssam_f_s0.5"]["run_time_vs_sgd"]) == 1.6
    assert float(rows["ssam_f_s0.5"]["flops_vs_sgd"]) == 1.5
    assert float(rows["ssam_f_s0.5"]["passes_per_step"]) == 2.0
    assert rows["ssam_f_tensor_s0.5"]["flops_vs_sgd"] == ""  # not counted: missing
    assert rows["ssam_f_tensor_s0.5"]["test_acc_at_best_val_mean"] == ""  # no validation: missing
    assert rows["ssam_f_tensor_s0.5"]["final_test_acc_std"] == ""  # one run: no sample std


def test_report_csv_names_the_benchmark_and_the_radius_each_configuration_ran_at(frontier_out, tmp_path):
    rows = {row["config"]: row for row in run_report(frontier_out, tmp_path)[0]}
    assert {row["benchmark"] for row in rows.values()} == {PRESET}
    assert (rows["sam"]["radius"], rows["sam"]["tuned"]) == ("0.2", "rho=0.2")
    assert (rows["ssam_f_s0.5"]["radius"], rows["ssam_f_s0.5"]["tuned"]) == ("0.1", "")
    assert (rows["sgd"]["radius"], rows["sgd"]["tuned"]) == ("", "")  # SGD has none


@pytest.mark.parametrize(
    ("radius", "tuned", "cell"),
    [
        ("0.1", None, "0.1"),
        ("0.2", "rho=0.2", "0.2 (tuned)"),
        ("0.1", "optimizer.alpha=0.2", "0.1; optimizer.alpha=0.2 (tuned)"),  # LookSAM's α tuned, ρ not
        ("", "optimizer.trajectory_weight=0.3", "—; optimizer.trajectory_weight=0.3 (tuned)"),  # SAF: no ρ
    ],
)
def test_report_radius_cell_names_the_knob_tune_chose_where_it_is_not_rho(radius, tuned, cell):
    assert frontier_report.radius_cell({"radius": radius, "tuned": tuned}) == cell


def test_report_markdown_has_sams_gain_kept_and_the_paired_differences(frontier_out, tmp_path):
    markdown = run_report(frontier_out, tmp_path)[1]
    # Gain kept (88 − 82) / (90 − 82) = 0.75; per seed, SSAM − SGD = 6, 8 and SSAM − SAM = −3, 0:
    # mean ± s/√2 = 7 ± 1 and −1.5 ± 1.5. SAM − SGD = 9, 8, 7: 8 ± 1/√3.
    ssam = "| ssam_f_s0.5 | fmnist_noisy | 2 | 0.1 | 88.00 ± 2.83 | 87.00 ± 2.83 | 1.200 | 1.500 "
    ssam += "| 1.600 | 0.75 | +7.00 ± 1.00 | -1.50 ± 1.50 | FLOPs, CPU |"
    sgd = "| sgd | fmnist_noisy | 3 | — | 82.00 ± 2.00 | 81.00 ± 2.00 | 1.000 | 1.000 | 1.000 "
    sgd += "| 0.00 | — | -8.00 ± 0.58 | FLOPs, CPU |"
    sam = "| sam | fmnist_noisy | 3 | 0.2 (tuned) | 90.00 ± 1.00 | 89.00 ± 1.00 | 2.000 | 2.000 "
    sam += "| 2.100 | 1.00 | +8.00 ± 0.58 | — | FLOPs, CPU |"
    tensor = "| ssam_f_tensor_s0.5 | fmnist_noisy | 1 | 0.1 | missing | 83.00 | 1.500 | missing "
    tensor += "| 1.200 | — | — | — | — |"
    lines = markdown.splitlines()
    assert {ssam, sgd, sam, tensor} <= set(lines)
    assert lines.index(sgd) < lines.index(sam)  # sorted by step cost


def test_report_header_gives_the_resolvable_difference_the_label_noise_and_the_tuned_configs(
    frontier_out, tmp_path
):
    header = run_report(frontier_out, tmp_path)[1].split("| config |")[0]
    # 3 × 1/√3 = 1.73, from SAM − SGD = 8 ± 0.58 over the 3 shared seeds.
    assert "Smallest difference resolvable at 3 SE: 1.73 points" in header
    assert "+8.00 ± 0.58 over 3 seeds" in header
    assert "dataset.label_noise_seed = 0 in every run, fixed rather than following the seed" in header
    assert "by `frontier.py tune` (tuned.json) for sam;" in header


def cost_row(config: str, accuracy: float | None, flops: float | None, step_cost: float | None) -> dict:
    return {
        "config": config,
        "test_acc_at_best_val_mean": accuracy,
        "flops_vs_sgd": flops,
        "step_cost_vs_sgd": step_cost,
    }


def test_the_frontier_is_the_configurations_no_other_matches_or_beats_in_cost_and_accuracy():
    rows = [
        cost_row("sgd", 60.0, 1.0, 1.0),
        cost_row("cheap", 66.0, 1.2, 1.5),  # on it in FLOPs; in CPU cost `late` is as cheap and better
        cost_row("late", 68.0, 1.5, 1.5),
        cost_row("tie", 68.0, 1.6, 1.4),  # in FLOPs, `late` is as accurate and cheaper
        cost_row("sam", 70.0, 2.0, 2.0),
        cost_row("worse", 65.0, 2.0, 2.0),
        cost_row("unmeasured", 99.0, None, None),
    ]
    assert frontier_report.undominated(rows, "flops_vs_sgd") == ["sgd", "cheap", "late", "sam"]
    assert frontier_report.undominated(rows, "step_cost_vs_sgd") == ["sgd", "tie", "sam"]


def test_the_target_line_names_who_keeps_90_percent_of_sams_gain_at_125_times_sgds_cost():
    sgd, sam = cost_row("sgd", 60.0, 1.0, 1.0), cost_row("sam", 70.0, 2.0, 2.0)
    rows = [sgd, sam, cost_row("a", 69.0, 1.25, 1.3), cost_row("b", 68.9, 1.1, 1.1)]
    assert frontier_report.target_line(rows, sgd, sam) == (
        "Target (at least 90% of SAM's gain at no more than 1.25× SGD's cost, in the means): "
        "in FLOPs: a; in CPU step cost: none."
    )


def test_the_target_is_unknown_where_sam_gains_nothing_over_sgd_or_a_cost_is_unmeasured():
    sgd, sam = cost_row("sgd", 70.0, 1.0, 1.0), cost_row("sam", 68.0, 2.0, 2.0)
    worse = cost_row("worse", 66.0, 1.1, 1.1)  # (66 − 70) / (68 − 70) = 2 "of the gain"
    assert "unknown, as SAM has no gain over SGD" in frontier_report.target_line([sgd, sam, worse], sgd, sam)
    sam = cost_row("sam", 80.0, 2.0, 2.0)
    line = frontier_report.target_line([sgd, sam, cost_row("a", 79.0, None, 1.2)], sgd, sam)
    assert line.endswith("in FLOPs: unknown (not measured); in CPU step cost: a.")


def test_a_gain_of_exactly_90_percent_meets_the_target_whatever_the_float_quotient():
    sgd, sam = cost_row("sgd", 82.3, 1.0, 1.0), cost_row("sam", 84.3, 2.0, 2.0)
    edge = cost_row("edge", 84.1, 1.2, 1.2)  # (84.1 − 82.3) / 2 = 0.8999999999999986 in floats
    assert frontier_report.target_line([sgd, sam, edge], sgd, sam).endswith(
        "in FLOPs: edge; in CPU step cost: edge."
    )


def test_paired_difference_is_taken_over_the_seeds_both_configurations_have():
    row = {"accuracy_by_seed": {0: 70.0, 1: 72.0, 2: 71.0, 3: 75.0}}
    reference = {"accuracy_by_seed": {0: 68.0, 1: 69.0, 2: 70.0, 4: 60.0}}
    difference = frontier_report.paired_difference(row, reference)
    # Seeds 0, 1, 2: differences 2, 3, 1, mean 2, sample std 1.
    assert difference == (2.0, pytest.approx(1 / math.sqrt(3)), 3)


def test_report_lists_a_configuration_whose_runs_differ_in_radius(frontier_out, tmp_path):
    write_run(frontier_out, "sam", 3, summary(90.0, 89.0, 20.0, 3, rho=0.1))
    missing = run_report(frontier_out, tmp_path)[1].split("Missing or unfinished runs:")[1]
    assert "- sam: runs at different radii (0.1, 0.2)" in missing


def test_report_lists_unfinished_never_started_and_unvalidated_runs(frontier_out, tmp_path):
    markdown = run_report(frontier_out, tmp_path)[1]
    missing = markdown.split("Missing or unfinished runs:")[1]
    assert "- ssam_f_s0.5 seed=2: no summary.json" in missing
    assert "- ssam_d_s0.5 seed=0: never started" in missing
    assert "- ssam_f_tensor_s0.5 seed=0: summary.json has no test_acc_at_best_val" in missing
    assert "- late_sam_0.5: not run" in missing
    assert "- sgd" not in missing


def test_each_benchmarks_report_keeps_the_others_rows_in_the_csv_and_replaces_its_own(frontier_out, tmp_path):
    other = [{**row, "benchmark": "fmnist_clean", "n": "9"} for row in run_report(frontier_out, tmp_path)[0]]
    with open(tmp_path / "frontier.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(frontier_report.CSV_COLUMNS))
        writer.writeheader()
        writer.writerows([*other, {**other[0], "benchmark": PRESET, "n": "1"}])  # a former report of it
    rows = run_report(frontier_out, tmp_path)[0]
    assert rows[: len(other)] == other
    assert [row["n"] for row in rows[len(other) :]] == ["3", "2", "1", "3"]
    assert {row["benchmark"] for row in rows[len(other) :]} == {PRESET}


def test_report_refuses_a_csv_of_other_columns_and_leaves_it_as_it_was(frontier_out, tmp_path):
    foreign = tmp_path / "frontier.csv"
    foreign.write_text("config,n\nsgd,5\n")
    with pytest.raises(SystemExit, match="not a frontier report's CSV"):
        run_report(frontier_out, tmp_path)
    assert foreign.read_text() == "config,n\nsgd,5\n"


def test_report_names_its_figure_after_the_benchmark_by_default(frontier_out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert frontier.main(["report", "--out", str(frontier_out), "--csv", "frontier.csv"]) == 0
    assert (tmp_path / "docs" / "figures" / f"frontier_{PRESET}.png").exists()


def test_report_without_a_preset_names_the_csv_rows_and_the_figure_after_the_folder(
    frontier_out, tmp_path, monkeypatch
):
    for name in ("sweep.json", "step_cost.json"):
        record = json.loads((frontier_out / name).read_text())
        for part in (record, *record.get("invocations", [])):
            part.pop("preset", None)
        (frontier_out / name).write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    assert (
        frontier.main(["report", "--out", str(frontier_out), "--csv", "frontier.csv", "--markdown", "f.md"])
        == 0
    )
    with open(tmp_path / "frontier.csv", newline="") as f:
        assert {row["benchmark"] for row in csv.DictReader(f)} == {frontier_out.name}
    assert (tmp_path / "docs" / "figures" / f"frontier_{frontier_out.name}.png").exists()
    assert (
        f"no preset named in sweep.json or step_cost.json; named {frontier_out.name}"
        in (tmp_path / "f.md").read_text()
    )


def test_report_lists_as_not_run_only_the_configurations_it_is_given(frontier_out, tmp_path):
    arguments = ["report", "--out", str(frontier_out), "--csv", str(tmp_path / "frontier.csv")]
    arguments += ["--figure", str(tmp_path / "frontier.png"), "--markdown", str(tmp_path / "frontier.md")]
    assert frontier.main([*arguments, "--configs", "sgd", "sam", "ssam_f_s0.5", "rst_p0.25"]) == 0
    missing = (tmp_path / "frontier.md").read_text().split("Missing or unfinished runs:")[1]
    assert "- rst_p0.25: not run" in missing
    assert "late_sam_0.5" not in missing


def test_report_says_how_many_invocations_are_unfinished(frontier_out, tmp_path):
    sweep = json.loads((frontier_out / "sweep.json").read_text())
    sweep["invocations"].append({**sweep["invocations"][0], "finished": False, "wall_s": 30.0})
    (frontier_out / "sweep.json").write_text(json.dumps(sweep))
    header = run_report(frontier_out, tmp_path)[1]
    assert "Sweep wall time: 90 s over 2 invocation(s), 1 of them unfinished" in header


def test_report_writes_the_figure_as_png(frontier_out, tmp_path):
    run_report(frontier_out, tmp_path)
    assert (tmp_path / "figures" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_folder_without_runs_exits_non_zero(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stopped:
        frontier.main(["report", "--out", str(tmp_path / "empty"), "--csv", str(tmp_path / "f.csv")])
    assert stopped.value.code not in (0, None)
    assert "no finished runs" in str(stopped.value.code)


@pytest.fixture
def no_training(monkeypatch):
    """Stands in for train.py: records each command a sweep would run and fails it, so that no
    test trains."""
    commands = []

    def fake_run(command, **_):
        commands.append(command)
        return subprocess.CompletedProcess(command, returncode=1)

    monkeypatch.setattr(frontier.subprocess, "run", fake_run)
    return commands


# A tune sweep's runs, finished: (config, ρ) -> (best_val_acc, test_acc_at_best_val) for seeds 100
# and 101. Validation and test accuracy disagree: SAM is best on validation data at ρ = 0.1 (mean
# 44), on test data at 0.2; SSAM-F s=0.5 ties on validation data at 0.05 and 0.1 (mean 42).
GRID_RUNS = {
    ("sam", 0.05): ((40.0, 70.0), (42.0, 70.0)),
    ("sam", 0.1): ((44.0, 60.0), (44.0, 60.0)),
    ("sam", 0.2): ((43.0, 75.0), (43.0, 75.0)),
    ("ssam_f_s0.5", 0.05): ((41.8, 60.0), (42.2, 60.0)),
    ("ssam_f_s0.5", 0.1): ((42.0, 70.0), (42.0, 70.0)),
    ("ssam_f_s0.5", 0.2): ((41.0, 75.0), (41.0, 75.0)),
}
TUNE = ["tune", "--preset", PRESET, "--configs", "sam", "ssam_f_s0.5", "--seeds", "100", "101"]


@pytest.fixture
def tune_out(tmp_path):
    """GRID_RUNS as finished runs: each summary.json beside the overrides ``tune`` asks for."""
    out = tmp_path / "tune"
    for (config, rho), runs in GRID_RUNS.items():
        for seed, (best_val, test) in zip((100, 101), runs):
            folder = out / config / f"rho={rho}" / f"seed={seed}"
            (folder / ".hydra").mkdir(parents=True)
            record = {"final_test_acc": test, "best_val_acc": best_val, "test_acc_at_best_val": test}
            (folder / "summary.json").write_text(json.dumps(record))
            overrides = frontier.train_overrides(PRESET, config, seed, [f"rho={rho}"])
            OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    return out


def run_tune(out: Path) -> tuple[int, dict]:
    code = frontier.main([*TUNE, "--out", str(out)])
    return code, json.loads((out / "tuned.json").read_text())


def test_tune_chooses_the_radius_with_the_best_validation_accuracy_not_test_accuracy(tune_out, no_training):
    code, tuned = run_tune(tune_out)
    assert (code, no_training) == (0, [])  # every run finished as asked: nothing trained
    assert (tuned["configs"]["sam"]["chosen"], tuned["configs"]["sam"]["override"]) == (0.1, "rho=0.1")


def test_tune_breaks_a_tie_in_validation_accuracy_towards_the_smaller_radius(tune_out, no_training):
    assert run_tune(tune_out)[1]["configs"]["ssam_f_s0.5"]["chosen"] == 0.05


def test_tuned_json_holds_the_grid_and_each_seeds_validation_accuracy_at_every_value(tune_out, no_training):
    sam = run_tune(tune_out)[1]["configs"]["sam"]
    assert (sam["key"], sam["grid"]) == ("rho", [0.05, 0.1, 0.2])
    assert sam["tried"] == [
        {"value": 0.05, "best_val_acc": {"100": 40.0, "101": 42.0}, "mean_best_val_acc": 41.0},
        {"value": 0.1, "best_val_acc": {"100": 44.0, "101": 44.0}, "mean_best_val_acc": 44.0},
        {"value": 0.2, "best_val_acc": {"100": 43.0, "101": 43.0}, "mean_best_val_acc": 43.0},
    ]


def test_tune_runs_a_missing_grid_run_and_chooses_nothing_while_it_is_missing(tune_out, no_training):
    (tune_out / "sam" / "rho=0.2" / "seed=101" / "summary.json").unlink()
    code, tuned = run_tune(tune_out)
    assert code == 1  # the stand-in train.py failed it
    assert [command[-1] for command in no_training] == [f"hydra.run.dir='{tune_out}/sam/rho=0.2/seed=101'"]
    assert tuned["configs"]["sam"]["tried"][2]["best_val_acc"] == {"100": 43.0, "101": None}
    assert (tuned["configs"]["sam"]["chosen"], tuned["configs"]["sam"]["override"]) == (None, None)
    assert tuned["configs"]["ssam_f_s0.5"]["chosen"] == 0.05


def test_tuned_md_tables_every_value_tried_and_the_choice(tune_out, no_training):
    (tune_out / "sam" / "rho=0.2" / "seed=101" / "summary.json").unlink()
    run_tune(tune_out)
    lines = (tune_out / "tuned.md").read_text().splitlines()
    assert lines[0].startswith("Tuning on fmnist_noisy, seeds 100, 101: best validation accuracy")
    assert (
        "| sam | rho | 0.05: 41.00 (40.00, 42.00); 0.1: 44.00 (44.00, 44.00); 0.2: missing (43.00, missing) | — |"
        in lines
    )
    assert (
        "| ssam_f_s0.5 | rho | 0.05: 42.00 (41.80, 42.20); 0.1: 42.00 (42.00, 42.00); 0.2: 41.00 (41.00, 41.00) | 0.05 |"
        in lines
    )


def test_tune_refuses_a_configuration_without_a_radius(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        frontier.main(["tune", "--configs", "sgd", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "no radius to tune for sgd" in capsys.readouterr().err


@pytest.mark.parametrize("config", frontier.TUNABLE)
def test_every_radius_grid_spans_the_configurations_untuned_radius(config):
    if config not in REGISTERED:
        pytest.skip(f"optimizer={frontier.method_of(config)} is not declared in this checkout")
    key, values = frontier.radius_grid(PRESET, config, [])
    untuned = OmegaConf.select(frontier.compose_config(frontier.run_overrides(PRESET, config, [])), key)
    assert len(values) >= 3 and values == sorted(values)
    assert values[0] <= untuned <= values[-1]


def test_radius_grids_on_fmnist_noisy_are_the_stated_values():
    assert frontier.radius_grid(PRESET, "sam", []) == ("rho", [0.05, 0.1, 0.2])
    if "sam_on" in REGISTERED:
        assert frontier.radius_grid(PRESET, "sam_on", []) == ("rho", [0.1, 0.5, 1.0])


def test_a_configurations_own_grid_keeps_its_values_where_the_presets_radius_differs():
    assert frontier.radius_grid("fmnist_clean", "sam", []) == ("rho", [0.1, 0.2, 0.4])
    for preset in (PRESET, "fmnist_clean"):
        assert frontier.radius_grid(preset, "looksam_k5_alpha", []) == ("optimizer.alpha", [0.0, 0.2, 0.7])


def write_tuned(path: Path, overrides: dict[str, str | None], preset: str = PRESET) -> Path:
    """A tuned.json as ``tune`` writes it, reduced to what ``train --tuned`` reads."""
    configs = {config: {"override": override} for config, override in overrides.items()}
    path.write_text(json.dumps({"preset": preset, "set": [], "configs": configs}))
    return path


def test_train_with_tuned_appends_each_chosen_radius_override(tmp_path, no_training):
    tuned = write_tuned(tmp_path / "tuned.json", {"sam": "rho=0.2", "ssam_f_s0.5": "rho=0.05"})
    out = tmp_path / "frontier"
    arguments = [
        "train",
        "--preset",
        PRESET,
        "--configs",
        "sgd",
        "sam",
        "--seeds",
        "0",
        "--tuned",
        str(tuned),
    ]
    frontier.main([*arguments, "--out", str(out)])
    commands = {command[-1]: command[2:-1] for command in no_training}
    assert commands[f"hydra.run.dir='{out}/sam/seed=0'"] == [
        f"experiment={PRESET}",
        "optimizer=sam",
        "rho=0.2",
        "seed=0",
        "trainer.progress_bar=false",
    ]
    assert commands[f"hydra.run.dir='{out}/sgd/seed=0'"] == [
        f"experiment={PRESET}",
        "optimizer=sgd",
        "seed=0",
        "trainer.progress_bar=false",
    ]
    invocation = json.loads((out / "sweep.json").read_text())["invocations"][0]
    assert invocation["tuned"] == {"sam": ["rho=0.2"]}  # ssam_f_s0.5 was not asked for


def test_a_sweep_stopped_part_way_records_the_runs_it_finished_and_starts_no_more(tmp_path, monkeypatch):
    started = []

    def stopped_at_the_second_run(command, **_):
        started.append(command)
        if len(started) == 2:
            raise KeyboardInterrupt
        time.sleep(0.2)  # a third run, if the pool took it before the stop: it must not start a fourth
        return subprocess.CompletedProcess(command, returncode=1)

    monkeypatch.setattr(frontier.subprocess, "run", stopped_at_the_second_run)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        frontier.main(["train", "--configs", "sgd", "--seeds", "0", "1", "2", "3", "--out", str(out)])
    assert len(started) <= 3
    invocation = json.loads((out / "sweep.json").read_text())["invocations"][0]
    assert invocation["finished"] is False
    assert [(run["seed"], run["returncode"]) for run in invocation["runs"]] == [(0, 1)]


def test_a_finished_sweep_says_so_and_a_second_is_appended(tmp_path, no_training):
    out = tmp_path / "out"
    for _ in range(2):
        frontier.main(["train", "--configs", "sgd", "--seeds", "0", "--out", str(out)])
    invocations = json.loads((out / "sweep.json").read_text())["invocations"]
    assert [invocation["finished"] for invocation in invocations] == [True, True]
    assert [len(invocation["runs"]) for invocation in invocations] == [1, 1]


def test_two_sweeps_at_once_on_one_out_keep_each_others_records(tmp_path, monkeypatch):
    both_started = threading.Barrier(2)

    def interleaved(command, **_):
        # Each sweep's first run waits for the other's, so that both sweeps are under way, and
        # their records written in turns, before either run ends.
        if "seed=0" in command:
            both_started.wait(timeout=30)
        time.sleep(0.05)
        return subprocess.CompletedProcess(command, returncode=1)

    monkeypatch.setattr(frontier.subprocess, "run", interleaved)
    out = tmp_path / "out"
    sweeps = [
        threading.Thread(
            target=frontier.main,
            args=(["train", "--configs", config, "--seeds", "0", "1", "--out", str(out)],),
        )
        for config in ("sgd", "sam")
    ]
    for sweep in sweeps:
        sweep.start()
    for sweep in sweeps:
        sweep.join(timeout=60)
    invocations = json.loads((out / "sweep.json").read_text())["invocations"]
    assert sorted((invocation["configs"], invocation["finished"]) for invocation in invocations) == [
        (["sam"], True),
        (["sgd"], True),
    ]
    assert all(len(invocation["runs"]) == 2 for invocation in invocations)


def test_train_refuses_a_tuned_json_without_a_radius_for_a_configuration(tmp_path, no_training):
    tuned = write_tuned(tmp_path / "tuned.json", {"sam": None})
    with pytest.raises(SystemExit, match="chose no radius for sam"):
        frontier.main(["train", "--configs", "sam", "--tuned", str(tuned), "--out", str(tmp_path / "out")])
    assert no_training == []


def test_train_refuses_a_tuned_json_made_on_another_preset(tmp_path, no_training):
    tuned = write_tuned(tmp_path / "tuned.json", {"sam": "rho=0.2"}, preset="fmnist_cpu")
    with pytest.raises(SystemExit, match="tuned on --preset fmnist_cpu"):
        frontier.main(["train", "--configs", "sam", "--tuned", str(tuned), "--out", str(tmp_path / "out")])
    assert no_training == []


def test_the_same_seed_gives_every_method_the_same_weights_batches_and_noisy_labels():
    """What makes the report's differences paired: run s of every configuration starts alike."""

    def start(config: str, seed: int) -> tuple:
        cfg = frontier.compose_config(frontier.train_overrides(PRESET, config, seed, TINY))
        parts = build_parts(cfg, SINGLE_PROCESS)
        inputs, targets = next(iter(parts.train_loader))
        return parts.model.state_dict(), inputs, targets, labels_of(parts.train_set.dataset)

    sgd, sam, sparse = (start(config, seed=3) for config in ("sgd", "sam", "ssam_f_s0.5"))
    for other in (sam, sparse):
        assert all(torch.equal(sgd[0][key], other[0][key]) for key in sgd[0])
        assert all(torch.equal(mine, theirs) for mine, theirs in zip(sgd[1:], other[1:]))
    weights = start("sgd", seed=4)[0]
    assert not all(torch.equal(sgd[0][key], weights[key]) for key in weights)  # the seed does matter


@pytest.mark.parametrize("config", list(frontier.CONFIGS))
def test_every_configuration_composes_with_the_real_configs(config):
    if config not in REGISTERED:
        pytest.skip(f"optimizer={frontier.method_of(config)} is not declared in this checkout")
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


# Whose share of sharpness-aware steps bench reads from their runs: their policies choose as they train.
FROM_RUNS = [config for config in REGISTERED if frontier.method_of(config) in ("rst", "ae_sam", "ssam_f_rst")]


def test_bench_weighs_each_configurations_two_kinds_of_step_by_its_share_of_sharpness_aware_steps(
    tmp_path, one_thread
):
    for config in FROM_RUNS:  # runs of 8 steps, 2 and 6 of them sharpness-aware
        for seed, steps in ((0, 2), (1, 6)):
            write_run(tmp_path, config, seed, {"sharpness_aware_steps": steps})
    # SAF refuses a run that ends before its trajectory loss starts, as TINY's would.
    configs = [config for config in REGISTERED if config != "saf"]
    arguments = ["bench", "--preset", PRESET, "--configs", *configs, "--set", *TINY, *one_thread]
    assert frontier.main([*arguments, "--warmup", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "step_cost.json").read_text())
    assert set(record["configs"]) == set(configs)
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
    assert (late["sharpness_aware_share"], late["refreshes_after_first"]) == (1 / 8, 0)
    assert late["cost_s"] == pytest.approx(
        7 / 8 * late["other_step_s"] + 1 / 8 * late["step_s"] + late["first_mask_s"] / 8
    )
    looksam = record["configs"]["looksam_k5"]  # SAM at steps 0 and 5 of 8, g_v reused at the others
    assert (looksam["sharpness_aware_share"], looksam["share_from"]) == (2 / 8, "method")
    assert looksam["cost_s"] == pytest.approx(6 / 8 * looksam["other_step_s"] + 2 / 8 * looksam["step_s"])
    for config in FROM_RUNS:
        result = record["configs"][config]
        assert (result["sharpness_aware_share"], result["share_from"]) == (0.5, "runs")


def test_bench_and_flops_take_saf_where_the_last_batch_of_an_epoch_is_short(tmp_path, one_thread):
    """SAF reads and stores logits for each step's own examples: a step whose real batch is
    shorter than the one given (100 = 3 × 32 + 4) must not be given a full one."""
    tiny = [*TINY, "dataset.train_size=100", "epochs=7"]  # SAF's trajectory loss starts at epoch 6
    arguments = ["--preset", PRESET, "--configs", "sgd", "saf", "--set", *tiny, "--out", str(tmp_path)]
    assert frontier.main(["bench", *arguments, *one_thread, "--warmup", "1", "--repeats", "1"]) == 0
    assert json.loads((tmp_path / "step_cost.json").read_text())["configs"]["saf"]["ratio_vs_sgd"] > 0
    assert frontier.main(["flops", *arguments]) == 0
    counted = json.loads((tmp_path / "flops.json").read_text())["configs"]["saf"]
    assert counted["flops_vs_sgd"] == pytest.approx(1.0, abs=0.01)  # one pass; the logits cost no matmul


def test_bench_refuses_a_switching_configuration_without_its_runs(tmp_path, one_thread):
    arguments = ["bench", "--preset", PRESET, "--configs", "rst_p0.5", "--set", *TINY, *one_thread]
    with pytest.raises(SystemExit, match="rst_p0.5's share of sharpness-aware steps comes from its runs"):
        frontier.main([*arguments, "--out", str(tmp_path)])


@pytest.mark.slow
def test_flops_counts_every_step_of_training_relative_to_sgd(tmp_path):
    arguments = ["flops", "--preset", PRESET, "--configs", "late_sam_0.5", "--set", *TINY]
    assert frontier.main([*arguments, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "flops.json").read_text())
    ratios = {name: result["flops_vs_sgd"] for name, result in record["configs"].items()}
    # 8 steps, the first 4 of them plain under late-phase SAM from 0.5.
    assert ratios == {"sgd": 1.0, "late_sam_0.5": 1.5}
    assert record["configs"]["late_sam_0.5"]["passes_per_step"] == 1.5


@pytest.mark.slow
def test_flops_weighs_a_switching_policys_two_steps_by_its_runs_share(tmp_path):
    # Batches of 48 out of 128 examples: 48, 48 and the 32 left, SGD's steps and the policy's
    # alike. Runs of 6 steps, 1 and 2 of them sharpness-aware: a share of 0.25.
    for config in ("rst_p0.25", "ssam_f_rst_p0.25"):
        for seed, steps in ((0, 1), (1, 2)):
            write_run(tmp_path, config, seed, {"sharpness_aware_steps": steps})
    tiny = [*TINY, "batch_size=48"]
    arguments = ["flops", "--preset", PRESET, "--configs", "rst_p0.25", "ssam_f_rst_p0.25", "--set", *tiny]
    assert frontier.main([*arguments, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "flops.json").read_text())["configs"]
    assert results["rst_p0.25"]["flops_vs_sgd"] == pytest.approx(0.75 * 1 + 0.25 * 2, rel=1e-12)
    assert results["rst_p0.25"]["passes_per_step"] == results["ssam_f_rst_p0.25"]["passes_per_step"] == 1.25
    # The Fisher mask's per-example passes come on top: its first mask and one refresh over 6 steps.
    assert results["ssam_f_rst_p0.25"]["flops_vs_sgd"] > 1.25
    assert results["ssam_f_rst_p0.25"]["share_from"] == "runs"


def test_the_gpu_benchs_frontier_stage_names_configurations_that_exist():
    script = (ROOT / "scripts" / "gpu_bench.sh").read_text()
    default = script.split("FRONTIER_CONFIGS:-", 1)[1].split("}", 1)[0].replace("\\\n", " ").split()
    assert len(default) == 12 and set(default) <= set(frontier.CONFIGS)
