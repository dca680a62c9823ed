"""OmegaConf resolvers used by the configs: per-optimizer defaults and run-directory names.

Registered on import, with the declared methods, datasets and models (ssam.registry); train.py
imports this module before Hydra composes anything.
"""

from __future__ import annotations

from omegaconf import OmegaConf

import ssam.registry  # noqa: F401  (the declared options become Hydra config groups)
from ssam.train.kinds import SGD
from ssam.train.methods import METHODS, ignored_settings


def sgd_or_sharpness_aware(optimizer: str, sgd_value, sharpness_aware_value):
    """The paper's per-optimizer settings, e.g. weight decay 5e-4 for SGD, 1e-3 for (Sparse) SAM:
    ``sgd_value`` for a method of the SGD kind."""
    method = METHODS.get(optimizer)
    return sgd_value if method is not None and method.kind is SGD else sharpness_aware_value


def run_name(override_dirname: str, optimizer: str) -> str:
    """A sweep job's directory: its overrides (``key=value,...``) without the settings the
    optimizer ignores, so that jobs differing only in those share one run and run once."""
    ignored = ignored_settings(optimizer)
    parts = [part for part in override_dirname.split(",") if part and part.split("=", 1)[0] not in ignored]
    return ",".join(parts) or "default"


OmegaConf.register_new_resolver("sgd_or_sam", sgd_or_sharpness_aware, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
