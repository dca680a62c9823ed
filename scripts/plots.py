"""Plots of a sweep, from its runs' summary.json files (see tables.py).

    python scripts/plots.py outputs/sweeps/fmnist_cpu --out docs/figures --prefix fmnist_cpu

Per dataset / model (and label noise, where runs differ in it) it writes two PNGs:
- ``<prefix>_accuracy_vs_sparsity.png``: the headline test accuracy (mean ± std over seeds)
  against sparsity, one line per Sparse SAM method (and variant), the methods without a
  sparsity (SGD, SAM) as horizontal bands;
- ``<prefix>_accuracy_vs_time.png``: the same accuracies against training time per epoch
  relative to SGD (the efficiency frontier).
The headline accuracy is, as in tables.py, the test accuracy at the epoch of best validation
accuracy where every run of the row held out a validation split, else the final test accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from tables import (  # noqa: E402
    aggregate,
    collect,
    column_label,
    column_order,
    label_noise_differs,
    mean_std,
    method_labels,
    row_label,
)


def headline(cells: dict) -> tuple[str, str]:
    """(statistic, axis label): the accuracy at the best validation epoch where every cell has it."""
    if all(stats["at_best_val"] is not None for stats in cells.values()):
        return "at_best_val", "test accuracy at the best validation epoch (%)"
    return "final", "final test accuracy (%)"


def plot_accuracy_vs_sparsity(cells: dict, title: str, path: Path) -> None:
    statistic, axis_label = headline(cells)
    labels = method_labels({None: cells})
    figure, axes = plt.subplots(figsize=(6, 4))
    keys = sorted(cells, key=column_order)
    bands = [key for key in keys if key[1] is None and not key[2]]
    for index, key in enumerate(bands):
        mean, std = mean_std(cells[key][statistic])
        color = f"C{index}"
        axes.axhline(mean, color=color, linestyle="--", label=f"{column_label(key, labels)} ({mean:.2f})")
        axes.axhspan(mean - std, mean + std, color=color, alpha=0.15)
    lines = list(dict.fromkeys((key[0], key[2]) for key in keys if key[1] is not None))
    for index, (method, variant) in enumerate(lines, start=len(bands)):
        points = [
            (key[1], cells[key])
            for key in keys
            if (key[0], key[2]) == (method, variant) and key[1] is not None
        ]
        sparsities = [s for s, _ in points]
        means, stds = zip(*(mean_std(stats[statistic]) for _, stats in points))
        label = column_label((method, None, variant), labels)
        axes.errorbar(sparsities, means, yerr=stds, marker="o", capsize=3, color=f"C{index}", label=label)
    axes.set_xlabel("sparsity (fraction of weights not perturbed)")
    axes.set_ylabel(axis_label)
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy_vs_time(cells: dict, title: str, path: Path) -> None:
    statistic, axis_label = headline(cells)
    labels = method_labels({None: cells})
    figure, axes = plt.subplots(figsize=(6, 4))
    methods = list(dict.fromkeys(key[0] for key in sorted(cells, key=column_order)))
    for key in sorted(cells, key=column_order):
        stats = cells[key]
        if stats["time_vs_sgd"] is None:
            continue
        mean, std = mean_std(stats[statistic])
        color = f"C{methods.index(key[0])}"
        axes.errorbar(stats["time_vs_sgd"], mean, yerr=std, marker="o", capsize=3, color=color)
        axes.annotate(
            column_label(key, labels),
            (stats["time_vs_sgd"], mean),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    axes.set_xlabel("training time per epoch / SGD's")
    axes.set_ylabel(axis_label)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--prefix", default="sweep")
    args = parser.parse_args()
    summaries, _ = collect(args.root)
    if not summaries:
        raise SystemExit(f"no finished runs (summary.json) under {args.root}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = aggregate(summaries)
    noise_differs = label_noise_differs(table)
    for (dataset, model, label_noise), cells in sorted(table.items()):
        noise = f"_noise{label_noise:g}" if noise_differs else ""
        stem = f"{args.prefix}_{dataset}_{model}{noise}"
        title = row_label((dataset, model, label_noise), noise_differs)
        plot_accuracy_vs_sparsity(cells, title, args.out / f"{stem}_accuracy_vs_sparsity.png")
        plot_accuracy_vs_time(cells, title, args.out / f"{stem}_accuracy_vs_time.png")
        print(f"wrote {args.out / stem}_accuracy_vs_sparsity.png and _accuracy_vs_time.png")


if __name__ == "__main__":
    main()
