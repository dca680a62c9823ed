"""Plots of a sweep, from its runs' summary.json files (see tables.py).

    python scripts/plots.py outputs/sweeps/fmnist_cpu --out docs/figures --prefix fmnist_cpu

Per dataset / model it writes two PNGs:
- ``<prefix>_accuracy_vs_sparsity.png``: final test accuracy (mean ± std over seeds) against
  sparsity, one line per Sparse SAM method, SGD and SAM as horizontal bands;
- ``<prefix>_accuracy_vs_time.png``: the same accuracies against training time per epoch
  relative to SGD (the efficiency frontier).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from tables import LABELS, aggregate, collect, column_label, mean_std  # noqa: E402


def plot_accuracy_vs_sparsity(cells: dict, title: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for index, method in enumerate(("sgd", "sam")):
        if (method, None, "") in cells:
            mean, std = mean_std(cells[(method, None, "")]["final"])
            color = f"C{index}"
            axes.axhline(mean, color=color, linestyle="--", label=f"{LABELS[method]} ({mean:.2f})")
            axes.axhspan(mean - std, mean + std, color=color, alpha=0.15)
    lines = sorted({(key[0], key[2]) for key in cells if key[0] in ("ssam_f", "ssam_d")})
    for index, (method, variant) in enumerate(lines, start=2):
        points = sorted(
            (key[1], stats) for key, stats in cells.items() if (key[0], key[2]) == (method, variant)
        )
        sparsities = [s for s, _ in points]
        means, stds = zip(*(mean_std(stats["final"]) for _, stats in points))
        label = LABELS[method] + (f" ({variant})" if variant else "")
        axes.errorbar(sparsities, means, yerr=stds, marker="o", capsize=3, color=f"C{index}", label=label)
    axes.set_xlabel("sparsity (fraction of weights not perturbed)")
    axes.set_ylabel("final test accuracy (%)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy_vs_time(cells: dict, title: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for index, method in enumerate(("sgd", "sam", "ssam_f", "ssam_d")):
        for key, stats in sorted(cells.items(), key=lambda item: str(item[0])):
            if key[0] != method or stats["time_vs_sgd"] is None:
                continue
            mean, std = mean_std(stats["final"])
            label = column_label(key)
            axes.errorbar(stats["time_vs_sgd"], mean, yerr=std, marker="o", capsize=3, color=f"C{index}")
            axes.annotate(
                label, (stats["time_vs_sgd"], mean), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    axes.set_xlabel("training time per epoch / SGD's")
    axes.set_ylabel("final test accuracy (%)")
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
    for (dataset, model), cells in sorted(aggregate(summaries).items()):
        stem = f"{args.prefix}_{dataset}_{model}"
        title = f"{dataset} / {model}"
        plot_accuracy_vs_sparsity(cells, title, args.out / f"{stem}_accuracy_vs_sparsity.png")
        plot_accuracy_vs_time(cells, title, args.out / f"{stem}_accuracy_vs_time.png")
        print(f"wrote {args.out / stem}_accuracy_vs_sparsity.png and _accuracy_vs_time.png")


if __name__ == "__main__":
    main()
