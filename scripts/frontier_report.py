"""The frontier's report, from the runs' summary.json files, step_cost.json and sweep.json (see
frontier.py, whose ``report`` command calls it).

Per configuration: n finished runs, the mean and sample std over seeds of the test accuracy at
the best validation epoch and of the final test accuracy, the step cost × SGD's (step_cost.json)
and the mean training time × SGD's. The Markdown table adds the share of SAM's gain kept,
(acc − SGD) / (SAM − SGD), and the difference to SAM in standard errors of the difference,
(acc − SAM) / sqrt(s²/n + s_SAM²/n_SAM). Missing runs, unfinished ones and summaries without
test_acc_at_best_val are listed, never dropped.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

REFERENCES = ("sgd", "sam")
COST_LINE = 1.25  # the cost the frontier is judged at, × SGD's step
CSV_COLUMNS = (
    "config",
    "n",
    "test_acc_at_best_val_mean",
    "test_acc_at_best_val_std",
    "final_test_acc_mean",
    "final_test_acc_std",
    "step_cost_vs_sgd",
    "run_time_vs_sgd",
    "passes_per_step",
    "flops_vs_sgd",
)


def mean_and_sample_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values for one)."""
    mean = statistics.mean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect_runs(out: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """Finished runs' summaries by config, and a line for each run missing or unfinished: run
    directories without summary.json, (config, seed) pairs sweep.json asked for that have no
    directory, and summaries without test_acc_at_best_val."""
    summaries: dict[str, list[dict]] = {}
    missing = []
    expected = set()
    for invocation in (read_json(out / "sweep.json") or {"invocations": []})["invocations"]:
        expected |= {(config, seed) for config in invocation["configs"] for seed in invocation["seeds"]}
    found = set()
    for folder in sorted(out.glob("*/seed=*")):
        config, seed = folder.parent.name, folder.name.removeprefix("seed=")
        found.add((config, int(seed)) if seed.isdigit() else (config, seed))
        summary = read_json(folder / "summary.json")
        if summary is None:
            missing.append(
                f"{config} seed={seed}: no summary.json (unfinished or crashed; see {folder / 'train.log'})"
            )
            continue
        summaries.setdefault(config, []).append(summary)
        if "test_acc_at_best_val" not in summary:
            missing.append(
                f"{config} seed={seed}: summary.json has no test_acc_at_best_val (a run without validation)"
            )
    for config, seed in sorted(expected - found, key=str):
        missing.append(f"{config} seed={seed}: never started")
    return summaries, missing


def frontier_rows(
    summaries: dict[str, list[dict]], step_cost: dict | None, flops: dict | None = None
) -> list[dict]:
    """One row per config with finished runs, sorted by step cost (unmeasured ones last)."""
    costs = (step_cost or {}).get("configs", {})
    counted = (flops or {}).get("configs", {})
    sgd_time = None
    if "sgd" in summaries:
        sgd_time = statistics.mean(s["train_time_s"] for s in summaries["sgd"])
    rows = []
    for config, runs in summaries.items():
        best_val = [s["test_acc_at_best_val"] for s in runs if "test_acc_at_best_val" in s]
        best_val_mean, best_val_std = mean_and_sample_std(best_val)
        final_mean, final_std = mean_and_sample_std([s["final_test_acc"] for s in runs])
        run_time = statistics.mean(s["train_time_s"] for s in runs)
        rows.append(
            {
                "config": config,
                "n": len(runs),
                "n_best_val": len(best_val),
                "test_acc_at_best_val_mean": best_val_mean,
                "test_acc_at_best_val_std": best_val_std,
                "final_test_acc_mean": final_mean,
                "final_test_acc_std": final_std,
                "step_cost_vs_sgd": costs.get(config, {}).get("ratio_vs_sgd"),
                "run_time_vs_sgd": run_time / sgd_time if sgd_time else None,
                "passes_per_step": counted.get(config, {}).get("passes_per_step"),
                "flops_vs_sgd": counted.get(config, {}).get("flops_vs_sgd"),
            }
        )
    return sorted(
        rows, key=lambda row: (row["step_cost_vs_sgd"] is None, row["step_cost_vs_sgd"] or 0, row["config"])
    )


def sam_gain_kept(row: dict, sgd: dict | None, sam: dict | None) -> float | None:
    """(acc − SGD) / (SAM − SGD) in test accuracy at the best validation epoch."""
    acc = row["test_acc_at_best_val_mean"]
    if acc is None or sgd is None or sam is None:
        return None
    low, high = sgd["test_acc_at_best_val_mean"], sam["test_acc_at_best_val_mean"]
    if low is None or high is None or high == low:
        return None
    return (acc - low) / (high - low) + 0.0  # + 0.0: SGD's own row reads 0.00, not -0.00


def standard_errors_from_sam(row: dict, sam: dict | None) -> float | None:
    """(acc − SAM) / sqrt(s²/n + s_SAM²/n_SAM): the difference to SAM in standard errors."""
    if sam is None or row["test_acc_at_best_val_std"] is None or sam["test_acc_at_best_val_std"] is None:
        return None
    error = math.sqrt(
        row["test_acc_at_best_val_std"] ** 2 / row["n_best_val"]
        + sam["test_acc_at_best_val_std"] ** 2 / sam["n_best_val"]
    )
    if error == 0:
        return None
    return (row["test_acc_at_best_val_mean"] - sam["test_acc_at_best_val_mean"]) / error


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [row["config"], row["n"]]
                + [_number(row[column], 3) for column in CSV_COLUMNS[2:6]]
                + [_number(row[column], 4) for column in CSV_COLUMNS[6:]]
            )


def plot_frontier(rows: list[dict], path: Path, title: str) -> None:
    """Test accuracy at the best validation epoch (mean ± std) against step cost × SGD."""
    figure, axes = plt.subplots(figsize=(8, 5.5))
    by_name = {row["config"]: row for row in rows}
    for index, name in enumerate(REFERENCES):
        row = by_name.get(name)
        if row is not None and row["test_acc_at_best_val_mean"] is not None:
            mean = row["test_acc_at_best_val_mean"]
            axes.axhline(mean, color=f"C{index}", linestyle="--", label=f"{name.upper()} ({mean:.2f})")
    axes.axvline(COST_LINE, color="grey", linestyle=":", label=f"{COST_LINE}× SGD's step")
    for row in rows:
        cost, mean = row["step_cost_vs_sgd"], row["test_acc_at_best_val_mean"]
        if cost is None or mean is None:
            continue
        reference = row["config"] in REFERENCES
        color = f"C{REFERENCES.index(row['config'])}" if reference else "C2"
        axes.errorbar(
            cost,
            mean,
            yerr=row["test_acc_at_best_val_std"] or 0.0,
            fmt="s" if reference else "o",
            color=color,
            capsize=3,
        )
        axes.annotate(row["config"], (cost, mean), textcoords="offset points", xytext=(5, 4), fontsize=7)
    axes.set_xlabel("step cost (× SGD's step; mask refreshes amortised in)")
    axes.set_ylabel("test accuracy at the best validation epoch (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def markdown_table(rows: list[dict], missing: list[str], step_cost: dict | None, sweep: dict | None) -> str:
    by_name = {row["config"]: row for row in rows}
    sgd, sam = by_name.get("sgd"), by_name.get("sam")
    seeds = sorted({row["n"] for row in rows})
    lines = [f"Runs per config: {', '.join(map(str, seeds))}; mean ± sample std over seeds."]
    if step_cost is not None:
        lines.append(
            f"Step cost: median of {step_cost['repeats']} interleaved steps on {step_cost['device']}, "
            f"torch {step_cost['torch']}, {step_cost['threads']} threads, {step_cost['model']}, "
            f"batch {step_cost['batch_size']} (mask refreshes amortised, late phases weighted)."
        )
    if sweep is not None:
        wall = sum(invocation["wall_s"] for invocation in sweep["invocations"])
        lines.append(f"Sweep wall time: {wall:.0f} s over {len(sweep['invocations'])} invocation(s).")
    lines += [
        "",
        "| config | n | test acc at best val | final test acc | step cost × SGD | FLOPs × SGD "
        "| run time × SGD | SAM's gain kept | Δ to SAM (SE) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(mean: float | None, std: float | None) -> str:
        if mean is None:
            return "missing"
        return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")

    for row in rows:
        gain = sam_gain_kept(row, sgd, sam)
        errors = None if row["config"] == "sam" else standard_errors_from_sam(row, sam)
        cost, flops = row["step_cost_vs_sgd"], row["flops_vs_sgd"]
        run_time = row["run_time_vs_sgd"]
        lines.append(
            f"| {row['config']} | {row['n']} "
            f"| {cell(row['test_acc_at_best_val_mean'], row['test_acc_at_best_val_std'])} "
            f"| {cell(row['final_test_acc_mean'], row['final_test_acc_std'])} "
            f"| {'missing' if cost is None else f'{cost:.3f}'} "
            f"| {'missing' if flops is None else f'{flops:.3f}'} "
            f"| {'missing' if run_time is None else f'{run_time:.3f}'} "
            f"| {'—' if gain is None else f'{gain:.2f}'} | {'—' if errors is None else f'{errors:+.2f}'} |"
        )
    lines += ["", "Missing or unfinished runs:" if missing else "Missing or unfinished runs: none."]
    lines += [f"- {line}" for line in missing]
    return "\n".join(lines) + "\n"


def report(out: Path, csv_path: Path, figure: Path, markdown: str | None, configs: list[str]) -> None:
    """The CSV, the figure and the Markdown table (a file, or stdout for None or "-") of the runs
    under ``out``; ``configs`` are the frontier's, those with no runs listed as not run."""
    summaries, missing = collect_runs(out)
    if not summaries:
        raise SystemExit(
            f"error: no finished runs under {out} (no <config>/seed=<seed>/summary.json); "
            "run `python scripts/frontier.py train` first"
        )
    step_cost = read_json(out / "step_cost.json")
    if step_cost is None:
        missing.append(f"step_cost.json: not in {out} (run `python scripts/frontier.py bench`)")
    else:
        missing += [
            f"{name}: no step cost in step_cost.json"
            for name in summaries
            if name not in step_cost["configs"]
        ]
    flops = read_json(out / "flops.json")
    if flops is None:
        missing.append(f"flops.json: not in {out} (run `python scripts/frontier.py flops`)")
    missing += [f"{name}: not run" for name in configs if name not in summaries and not (out / name).exists()]
    rows = frontier_rows(summaries, step_cost, flops)
    dataset = next(iter(summaries.values()))[0].get("dataset", "")
    write_csv(rows, csv_path)
    plot_frontier(rows, figure, title=f"{out.name} ({dataset}): accuracy against step cost")
    table = markdown_table(rows, missing, step_cost, read_json(out / "sweep.json"))
    if markdown in (None, "-"):
        print(table, end="")
    else:
        Path(markdown).write_text(table)
