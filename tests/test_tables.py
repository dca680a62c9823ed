"""scripts/tables.py and scripts/plots.py on summary.json files the test writes, a crashed run
among them."""

import contextlib
import csv
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, summary: dict | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def summary(optimizer, sparsity, seed, final, best, train_time_s):
    return {
        "dataset": "fashion_mnist",
        "model": "compact_resnet",
        "optimizer": optimizer,
        "sparsity": sparsity,
        "seed": seed,
        "final_test_acc": final,
        "best_test_acc": best,
        "step_time_s": 0.1,
        "train_time_s": train_time_s,
        "epochs": 2,
    }


@pytest.fixture
def sweep(tmp_path):
    write_run(tmp_path / "sgd0", summary("sgd", None, 0, 88.0, 88.5, 10.0))
    write_run(tmp_path / "sgd1", summary("sgd", None, 1, 90.0, 90.5, 10.0))
    write_run(tmp_path / "sam0", summary("sam", None, 0, 90.0, 91.0, 20.0))
    write_run(tmp_path / "sam1", summary("sam", None, 1, 92.0, 93.0, 20.0))
    write_run(tmp_path / "f0", summary("ssam_f", 0.5, 0, 91.5, 91.5, 21.0))
    write_run(tmp_path / "f1", summary("ssam_f", 0.5, 1, 91.0, 91.5, 21.0))
    write_run(tmp_path / "d0", summary("ssam_d", 0.9, 0, 89.0, 89.0, 20.0))
    write_run(tmp_path / "crashed", None)
    return tmp_path


def run_script(script: str, *arguments: str) -> SimpleNamespace:
    """``python <script> <arguments>``, run as its command line runs it (as ``__main__``, with
    its folder on the path) but in this process, which has imported torch already: what it
    printed. A script that exits with an error fails the test."""
    printed = io.StringIO()
    with (
        mock.patch.object(sys, "argv", [script, *arguments]),
        mock.patch.object(sys, "path", [str(ROOT / "scripts"), *sys.path]),
        contextlib.redirect_stdout(printed),
    ):
        runpy.run_path(str(ROOT / script), run_name="__main__")
    return SimpleNamespace(stdout=printed.getvalue())


def test_table_has_a_column_per_method_and_sparsity_with_mean_std_and_seed_count(sweep, tmp_path):
    markdown, table_csv = tmp_path / "table.md", tmp_path / "table.csv"
    result = run_script("scripts/tables.py", str(sweep), "--markdown", str(markdown), "--csv", str(table_csv))
    lines = result.stdout.splitlines()
    assert "| dataset / model | SGD | SAM | SSAM-F s=0.5 | SSAM-D s=0.9 |" in lines
    assert (
        "| fashion_mnist / compact_resnet | 89.00 ± 1.41 (n=2) | 91.00 ± 1.41 (n=2) "
        "| 91.25 ± 0.35 (n=2) | 89.00 ± 0.00 (n=1) ⚠ |"
    ) in lines
    assert (
        "| fashion_mnist / compact_resnet | 1.00× (n=2) | 2.00× (n=2) | 2.10× (n=2) | 2.00× (n=1) ⚠ |"
        in lines
    )
    assert "Unfinished or crashed runs (no summary.json): " + str(sweep / "crashed") in result.stdout
    assert markdown.read_text().strip() == result.stdout.strip()
    rows = list(csv.DictReader(table_csv.open()))
    assert [(r["optimizer"], r["sparsity"], r["runs"]) for r in rows] == [
        ("sgd", "", "2"),
        ("sam", "", "2"),
        ("ssam_f", "0.5", "2"),
        ("ssam_d", "0.9", "1"),
    ]
    assert float(rows[1]["best_mean"]) == 92.0


def test_plots_are_written_as_png_files(sweep, tmp_path):
    out = tmp_path / "figures"
    run_script("scripts/plots.py", str(sweep), "--out", str(out), "--prefix", "test")
    for name in ("accuracy_vs_sparsity", "accuracy_vs_time"):
        path = out / f"test_fashion_mnist_compact_resnet_{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_that_share_a_seed_are_flagged_as_mixed_settings(tmp_path):
    write_run(tmp_path / "a", summary("sam", None, 0, 90.0, 90.0, 20.0))
    write_run(tmp_path / "b", summary("sam", None, 0, 80.0, 80.0, 20.0))
    result = run_script("scripts/tables.py", str(tmp_path))
    assert "| fashion_mnist / compact_resnet | 85.00 ± 7.07 (n=2) ‡ |" in result.stdout.splitlines()


def test_other_granularities_and_norms_get_their_own_columns(tmp_path):
    write_run(tmp_path / "paper", summary("ssam_f", 0.5, 0, 90.0, 90.0, 20.0))
    tensor = {**summary("ssam_f", 0.5, 0, 80.0, 80.0, 15.0), "granularity": "tensor", "norm": "masked"}
    write_run(tmp_path / "tensor", tensor)
    result = run_script("scripts/tables.py", str(tmp_path))
    assert "| dataset / model | SSAM-F s=0.5 | SSAM-F (tensor, masked norm) s=0.5 |" in result.stdout
    assert "‡" not in result.stdout.split("⚠ fewer")[0]
    run_script("scripts/plots.py", str(tmp_path), "--out", str(tmp_path / "figures"))


def write_analysis(folder: Path, lambda_max: float, trace: float, m_sharpness: float) -> None:
    hessian = {"loss": 0.5, "lambda_max": lambda_max, "lambda_max_over_lambda_5": 2.0, "trace": trace}
    sharpness = {"m_sharpness": m_sharpness, "random_sharpness": 1e-5}
    (folder / "analysis_hessian.json").write_text(json.dumps(hessian))
    (folder / "analysis_sharpness.json").write_text(json.dumps(sharpness))


def test_analysis_table_has_a_row_per_setting_with_mean_std_of_each_measure(sweep):
    write_analysis(sweep / "sgd0", 100.0, 500.0, 0.2)
    write_analysis(sweep / "sgd1", 120.0, 700.0, 0.4)
    write_analysis(sweep / "sam0", 50.0, 300.0, 0.1)

    lines = run_script("scripts/analysis_table.py", str(sweep)).stdout.splitlines()

    assert lines[0].startswith("| setting | loss | λ_max | λ_max / λ_5 | trace | m-sharpness |")
    assert (
        "| SGD | 0.500 ± 0.000 | 110 ± 14 | 2.00 ± 0.00 | 600 ± 141 | 0.300 ± 0.141 | 1.00e-05 ± 0.00e+00 | 2 |"
        in lines
    )
    assert (
        "| SAM | 0.500 ± 0.000 | 50.0 ± 0.0 | 2.00 ± 0.00 | 300 ± 0 | 0.100 ± 0.000 | 1.00e-05 ± 0.00e+00 | 1 |"
        in lines
    )
    assert "| SGD | 1 | 90.00 | 0.500 | 120 | 2.00 | 700 | 0.400 | 1.00e-05 |" in lines
    missing = lines[-1]
    assert missing.startswith("Runs without analysis_hessian.json") and str(sweep / "f0") in missing


def test_amp_and_m_sharpness_runs_are_not_pooled_with_the_paper_method(tmp_path):
    write_run(tmp_path / "plain", {**summary("sam", None, 0, 90.0, 90.0, 20.0), "amp": "none"})
    write_run(tmp_path / "bf16", {**summary("sam", None, 0, 89.0, 89.0, 10.0), "amp": "bf16"})
    fraction = {**summary("sam", None, 0, 88.0, 88.0, 15.0), "ascent_fraction": 0.25}
    write_run(tmp_path / "fraction", fraction)
    local = {**summary("sam", None, 0, 87.0, 87.0, 15.0), "perturbation": "local", "world_size": 1}
    write_run(tmp_path / "local_single", local)
    header = run_script("scripts/tables.py", str(tmp_path)).stdout.splitlines()[2]
    assert header == "| dataset / model | SAM | SAM (amp=bf16) | SAM (ascent_fraction=0.25) |"


def test_the_test_accuracy_at_the_best_validation_epoch_is_the_first_table(tmp_path):
    for seed, (final, best, at_best_val) in enumerate([(88.0, 90.0, 87.0), (90.0, 91.0, 89.0)]):
        run = {**summary("sgd", None, seed, final, best, 10.0), "test_acc_at_best_val": at_best_val}
        write_run(tmp_path / f"sgd{seed}", run)
    text = run_script("scripts/tables.py", str(tmp_path)).stdout
    titles = [line for line in text.splitlines() if line.startswith("**")]
    assert titles == [
        "**Test accuracy at the epoch of best validation accuracy (%)**",
        "**Final test accuracy (%)**",
        "**Best test accuracy over epochs, selected on the test set (the authors' metric) (%)**",
        "**Training time per epoch, relative to SGD (median over runs)**",
    ]
    rows = [line for line in text.splitlines() if line.startswith("| fashion_mnist")]
    assert rows[:3] == [
        "| fashion_mnist / compact_resnet | 88.00 ± 1.41 (n=2) |",
        "| fashion_mnist / compact_resnet | 89.00 ± 1.41 (n=2) |",
        "| fashion_mnist / compact_resnet | 90.50 ± 0.71 (n=2) |",
    ]
    run_script("scripts/plots.py", str(tmp_path), "--out", str(tmp_path / "figures"))


def test_runs_without_a_validation_split_have_no_such_table(sweep):
    assert "best validation" not in run_script("scripts/tables.py", str(sweep)).stdout


def test_runs_under_other_label_noise_are_other_rows_labelled_with_it(tmp_path, sweep):
    csv_path = tmp_path / "table.csv"
    write_run(sweep / "noisy", {**summary("sgd", None, 0, 70.0, 75.0, 10.0), "label_noise": 0.4})
    lines = run_script("scripts/tables.py", str(sweep), "--csv", str(csv_path)).stdout.splitlines()
    assert (
        "| fashion_mnist / compact_resnet, 0% noise | 89.00 ± 1.41 (n=2) | 91.00 ± 1.41 (n=2) "
        "| 91.25 ± 0.35 (n=2) | 89.00 ± 0.00 (n=1) ⚠ |"
    ) in lines
    assert (
        "| fashion_mnist / compact_resnet, 40% noise | 70.00 ± 0.00 (n=1) | missing | missing | missing |"
        in lines
    )
    noisy = [row for row in csv.DictReader(csv_path.open()) if row["label_noise"] == "0.4"]
    assert [(row["optimizer"], row["final_mean"]) for row in noisy] == [("sgd", "70.0")]
    run_script("scripts/plots.py", str(sweep), "--out", str(tmp_path / "figures"), "--prefix", "noise")
    assert (
        tmp_path / "figures" / "noise_fashion_mnist_compact_resnet_noise0.4_accuracy_vs_time.png"
    ).exists()


def test_sam_from_and_m_sharpness_runs_get_their_own_columns(tmp_path):
    write_run(tmp_path / "plain", {**summary("sam", None, 0, 90.0, 90.0, 20.0), "sam_from": 0.0, "m": None})
    write_run(tmp_path / "late", {**summary("sam", None, 0, 89.0, 89.0, 15.0), "sam_from": 0.5})
    write_run(tmp_path / "m", {**summary("sam", None, 0, 88.0, 88.0, 15.0), "m": 4})
    header = run_script("scripts/tables.py", str(tmp_path)).stdout.splitlines()[2]
    assert header == "| dataset / model | SAM | SAM (m=4) | SAM (sam_from=0.5) |"


@pytest.mark.parametrize("crashed", [False, True])
def test_a_folder_without_finished_runs_is_an_error(tmp_path, crashed):
    if crashed:
        write_run(tmp_path / "crashed", None)
    result = subprocess.run(
        [sys.executable, "scripts/tables.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert f"no finished run (a run directory with summary.json) found under {tmp_path}" in result.stderr
    assert (str(tmp_path / "crashed") in result.stderr) == crashed
