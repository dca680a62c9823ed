"""OmegaConf resolvers used by the configs: per-optimizer defaults and run-directory names.

Registered on import; train.py imports this module before Hydra composes anything.
"""

from __future__ import annotations

from omegaconf import OmegaConf

# These optimizers have no mask: a sweep over sparsity runs them once per seed.
IGNORE_SPARSITY = ("sgd", "sam")


def sgd_or_sharpness_aware(optimizer: str, sgd_value, sharpness_aware_value):
    """The paper's per-optimizer settings, e.g. weight decay 5e-4 for SGD, 1e-3 for (Sparse) SAM."""
    return sgd_value if optimizer == "sgd" else sharpness_aware_value


def ignored_settings(optimizer: str) -> set[str]:
    """Top-level settings the optimizer does not use: sparsity without a mask, ρ for SGD."""
    ignored = {"sparsity"} if optimizer in IGNORE_SPARSITY else set()
    if optimizer == "sgd":
        ignored.add("rho")
    return ignored


def run_name(override_dirname: str, optimizer: str) -> str:
    """A sweep job's directory: its overrides (``key=value,...``) without the settings the
    optimizer ignores, so that jobs differing only in those share one run and run once."""
    ignored = ignored_settings(optimizer)
    parts = [part for part in override_dirname.split(",") if part and part.split("=", 1)[0] not in ignored]
    return ",".join(parts) or "default"


OmegaConf.register_new_resolver("sgd_or_sam", sgd_or_sharpness_aware, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
