"""A table of the sharpness measures of a sweep's runs, from the analysis_hessian.json and
analysis_sharpness.json files that `python -m ssam.analyze` wrote into each run directory.

    python scripts/analysis_table.py outputs/sweeps/fmnist_cpu --markdown docs/fmnist_cpu_sharpness.md

One row per setting (SGD, SAM, then the Sparse SAM methods at each sparsity), one column per
measure: mean ± sample std over the runs (seeds), with their number; then one row per run,
with its seed and final test accuracy. Runs without both files are listed, never silently
dropped.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from tables import column, column_label, column_order, mean_std, method_label

# (column title, analysis file, key in it)
MEASURES = (
    ("loss", "hessian", "loss"),
    ("λ_max", "hessian", "lambda_max"),
    ("λ_max / λ_5", "hessian", "lambda_max_over_lambda_5"),
    ("trace", "hessian", "trace"),
    ("m-sharpness", "sharpness", "m_sharpness"),
    ("random sharpness", "sharpness", "random_sharpness"),
)


def _formatter(reference: float):
    """Three significant digits of ``reference``, as a format spec for it and its companions
    (scientific below 0.001, where fixed decimals would hide the value)."""
    if reference != 0 and abs(reference) < 1e-3:
        return lambda value: f"{value:.2e}"
    decimals = max(0, 2 - math.floor(math.log10(abs(reference)))) if reference else 3
    return lambda value: f"{value:.{decimals}f}"


def mean_pm_std(values: list[float]) -> str:
    """Mean ± std, both to the decimals of the mean's three significant digits."""
    mean, std = mean_std(values)
    show = _formatter(mean)
    return f"{show(mean)} ± {show(std)}"


def collect(root: Path) -> tuple[dict[tuple, list[dict]], list[Path]]:
    """{(optimizer, sparsity, variant): one record per run}, and the run directories lacking analyses."""
    cells, missing = defaultdict(list), []
    for summary_path in sorted(root.rglob("summary.json")):
        run_dir = summary_path.parent
        files = {name: run_dir / f"analysis_{name}.json" for name in ("hessian", "sharpness")}
        if not all(path.exists() for path in files.values()):
            missing.append(run_dir)
            continue
        summary = json.loads(summary_path.read_text())
        record = {name: json.loads(path.read_text()) for name, path in files.items()}
        cells[column(summary)].append({"summary": summary, **record})
    return cells, missing


def _ordered(cells: dict[tuple, list[dict]]) -> list[tuple]:
    return sorted(cells, key=column_order)


def _header(first: list[str], last: list[str]) -> list[str]:
    titles = [*first, *(title for title, _, _ in MEASURES), *last]
    return ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]


def markdown(cells: dict[tuple, list[dict]], missing: list[Path]) -> str:
    """The table of settings (mean ± std over runs), then one row per run."""
    labels = {key[0]: method_label(runs[0]["summary"]) for key, runs in cells.items()}
    lines = _header(["setting"], ["runs"])
    for key in _ordered(cells):
        runs = cells[key]
        row = []
        for _, source, name in MEASURES:
            values = [run[source][name] for run in runs]
            row.append("n/a" if None in values else mean_pm_std(values))
        lines.append(f"| {column_label(key, labels)} | " + " | ".join(row) + f" | {len(runs)} |")
    lines += ["", "Per run:", "", *_header(["setting", "seed", "final test acc (%)"], [])]
    for key in _ordered(cells):
        for run in sorted(cells[key], key=lambda run: run["summary"]["seed"]):
            row = [
                column_label(key, labels),
                str(run["summary"]["seed"]),
                f"{run['summary']['final_test_acc']:.2f}",
            ]
            for _, source, name in MEASURES:
                value = run[source][name]
                row.append("n/a" if value is None else _formatter(value)(value))
            lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines)
    if missing:
        text += "\n\nRuns without analysis_hessian.json and analysis_sharpness.json: " + ", ".join(
            str(path) for path in missing
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    cells, missing = collect(args.root)
    if not cells:
        raise SystemExit(f"no analysed runs under {args.root}: run python -m ssam.analyze on them first")
    text = markdown(cells, missing)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
