"""The run directory's record: one JSON line per epoch, one per mask update, and a summary."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) in it, through nested dicts, lists and
    tuples, replaced by None. json.dumps writes those floats as NaN and Infinity, which are not
    JSON: jq, JavaScript and pandas' strict readers reject the whole file. A value that is not
    defined yet (mask_density before a late phase starts) is recorded as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def to_json(record: Any, **options: Any) -> str:
    """``record`` as strict JSON (``finite_or_null``); allow_nan=False makes any non-finite float
    that still got through an error here, rather than a file no JSON reader accepts."""
    return json.dumps(finite_or_null(record), allow_nan=False, **options)


class JsonLines:
    """Appends one JSON object per line, flushed at once so a crash loses nothing written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(to_json(record) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def keep(self, wanted: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the records a resumed run is about to write again."""
        if self.path.exists():
            kept = [record for record in self.read() if wanted(record)]
            self.path.write_text("".join(to_json(record) + "\n" for record in kept))


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_json(path: str | Path, record: dict[str, Any]) -> None:
    Path(path).write_text(to_json(record, indent=2) + "\n")


def format_table(record: dict[str, Any]) -> str:
    """Two aligned columns, floats to 4 significant digits, for the console."""

    def show(value: Any) -> str:
        if isinstance(value, float) and math.isfinite(value):
            return f"{value:.4g}"
        return str(value)

    width = max(len(key) for key in record)
    rule = "-" * (width + 24)
    lines = [rule] + [f"{key:<{width}}  {show(value)}" for key, value in record.items()] + [rule]
    return "\n".join(lines)
