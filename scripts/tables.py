"""Tabulate finished runs from their summary.json files: mean ± std over seeds.

    python scripts/tables.py outputs/multirun/2026-11-28_10-00-00 [--markdown FILE]

One row per (dataset, model, optimizer, sparsity): final and best test accuracy (mean ± sample
std over the runs found, with their count), the median step time and the training time per
epoch. Run directories without a summary.json are listed as unfinished, not dropped silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def collect(root: Path) -> tuple[dict[tuple, list[dict]], list[Path]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    unfinished = []
    for config in sorted(root.rglob(".hydra/config.yaml")):
        run_dir = config.parent.parent
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            unfinished.append(run_dir)
            continue
        summary = json.loads(summary_path.read_text())
        key = (summary["dataset"], summary["model"], summary["optimizer"], summary["sparsity"])
        groups[key].append(summary)
    return groups, unfinished


def table(groups: dict[tuple, list[dict]]) -> str:
    lines = [
        "| dataset | model | optimizer | sparsity | runs | final test acc (%) | best test acc (%) "
        "| step time (s) | train time / epoch (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, model, optimizer, sparsity), runs in sorted(groups.items(), key=lambda item: str(item[0])):
        final = [run["final_test_acc"] for run in runs]
        best = [run["best_test_acc"] for run in runs]
        step = statistics.median(run["step_time_s"] for run in runs)
        per_epoch = statistics.median(run["train_time_s"] / run["epochs"] for run in runs)
        lines.append(
            f"| {dataset} | {model} | {optimizer} | {'-' if sparsity is None else sparsity} | {len(runs)} "
            f"| {mean_std(final)} | {mean_std(best)} | {step:.3f} | {per_epoch:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="a run or sweep directory")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    groups, unfinished = collect(args.root)
    text = table(groups)
    if unfinished:
        text += "\n\nUnfinished runs (no summary.json): " + ", ".join(str(p) for p in unfinished)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
