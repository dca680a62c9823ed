"""The settings reference of docs/settings.md, written from the declarations of the methods,
datasets and models (so that it cannot drift from them; a test checks it is current).

    python -m ssam.reference                       # print it
    python -m ssam.reference --write docs/settings.md
    python -m ssam.reference --extensions my_method.py   # with an extension's declarations
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssam.data.catalog import DATASET_SETTINGS, DATASETS
from ssam.extensions import load_extensions
from ssam.models.catalog import MODELS
from ssam.settings import REQUIRED, Setting
from ssam.train.kinds import Method, SharpnessAwareMethod, SparseSAMMethod
from ssam.train.methods import METHODS

BEGIN = "<!-- settings reference: begin (python -m ssam.reference --write docs/settings.md) -->"
END = "<!-- settings reference: end -->"


def _text(text: str) -> str:
    """Free text made safe in a Markdown table cell."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _default(value: Any) -> str:
    return "required" if value is REQUIRED else _value(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _settings_table(
    declarations: Mapping[str, Any], group: str, shared: Mapping[str, Setting] | None = None
) -> list[str]:
    """One row per setting key: its default, what it allows, which options have it, and what it
    means. The default of a key in ``shared`` (settings every declaration has, such as
    DATASET_SETTINGS) is the one a declaration gets when it does not set the key; of any other
    key, the declarations' own, or "per option" where they differ."""
    shared = shared or {}
    keys: dict[str, list[str]] = {}
    for name, declaration in declarations.items():
        for key in declaration.settings:
            keys.setdefault(key, []).append(name)
    rows = []
    for key, names in keys.items():
        settings: list[Setting] = [declarations[name].settings[key] for name in names]
        if key in shared:
            default = _default(shared[key].default)
        elif len({repr(s.default) for s in settings}) == 1:
            default = _default(settings[0].default)
        else:
            default = "per option"
        owners = "all" if len(names) == len(declarations) else ", ".join(f"`{n}`" for n in names)
        setting = settings[0]
        rows.append(
            [f"`{group}.{key}`", default, _text(setting.check.description), owners, _text(setting.help)]
        )
    return _table(["key", "default", "allowed", "options", "meaning"], rows)


def _dataset_values() -> list[str]:
    """Each dataset's values of the settings that any dataset sets itself, one row per dataset."""
    keys = [
        key
        for key, setting in DATASET_SETTINGS.items()
        if setting.default is REQUIRED or any(key in spec.defaults for spec in DATASETS.values())
    ]
    rows = [
        [f"`{name}`", *(_value(spec.settings[key].default) for key in keys)]
        for name, spec in DATASETS.items()
    ]
    return _table(["dataset", *keys], rows)


def _kind(method: type[Method]) -> type[Method]:
    """The built-in kind a method extends, directly or through classes of its own."""
    return next(
        kind for kind in method.__mro__[1:] if kind in (SparseSAMMethod, SharpnessAwareMethod, Method)
    )


def settings_reference() -> str:
    """The Markdown block, between its BEGIN and END markers."""
    methods = [
        [f"`{m.name}`", _text(m.label), f"`{_kind(m).__name__}`", _text(m.description)]
        for m in METHODS.values()
    ]
    datasets = [
        [f"`{d.name}`", "yes" if d.in_memory else "no", _text(d.description)] for d in DATASETS.values()
    ]
    models = [[f"`{m.name}`", _text(m.description)] for m in MODELS.values()]
    lines = [
        BEGIN,
        "",
        "### `optimizer`",
        "",
        *_table(["option", "label in tables", "extends", "what it is"], methods),
        "",
        "A method has the settings of the class it extends (`Method`: SGD's; `SharpnessAwareMethod`: "
        "SAM's, which add to SGD's; `SparseSAMMethod`: Sparse SAM's, which add to SAM's) and its own. "
        "`${key}` follows the top-level setting `key`.",
        "",
        *_settings_table(METHODS, "optimizer"),
        "",
        "### `dataset`",
        "",
        *_table(["option", "`on_device`", "what it is"], datasets),
        "",
        *_settings_table(DATASETS, "dataset", DATASET_SETTINGS),
        "",
        "The default above is what a dataset gets when its declaration leaves the key out of "
        "`DatasetSpec.defaults`; a `required` key it must give. A run with `dataset=<name>` starts "
        "from that dataset's own values:",
        "",
        *_dataset_values(),
        "",
        "### `model`",
        "",
        *_table(["option", "what it is"], models),
        "",
        "Each model's classes, input channels and image size come from the dataset. Models that "
        "pass any other key (`+model.<key>=<value>`) on to their builder: "
        + ", ".join(f"`{name}`" for name, spec in MODELS.items() if spec.accepts_more)
        + ".",
        "",
        *_settings_table(MODELS, "model"),
        "",
        END,
    ]
    return "\n".join(lines)


def with_reference(text: str) -> str:
    """``text`` (docs/settings.md) with the block between the markers replaced by the current one."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + settings_reference() + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", type=Path, help="replace the reference block in this Markdown file")
    parser.add_argument(
        "--extensions", nargs="*", default=[], help="Python files or modules to declare first"
    )
    args = parser.parse_args()
    load_extensions(args.extensions)
    if args.write:
        args.write.write_text(with_reference(args.write.read_text()))
    else:
        print(settings_reference())


if __name__ == "__main__":
    main()
