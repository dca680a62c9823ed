"""Every method, dataset and model the trainer knows, and the one way to add more.

The built-in ones are declared in ssam/train/methods.py, ssam/data/catalog.py and
ssam/models/catalog.py. ``register`` adds a declaration from anywhere, typically an extension
file named by the ``extensions`` setting (ssam/extensions.py), and makes it an option of its
Hydra config group (``optimizer=<name>``, ``dataset=<name>``, ``model=<name>``) whose keys are
its declared settings with their defaults. Importing this module declares the built-in ones to
Hydra; train.py, the tests and the scripts import it before composing a config.

    from ssam.registry import register
    from ssam.train.kinds import SparseSAMMethod

    class Magnitude(SparseSAMMethod):
        name, label, description = "magnitude", "Magnitude", "perturb the largest |w|"
        ...

    register(Magnitude)

docs/extending.md walks through a method and a dataset.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore

from ssam.data.catalog import DATASETS, DatasetSpec
from ssam.errors import ConfigError
from ssam.models.catalog import MODELS, ModelSpec
from ssam.train.kinds import Method
from ssam.train.methods import METHODS

Declaration = type[Method] | DatasetSpec | ModelSpec
# Each kind of declaration: its config group and its table.
_GROUPS: dict[type, tuple[str, dict[str, Any]]] = {
    Method: ("optimizer", METHODS),
    DatasetSpec: ("dataset", DATASETS),
    ModelSpec: ("model", MODELS),
}


def _kind(declaration: Any) -> type | None:
    """Which of _GROUPS' kinds ``declaration`` is: a Method class, a DatasetSpec or a ModelSpec."""
    if isinstance(declaration, type) and issubclass(declaration, Method):
        return Method
    return type(declaration) if type(declaration) in _GROUPS else None


def _config_node(declaration: Declaration) -> dict[str, Any]:
    """The group option's config: its name, then each setting's default."""
    return {"name": declaration.name, **{key: s.default for key, s in declaration.settings.items()}}


def _store(declaration: Declaration) -> None:
    group, _ = _GROUPS[_kind(declaration)]
    ConfigStore.instance().store(group=group, name=declaration.name, node=_config_node(declaration))


def register(declaration: Declaration) -> Declaration:
    """Add a method, dataset or model: to the trainer, its checks, sweeps and tables, and as the
    option ``<group>=<name>`` to Hydra. A name already declared is refused."""
    kind = _kind(declaration)
    if kind is None:
        raise TypeError(f"register takes a Method class, a DatasetSpec or a ModelSpec, got {declaration!r}")
    if kind is Method:
        declaration.check_declaration()
    group, table = _GROUPS[kind]
    if declaration.name in table:
        raise ConfigError(f"{group}={declaration.name} is declared already; choose another name")
    table[declaration.name] = declaration
    _store(declaration)
    return declaration


for _, table in _GROUPS.values():
    for declared in table.values():
        _store(declared)
