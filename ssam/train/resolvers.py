"""OmegaConf resolvers used by the configs: per-optimizer defaults and run-directory names.

Registered on import, with the declared methods, datasets and models (ssam.registry); train.py
imports this module before Hydra composes anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import ssam.registry  # noqa: F401  (the declared options become Hydra config groups)
from ssam.data.catalog import DATASETS
from ssam.models.catalog import MODELS
from ssam.train.kinds import SharpnessAwareMethod
from ssam.train.methods import METHODS
from ssam.train.run_settings import changes_results

# An override that never names a sweep's run: the preset names the sweep folder itself. (Hydra's
# own overrides, such as hydra/launcher, are not among a job's task overrides.)
NOT_IN_RUN_NAMES = ("experiment",)


def sgd_or_sharpness_aware(optimizer: str, sgd_value, sharpness_aware_value):
    """The paper's per-optimizer settings, e.g. weight decay 5e-4 for SGD, 1e-3 for (Sparse) SAM:
    ``sgd_value`` for a method that is not sharpness-aware."""
    method = METHODS.get(optimizer)
    sharpness_aware = method is None or issubclass(method, SharpnessAwareMethod)
    return sharpness_aware_value if sharpness_aware else sgd_value


def _folder_safe(value: str) -> str:
    """A value as one folder name: "/" (a path's, say) written as %2F, and so "%" as %25."""
    return value.replace("%", "%25").replace("/", "%2F")


def run_name(task_overrides: Sequence[str], optimizer: str, dataset: str, model: str) -> str:
    """A sweep job's directory: its overrides, ``key=value`` sorted and joined by commas, without
    the settings that do not change results (``Setting.changes_results``) and without the
    top-level knobs the optimizer ignores, so that jobs differing only in those share one run and
    run once. Values that hold a path stay one folder."""
    method = METHODS.get(optimizer)
    ignored = method.ignored_knobs() if method else set()
    sections = {
        "optimizer": method.settings if method else {},
        "dataset": DATASETS[dataset].settings if dataset in DATASETS else {},
        "model": MODELS[model].settings if model in MODELS else {},
    }
    parts = []
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = override.key_or_group
        if key in NOT_IN_RUN_NAMES or key in ignored or not changes_results(key, sections):
            continue
        parts.append(f"{override.get_key_element()}={_folder_safe(override.get_value_element_as_str())}")
    return ",".join(sorted(parts)) or "default"


OmegaConf.register_new_resolver("sgd_or_sharpness_aware", sgd_or_sharpness_aware, replace=True)
# Its name before 2026-12-03, which the saved configs of earlier runs still hold.
OmegaConf.register_new_resolver("sgd_or_sam", sgd_or_sharpness_aware, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
