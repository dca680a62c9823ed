"""Bad data and records stop a run before training with a message naming what to fix (exit code 2
through train.py), never a traceback mid-epoch, and the run's records stay valid JSON."""

from __future__ import annotations

import gzip
import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.config_store import ConfigStore
from runs import train
from torch.utils.data import TensorDataset

from ssam.data import DataError, build_datasets, check_labels_in_range, missing_data_message
from ssam.data.catalog import DATASETS, DatasetSpec
from ssam.data.fashion_mnist import FILES
from ssam.data.tensor_dataset import ImageTensorDataset
from ssam.registry import register
from ssam.train.metrics import JsonLines, read_json, write_json

ARRAYS = "arrays"
IMAGES = dict(image_size=8, mean=[0.5], std=[0.25])
CLASSES = 3


# --- a dataset declared as an extension would: images and labels in two .npz files ------------


def write_arrays(root: Path, train_labels: list[int], test_labels: list[int]) -> Path:
    """root/train.npz and root/test.npz, each 1×8×8 uint8 images with the labels given."""
    for split, labels in (("train", train_labels), ("test", test_labels)):
        images = np.zeros((len(labels), 1, 8, 8), dtype=np.uint8)
        np.savez(root / f"{split}.npz", images=images, labels=np.asarray(labels, dtype=np.int64))
    return root


def load_arrays(root: str, train: bool, transform) -> ImageTensorDataset:
    with np.load(Path(root) / ("train.npz" if train else "test.npz")) as arrays:
        images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
    return ImageTensorDataset(images, labels, transform)


def arrays_spec(missing=lambda root: None) -> DatasetSpec:
    return DatasetSpec(
        ARRAYS,
        "1×8×8 images and their labels in ROOT/train.npz and ROOT/test.npz",
        defaults=dict(num_classes=CLASSES, in_channels=1, **IMAGES),
        load=load_arrays,
        missing=missing,
    )


@pytest.fixture
def declare():
    """Registers a DatasetSpec for one test, and forgets it after, so that the other tests see
    only the built-in declarations."""
    yield register
    if ARRAYS in DATASETS:
        del DATASETS[ARRAYS]
        del ConfigStore.instance().repo["dataset"][f"{ARRAYS}.yaml"]


# --- labels outside [0, num_classes) ------------------------------------------------------------


def test_labels_from_0_to_num_classes_minus_1_pass(tmp_path, declare):
    declare(arrays_spec())
    write_arrays(tmp_path, [0, 1, 2, 2], [2, 0])
    train_set, test_set, _ = build_datasets(ARRAYS, root=str(tmp_path), num_classes=CLASSES, **IMAGES)
    assert (len(train_set), len(test_set)) == (4, 2)


def test_a_label_equal_to_num_classes_stops_build_datasets_naming_dataset_split_label_and_range(
    tmp_path, declare
):
    declare(arrays_spec())
    write_arrays(tmp_path, [0, 1, 3, 2, 3], [0, 1])
    with pytest.raises(DataError) as info:
        build_datasets(ARRAYS, root=str(tmp_path), num_classes=CLASSES, **IMAGES)
    assert str(info.value) == (
        "dataset 'arrays': its training split has 2 label(s) outside 0..2 (dataset.num_classes=3), "
        "the first 3 at example 2: set dataset.num_classes to the number of classes, or fix the labels"
    )


def test_a_negative_label_in_the_test_split_stops_build_datasets(tmp_path, declare):
    declare(arrays_spec())
    write_arrays(tmp_path, [0, 1, 2], [1, -1])
    with pytest.raises(
        DataError, match="its test split has 1 label\\(s\\) outside 0..2 .* the first -1 at example 1"
    ):
        build_datasets(ARRAYS, root=str(tmp_path), num_classes=CLASSES, **IMAGES)


def test_labels_are_checked_over_the_whole_split_whichever_examples_the_subsets_draw(tmp_path, declare):
    declare(arrays_spec())
    write_arrays(tmp_path, [0, 1, 2, 0, 1, 2, 0, 7], [0, 1])
    for subsets in (dict(train_size=1), dict(val_size=1), dict(train_size=1, val_size=1)):
        with pytest.raises(DataError, match="the first 7 at example 7"):
            build_datasets(ARRAYS, root=str(tmp_path), num_classes=CLASSES, **subsets, **IMAGES)


def test_labels_only_loading_every_image_would_read_are_not_checked():
    # A dataset labels_of cannot read (not an ImageTensorDataset or ImageFolder): checking it would
    # load every image before training, so it is left to fail at its batch.
    dataset = TensorDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 99]))
    check_labels_in_range(dataset, CLASSES, name=ARRAYS, split="training")


def write_fashion_mnist(root: Path, train_labels: list[int], test_labels: list[int]) -> Path:
    """The four gzip IDX files of Fashion-MNIST in ``root``, with blank 28×28 images."""
    root.mkdir()

    def write_idx(path: Path, array: np.ndarray) -> None:
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    for training, labels in ((True, train_labels), (False, test_labels)):
        images_file, labels_file = FILES[training]
        write_idx(root / images_file, np.zeros((len(labels), 28, 28)))
        write_idx(root / labels_file, np.asarray(labels))
    return root


def test_a_built_in_dataset_with_a_label_past_num_classes_exits_2_before_training(tmp_path):
    root = write_fashion_mnist(tmp_path / "data", [0, 1, 2, 10, 4, 5, 6, 7], [0, 1, 2, 3])
    result = train(tmp_path / "run", [f"dataset.root={root}", "epochs=1", "batch_size=4"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "dataset 'fashion_mnist': its training split has 1 label(s) outside 0..9" in result.stderr
    assert "the first 10 at example 3" in result.stderr
    assert "Traceback" not in result.stderr


# --- a declaration's load or missing that raises ------------------------------------------------


def test_a_truncated_npz_file_is_a_data_error_naming_dataset_root_and_original_error(tmp_path, declare):
    declare(arrays_spec())
    write_arrays(tmp_path, [0, 1, 2], [0, 1])
    path = tmp_path / "train.npz"
    path.write_bytes(path.read_bytes()[:100])  # a download cut short
    with pytest.raises(DataError) as info:
        build_datasets(ARRAYS, root=str(tmp_path), **IMAGES)
    assert str(info.value).startswith(
        f"dataset 'arrays': reading it from dataset.root={tmp_path} failed: BadZipFile: File is not a zip file."
    )
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)


def test_a_missing_check_that_raises_is_a_data_error_naming_dataset_root_and_original_error(
    tmp_path, declare
):
    def unreadable(root: str | None) -> str | None:
        raise PermissionError(13, "Permission denied", root)

    declare(arrays_spec(missing=unreadable))
    with pytest.raises(DataError) as info:
        missing_data_message(ARRAYS, str(tmp_path))
    assert str(info.value) == (
        f"dataset 'arrays': looking for it in dataset.root={tmp_path} failed: PermissionError: [Errno 13] "
        f"Permission denied: '{tmp_path}'. Check that dataset.root names the data's folder and that it can be read"
    )


def test_a_corrupt_built_in_data_file_exits_2_naming_the_dataset_and_the_error(tmp_path):
    root = write_fashion_mnist(tmp_path / "data", [0, 1, 2, 3], [0, 1])
    (root / FILES[True][1]).write_bytes(b"not gzip at all")
    result = train(tmp_path / "run", [f"dataset.root={root}", "epochs=1", "batch_size=4"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        f"dataset 'fashion_mnist': reading it from dataset.root={root} failed: BadGzipFile" in result.stderr
    )
    assert "Traceback" not in result.stderr


# --- metrics.jsonl and summary.json hold valid JSON ---------------------------------------------


def strict_json(text: str):
    """``text`` parsed as JSON proper: NaN, Infinity and -Infinity are refused."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


RECORD = {
    "epoch": 1,
    "optimizer": "ssam_f",
    "mask_density": math.nan,  # before a late phase starts
    "test_acc": 0.5,
    "layers": {"conv": [math.inf, 0.25, -math.inf], "pair": (math.nan, 2)},
}
WRITTEN = {
    "epoch": 1,
    "optimizer": "ssam_f",
    "mask_density": None,
    "test_acc": 0.5,
    "layers": {"conv": [None, 0.25, None], "pair": [None, 2]},
}


def test_json_lines_write_non_finite_floats_at_any_depth_as_null(tmp_path):
    lines = JsonLines(tmp_path / "metrics.jsonl")
    lines.append(RECORD)
    assert [strict_json(line) for line in lines.path.read_text().splitlines()] == [WRITTEN]


def test_json_lines_keep_rewrites_an_older_nan_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "mask_density": NaN}\n{"epoch": 2, "mask_density": 0.5}\n')
    JsonLines(path).keep(lambda record: record["epoch"] == 1)
    assert strict_json(path.read_text()) == {"epoch": 1, "mask_density": None}


def test_summary_json_writes_non_finite_floats_at_any_depth_as_null(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, RECORD)
    assert strict_json(path.read_text()) == WRITTEN
    assert read_json(path) == WRITTEN
