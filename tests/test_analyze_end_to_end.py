"""python -m ssam.analyze as a user runs it, on checkpoints of tiny train.py runs: the files it
writes, the errors it gives, and λ_max tracking during training that leaves the run unchanged."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runs import REPO, TIMEOUT_S, model_weights, once_per_worker, read_json, read_jsonl, run_env, train_ok

from ssam.data import missing_data_message

# End-to-end (left out by make test-fast); its tests share a module fixture, so under
# pytest-xdist they run on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_analyze_end_to_end")]

MISSING = missing_data_message("fashion_mnist", None)
if MISSING is not None:
    pytest.skip(f"the analysis end-to-end tests need Fashion-MNIST: {MISSING}", allow_module_level=True)

TINY = ["dataset.train_size=128", "dataset.test_size=128", "batch_size=64"]
# Two epochs: the λ_max measured after the first comes before the second's training, and the
# mask is refreshed twice, so that its overlap with the previous one is logged.
SPARSE_RUN = [*TINY, "epochs=2", "optimizer=ssam_f", "optimizer.num_samples=16"]
# A few seconds of analysis: one batch, short Lanczos, a 3 × 3 surface.
QUICK = [
    "data.batches=1",
    "data.batch_size=64",
    "hessian.lanczos_steps=5",
    "hessian.trace_probes=2",
    "sharpness.random_samples=2",
    "landscape.steps=3",
    "landscape.line_points=2",
    "landscape.line_margin=0",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def analyze(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssam.analyze", *arguments],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny finished runs: Sparse SAM (with masks) and SGD, each trained once for the module."""

    def make() -> dict[str, Path]:
        root = tmp_path_factory.mktemp("analyze")
        runs = {}
        for name, overrides in {"ssam_f": SPARSE_RUN, "sgd": [*TINY, "epochs=1", "optimizer=sgd"]}.items():
            train_ok(root / name, overrides)
            # Named as a sweep names its runs, with '=' and ',' that the command line must keep.
            runs[name] = (root / name).rename(root / f"optimizer={name},seed=0")
        return runs

    return once_per_worker("analyze_runs", make)


def test_analyze_writes_every_json_and_png_next_to_the_checkpoint(runs):
    run_dir = runs["ssam_f"]
    other = runs["sgd"] / "last.pt"
    result = analyze([f"checkpoint={run_dir / 'last.pt'}", f"landscape.other_checkpoint={other}", *QUICK])
    assert result.returncode == 0, result.stdout + result.stderr

    for name in ("hessian", "sharpness", "landscape", "masks"):
        assert (run_dir / f"analysis_{name}.json").is_file(), name
    for name in ("landscape_contour", "landscape_surface", "interpolation", "masks"):
        assert (run_dir / f"analysis_{name}.png").read_bytes().startswith(PNG_SIGNATURE), name

    hessian = read_json(run_dir / "analysis_hessian.json")
    assert hessian["data"] == {
        "split": "train",
        "examples": 64,
        "batches": 1,
        "batch_size": 64,
        "selection": hessian["data"]["selection"],
    }
    assert len(hessian["top_eigenvalues"]) == 5 and hessian["lanczos_steps"] == 5
    assert hessian["lambda_max"] == max(hessian["top_eigenvalues"]) > 0
    assert hessian["trace_probes"] == 2
    sharpness = read_json(run_dir / "analysis_sharpness.json")
    assert sharpness["rho"] == 0.05 and sharpness["m"] == 64
    assert sharpness["m_sharpness"] > 0  # SAM's step raises the loss, to first order by ρ‖g‖

    landscape = read_json(run_dir / "analysis_landscape.json")
    centre = landscape["surface"]["losses"][1][1]
    assert landscape["surface"]["coordinates"] == [-1.0, 0.0, 1.0]
    assert centre == landscape["loss"]  # the plane's centre is the checkpoint itself
    line = landscape["interpolation"]
    assert line["alphas"] == [0.0, 0.5, 1.0]
    assert line["losses"][0] == landscape["loss"]

    masks = read_json(run_dir / "analysis_masks.json")
    assert masks["updates"] == [1, 2] and masks["epochs"] == [0, 1]
    assert masks["overlap_with_previous"][0] is None and 0 < masks["overlap_with_previous"][1] <= 1
    assert "conv1.weight" in masks["layers"]


def test_analyze_skips_masks_of_a_run_without_them(runs):
    result = analyze([f"checkpoint={runs['sgd'] / 'last.pt'}", "what=[masks]"])
    assert result.returncode == 0, result.stderr
    assert "masks: skipped" in result.stdout and "not a Sparse SAM run" in result.stdout
    assert not (runs["sgd"] / "analysis_masks.json").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["what=[hessian,curvature]"],
            "what must list some of hessian, sharpness, landscape, masks, got 'curvature'",
        ),
        (["checkpoint=/no/such/run/last.pt"], "checkpoint must be an existing file (a run's last.pt)"),
    ],
    ids=["unknown-analysis", "missing-checkpoint"],
)
def test_bad_setting_exits_2_naming_the_setting_and_what_is_allowed(runs, arguments, message):
    result = analyze([f"checkpoint={runs['sgd'] / 'last.pt'}", *arguments])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_tracking_sharpness_logs_lambda_max_and_leaves_training_bit_identical(runs, tmp_path):
    tracked = tmp_path / "tracked"
    train_ok(tracked, [*SPARSE_RUN, "trainer.track_sharpness_every=1"])

    rows, tracked_rows = read_jsonl(runs["ssam_f"] / "metrics.jsonl"), read_jsonl(tracked / "metrics.jsonl")
    assert all("lambda_max" not in row for row in rows)
    assert all(row["lambda_max"] > 0 for row in tracked_rows)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "perturbation_norm"):
        assert [row[key] for row in rows] == [row[key] for row in tracked_rows], key
    weights, tracked_weights = model_weights(runs["ssam_f"]), model_weights(tracked)
    for name, tensor in weights.items():
        assert tensor.equal(tracked_weights[name]), name


def test_a_damaged_mask_log_exits_2_naming_the_file(runs, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["ssam_f"], damaged)
    masks = damaged / "masks.jsonl"
    masks.write_text(masks.read_text()[:-20])  # a run killed while writing its last line
    result = analyze([f"checkpoint={damaged / 'last.pt'}", "what=[masks]"])
    assert result.returncode == 2
    assert "masks.jsonl cannot be read as a mask history" in result.stderr
    assert "Traceback" not in result.stderr
