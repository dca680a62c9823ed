"""trainer.test_every_epoch=false: the test set evaluated once, at the end, on the final weights
and on the best validation epoch's, which the checkpoint keeps: the same training as a run that
tests every epoch, the same accuracies, and a killed run resumes with its best weights."""

from __future__ import annotations

import pytest
import torch
from runs import kill_after_checkpoints, model_weights, read_json, read_jsonl, train_ok

from ssam.data import missing_data_message

if missing_data_message("fashion_mnist", None) is not None:
    pytest.skip("needs Fashion-MNIST", allow_module_level=True)

pytestmark = pytest.mark.slow

# Label noise, so that validation accuracy rises and falls: the best epoch is not the last.
RUN = [
    "dataset.train_size=256",
    "dataset.val_size=64",
    "dataset.test_size=128",
    "dataset.label_noise=0.4",
    "model.widths=[4,8,8]",
    "batch_size=64",
    "epochs=4",
    "lr=0.2",
]
ONCE = [*RUN, "trainer.test_every_epoch=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("test_once")
    for name, overrides in (("every_epoch", RUN), ("once", ONCE)):
        train_ok(folder / name, overrides)
    return folder


def test_testing_once_trains_the_same_weights_and_measures_the_same_test_accuracies(runs):
    every_epoch, once = runs / "every_epoch", runs / "once"
    for name, tensor in model_weights(every_epoch).items():
        assert torch.equal(model_weights(once)[name], tensor), name
    expected, actual = read_json(every_epoch / "summary.json"), read_json(once / "summary.json")
    for key in ("final_test_acc", "test_acc_at_best_val", "best_val_acc", "best_val_epoch"):
        assert actual[key] == expected[key], key
    assert actual["best_val_epoch"] < 3, (
        "the best epoch must not be the last, for the test to tell them apart"
    )
    assert actual["test_acc_at_best_val"] != actual["final_test_acc"]
    assert actual["best_test_acc"] is None


def test_testing_once_leaves_the_test_set_out_of_each_epochs_metrics(runs):
    rows = read_jsonl(runs / "once" / "metrics.jsonl")
    assert len(rows) == 4
    assert all("test_acc" not in row and "val_acc" in row for row in rows)


def test_a_killed_run_that_tests_once_resumes_with_its_best_validation_weights(runs, tmp_path):
    interrupted = tmp_path / "interrupted"
    kill_after_checkpoints(interrupted, ONCE, writes=3)  # after epoch 3 of 4
    assert not (interrupted / "summary.json").exists(), "the kill must land before the run ends"
    assert torch.load(interrupted / "last.pt", weights_only=True)["best_val_weights"] is not None
    train_ok(interrupted, ONCE)
    expected, actual = read_json(runs / "once" / "summary.json"), read_json(interrupted / "summary.json")
    for key in ("final_test_acc", "test_acc_at_best_val", "best_val_epoch"):
        assert actual[key] == expected[key], key
