"""Extending ssam from outside the package, as docs/extending.md shows: a mask strategy
(tests/extensions/magnitude.py), a method with its own step (tests/extensions/interval_sam.py),
a dataset of PNG files (tests/extensions/png_folder.py) and a model (tests/extensions/mlp.py),
each one Python file, plus a YAML preset that uses them
(tests/extensions/experiment/). Nothing under ssam/ knows them; they train through train.py, in
a sweep, and tables.py and plots.py show them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import batches, parameters_of, small_conv_net
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from PIL import Image
from runs import REPO, assert_kill_and_resume_is_bit_identical, read_json, read_jsonl, run_env
from test_configs import GROUPS

from ssam.data import build_datasets, labels_of
from ssam.data.catalog import DATASETS
from ssam.errors import ConfigError
from ssam.extensions import load_extensions
from ssam.models.catalog import MODELS
from ssam.registry import register
from ssam.train.builders import model_from_config
from ssam.train.kinds import RunContext
from ssam.train.loop import take_step
from ssam.train.methods import METHODS, SAMMethod, build_mask_strategy, build_optimizer
from ssam.train.passes import Passes
from ssam.train.resolvers import run_name
from ssam.train.steps import training_step
from ssam.train.validate import validate_config

EXTENSIONS = REPO / "tests" / "extensions"
MAGNITUDE, INTERVAL, PNG_FOLDER, MLP = (
    f"tests/extensions/{name}.py" for name in ("magnitude", "interval_sam", "png_folder", "mlp")
)
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 8, 4


def write_png_folder(root: Path) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png: 8×8 colour images, each class a hue."""
    generator = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = generator.integers(0, 96, (8, 8, 3), dtype=np.uint8)
                pixels[..., label] += 128
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture
def extensions(monkeypatch):
    """The test extensions declared in this process, and forgotten after the test, so that the
    other tests (on the same worker) see only the built-in declarations."""
    monkeypatch.chdir(REPO)
    groups = {"optimizer": METHODS, "dataset": DATASETS, "model": MODELS}
    declared = {group: set(table) for group, table in groups.items()}
    modules = set(sys.modules)
    load_extensions([MAGNITUDE, PNG_FOLDER, MLP])
    yield
    for group, table in groups.items():
        for name in set(table) - declared[group]:
            del table[name]
            del ConfigStore.instance().repo[group][f"{name}.yaml"]
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def compose_with(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# --- the method ---------------------------------------------------------------------------------


def reference_magnitude_mask(
    params: list[torch.Tensor], sparsity: float, largest: bool
) -> list[torch.Tensor]:
    """The N·(1−s) entries of largest (smallest) |w|, by a sort in float64 and a Python loop;
    among equal values the earlier entry wins."""
    values = [abs(float(v)) for p in params for v in p.detach().double().reshape(-1)]
    order = sorted(range(len(values)), key=lambda i: (-values[i] if largest else values[i], i))
    keep = set(order[: int(round(len(values) * (1 - sparsity)))])
    flat = torch.tensor([i in keep for i in range(len(values))])
    return list(torch.split(flat, [p.numel() for p in params]))


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_the_magnitude_mask_keeps_the_weights_of_largest_or_smallest_magnitude(extensions, largest, sparsity):
    model = small_conv_net()
    params = list(model.parameters())
    strategy = build_mask_strategy("magnitude", model, None, epochs=1, seed=0, largest=largest)
    masks = strategy(params, None, sparsity, 0)
    expected = reference_magnitude_mask(params, sparsity, largest)
    for mask, reference, param in zip(masks, expected, params):
        assert torch.equal(mask.cpu(), reference.view(param.shape))


def test_an_extension_method_takes_the_shared_sparse_sam_settings_and_defaults(extensions):
    cfg = compose_with(["optimizer=magnitude", "sparsity=0.7", "optimizer.granularity=tensor"])
    assert cfg.optimizer.sparsity == 0.7 and cfg.optimizer.largest is True
    assert (cfg.optimizer.granularity, cfg.optimizer.update_freq, cfg.optimizer.rho) == ("tensor", 1, 0.05)


def test_an_extension_method_s_own_setting_is_checked_like_a_built_in_one(extensions, tmp_path):
    cfg = compose_with(["optimizer=magnitude", "optimizer.largest=maybe"])
    with pytest.raises(ConfigError, match="optimizer.largest must be true or false, got 'maybe'"):
        validate_config(cfg)


def test_a_sweep_over_sparsity_keeps_it_in_an_extension_method_s_run_names(extensions):
    data, model = "fashion_mnist", "compact_resnet"
    sweep = ["optimizer=magnitude", "sparsity=0.5"]
    assert run_name(sweep, "magnitude", data, model) == "optimizer=magnitude,sparsity=0.5"
    assert run_name(["optimizer=sam", "sparsity=0.5"], "sam", data, model) == "optimizer=sam"


def test_sparsity_zero_magnitude_sam_is_sam_bit_for_bit(extensions):
    runs = []
    for name in ("sam", "magnitude"):
        model = small_conv_net()
        settings = dict(lr=0.1, weight_decay=5e-4, rho=0.05)
        if name == "magnitude":
            mask = build_mask_strategy(name, model, None, epochs=1, seed=0)
            settings.update(sparsity=0.0, mask_strategy=mask)
        optimizer = build_optimizer(name, model, **settings)
        if name == "magnitude":
            optimizer.set_epoch(0)
        for x, y in batches(3):
            training_step(model, optimizer, x, y)
        runs.append(parameters_of(model))
    for sam, magnitude in zip(*runs):
        assert torch.equal(sam, magnitude)


# --- a method with its own step: SAM every k-th step ---------------------------------------------

SAM_SETTINGS = dict(lr=0.1, weight_decay=5e-4, rho=0.05)


def interval_run(extensions, data, *, steps_per_epoch: int = 6, accumulate_steps: int = 1, **settings):
    """IntervalSAM's (or SAM's, with ``settings["method"]``) steps over ``data``: the model, the
    steps' results and the examples the model saw in its forward passes."""
    method_class = settings.pop("method", None) or METHODS["interval_sam"]
    model = small_conv_net()
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    method = method_class({**SAM_SETTINGS, **settings}, RunContext(model, None, 1, steps_per_epoch, seed=0))
    passes = Passes(model, accumulate_steps=accumulate_steps)
    results = [take_step(method, passes, x, y, step) for step, (x, y) in enumerate(data)]
    return model, method, results, seen


def test_interval_sam_with_k_1_is_sam_bit_for_bit(extensions):
    load_extensions([INTERVAL])
    data = batches(4)
    interval, _, _, _ = interval_run(extensions, data, interval=1)
    sam, _, _, _ = interval_run(extensions, data, method=SAMMethod)
    for mine, theirs in zip(parameters_of(interval), parameters_of(sam)):
        assert torch.equal(mine, theirs)


def test_interval_sam_climbs_every_k_th_step_and_declares_the_passes_it_runs(extensions):
    load_extensions([INTERVAL])
    data = batches(6)
    _, method, results, seen = interval_run(extensions, data, interval=3)
    assert [result.sharpness_aware for result in results] == [True, False, False, True, False, False]
    batch = len(data[0][1])
    assert sum(seen) / (batch * len(data)) == pytest.approx(method.passes_per_step) == 1 + 1 / 3


def test_interval_sam_takes_the_late_phase_and_accumulation_from_sam(extensions):
    load_extensions([INTERVAL])
    data = batches(6)
    _, method, results, seen = interval_run(extensions, data, interval=2, sam_from=0.5, accumulate_steps=2)
    # Steps 0-2 are before the phase (⌈0.5·6⌉ = 3), then every other step from the start of training.
    assert [result.sharpness_aware for result in results] == [False, False, False, False, True, False]
    batch = len(data[0][1])
    assert max(seen) == batch // 2  # micro-batches of half the batch
    assert sum(seen) / (batch * len(data)) == pytest.approx(method.passes_per_step) == 7 / 6


@pytest.mark.slow
def test_a_killed_interval_sam_run_resumes_mid_epoch_bit_for_bit(tmp_path):
    overrides = [
        f"extensions=[{INTERVAL}]",
        "optimizer=interval_sam",
        "optimizer.interval=3",
        "dataset.train_size=256",
        "dataset.test_size=64",
        "batch_size=32",
        "epochs=2",
        "trainer.checkpoint_every_steps=1",
    ]
    assert_kill_and_resume_is_bit_identical(tmp_path, overrides, kill_seed="interval_sam")


# --- the dataset --------------------------------------------------------------------------------


def test_the_png_dataset_reads_its_folders_with_the_usual_splits_and_label_noise(extensions, tmp_path):
    root = write_png_folder(tmp_path / "pngs")
    train, test, val = build_datasets(
        "pngs", root=str(root), image_size=8, mean=[0.5] * 3, std=[0.25] * 3, num_classes=CLASSES,
        val_size=6, label_noise=0.5, crop_padding=1, hflip=True,
    )  # fmt: skip
    assert (len(train), len(test), len(val)) == (CLASSES * TRAIN_PER_CLASS - 6, CLASSES * TEST_PER_CLASS, 6)
    image, label = train[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    clean = labels_of(train.dataset)
    assert int((labels_of(train) != clean).sum()) == round(0.5 * len(train))
    assert sorted(labels_of(test).tolist()) == sorted(list(range(CLASSES)) * TEST_PER_CLASS)


def test_a_missing_png_folder_is_named_with_the_setting_to_change(extensions, tmp_path):
    cfg = compose_with(["dataset=pngs", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match="no folders train/ and test/ under dataset.root="):
        validate_config(cfg)


# --- the model ----------------------------------------------------------------------------------


def test_the_mlp_is_built_for_the_dataset_s_images_with_its_own_setting(extensions):
    cfg = compose_with(["dataset=pngs", "model=mlp", "model.hidden=5"])
    model = model_from_config(cfg)
    assert [tuple(p.shape) for p in model.parameters()] == [(5, 3 * 8 * 8), (5,), (CLASSES, 5), (CLASSES,)]


# --- the registry --------------------------------------------------------------------------------


def test_a_name_declared_twice_is_refused(extensions):
    with pytest.raises(ValueError, match="optimizer=magnitude is declared already"):
        register(METHODS["magnitude"])


def test_an_extension_imported_twice_declares_its_methods_once(extensions):
    load_extensions([MAGNITUDE, str(REPO / MAGNITUDE)])
    assert list(METHODS) == [*GROUPS["optimizer"], "magnitude"]


@pytest.mark.parametrize(
    "extension, message",
    [
        ("no/such/file.py", "extensions: no file "),
        ("no_such_module", "extensions: cannot import 'no_such_module'"),
    ],
)
def test_an_extension_that_cannot_be_found_is_a_config_error(extension, message):
    with pytest.raises(ConfigError, match=message):
        load_extensions([extension])


# --- the walkthrough ----------------------------------------------------------------------------

FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```\n", re.S)


def test_extending_md_shows_the_extension_files_as_they_are():
    blocks = FILE_BLOCK.findall((REPO / "docs" / "extending.md").read_text())
    assert [path for path, _ in blocks] == [
        MAGNITUDE,
        INTERVAL,
        PNG_FOLDER,
        MLP,
        "tests/extensions/experiment/pngs_magnitude.yaml",
    ]
    for path, code in blocks:
        assert code == (REPO / path).read_text(), path


# --- end to end -----------------------------------------------------------------------------------


def train_py(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *arguments],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_py_refuses_a_bad_extension_setting_with_exit_code_2(tmp_path):
    result = train_py(f"extensions=[{MAGNITUDE}]", "optimizer=magnitude", "optimizer.largest=maybe")
    assert result.returncode == 2
    assert "error: optimizer.largest must be true or false, got 'maybe'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_sweep_trains_the_extensions_and_tables_and_plots_show_them(tmp_path):
    root = write_png_folder(tmp_path / "pngs")
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        "-m",
        f"extensions=[{MAGNITUDE},{INTERVAL},{PNG_FOLDER},{MLP}]",
        f"hydra.searchpath=[file://{EXTENSIONS}]",
        "experiment=pngs_magnitude",
        "optimizer=sgd,magnitude,interval_sam",
        f"dataset.root={root}",
        "dataset.val_size=3",
        "trainer.progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}",  # dataset.root, a path, in a folder's name makes folders
    )
    assert result.returncode == 0, result.stderr
    runs = {read_json(path)["optimizer"]: path.parent for path in sweep_dir.glob("*/summary.json")}
    assert sorted(runs) == ["interval_sam", "magnitude", "sgd"]
    interval = read_json(runs["interval_sam"] / "summary.json")
    assert (interval["optimizer_label"], interval["interval"], interval["sparsity"]) == (
        "Interval SAM",
        2,
        None,
    )
    # 21 training images in batches of 8: steps 0-2, then 3-5; SAM at steps 0, 2 and 4.
    steps = [row["sharpness_aware_steps"] for row in read_jsonl(runs["interval_sam"] / "metrics.jsonl")]
    assert steps == [2, 1] and interval["passes_per_step"] == 1.5
    summary = read_json(runs["magnitude"] / "summary.json")
    assert (summary["optimizer"], summary["optimizer_label"], summary["dataset"]) == (
        "magnitude",
        "Magnitude",
        "pngs",
    )
    assert (summary["sparsity"], summary["largest"], summary["variant"]) == (0.5, True, "")
    assert summary["mask_density"] == pytest.approx(0.5, abs=1e-3)
    assert len(read_jsonl(runs["magnitude"] / "metrics.jsonl")) == 2
    assert len(read_jsonl(runs["magnitude"] / "masks.jsonl")) == 2

    table = subprocess.run(
        [sys.executable, "scripts/tables.py", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| dataset / model | SGD | Interval SAM | Magnitude s=0.5 |" in table.stdout
    assert "| pngs / mlp |" in table.stdout
    figures = tmp_path / "figures"
    subprocess.run(
        [sys.executable, "scripts/plots.py", str(sweep_dir), "--out", str(figures), "--prefix", "ext"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in figures.iterdir()) == [
        "ext_pngs_mlp_accuracy_vs_sparsity.png",
        "ext_pngs_mlp_accuracy_vs_time.png",
    ]
