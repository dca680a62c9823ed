"""scripts/compare_runs.py tells the same runs from different ones, times aside."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, *, weight: float, epoch_time_s: float, masks: str | None = None) -> None:
    folder.mkdir(parents=True)
    record = {"epoch": 0, "test_acc": 80.0, "epoch_time_s": epoch_time_s}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (folder / "summary.json").write_text(json.dumps({"final_test_acc": 80.0}))
    torch.save({"model": {"w": torch.tensor([weight])}}, folder / "last.pt")
    if masks is not None:
        (folder / "masks.jsonl").write_text(masks)


def compare(before: Path, after: Path) -> SimpleNamespace:
    """``python scripts/compare_runs.py BEFORE AFTER``, run as its command line runs it but in
    this process (which has imported torch already): its exit code and what it printed."""
    printed = io.StringIO()
    arguments = ["compare_runs.py", str(before), str(after)]
    with mock.patch.object(sys, "argv", arguments), contextlib.redirect_stdout(printed):
        try:
            runpy.run_path(str(ROOT / "scripts" / "compare_runs.py"), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
    return SimpleNamespace(returncode=code, stdout=printed.getvalue())


def test_runs_that_differ_only_in_their_times_are_the_same(tmp_path):
    write_run(tmp_path / "before" / "ssam_f", weight=1.0, epoch_time_s=3.0, masks='{"update": 1}\n')
    write_run(tmp_path / "after" / "ssam_f", weight=1.0, epoch_time_s=5.0, masks='{"update": 1}\n')
    result = compare(tmp_path / "before", tmp_path / "after")
    assert result.returncode == 0
    assert "| ssam_f | 80.00 | 80.00 | identical | identical | identical |" in result.stdout


def test_a_weight_that_differs_in_the_last_bit_makes_the_runs_different(tmp_path):
    write_run(tmp_path / "before" / "sgd", weight=1.0, epoch_time_s=3.0)
    write_run(
        tmp_path / "after" / "sgd",
        weight=float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))),
        epoch_time_s=3.0,
    )
    result = compare(tmp_path / "before", tmp_path / "after")
    assert result.returncode == 1
    assert "| sgd | 80.00 | 80.00 | identical | DIFFERENT | — |" in result.stdout


def test_runs_kept_without_their_checkpoints_are_compared_on_the_rest(tmp_path):
    for side in ("before", "after"):
        write_run(tmp_path / side / "sam", weight=1.0, epoch_time_s=3.0)
        (tmp_path / side / "sam" / "last.pt").unlink()
    result = compare(tmp_path / "before", tmp_path / "after")
    assert result.returncode == 0
    assert "| sam | 80.00 | 80.00 | identical | not kept | — |" in result.stdout


def test_summaries_are_compared_on_their_shared_keys_times_aside(tmp_path):
    for side, summary in (
        ("before", {"final_test_acc": 80.0, "seed": 0, "train_time_s": 3.0}),
        ("after", {"final_test_acc": 80.0, "seed": 1, "train_time_s": 5.0, "passes_per_step": 2.0}),
    ):
        write_run(tmp_path / side / "sam", weight=1.0, epoch_time_s=3.0)
        (tmp_path / side / "sam" / "summary.json").write_text(json.dumps(summary))
    result = compare(tmp_path / "before", tmp_path / "after")
    assert result.returncode == 1
    assert result.stdout.rstrip().endswith("| identical | identical | — | DIFFERENT |")
