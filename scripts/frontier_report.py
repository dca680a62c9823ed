"""The frontier's report, from the runs' summary.json files, step_cost.json, flops.json and
sweep.json (see frontier.py, whose ``report`` command calls it).

Per configuration: n finished runs, the radius ρ they trained with, the override ``frontier.py
tune`` chose for it (ρ, or the knob tuned in its place, as SAF's λ), the mean and sample std over seeds of the test accuracy at the best validation
epoch and of the final test accuracy, the step cost × SGD's (step_cost.json), FLOPs × SGD's
(flops.json) and the mean training time × SGD's. The Markdown table adds the share of SAM's gain
kept, (acc − SGD) / (SAM − SGD), and the paired differences to SGD and to SAM: the mean and
standard error of acc_s − ref_s over the seeds s both have (run s of every configuration starts
from the same weights and draws its batches in the same order, so what the runs share cancels out
of the difference), and the cost axes on whose frontier the configuration lies (no other is at least as
cheap and as accurate and better in one, in the means). A line names the configurations that meet the
target, 90% of SAM's gain at no more than 1.25× SGD's FLOPs or CPU step cost. Missing runs,
unfinished ones and summaries without test_acc_at_best_val are listed, never dropped.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

REFERENCES = ("sgd", "sam")
COST_LINE = 1.25  # the cost the frontier is judged at, × SGD's step
TARGET_GAIN = 0.9  # the share of SAM's gain over SGD to keep at that cost
# A difference counts as measured at this many standard errors.
RESOLVING_SES = 3
# The CSV's columns in order, each with the decimals its numbers are written with (None: as they are).
CSV_COLUMNS = {
    "config": None,
    "benchmark": None,
    "n": None,
    "test_acc_at_best_val_mean": 3,
    "test_acc_at_best_val_std": 3,
    "final_test_acc_mean": 3,
    "final_test_acc_std": 3,
    "step_cost_vs_sgd": 4,
    "run_time_vs_sgd": 4,
    "passes_per_step": 4,
    "flops_vs_sgd": 4,
    "radius": None,
    "tuned": None,
}


class PairedDifference(NamedTuple):
    """acc_s − ref_s over the shared seeds s: its mean and the standard error of the mean."""

    mean: float
    standard_error: float | None  # None from a single pair
    pairs: int


def mean_and_sample_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values for one)."""
    mean = statistics.mean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def invocations(sweep: dict | None) -> list[dict]:
    """sweep.json's record of each ``train`` invocation (none without sweep.json)."""
    return (sweep or {}).get("invocations", [])


def collect_runs(out: Path, sweep: dict | None) -> tuple[dict[str, list[dict]], list[str]]:
    """Finished runs' summaries by config, and a line for each run missing or unfinished: run
    directories without summary.json, (config, seed) pairs sweep.json asked for that have no
    directory, and summaries without test_acc_at_best_val."""
    summaries: dict[str, list[dict]] = {}
    missing = []
    expected = set()
    for invocation in invocations(sweep):
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


def benchmark_name(sweep: dict | None, step_cost: dict | None) -> str | None:
    """The preset the runs were made with, as sweep.json and step_cost.json name it (None if neither
    does); one folder holds one benchmark."""
    presets = {invocation["preset"] for invocation in invocations(sweep) if "preset" in invocation}
    presets |= {step_cost["preset"]} if step_cost and "preset" in step_cost else set()
    if len(presets) > 1:
        raise SystemExit(
            f"error: the runs' records name several presets ({', '.join(sorted(presets))}): give each "
            "benchmark a folder of its own (--out)"
        )
    return next(iter(presets), None)


def tuned_configs(sweep: dict | None) -> dict[str, str]:
    """The configurations that ``frontier.py train --tuned`` ran at a value chosen by ``tune``, each
    with that override (``rho=0.2``; ``optimizer.alpha=0.2`` where another knob was tuned)."""
    return {
        config: " ".join(overrides)
        for invocation in invocations(sweep)
        for config, overrides in invocation.get("tuned", {}).items()
    }


def radii(runs: list[dict]) -> list[float]:
    """The radii ρ the runs trained with, from their summaries (none for a method without one, as SGD)."""
    return sorted({s["rho"] for s in runs if s.get("rho") is not None})


def frontier_rows(
    summaries: dict[str, list[dict]],
    step_cost: dict | None,
    flops: dict | None = None,
    *,
    benchmark: str,
    tuned: Mapping[str, str] | None = None,
) -> list[dict]:
    """One row per config with finished runs, sorted by step cost (unmeasured ones last). Each row
    keeps its runs' accuracies by seed, for the paired differences."""
    costs = (step_cost or {}).get("configs", {})
    counted = (flops or {}).get("configs", {})
    sgd_time = None
    if "sgd" in summaries:
        sgd_time = statistics.mean(s["train_time_s"] for s in summaries["sgd"])
    rows = []
    for config, runs in summaries.items():
        accuracy_by_seed = {s["seed"]: s["test_acc_at_best_val"] for s in runs if "test_acc_at_best_val" in s}
        best_val_mean, best_val_std = mean_and_sample_std(list(accuracy_by_seed.values()))
        final_mean, final_std = mean_and_sample_std([s["final_test_acc"] for s in runs])
        run_time = statistics.mean(s["train_time_s"] for s in runs)
        rows.append(
            {
                "config": config,
                "benchmark": benchmark,
                "n": len(runs),
                "accuracy_by_seed": accuracy_by_seed,
                "test_acc_at_best_val_mean": best_val_mean,
                "test_acc_at_best_val_std": best_val_std,
                "final_test_acc_mean": final_mean,
                "final_test_acc_std": final_std,
                "step_cost_vs_sgd": costs.get(config, {}).get("ratio_vs_sgd"),
                "run_time_vs_sgd": run_time / sgd_time if sgd_time else None,
                "passes_per_step": counted.get(config, {}).get("passes_per_step"),
                "flops_vs_sgd": counted.get(config, {}).get("flops_vs_sgd"),
                "radius": "/".join(f"{radius:g}" for radius in radii(runs)),
                "tuned": (tuned or {}).get(config),
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


def paired_difference(row: dict, reference: dict | None) -> PairedDifference | None:
    """d_s = acc_s − ref_s in test accuracy at the best validation epoch, over the seeds s both rows
    have: mean(d) and its standard error s_d / √n (None without a shared seed). Pairing by seed
    takes out of the error what runs of one seed share, which the unpaired √(s₁²/n₁ + s₂²/n₂)
    keeps in."""
    if reference is None:
        return None
    ours, theirs = row["accuracy_by_seed"], reference["accuracy_by_seed"]
    differences = [ours[seed] - theirs[seed] for seed in sorted(ours.keys() & theirs.keys())]
    if not differences:
        return None
    mean, std = mean_and_sample_std(differences)
    standard_error = None if std is None else std / math.sqrt(len(differences))
    return PairedDifference(mean, standard_error, len(differences))


def undominated(rows: list[dict], cost_column: str) -> list[str]:
    """The configurations on the frontier of mean accuracy against one cost: those that no other
    configuration matches or beats in both, and beats in one. Means only: a configuration off it by
    less than the noise is off it all the same, so read it with the paired differences."""

    def point(row: dict) -> tuple[float, float] | None:
        cost, accuracy = row[cost_column], row["test_acc_at_best_val_mean"]
        return None if cost is None or accuracy is None else (cost, accuracy)

    points = {row["config"]: point(row) for row in rows if point(row) is not None}

    def dominated(cost: float, accuracy: float) -> bool:
        return any((c <= cost and a >= accuracy) and (c < cost or a > accuracy) for c, a in points.values())

    return [name for name, (cost, accuracy) in points.items() if not dominated(cost, accuracy)]


def target_line(rows: list[dict], sgd: dict | None, sam: dict | None) -> str:
    """The configurations that keep TARGET_GAIN of SAM's gain at no more than COST_LINE × SGD's
    cost, in FLOPs and in CPU step cost; unknown where there is no gain to keep or no cost."""
    head = f"Target (at least {TARGET_GAIN:.0%} of SAM's gain at no more than {COST_LINE}× SGD's cost, in the means)"
    means = [None if row is None else row["test_acc_at_best_val_mean"] for row in (sgd, sam)]
    if None in means or means[1] <= means[0]:
        return f"{head}: unknown, as SAM has no gain over SGD here (or one of them has no runs)."
    parts = []
    for column, name in (("flops_vs_sgd", "FLOPs"), ("step_cost_vs_sgd", "CPU step cost")):
        if all(row[column] is None for row in rows if row["config"] not in REFERENCES):
            parts.append(f"in {name}: unknown (not measured)")
            continue
        meeting = [
            row["config"]
            for row in rows
            if row["config"] not in REFERENCES
            and row[column] is not None
            and row[column] <= COST_LINE
            and (gain := sam_gain_kept(row, sgd, sam)) is not None
            and gain >= TARGET_GAIN - 1e-9  # the float quotient of an exact 90% may fall short of 0.9
        ]
        parts.append(f"in {name}: {', '.join(meeting) or 'none'}")
    return f"{head}: {'; '.join(parts)}."


def _csv_cell(value: float | str | bool | None, digits: int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if digits is None else f"{value:.{digits}f}"


def write_csv(rows: list[dict], path: Path, benchmark: str) -> None:
    """This benchmark's rows, after the other benchmarks' rows the CSV already holds: each
    benchmark's report adds its own to one file, and a later report of it replaces them."""
    others = []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is not None and reader.fieldnames != list(CSV_COLUMNS):
                raise SystemExit(
                    f"error: {path} is not a frontier report's CSV (its columns: "
                    f"{', '.join(reader.fieldnames or [])}); give --csv another file"
                )
            others = [row for row in reader if row["benchmark"] != benchmark]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([row[column] for column in CSV_COLUMNS] for row in others)
        for row in rows:
            writer.writerow([_csv_cell(row[column], digits) for column, digits in CSV_COLUMNS.items()])


# The figure's two panels: accuracy against each cost, the machine-independent one first.
COST_AXES = (
    ("flops_vs_sgd", "FLOPs per step (× SGD's; counted by FlopCounterMode, any machine)"),
    ("step_cost_vs_sgd", "step cost (× SGD's step on this CPU; mask refreshes amortised in)"),
)


def plot_costs(axes, rows: list[dict], cost_column: str) -> None:
    """One panel: test accuracy at the best validation epoch (mean ± std) against one cost."""
    by_name = {row["config"]: row for row in rows}
    for index, name in enumerate(REFERENCES):
        row = by_name.get(name)
        if row is not None and row["test_acc_at_best_val_mean"] is not None:
            mean = row["test_acc_at_best_val_mean"]
            axes.axhline(mean, color=f"C{index}", linestyle="--", label=f"{name.upper()} ({mean:.2f})")
    axes.axvline(COST_LINE, color="grey", linestyle=":", label=f"{COST_LINE}× SGD's")
    for row in rows:
        cost, mean = row[cost_column], row["test_acc_at_best_val_mean"]
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
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)


def plot_frontier(rows: list[dict], path: Path, title: str) -> None:
    """Test accuracy at the best validation epoch against FLOPs and against CPU step cost, side by side."""
    figure, panels = plt.subplots(1, len(COST_AXES), figsize=(14, 5.5), sharey=True)
    for axes, (column, label) in zip(panels, COST_AXES):
        plot_costs(axes, rows, column)
        axes.set_xlabel(label)
    panels[0].set_ylabel("test accuracy at the best validation epoch (%)")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def label_noise_line(summaries: dict[str, list[dict]]) -> str:
    """Whether the runs' noisy labels are the same in every run or follow the seed (summary.json's
    label_noise_seed): what the paired differences hold fixed."""
    noisy = [s for runs in summaries.values() for s in runs if s.get("label_noise")]
    if not noisy:
        return "Label noise: none."
    noise_seeds = sorted({s["label_noise_seed"] for s in noisy})
    if len(noise_seeds) == 1:
        return (
            f"Label noise: dataset.label_noise_seed = {noise_seeds[0]} in every run, fixed rather than "
            "following the seed: every run trains on the same noisy labels."
        )
    if all(s["label_noise_seed"] == s["seed"] for s in noisy):
        return (
            "Label noise: dataset.label_noise_seed follows the seed: run s of every configuration has "
            "the same noisy labels."
        )
    return (
        f"Label noise: dataset.label_noise_seed varies ({', '.join(map(str, noise_seeds))}) and does not "
        "follow the seed: the paired differences also carry the label noise's variation."
    )


def radius_line(rows: list[dict]) -> str:
    tuned = [row["config"] for row in rows if row["tuned"]]
    if not tuned:
        return (
            "Radius: none tuned; every configuration at its untuned ρ (the preset's unless the "
            "configuration sets one)."
        )
    return (
        f"Radius: chosen on validation data by `frontier.py tune` (tuned.json) for {', '.join(tuned)}; "
        "the others at their untuned ρ."
    )


def resolution_line(sgd: dict | None, sam: dict | None) -> str:
    """The smallest difference this benchmark resolves: RESOLVING_SES × the standard error of the
    paired SAM − SGD difference, the one every configuration is read against."""
    difference = None if sam is None else paired_difference(sam, sgd)
    if difference is None or difference.standard_error is None:
        return (
            f"Smallest difference resolvable at {RESOLVING_SES} SE: unknown (needs SGD and SAM runs "
            "on 2 shared seeds)."
        )
    return (
        f"Smallest difference resolvable at {RESOLVING_SES} SE: "
        f"{RESOLVING_SES * difference.standard_error:.2f} points ({RESOLVING_SES} × the standard error "
        "of the paired SAM − SGD difference, "
        f"{difference.mean:+.2f} ± {difference.standard_error:.2f} over {difference.pairs} seeds)."
    )


def header_lines(
    rows: list[dict], summaries: dict[str, list[dict]], step_cost: dict | None, sweep: dict | None
) -> list[str]:
    by_name = {row["config"]: row for row in rows}
    seeds = sorted({row["n"] for row in rows})
    lines = [
        f"Benchmark: {rows[0]['benchmark']}. Runs per config: {', '.join(map(str, seeds))}; "
        "mean ± sample std over seeds.",
        "Paired differences (Δ): mean ± standard error of acc_s − ref_s over the seeds s both have; "
        "run s of every configuration starts from the same weights and draws its batches in the same order "
        "(both from seed s).",
        label_noise_line(summaries),
        radius_line(rows),
        resolution_line(by_name.get("sgd"), by_name.get("sam")),
        target_line(rows, by_name.get("sgd"), by_name.get("sam")),
    ]
    if step_cost is not None:
        lines.append(
            f"Step cost: median of {step_cost['repeats']} interleaved steps on {step_cost['device']}, "
            f"torch {step_cost['torch']}, {step_cost['threads']} threads, {step_cost['model']}, "
            f"batch {step_cost['batch_size']} (mask refreshes amortised, late phases weighted)."
        )
    if sweep is not None:
        wall = sum(invocation["wall_s"] for invocation in sweep["invocations"])
        stopped = sum(not invocation.get("finished", True) for invocation in sweep["invocations"])
        lines.append(
            f"Sweep wall time: {wall:.0f} s over {len(sweep['invocations'])} invocation(s)"
            + (f", {stopped} of them unfinished (stopped part-way, or still running)." if stopped else ".")
        )
    return lines


def paired_cell(row: dict, reference: dict | None) -> str:
    """``+mean ± SE`` of the paired difference, with the number of pairs where fewer than the row's runs."""
    if reference is None or row["config"] == reference["config"]:
        return "—"
    difference = paired_difference(row, reference)
    if difference is None:
        return "—"
    cell = f"{difference.mean:+.2f}"
    if difference.standard_error is not None:
        cell += f" ± {difference.standard_error:.2f}"
    if difference.pairs < len(row["accuracy_by_seed"]):
        cell += f" ({difference.pairs} pairs)"
    return cell


def radius_cell(row: dict) -> str:
    """ρ, marked where tune chose it; where tune chose another knob, that knob's override too."""
    radius = row["radius"] or "—"
    if not row["tuned"]:
        return radius
    if row["tuned"].startswith("rho="):
        return f"{radius} (tuned)"
    return f"{radius}; {row['tuned']} (tuned)"


def markdown_table(
    rows: list[dict],
    summaries: dict[str, list[dict]],
    missing: list[str],
    step_cost: dict | None,
    sweep: dict | None,
) -> str:
    by_name = {row["config"]: row for row in rows}
    sgd, sam = by_name.get("sgd"), by_name.get("sam")
    lines = [
        *header_lines(rows, summaries, step_cost, sweep),
        "",
        "| config | benchmark | n | ρ | test acc at best val | final test acc | step cost × SGD "
        "| FLOPs × SGD | run time × SGD | SAM's gain kept | Δ to SGD (paired) | Δ to SAM (paired) "
        "| on the frontier |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    frontiers = {
        name: undominated(rows, column)
        for column, name in (("flops_vs_sgd", "FLOPs"), ("step_cost_vs_sgd", "CPU"))
    }

    def cell(mean: float | None, std: float | None) -> str:
        if mean is None:
            return "missing"
        return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")

    def ratio(value: float | None) -> str:
        return "missing" if value is None else f"{value:.3f}"

    for row in rows:
        gain = sam_gain_kept(row, sgd, sam)
        radius = radius_cell(row)
        lines.append(
            f"| {row['config']} | {row['benchmark'] or ''} | {row['n']} | {radius} "
            f"| {cell(row['test_acc_at_best_val_mean'], row['test_acc_at_best_val_std'])} "
            f"| {cell(row['final_test_acc_mean'], row['final_test_acc_std'])} "
            f"| {ratio(row['step_cost_vs_sgd'])} | {ratio(row['flops_vs_sgd'])} "
            f"| {ratio(row['run_time_vs_sgd'])} | {'—' if gain is None else f'{gain:.2f}'} "
            f"| {paired_cell(row, sgd)} | {paired_cell(row, sam)} "
            f"| {', '.join(name for name, on in frontiers.items() if row['config'] in on) or '—'} |"
        )
    lines += ["", "Missing or unfinished runs:" if missing else "Missing or unfinished runs: none."]
    lines += [f"- {line}" for line in missing]
    return "\n".join(lines) + "\n"


def tuning_table(tuned: dict) -> str:
    """tuned.json as Markdown: per configuration, the knob, every value tried with its mean best
    validation accuracy and each seed's, and the value chosen (— while runs are missing)."""
    seeds = ", ".join(map(str, tuned["seeds"]))
    lines = [
        f"Tuning on {tuned['preset']}, seeds {seeds}: best validation accuracy (%) at each value, mean "
        f"(seed {seeds}); chosen: {tuned['selection']}.",
        "",
        "| config | knob | values tried | chosen |",
        "|---|---|---|---|",
    ]

    def tried_cell(entry: dict) -> str:
        by_seed = ", ".join(
            "missing" if acc is None else f"{acc:.2f}" for acc in entry["best_val_acc"].values()
        )
        mean = entry["mean_best_val_acc"]
        return f"{entry['value']:g}: {'missing' if mean is None else f'{mean:.2f}'} ({by_seed})"

    for config, entry in tuned["configs"].items():
        chosen = "—" if entry["chosen"] is None else f"{entry['chosen']:g}"
        tried = "; ".join(tried_cell(value) for value in entry["tried"])
        lines.append(f"| {config} | {entry['key']} | {tried} | {chosen} |")
    return "\n".join(lines) + "\n"


def report(out: Path, csv_path: Path, figure: Path | None, markdown: str | None, configs: list[str]) -> None:
    """The CSV's rows of this benchmark, the figure (by default docs/figures/frontier_<benchmark>.png)
    and the Markdown table (a file, or stdout for None or "-") of the runs under ``out``;
    ``configs`` are the frontier's, those with no runs listed as not run."""
    sweep = read_json(out / "sweep.json")
    summaries, missing = collect_runs(out, sweep)
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
    missing += [
        f"{name}: runs at different radii ({', '.join(f'{radius:g}' for radius in radii(runs))})"
        for name, runs in summaries.items()
        if len(radii(runs)) > 1
    ]
    benchmark = benchmark_name(sweep, step_cost)
    if benchmark is None:
        # One name for the CSV's rows and the figure: the folder's.
        benchmark = out.name
        missing.append(
            f"benchmark: no preset named in sweep.json or step_cost.json; named {benchmark} after --out"
        )
    rows = frontier_rows(summaries, step_cost, flops, benchmark=benchmark, tuned=tuned_configs(sweep))
    dataset = next(iter(summaries.values()))[0].get("dataset", "")
    write_csv(rows, csv_path, benchmark)
    plot_frontier(
        rows,
        figure or Path("docs/figures") / f"frontier_{benchmark}.png",
        title=f"{benchmark} ({dataset}): accuracy against FLOPs and against CPU step cost",
    )
    table = markdown_table(rows, summaries, missing, step_cost, sweep)
    if markdown in (None, "-"):
        print(table, end="")
    else:
        Path(markdown).write_text(table)
