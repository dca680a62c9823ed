"""The run's own settings, top-level and ``trainer.*``: what each allows and whether it changes
a run's results.

configs/train.yaml gives their values and comments (a test keeps the two in step); these
declarations give the checks the validator applies and, per setting, ``changes_results``: a
run resumes under other values of the settings that do not (``results_identity``), and they do
not name a sweep's runs (ssam/train/resolvers.py). The optimizer's, dataset's and model's settings
say the same in their own declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssam.settings import (
    BOOLEAN,
    FRACTION,
    INTEGER,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Check,
    Setting,
    above,
    at_least,
    is_list,
    one_of,
)
from ssam.train.compiling import COMPILE_BACKENDS
from ssam.train.passes import ON_NONFINITE
from ssam.train.precision import AMP

DEVICES = ("auto", "cpu", "cuda")
TEXT = Check(lambda value: isinstance(value, str), "a string")

TOP_LEVEL_SETTINGS = {
    "lr": Setting(0.1, above(0), "peak learning rate of the base SGD"),
    "rho": Setting(0.05, at_least(0), "SAM / Sparse SAM neighbourhood radius ρ"),
    "sparsity": Setting(0.5, FRACTION, "Sparse SAM: fraction of weights NOT perturbed"),
    "epochs": Setting(8, POSITIVE_INT, "training epochs"),
    "batch_size": Setting(128, POSITIVE_INT, "images per training step"),
    "weight_decay": Setting(5.0e-4, at_least(0), "L2 weight decay, applied inside the base SGD"),
    "seed": Setting(0, INTEGER, "seeds Python, NumPy and torch"),
    "device": Setting(
        "auto", one_of(*DEVICES), "auto (cuda when available), cpu or cuda", changes_results=False
    ),
    "resume": Setting(
        True, BOOLEAN, "continue from last.pt when the run directory has one", changes_results=False
    ),
    "extensions": Setting(
        [], Check(is_list, "a list"), "Python files or modules declaring more options", changes_results=False
    ),
    "experiment_name": Setting("default", TEXT, "names the sweep folder", changes_results=False),
}

TRAINER_SETTINGS = {
    "num_workers": Setting(0, NON_NEGATIVE_INT, "data-loading processes", changes_results=False),
    # Evaluation's batches change only the order of its sums, never the weights.
    "eval_batch_size": Setting(512, POSITIVE_INT, "images per evaluation batch", changes_results=False),
    "progress_bar": Setting(True, BOOLEAN, "a tqdm bar per epoch on the console", changes_results=False),
    "checkpoint_every_steps": Setting(
        0, NON_NEGATIVE_INT, "also checkpoint every this many steps within an epoch", changes_results=False
    ),
    "accumulate_steps": Setting(1, POSITIVE_INT, "micro-batches per batch, gradients summed"),
    # A run stopped by a non-finite loss is resumed with skip: that must be allowed.
    "on_nonfinite": Setting(
        "stop", one_of(*ON_NONFINITE), "a non-finite loss or gradient: stop or skip", changes_results=False
    ),
    "track_sharpness_every": Setting(
        0, NON_NEGATIVE_INT, "every this many epochs, log λ_max (0: never)", changes_results=False
    ),
    "sync_batchnorm": Setting(False, BOOLEAN, "data-parallel: BatchNorm statistics over all processes"),
    "amp": Setting("none", one_of(*AMP), "autocast: none, bf16 or fp16"),
    "channels_last": Setting(False, BOOLEAN, "NHWC memory layout"),
    "compile": Setting(False, BOOLEAN, "torch.compile the model"),
    "compile_backend": Setting(
        "inductor",
        one_of(*COMPILE_BACKENDS),
        "torch.compile's backend: inductor (generated kernels), aot_eager (graphs, no codegen: tests)",
    ),
    "deterministic": Setting(
        False, BOOLEAN, "GPUs: deterministic kernels, TF32 off (ssam/train/determinism.py)"
    ),
    "test_every_epoch": Setting(
        True,
        BOOLEAN,
        "false: the test set is evaluated once, at the end, on the final weights and on the best "
        "validation epoch's (kept in the checkpoint)",
    ),
}

# Sections of the config that never change results as a whole: where the records go.
RECORDS_ONLY_SECTIONS = ("logger",)


def results_only(values: Mapping[str, Any], settings: Mapping[str, Setting]) -> dict[str, Any]:
    """``values`` without the declared settings that do not change results (keys not declared,
    such as a timm model's own arguments, are kept: they may)."""
    return {
        key: value for key, value in values.items() if key not in settings or settings[key].changes_results
    }


def results_identity(
    config: Mapping[str, Any],
    sections: Mapping[str, Mapping[str, Setting]],
    ignored: set[str],
) -> dict[str, Any]:
    """Every setting of the resolved ``config`` that shapes the run's numbers: resuming under
    other values would mix two runs. ``sections`` declares the settings of each section (the
    optimizer's, dataset's, model's); ``ignored`` are the top-level knobs the optimizer ignores."""
    identity = results_only(config, TOP_LEVEL_SETTINGS)
    for key in (*RECORDS_ONLY_SECTIONS, *ignored):
        identity.pop(key, None)
    identity["trainer"] = results_only(config["trainer"], TRAINER_SETTINGS)
    for section, settings in sections.items():
        identity[section] = results_only(config[section], settings)
    return identity


def changes_results(key: str, sections: Mapping[str, Mapping[str, Setting]]) -> bool:
    """Whether the dotted ``key`` of an override (``trainer.num_workers``, ``lr``,
    ``optimizer.m``) is a setting that changes results; a key not declared is taken to."""
    if key.split(".")[0] in RECORDS_ONLY_SECTIONS:
        return False
    section, _, name = key.rpartition(".")
    declared = {"": TOP_LEVEL_SETTINGS, "trainer": TRAINER_SETTINGS, **sections}.get(section, {})
    return name not in declared or declared[name].changes_results
