"""scripts/tables.py: mean ± std over seeds from summary.json files, unfinished runs reported."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, summary: dict | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def summary(optimizer, sparsity, seed, final, best):
    return {
        "dataset": "fashion_mnist",
        "model": "compact_resnet",
        "optimizer": optimizer,
        "sparsity": sparsity,
        "seed": seed,
        "final_test_acc": final,
        "best_test_acc": best,
        "step_time_s": 0.1,
        "train_time_s": 20.0,
        "epochs": 2,
    }


def test_table_reports_mean_std_over_seeds_and_lists_unfinished_runs(tmp_path):
    write_run(tmp_path / "a", summary("sam", None, 0, 90.0, 91.0))
    write_run(tmp_path / "b", summary("sam", None, 1, 92.0, 93.0))
    write_run(tmp_path / "c", summary("ssam_f", 0.5, 0, 91.5, 91.5))
    write_run(tmp_path / "crashed", None)
    output = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, "scripts/tables.py", str(tmp_path), "--markdown", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert (
        "| fashion_mnist | compact_resnet | sam | - | 2 | 91.00 ± 1.41 | 92.00 ± 1.41 | 0.100 | 10.0 |"
        in lines
    )
    assert "| fashion_mnist | compact_resnet | ssam_f | 0.5 | 1 | 91.50 | 91.50 | 0.100 | 10.0 |" in lines
    assert "Unfinished runs (no summary.json): " + str(tmp_path / "crashed") in result.stdout
    assert output.read_text().strip() == result.stdout.strip()
