"""A table of the sharpness measures of a sweep's runs, from the analysis_hessian.json and
analysis_sharpness.json files that `python -m ssam.analyze` wrote into each run directory.

    python scripts/analysis_table.py outputs/sweeps/fmnist_cpu --markdown docs/fmnist_cpu_sharpness.md

One row per setting (SGD, SAM, then the Sparse SAM methods at each sparsity), one column per
measure: mean ± sample std over the runs (seeds), with their number. Runs without both files
are listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from tables import METHOD_ORDER, column, column_label, mean_std

# (column title, analysis file, key in it)
MEASURES = (
    ("loss", "hessian", "loss"),
    ("λ_max", "hessian", "lambda_max"),
    ("λ_max / λ_5", "hessian", "lambda_max_over_lambda_5"),
    ("trace", "hessian", "trace"),
    ("m-sharpness", "sharpness", "m_sharpness"),
    ("random sharpness", "sharpness", "random_sharpness"),
)


def mean_pm_std(values: list[float]) -> str:
    """Mean ± std with three significant digits of the mean and the std to the same decimals
    (scientific notation below 0.001, where decimals would hide them)."""
    mean, std = mean_std(values)
    if mean != 0 and abs(mean) < 1e-3:
        return f"{mean:.2e} ± {std:.1e}"
    decimals = max(0, 2 - math.floor(math.log10(abs(mean)))) if mean else 3
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def collect(root: Path) -> tuple[dict[tuple, list[dict]], list[Path]]:
    """{(optimizer, sparsity): one record per run}, and the run directories lacking analyses."""
    cells, missing = defaultdict(list), []
    for summary_path in sorted(root.rglob("summary.json")):
        run_dir = summary_path.parent
        files = {name: run_dir / f"analysis_{name}.json" for name in ("hessian", "sharpness")}
        if not all(path.exists() for path in files.values()):
            missing.append(run_dir)
            continue
        summary = json.loads(summary_path.read_text())
        record = {name: json.loads(path.read_text()) for name, path in files.items()}
        cells[column(summary)].append(record)
    return cells, missing


def markdown(cells: dict[tuple, list[dict]], missing: list[Path]) -> str:
    lines = [
        "| setting | " + " | ".join(title for title, _, _ in MEASURES) + " | runs |",
        "|---|" + "---|" * (len(MEASURES) + 1),
    ]
    for key in sorted(cells, key=lambda k: (METHOD_ORDER.get(k[0], 9), -1 if k[1] is None else k[1])):
        runs = cells[key]
        row = []
        for _, source, name in MEASURES:
            values = [run[source][name] for run in runs]
            if any(value is None for value in values):
                row.append("n/a")
                continue
            row.append(mean_pm_std(values))
        lines.append(f"| {column_label(key)} | " + " | ".join(row) + f" | {len(runs)} |")
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
