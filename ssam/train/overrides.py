"""Command-line overrides read before Hydra composes: the extensions to import (their methods,
datasets and models are config group options), and an unknown key, which gets the closest valid
names as a suggestion where Hydra alone would only say it is not in the config."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ssam.errors import ConfigError
from ssam.extensions import FORM

GROUPS = ("dataset", "model", "optimizer", "scheduler", "logger", "experiment")


def extensions_in(arguments: list[str], config_dir: Path, config_name: str = "train") -> list[str]:
    """The extensions to import before Hydra composes: the command line's ``extensions=[...]``
    (Hydra's override syntax), else those the primary config (configs/train.yaml) lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for argument in arguments:
        if argument.split("=", 1)[0].lstrip("+") == "extensions":
            value = OverridesParser.create().parse_override(argument).value()
            if not isinstance(value, list):
                raise ConfigError(f"{FORM}, got {argument}")
            return value
    return list(OmegaConf.load(config_dir / f"{config_name}.yaml").get("extensions", []))


def _dotted_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items_ex(resolve=False):
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, DictConfig):
            keys += _dotted_keys(value, name + ".")
    return keys


def unknown_key_message(arguments: list[str], config_dir: Path, config_name: str = "train") -> str | None:
    """An error message for the first override whose key the config does not have, else None."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in arguments if "=" in a and not a.startswith(("-", "+", "~", "hydra"))]
    group_choices = [
        f"{key}={value.split(',')[0]}" for key, value in (o.split("=", 1) for o in overrides) if key in GROUPS
    ]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = compose(config_name=config_name, overrides=group_choices)
        except Exception:  # a bad group choice: Hydra's own message lists the options
            return None
    known = _dotted_keys(cfg)
    for override in overrides:
        key = override.split("=", 1)[0]
        if key in GROUPS or OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
            continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown setting {key!r}{hint} (add it with +{key}=... only if you mean a new key)"
    return None


_MISSING = object()
