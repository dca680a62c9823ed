"""Importing extensions: Python files or modules, named by the ``extensions`` setting, whose
``ssam.registry.register`` calls declare more methods, datasets and models (docs/extending.md).

train.py imports the command line's (or configs/train.yaml's) before Hydra composes, so that their
options exist; the trainer and ssam.analyze import a run's own again, for a job started in a
process of its own (a SLURM task) or a run read back later.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from ssam.errors import ConfigError

FORM = "extensions must be a list of Python files or modules, e.g. extensions=[my_mask.py,my_pkg.data]"


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
    directory) or an importable module (``package.module``). An extension already imported is
    not imported again."""
    if isinstance(extensions, str) or not all(isinstance(e, str) and e for e in extensions):
        raise ConfigError(f"{FORM}, got {extensions!r}")
    for extension in extensions:
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
