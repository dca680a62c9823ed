"""Every method, dataset and model the trainer knows, and the one way to add more.

The built-in ones are declared in ssam/train/methods.py, ssam/data/catalog.py and
ssam/models/catalog.py. ``register`` adds a declaration from anywhere, typically an extension
file named by the ``extensions`` setting (``load_extensions``), and makes it an option of its
Hydra config group (``optimizer=<name>``, ``dataset=<name>``, ``model=<name>``) whose keys are
its declared settings with their defaults. Importing this module declares the built-in ones to
Hydra; train.py, the tests and the scripts import it before composing a config.

    from ssam.registry import register
    from ssam.train.methods import SPARSE, MethodSpec

    register(MethodSpec("magnitude", "Magnitude", SPARSE, "perturb the largest |w|", mask=...))

docs/extending.md walks through a method and a dataset.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from ssam.data.catalog import DATASETS, DatasetSpec
from ssam.models.catalog import MODELS, ModelSpec
from ssam.train.errors import ConfigError
from ssam.train.methods import METHODS, MethodSpec

Declaration = MethodSpec | DatasetSpec | ModelSpec
# Each kind of declaration: its config group and its table.
_GROUPS: dict[type, tuple[str, dict[str, Any]]] = {
    MethodSpec: ("optimizer", METHODS),
    DatasetSpec: ("dataset", DATASETS),
    ModelSpec: ("model", MODELS),
}


def _config_node(declaration: Declaration) -> dict[str, Any]:
    """The group option's config: its name, then each setting's default."""
    return {"name": declaration.name, **{key: s.default for key, s in declaration.settings.items()}}


def _store(declaration: Declaration) -> None:
    group, _ = _GROUPS[type(declaration)]
    ConfigStore.instance().store(group=group, name=declaration.name, node=_config_node(declaration))


def register(declaration: Declaration) -> Declaration:
    """Add a method, dataset or model: to the trainer, its checks, sweeps and tables, and as the
    option ``<group>=<name>`` to Hydra. A name already declared is refused."""
    if type(declaration) not in _GROUPS:
        raise TypeError(
            f"register takes a MethodSpec, DatasetSpec or ModelSpec, got {type(declaration).__name__}"
        )
    group, table = _GROUPS[type(declaration)]
    if declaration.name in table:
        raise ValueError(f"{group}={declaration.name} is declared already; choose another name")
    table[declaration.name] = declaration
    _store(declaration)
    return declaration


def _module_name(path: Path) -> str:
    # One module per file, whatever the path it was named by; the digest keeps two files
    # called alike apart.
    return f"ssam_extension_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def _load_file(path: Path) -> None:
    name = _module_name(path)
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_extensions(extensions: list[str]) -> None:
    """Import each extension, a Python file (``path/to/file.py``, relative to the working
    directory) or an importable module (``package.module``), whose ``register`` calls declare
    its methods, datasets and models. An extension already imported is not imported again."""
    for extension in extensions:
        if not isinstance(extension, str):
            raise ConfigError(f"extensions must be a list of Python files or modules, got {extension!r}")
        if extension.endswith(".py"):
            path = Path(extension).resolve()
            if not path.is_file():
                raise ConfigError(f"extensions: no file {path}")
            _load_file(path)
            continue
        try:
            importlib.import_module(extension)
        except ModuleNotFoundError as error:
            raise ConfigError(
                f"extensions: cannot import {extension!r} ({error}); name a .py file or a module on the path"
            ) from error


def ignored_settings(optimizer: str) -> set[str]:
    """Top-level settings the optimizer does not read, such as sparsity for SAM and ρ for SGD:
    those some declared method reads but this one does not."""

    def read(method: MethodSpec) -> set[str]:
        return {setting.reads for setting in method.settings.values() if setting.reads}

    if optimizer not in METHODS:
        return set()
    return set().union(*(read(m) for m in METHODS.values())) - read(METHODS[optimizer])


for _, table in _GROUPS.values():
    for declared in table.values():
        _store(declared)
