"""The paper-style tables, generated from finished runs' summary.json files.

    python scripts/tables.py outputs/sweeps/fmnist_cpu --markdown docs/fmnist_table.md --csv docs/fmnist.csv

Rows are dataset / model (and the label noise, where the runs differ in it); columns are the
methods in their order of declaration (SGD, SAM, SSAM-F, SSAM-D, then any other), under the
labels their runs recorded, a Sparse SAM method at each sparsity found, and apart from each
method's own settings, each variant of them (another mask granularity or normalisation, say).
Cells are the mean ± sample std over seeds, with the number of runs; runs that share a
seed (a sweep over another setting under the same root) are flagged, not silently pooled. The
tables: when the runs held out a validation split (dataset.val_size), first the test accuracy at
the epoch of best validation accuracy (the honest headline: the epoch is chosen without the test
set); then final test accuracy, best test accuracy over epochs (selected on the test set, as the
paper's authors report it), and training time per epoch relative to SGD. A
run directory without summary.json (crashed or still running) is listed, never silently
dropped, and a cell with fewer seeds than its row's best-covered cell is flagged. A folder
without any run is an error.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from ssam.train.methods import METHODS, run_variant


def collect(root: Path) -> tuple[list[dict], list[Path]]:
    """Summaries of finished runs under ``root``, and the run directories that have none."""
    summaries, unfinished = [], []
    for config in sorted(root.rglob(".hydra/config.yaml")):
        run_dir = config.parent.parent
        summary = run_dir / "summary.json"
        if summary.exists():
            summaries.append(json.loads(summary.read_text()))
        else:
            unfinished.append(run_dir)
    return summaries, unfinished


# The tables' titles; the first only where every run of a cell held out a validation split.
AT_BEST_VAL_TITLE = "Test accuracy at the epoch of best validation accuracy (%)"
FINAL_TITLE = "Final test accuracy (%)"
BEST_TITLE = "Best test accuracy over epochs, selected on the test set (the authors' metric) (%)"


def column(summary: dict) -> tuple[str, float | None, str]:
    """(optimizer, sparsity, variant); the variant names each setting that makes the run another
    method than its optimizer's own (``run_variant``), so that such runs get their own column
    rather than being pooled. Runs record it; for those recorded before it, it is worked out
    from their settings."""
    variant = summary["variant"] if "variant" in summary else run_variant(summary)
    return summary["optimizer"], summary["sparsity"], variant


def method_label(summary: dict) -> str:
    """The optimizer's label as its run recorded it (a run from before labels: the declared one)."""
    name = summary["optimizer"]
    return summary.get("optimizer_label") or (METHODS[name].label if name in METHODS else name)


def column_label(key: tuple[str, float | None, str], labels: dict[str, str]) -> str:
    optimizer, sparsity, variant = key
    label = labels.get(optimizer, optimizer) + (f" ({variant})" if variant else "")
    return label + ("" if sparsity is None else f" s={sparsity:g}")


def method_labels(table) -> dict[str, str]:
    """{optimizer: label} of every cell of ``table``."""
    return {key[0]: stats["label"] for cells in table.values() for key, stats in cells.items()}


def row_key(summary: dict) -> tuple[str, str, float]:
    """(dataset, model, label noise): label noise is a property of the data, not of the method,
    so runs under other noise are another row. A summary from before label noise had none. A timm
    model is named with its architecture."""
    model, arch = summary["model"], summary.get("model_arch")
    return summary["dataset"], model if arch is None else f"{model} ({arch})", summary.get("label_noise", 0.0)


def label_noise_differs(table) -> bool:
    """Whether the rows differ in label noise, so that their labels must say it."""
    return len({label_noise for _, _, label_noise in table}) > 1


def row_label(key: tuple[str, str, float], noise_differs: bool) -> str:
    dataset, model, label_noise = key
    return f"{dataset} / {model}" + (f", {label_noise * 100:g}% noise" if noise_differs else "")


def aggregate(summaries: list[dict]) -> dict[tuple[str, str, float], dict[tuple, dict]]:
    """{(dataset, model, label noise): {(optimizer, sparsity, variant): statistics of its runs}}."""
    grouped: dict[tuple[str, str, float], dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for summary in summaries:
        grouped[row_key(summary)][column(summary)].append(summary)
    table = {}
    for row, cells in grouped.items():
        table[row] = {}
        for key, runs in cells.items():
            per_epoch = [run["train_time_s"] / run["epochs"] for run in runs]
            seeds = [run["seed"] for run in runs]
            table[row][key] = {
                "label": method_label(runs[0]),
                "runs": len(runs),
                # Two runs with one seed differ in some other setting: not repeats to average.
                "mixed_settings": len(set(seeds)) < len(seeds),
                "final": [run["final_test_acc"] for run in runs],
                "best": [run["best_test_acc"] for run in runs],
                # None unless every run held out a validation split.
                "at_best_val": (
                    [run["test_acc_at_best_val"] for run in runs]
                    if all("test_acc_at_best_val" in run for run in runs)
                    else None
                ),
                "time_per_epoch_s": statistics.median(per_epoch),
            }
        sgd = table[row].get(("sgd", None, ""))
        for stats in table[row].values():
            stats["time_vs_sgd"] = stats["time_per_epoch_s"] / sgd["time_per_epoch_s"] if sgd else None
    return table


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _columns(table) -> list[tuple]:
    keys = {key for cells in table.values() for key in cells}
    return sorted(keys, key=column_order)


def column_order(key: tuple[str, float | None, str]) -> tuple:
    """The methods in their order of declaration (SGD, SAM, SSAM-F, SSAM-D, then any other by
    name); each method before its variants; sparsity ascending."""
    optimizer, sparsity, variant = key
    declared = list(METHODS)
    position = declared.index(optimizer) if optimizer in declared else len(declared)
    return position, optimizer, variant, -1 if sparsity is None else sparsity


def has_validation(table) -> bool:
    """Whether any cell's runs all held out a validation split."""
    return any(stats["at_best_val"] is not None for cells in table.values() for stats in cells.values())


def _accuracy(values: list[float] | None) -> str:
    return "-" if values is None else "{:.2f} ± {:.2f}".format(*mean_std(values))


def markdown(table, unfinished: list[Path]) -> str:
    columns = _columns(table)
    labels = method_labels(table)
    noise_differs = label_noise_differs(table)
    accuracies = [
        (FINAL_TITLE, lambda s: _accuracy(s["final"])),
        (BEST_TITLE, lambda s: _accuracy(s["best"])),
    ]
    if has_validation(table):
        accuracies.insert(0, (AT_BEST_VAL_TITLE, lambda s: _accuracy(s["at_best_val"])))
    sections = []
    for title, render in (
        *accuracies,
        (
            "Training time per epoch, relative to SGD (median over runs)",
            lambda s: "-" if s["time_vs_sgd"] is None else f"{s['time_vs_sgd']:.2f}×",
        ),
    ):
        lines = [
            f"**{title}**",
            "",
            "| dataset / model | " + " | ".join(column_label(c, labels) for c in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for key, cells in sorted(table.items()):
            most = max(stats["runs"] for stats in cells.values())
            row = []
            for column_key in columns:
                stats = cells.get(column_key)
                if stats is None:
                    row.append("missing")
                    continue
                flag = ("" if stats["runs"] == most else " ⚠") + (" ‡" if stats["mixed_settings"] else "")
                row.append(f"{render(stats)} (n={stats['runs']}){flag}")
            lines.append(f"| {row_label(key, noise_differs)} | " + " | ".join(row) + " |")
        sections.append("\n".join(lines))
    text = "\n\n".join(sections)
    text += (
        "\n\n⚠ fewer seeds than the row's other cells; ‡ runs that share a seed (they differ in"
        " another setting, e.g. ρ or lr: tabulate them separately); n = number of runs."
    )
    if unfinished:
        text += "\n\nUnfinished or crashed runs (no summary.json): " + ", ".join(str(p) for p in unfinished)
    return text


def write_csv(table, path: Path) -> None:
    fields = [
        "dataset", "model", "label_noise", "optimizer", "sparsity", "variant", "runs",
        "at_best_val_mean", "at_best_val_std", "final_mean", "final_std", "best_mean", "best_std",
        "time_per_epoch_s", "time_vs_sgd",
    ]  # fmt: skip
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for (dataset, model, label_noise), cells in sorted(table.items()):
            for key in _columns({(dataset, model, label_noise): cells}):
                stats = cells[key]
                accuracies = {}
                for name in ("at_best_val", "final", "best"):
                    rounded = (
                        ("", "") if stats[name] is None else (round(v, 4) for v in mean_std(stats[name]))
                    )
                    accuracies[f"{name}_mean"], accuracies[f"{name}_std"] = rounded
                writer.writerow(
                    {
                        "dataset": dataset,
                        "model": model,
                        "label_noise": label_noise,
                        "optimizer": key[0],
                        "sparsity": "" if key[1] is None else key[1],
                        "variant": key[2],
                        "runs": stats["runs"],
                        **accuracies,
                        "time_per_epoch_s": round(stats["time_per_epoch_s"], 4),
                        "time_vs_sgd": "" if stats["time_vs_sgd"] is None else round(stats["time_vs_sgd"], 4),
                    }
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="a sweep (or any) directory holding run directories")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown tables here")
    parser.add_argument("--csv", type=Path, help="also write one CSV row per cell here")
    args = parser.parse_args()
    summaries, unfinished = collect(args.root)
    if not summaries:
        listed = f"; unfinished: {', '.join(str(p) for p in unfinished)}" if unfinished else ""
        raise SystemExit(
            f"no finished run (a run directory with summary.json) found under {args.root}{listed}"
        )
    table = aggregate(summaries)
    text = markdown(table, unfinished)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.csv:
        write_csv(table, args.csv)


if __name__ == "__main__":
    main()
