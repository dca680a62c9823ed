"""Are two sets of runs the same runs? The check of a change that must not change behaviour.

    python scripts/compare_runs.py BEFORE AFTER

BEFORE and AFTER each hold run directories of the same names (one per setting, made by the code
before and after the change, on one machine and thread count). For each name it compares every
metric of every epoch (metrics.jsonl, leaving out the times), the masks (masks.jsonl, Sparse SAM),
the final weights (last.pt, bit for bit; "not kept" where a copy of the runs left it out) and
the keys both summary.json files hold (times and memory aside: a new version may record more),
and prints a Markdown row. It exits non-zero if any differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

TIMES = {"epoch_time_s", "images_per_s", "mask_update_time_s"}
# What summary.json measures of the machine rather than the run.
SUMMARY_MEASUREMENTS = {"train_time_s", "step_time_s", "mask_update_time_s", "peak_memory_mb"}


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key not in TIMES} for row in rows]


def same_weights(before: Path, after: Path) -> bool:
    first = torch.load(before / "last.pt", weights_only=True)["model"]
    second = torch.load(after / "last.pt", weights_only=True)["model"]
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def shared_summary_keys_agree(before: Path, after: Path) -> bool:
    first, second = (json.loads((d / "summary.json").read_text()) for d in (before, after))
    shared = (set(first) & set(second)) - SUMMARY_MEASUREMENTS
    return all(first[key] == second[key] for key in shared)


def compare(before: Path, after: Path) -> tuple[dict[str, str], bool]:
    """The row of one setting, and whether the two runs are the same."""
    masks = before / "masks.jsonl"
    checks = {"every metric of every epoch": metrics(before) == metrics(after)}
    if (before / "last.pt").exists() and (after / "last.pt").exists():
        checks["final weights"] = same_weights(before, after)
    if masks.exists():
        checks["masks.jsonl"] = masks.read_text() == (after / "masks.jsonl").read_text()
    checks["summary.json"] = shared_summary_keys_agree(before, after)
    accuracy = [json.loads((d / "summary.json").read_text())["final_test_acc"] for d in (before, after)]
    row = {
        "run": before.name,
        "final test acc before": f"{accuracy[0]:.2f}",
        "after": f"{accuracy[1]:.2f}",
        **{name: "identical" if same else "DIFFERENT" for name, same in checks.items()},
    }
    return row, all(checks.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    names = sorted(p.name for p in args.before.iterdir() if (p / "metrics.jsonl").exists())
    if not names:
        raise SystemExit(f"no run directory (with metrics.jsonl) under {args.before}")
    columns = [
        "run",
        "final test acc before",
        "after",
        "every metric of every epoch",
        "final weights",
        "masks.jsonl",
        "summary.json",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    all_same = True
    for name in names:
        row, same = compare(args.before / name, args.after / name)
        all_same &= same
        missing = {"final weights": "not kept", "masks.jsonl": "—"}
        print("| " + " | ".join(row.get(column, missing.get(column)) for column in columns) + " |")
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
