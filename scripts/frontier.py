"""The accuracy-vs-cost frontier: does Sparse SAM keep SAM's gain over SGD for less compute?

    python scripts/frontier.py tune --preset fmnist_noisy --seeds 100 101 --jobs 2 \\
        --out outputs/frontier/fmnist_noisy_tune
    python scripts/frontier.py train --preset fmnist_noisy --seeds 0 1 2 3 4 --jobs 2 \\
        --tuned outputs/frontier/fmnist_noisy_tune/tuned.json --out outputs/frontier/fmnist_noisy
    python scripts/frontier.py bench --preset fmnist_noisy --out outputs/frontier/fmnist_noisy
    python scripts/frontier.py report --out outputs/frontier/fmnist_noisy --csv docs/frontier.csv \\
        --figure docs/figures/frontier_fmnist_noisy.png --markdown docs/frontier_fmnist_noisy.md

Every configuration of the frontier is one entry of CONFIGS (Hydra overrides on top of
``experiment=<preset>``); ``--configs`` picks a subset, ``--set key=value ...`` adds overrides
to every run.

- ``train`` runs every (config, seed) through train.py in ``<out>/<config>/seed=<seed>``,
  ``--jobs`` at once, each with cores / jobs torch threads; a finished run is skipped and an
  interrupted one resumed (the trainer does both). Each run's output goes to its train.log;
  ``<out>/sweep.json`` records the wall time of every invocation and of each run in it (sweeps
  running at once on one --out each keep their own record; their runs must differ). With
  ``--tuned <tuned.json>`` each configuration that ``tune`` tuned runs with its chosen radius
  override appended (the others as they are), and sweep.json records which.
- ``tune`` chooses each configuration's radius on validation data: it runs, as ``train`` does and
  on seeds of its own, every value of the configuration's grid (RADIUS_GRIDS or CONFIG_GRIDS: at
  least 3 values spanning its untuned radius) in ``<out>/<config>/<key>=<value>/seed=<seed>``, and writes
  ``<out>/tuned.json``: the grid, each value's best validation accuracy (summary.json's
  ``best_val_acc``) per seed, and the value with the best mean, the smaller on a tie, and the same
  as a Markdown table in ``<out>/tuned.md``. Test accuracy is never read.
- ``bench`` measures each configuration's step cost relative to SGD in one process, on the
  preset's own model, batch and data, built by the trainer's builders: the configurations take
  turns each repeat, and the median is kept. It times the two kinds of step a method takes, its
  sharpness-aware step and its other one (SGD's; LookSAM's, the reuse of g_v), each forced at the
  last step of training, and weighs them by s, the share of the run's steps that are
  sharpness-aware:

      cost = (1 − s) · t_other + s · t_sharpness_aware + (t_first_mask + k · t_refresh) / T

  where T = epochs × steps per epoch and k the mask refreshes after the first mask, both in the
  sharpness-aware phase (Sparse SAM only). s is foreseen from the method where its steps are
  (late phases, LookSAM's k), and read from the configuration's runs in ``--out`` where a policy
  draws or measures it (RST, AE-SAM): their summary.json's ``sharpness_aware_steps`` over T,
  averaged over seeds. The other step also stands for the plain steps before a late phase. It
  writes ``<out>/step_cost.json``.
- ``flops`` counts each configuration's FLOPs per step relative to SGD's, with torch's
  FlopCounterMode (ssam/analysis/flops.py): every step of a whole training run, as the trainer
  takes it, on the preset's first batch, so that late phases, intervals, LookSAM's rhythm and mask
  refreshes come at their own steps. A policy that chooses as it trains (RST, AE-SAM) would choose
  otherwise on one repeated batch: its two kinds of step are counted, and weighed by its runs'
  share, as ``bench`` weighs them. It writes ``<out>/flops.json``, with each configuration's
  passes per step beside it (declared, or 1 + its runs' share).
- ``report`` reads the runs' summary.json, step_cost.json, flops.json and sweep.json and writes the
  benchmark's rows of the CSV (those of the other benchmarks in it are kept), the figure and a
  Markdown table (frontier_report.py); missing or unfinished runs are listed, never dropped.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_step import interleaved_times
from frontier_report import report, tuning_table
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import ssam.train.resolvers  # noqa: F401  (registers the configs' resolvers)
from ssam.analysis.flops import flops_of, training_flops_per_step
from ssam.data.sampling import EpochShuffle, PerSampleSeeded
from ssam.devices import device_name, resolve_device
from ssam.optim import SSAM
from ssam.train.builders import (
    build_loaders,
    datasets_from_config,
    method_from_config,
    model_from_config,
    passes_from_config,
)
from ssam.train.kinds import SharpnessAwareMethod
from ssam.train.loop import take_step
from ssam.train.precision import Precision
from ssam.train.rng import seed_everything
from ssam.train.switching import AdaptiveSwitchingMethod, SwitchingSAMMethod
from ssam.train.validate import validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
TENSOR = ("optimizer=ssam_f", "optimizer.granularity=tensor", "optimizer.norm=masked")
MASKED_FISHER = ("sparsity=0.5", "optimizer.norm=masked")

# The frontier's configurations: name -> Hydra overrides on top of experiment=<preset>.
CONFIGS: dict[str, tuple[str, ...]] = {
    "sgd": ("optimizer=sgd",),
    "sam": ("optimizer=sam",),
    # Element-wise masks, the paper's method.
    "ssam_f_s0.5": ("optimizer=ssam_f", "sparsity=0.5"),
    "ssam_f_s0.9": ("optimizer=ssam_f", "sparsity=0.9"),
    "ssam_d_s0.5": ("optimizer=ssam_d", "sparsity=0.5"),
    "ssam_d_s0.9": ("optimizer=ssam_d", "sparsity=0.9"),
    "ssam_f_s0.5_masked_norm": ("optimizer=ssam_f", "sparsity=0.5", "optimizer.norm=masked"),
    # SSAM-D that never prunes or regrows: a fixed random mask.
    "random_mask_s0.5": ("optimizer=ssam_d", "sparsity=0.5", "optimizer.drop_rate=0"),
    # Late-phase SAM: plain SGD steps for the first fraction of training.
    "late_sam_0.5": ("optimizer=sam", "optimizer.sam_from=0.5"),
    "late_sam_0.8": ("optimizer=sam", "optimizer.sam_from=0.8"),
    # Whole tensors, cost-aware: the ascent's backward stops early. The first to drop when the
    # budget does not fit: on fmnist_noisy each of these four kept under 10% of SAM's gain (-1% to 8%,
    # none measurably above SGD; docs/results.md), off the frontier by a wide margin.
    "ssam_f_tensor_s0.5": (*TENSOR, "sparsity=0.5"),
    "ssam_f_tensor_s0.9": (*TENSOR, "sparsity=0.9"),
    "late_ssam_f_tensor_s0.5_0.8": (*TENSOR, "sparsity=0.5", "optimizer.sam_from=0.8"),
    # m-sharpness-style ascent on a quarter of the batch.
    "ssam_f_tensor_s0.5_af0.25": (*TENSOR, "sparsity=0.5", "optimizer.ascent_fraction=0.25"),
    # Other authors' cheaper SAMs, each at its authors' defaults and at one cheaper setting of its
    # second knob (docs/method.md has the defaults and their sources).
    "looksam_k5": ("optimizer=looksam",),
    "looksam_k10": ("optimizer=looksam", "optimizer.k=10"),  # a SAM step every 10th step
    "rst_p0.5": ("optimizer=rst",),
    "rst_p0.25": ("optimizer=rst", "optimizer.probability=0.25"),  # a quarter of the steps SAM's
    "ae_sam": ("optimizer=ae_sam",),
    # c_t stays at λ₂ = 1 instead of falling to −1: fewer steps stand out, fewer SAM steps.
    "ae_sam_c1": ("optimizer=ae_sam", "optimizer.threshold_end=1"),
    # The ascent on β = 0.6 of the tensors, the descent on γ = 0.5 of the batch.
    "esam": ("optimizer=esam",),
    "esam_g0.25": ("optimizer=esam", "optimizer.gamma=0.25"),  # the descent on a quarter of the batch
    # At its authors' ρ (ssam.train.sam_on.AUTHORS_RHO): the normalisation layers alone need more.
    "sam_on": ("optimizer=sam_on", "rho=0.5"),
    # At its authors' ρ (ssam.train.msam.AUTHORS_RHO), for which their models are far larger.
    "msam": ("optimizer=msam", "rho=3"),
    # One pass a step either way, so no cheaper setting: λ is SAF's knob, and the one tuned.
    "saf": ("optimizer=saf",),
    # Sparse SAM's bid for the target (90% of SAM's gain at 1.25× SGD's cost): its best element-wise
    # configuration above (SSAM-F s = 0.5, masked norm), on a quarter of the steps chosen at random
    # (1.25 passes a step), or every 5th step with LookSAM's reuse in between (1.2).
    "ssam_f_rst_p0.25": ("optimizer=ssam_f_rst", *MASKED_FISHER, "optimizer.probability=0.25"),
    "ssam_f_looksam_k5": ("optimizer=ssam_f_looksam", *MASKED_FISHER),
    # LookSAM with α, not ρ, tuned (CONFIG_GRIDS): its reuse steps, k − 1 of every k, add
    # α·‖g‖ along g_v whatever ρ is, so α alone sets how far they leave the plain gradient.
    "looksam_k5_alpha": ("optimizer=looksam",),
    "ssam_f_looksam_k5_alpha": ("optimizer=ssam_f_looksam", *MASKED_FISHER),
    # An ablation, not a tuned row: LookSAM at the α = 0.2 that SSAM-F + LookSAM chose, to tell what
    # the Fisher mask adds from what α does.
    "looksam_k5_a0.2": ("optimizer=looksam", "optimizer.alpha=0.2"),
}

# ``tune``'s grid for each method: the override it sets, and the multiples of the configuration's
# untuned value that it tries, so that each grid spans the radius the configuration has without
# tuning, whatever the preset. The grids are ours, not the papers'. The SAM family: half, the same
# and double (ρ = 0.05, 0.1, 0.2 on fmnist_noisy, whose ρ is 0.1). SAM-ON, whose configuration has
# its authors' ρ = 0.5 (on CIFAR, where they give SAM 0.05): from a fifth to double it, 0.1, 0.5
# and 1.0, the lowest being SAM's own radius on fmnist_noisy.
SAM_FAMILY_GRID = ("rho", (0.5, 1.0, 2.0))
RADIUS_GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    **dict.fromkeys(
        ("sam", "ssam_f", "ssam_d", "looksam", "rst", "ae_sam", "esam", "ssam_f_rst", "ssam_f_looksam"),
        SAM_FAMILY_GRID,
    ),
    "sam_on": ("rho", (0.2, 1.0, 2.0)),
    # Momentum-SAM: its authors' ρ = 3, double it, and a tenth and a half of it (0.3, 1.5, 3, 6),
    # as their models are far larger than a compact ResNet, on which ρ = 3 may be too large.
    "msam": ("rho", (0.1, 0.5, 1.0, 2.0)),
    # SAF has no radius: the weight λ of its trajectory loss is the strength tuned (0.15, 0.3, 0.6).
    "saf": ("optimizer.trajectory_weight", (0.5, 1.0, 2.0)),
}


# Grids of a configuration's own, of values rather than multiples: for knobs whose scale is the
# same on every preset. LookSAM's α is a fraction of ‖g‖: none of g_v (0), a little (0.2), and
# its authors' 0.7.
LOOKSAM_ALPHA_GRID = ("optimizer.alpha", (0.0, 0.2, 0.7))
CONFIG_GRIDS: dict[str, tuple[str, tuple[float, ...]]] = dict.fromkeys(
    ("looksam_k5_alpha", "ssam_f_looksam_k5_alpha"), LOOKSAM_ALPHA_GRID
)


def method_of(config: str) -> str:
    """The optimizer a configuration runs (its ``optimizer=`` override)."""
    return next(value for key, _, value in (o.partition("=") for o in CONFIGS[config]) if key == "optimizer")


TUNABLE = [config for config in CONFIGS if config in CONFIG_GRIDS or method_of(config) in RADIUS_GRIDS]


def run_overrides(preset: str, config: str, extra: list[str]) -> list[str]:
    """The Hydra overrides of one configuration: the preset, the config's own, then ``extra``."""
    return [f"experiment={preset}", *CONFIGS[config], *extra]


def compose_config(overrides: list[str]) -> DictConfig:
    """The training config train.py would run with ``overrides``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / name / f"seed={seed}"


# ---------------------------------------------------------------------------------- train


def train_overrides(preset: str, config: str, seed: int, extra: list[str]) -> list[str]:
    """A run's overrides, as train.py records them in .hydra/overrides.yaml."""
    return [*run_overrides(preset, config, extra), f"seed={seed}", "trainer.progress_bar=false"]


def finished_as_asked(folder: Path, overrides: list[str]) -> bool:
    """The run directory holds a finished run of exactly these overrides: no need to start
    train.py (on a loaded CPU about as long as a short run) only to hear that it is finished."""
    recorded = folder / ".hydra" / "overrides.yaml"
    if not (folder / "summary.json").exists() or not recorded.exists():
        return False
    return list(OmegaConf.load(recorded)) == overrides


def train_command(folder: Path, overrides: list[str]) -> list[str]:
    # The path is quoted: Hydra's grammar would read the '=' of seed=<seed> otherwise.
    return [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir='{folder}'"]


@dataclass(frozen=True)
class Run:
    """One train.py run of a sweep, in ``run_dir(out, name, seed)``."""

    name: str  # a configuration, or a configuration and a radius (tune)
    seed: int
    overrides: list[str]


def launch_runs(runs: list[Run], out: Path, jobs: int, invocation: dict) -> int:
    """Every run not already finished as asked, ``jobs`` at once, each with cores / jobs torch
    threads and its output in its train.log; appends ``invocation``, with the wall time of each run
    and of the whole, to <out>/sweep.json, rewritten after every run (``finished`` once all have
    run). Returns the number of failed runs."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def launch(run: Run) -> dict:
        folder = run_dir(out, run.name, run.seed)
        record = {"config": run.name, "seed": run.seed, "returncode": 0, "wall_s": 0.0, "skipped": True}
        if finished_as_asked(folder, run.overrides):
            return record
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(folder / "train.log", "a") as log:
            command = train_command(folder, run.overrides)
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        return {**record, "returncode": returncode, "wall_s": time.perf_counter() - started, "skipped": False}

    started = time.perf_counter()
    results: list[dict] = []
    entry = {
        **invocation,
        "id": uuid.uuid4().hex,
        "jobs": jobs,
        "threads_per_run": threads,
        "finished": False,
    }

    def save_record() -> None:
        # After every run, so that a sweep killed part-way still records the runs it finished.
        entry["wall_s"] = time.perf_counter() - started
        entry["runs"] = sorted(results, key=lambda run: (run["config"], run["seed"]))
        save_invocation(out, entry)

    save_record()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(launch, run) for run in runs]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                result = future.result()
                results.append(result)
                save_record()
                report_run(out, result, done, len(runs))
        except BaseException:
            # Stopped (Ctrl-C) or failed: start no more runs; those running finish or stop with it.
            pool.shutdown(cancel_futures=True)
            raise
    entry["finished"] = True
    save_record()
    failed = sum(result["returncode"] != 0 for result in results)
    print(f"{len(runs) - failed} of {len(runs)} runs finished; wall time {entry['wall_s']:.1f} s")
    return failed


def save_invocation(out: Path, entry: dict) -> None:
    """Writes ``entry`` into <out>/sweep.json in place of the record with its id, or after the
    others. Read, changed and replaced under an exclusive lock, so that sweeps running at once on
    one --out keep each other's records."""
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "sweep.json"
    # flock, not lockf: it also excludes a second sweep started from another thread of this process.
    with open(out / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            record = json.loads(record_path.read_text()) if record_path.exists() else {"invocations": []}
            ids = [invocation.get("id") for invocation in record["invocations"]]
            if entry["id"] in ids:
                record["invocations"][ids.index(entry["id"])] = entry
            else:
                record["invocations"].append(entry)
            temporary = record_path.with_name(f".{record_path.name}.tmp")
            temporary.write_text(json.dumps(record, indent=2))
            os.replace(temporary, record_path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def report_run(out: Path, result: dict, done: int, total: int) -> None:
    """One console line for a run that ended: its wall time and accuracies, or where its log is."""
    folder = run_dir(out, result["config"], result["seed"])
    if result["returncode"] == 0:
        summary = json.loads((folder / "summary.json").read_text())
        status = "already finished, " if result["skipped"] else ""
        status += f"final_test_acc {summary['final_test_acc']:.2f}"
        if "test_acc_at_best_val" in summary:
            status += f", test_acc_at_best_val {summary['test_acc_at_best_val']:.2f}"
    else:
        status = f"FAILED (exit {result['returncode']}), see {folder / 'train.log'}"
    print(
        f"[{done}/{total}] {result['config']} seed={result['seed']}: {result['wall_s']:.1f} s, {status}",
        flush=True,
    )


def tuned_overrides(path: Path, preset: str, extra: list[str], configs: list[str]) -> dict[str, list[str]]:
    """The chosen radius override of each of ``configs`` that tuned.json holds, as a list to
    append. Refuses a tuned.json made on another preset or with other ``--set`` overrides, and a
    configuration whose tuning runs are unfinished (no radius chosen)."""
    tuned = json.loads(path.read_text())
    if (tuned["preset"], tuned["set"]) != (preset, extra):
        raise SystemExit(
            f"error: {path} was tuned on --preset {tuned['preset']} --set {' '.join(tuned['set'])}, not "
            f"--preset {preset} --set {' '.join(extra)}: tune again with this run's settings"
        )
    chosen = {
        config: tuned["configs"][config]["override"] for config in configs if config in tuned["configs"]
    }
    unfinished = [config for config, override in chosen.items() if override is None]
    if unfinished:
        raise SystemExit(
            f"error: {path} chose no radius for {', '.join(unfinished)} (runs of its grid are missing): "
            "finish them with `frontier.py tune`, or leave these configurations out of --configs"
        )
    return {config: [override] for config, override in chosen.items()}


def train(args: argparse.Namespace) -> int:
    """Every (config, seed), each with its tuned radius under ``--tuned``, ``--jobs`` at a time;
    returns the number of failed runs."""
    tuned = tuned_overrides(Path(args.tuned), args.preset, args.set, args.configs) if args.tuned else {}
    runs = [
        Run(config, seed, train_overrides(args.preset, config, seed, [*args.set, *tuned.get(config, [])]))
        for config in args.configs
        for seed in args.seeds
    ]
    invocation = {
        "preset": args.preset,
        "configs": args.configs,
        "seeds": args.seeds,
        "set": args.set,
        "tuned_from": args.tuned,
        "tuned": tuned,
    }
    return launch_runs(runs, Path(args.out), args.jobs, invocation)


# ----------------------------------------------------------------------------------- tune


def radius_grid(preset: str, config: str, extra: list[str]) -> tuple[str, list[float]]:
    """``tune``'s override key for ``config`` and the values it tries: its CONFIG_GRIDS values, or
    RADIUS_GRIDS' multiples of the value the configuration has untuned (under the preset and
    ``extra``)."""
    if config in CONFIG_GRIDS:
        key, values = CONFIG_GRIDS[config]
        return key, list(values)
    key, multiples = RADIUS_GRIDS[method_of(config)]
    untuned = OmegaConf.select(compose_config(run_overrides(preset, config, extra)), key)
    # Rounded: 0.1 · 2 should read 0.2 in the override, not 0.2 plus a rounding error.
    return key, [round(untuned * multiple, 12) for multiple in multiples]


def radius_override(key: str, value: float) -> str:
    return f"{key}={value}"


def grid_runs(args: argparse.Namespace, config: str, override: str) -> list[Run]:
    """The runs of one grid point, one per seed, in <out>/<config>/<override>/seed=<seed>: the
    configuration's runs as ``train`` makes them, the radius override appended."""
    name = f"{config}/{override}"
    return [
        Run(name, seed, train_overrides(args.preset, config, seed, [*args.set, override]))
        for seed in args.seeds
    ]


def best_val_acc(out: Path, run: Run) -> float | None:
    """The run's best validation accuracy (summary.json's best_val_acc), if it finished as asked."""
    folder = run_dir(out, run.name, run.seed)
    if not finished_as_asked(folder, run.overrides):
        return None
    return json.loads((folder / "summary.json").read_text()).get("best_val_acc")


def tried_value(out: Path, value: float, runs: list[Run]) -> dict:
    """A grid value's entry in tuned.json: each seed's best_val_acc and their mean (None while a
    run lacks one)."""
    accuracies = {str(run.seed): best_val_acc(out, run) for run in runs}
    complete = None not in accuracies.values()
    # Rounded far below the accuracies' 0.01, so that equal means tie whatever the float sums.
    mean = round(statistics.mean(accuracies.values()), 9) if complete else None
    return {"value": value, "best_val_acc": accuracies, "mean_best_val_acc": mean}


def chosen_value(tried: list[dict]) -> float | None:
    """The value whose runs have the highest mean validation accuracy, the smaller value on a tie;
    None while any run of the grid lacks its validation accuracy."""
    if any(entry["mean_best_val_acc"] is None for entry in tried):
        return None
    return min(tried, key=lambda entry: (-entry["mean_best_val_acc"], entry["value"]))["value"]


def tuned_config(key: str, tried: list[dict]) -> dict:
    """A configuration's entry in tuned.json: the grid, every value tried, and the chosen value with
    its override (None while unfinished)."""
    chosen = chosen_value(tried)
    return {
        "key": key,
        "grid": [entry["value"] for entry in tried],
        "tried": tried,
        "chosen": chosen,
        "override": None if chosen is None else radius_override(key, chosen),
    }


def tune(args: argparse.Namespace) -> int:
    """Every (config, radius, seed) of the configurations' grids, run as ``train`` runs them; then
    per configuration the radius with the best mean validation accuracy, into <out>/tuned.json.
    Returns the number of failed runs."""
    out = Path(args.out)
    grids = {config: radius_grid(args.preset, config, args.set) for config in args.configs}
    points = {
        (config, value): grid_runs(args, config, radius_override(key, value))
        for config, (key, values) in grids.items()
        for value in values
    }
    invocation = {
        "preset": args.preset,
        "configs": args.configs,
        "seeds": args.seeds,
        "set": args.set,
        "grids": {config: {"key": key, "values": values} for config, (key, values) in grids.items()},
    }
    failed = launch_runs([run for runs in points.values() for run in runs], out, args.jobs, invocation)
    configs = {
        config: tuned_config(key, [tried_value(out, value, points[config, value]) for value in values])
        for config, (key, values) in grids.items()
    }
    for config, entry in configs.items():
        print(f"{config}: {entry['override'] or 'no radius chosen (runs of its grid missing)'}")
    record = {
        "preset": args.preset,
        "seeds": args.seeds,
        "set": args.set,
        "selection": (
            "per configuration, the value with the highest mean over the seeds of summary.json's "
            "best_val_acc (validation accuracy; test accuracy is never read); a tie goes to the smaller "
            "value; none while a run of the grid is missing"
        ),
        "configs": configs,
    }
    (out / "tuned.json").write_text(json.dumps(record, indent=2))
    (out / "tuned.md").write_text(tuning_table(record))
    return failed


# ---------------------------------------------------------------------------------- bench

# The two kinds of step bench times, by whether the step is sharpness-aware.
STEP_KINDS = {True: "sharpness_aware", False: "other"}
# Beyond any multiple of ‖g‖²'s standard deviation: AE-SAM's c_t, forced to climb or not.
FORCED_THRESHOLD = 1e30


class BenchedConfig:
    """One configuration built as the trainer builds it, with its steps ready to time."""

    def __init__(self, cfg: DictConfig, batches: dict) -> None:
        validate_config(cfg)
        self.cfg = cfg
        device = resolve_device(cfg.device)
        self.memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
        seed_everything(cfg.seed)
        # The training set and its first batch, shared by every configuration with the same data.
        key = (OmegaConf.to_yaml(cfg.dataset), cfg.batch_size, cfg.seed, str(device))
        if key not in batches:
            batches[key] = self._first_batch(cfg, device)
        self.train_set, self.inputs, self.targets = batches[key]
        seed_everything(cfg.seed)
        model = model_from_config(cfg).to(device, memory_format=self.memory_format)
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.method = method_from_config(cfg, model, self.train_set, steps_per_epoch=self.steps_per_epoch)
        self.optimizer = self.method.optimizer
        forward_model = torch.compile(model) if cfg.trainer.compile else model
        self.passes = passes_from_config(cfg, forward_model, Precision(cfg.trainer.amp, device))
        # Late-phase SAM: the trainer's first ⌈sam_from · T⌉ steps are plain.
        self.sam_from = float(cfg.optimizer.get("sam_from", 0.0))
        self.plain_steps = math.ceil(self.sam_from * self.total_steps)
        self.sparse = isinstance(self.optimizer, SSAM)
        # The share s of sharpness-aware steps, where the method foresees it (None: its runs say).
        self.foreseen_share: float | None = None
        if not isinstance(self.method, SharpnessAwareMethod):
            self.foreseen_share = 0.0
        elif not isinstance(self.method, SwitchingSAMMethod):
            self.foreseen_share = self.method.sharpness_aware_share

    @property
    def kinds(self) -> list[bool]:
        """The kinds of step to time, sharpness-aware (True) first: its warm-up builds what the
        other needs (Sparse SAM's mask, LookSAM's g_v)."""
        share = self.foreseen_share
        return [kind for kind, taken in ((True, share != 0), (False, share != 1)) if taken]

    def _force(self, sharpness_aware: bool) -> None:
        """Make the next step sharpness-aware or not, whatever the method's own choice. AE-SAM
        chooses after its pass at w, so its threshold is forced instead, beyond any ‖g‖²."""
        method = self.method
        if isinstance(method, AdaptiveSwitchingMethod):
            threshold = -FORCED_THRESHOLD if sharpness_aware else FORCED_THRESHOLD
            method.threshold_at = lambda index: threshold
        else:
            method.is_sharpness_aware = lambda index: sharpness_aware

    @staticmethod
    def _first_batch(cfg: DictConfig, device: torch.device):
        train_set, test_set, _ = datasets_from_config(cfg)
        train_set = PerSampleSeeded(train_set, cfg.seed)
        sampler = EpochShuffle(len(train_set), cfg.seed, batch_size=cfg.batch_size)
        train_loader, _ = build_loaders(cfg, train_set, test_set, sampler, device)
        inputs, targets = next(iter(train_loader))
        return train_set, inputs.to(device), targets.to(device)

    @property
    def last_batch_size(self) -> int:
        """The examples of an epoch's last step: what the full batches before it leave."""
        return len(self.train_set) - (self.steps_per_epoch - 1) * self.cfg.batch_size

    def step(self, *, sharpness_aware: bool = True, last_of_epoch: bool = False) -> None:
        """A step of the last epoch, of the kind asked, with every phase begun (late SAM's, SAF's
        trajectory loss): its first, on a full batch, or its last, on the examples left for it.
        The batch must be as large as the step's own: SAF reads and stores logits for the step's
        examples."""
        self._force(sharpness_aware)
        inputs, targets = self.inputs, self.targets
        index = self.total_steps - self.steps_per_epoch
        if last_of_epoch:
            inputs, targets = inputs[: self.last_batch_size], targets[: self.last_batch_size]
            index = self.total_steps - 1
        take_step(
            self.method,
            self.passes,
            inputs.contiguous(memory_format=self.memory_format),
            targets,
            index,
            on_nonfinite=self.cfg.trainer.on_nonfinite,
        )

    def share(self, out: Path, name: str) -> float:
        """s: foreseen, or the mean over the runs of ``name`` in ``out`` of their sharpness-aware
        steps over T."""
        if self.foreseen_share is not None:
            return self.foreseen_share
        summaries = [
            json.loads(path.read_text()) for path in sorted((out / name).glob("seed=*/summary.json"))
        ]
        if not summaries:
            raise SystemExit(
                f"bench: {name}'s share of sharpness-aware steps comes from its runs (its policy chooses "
                f"them as it trains), and {out / name} has none: run `train` with --out {out} first"
            )
        return statistics.mean(summary["sharpness_aware_steps"] / self.total_steps for summary in summaries)

    def later_refreshes(self) -> int:
        """Mask refreshes after the first mask, which the first sharpness-aware step builds: one
        at each later epoch the strategy is due."""
        strategy = self.optimizer.mask_strategy
        start = self.plain_steps // self.steps_per_epoch
        return sum(strategy.is_due(epoch) for epoch in range(start + 1, self.cfg.epochs))

    def refresh_epoch(self) -> int:
        """An epoch at which the mask strategy refreshes (to time one refresh)."""
        strategy = self.optimizer.mask_strategy
        return next(epoch for epoch in range(1, 10**6) if strategy.is_due(epoch))

    def refresh(self, times: list[float]) -> None:
        """One step that refreshes the mask; appends the refresh's own time to ``times``."""
        before = self.optimizer.mask_update_time_s
        self.optimizer.set_epoch(self.refresh_epoch())
        self.step()
        times.append(self.optimizer.mask_update_time_s - before)


def bench(args: argparse.Namespace) -> dict:
    """Step cost of each configuration relative to SGD; writes and returns step_cost.json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = list(dict.fromkeys(["sgd", *args.configs]))  # SGD is the unit
    batches: dict = {}
    benched = {
        name: BenchedConfig(compose_config(run_overrides(args.preset, name, args.set)), batches)
        for name in configs
    }
    out = Path(args.out)
    shares = {name: entry.share(out, name) for name, entry in benched.items()}
    steps, refresh_times, first_mask_s = {}, {}, {}
    for name, entry in benched.items():
        for _ in range(args.warmup):
            for kind in entry.kinds:  # the first sharpness-aware step builds Sparse SAM's mask
                entry.step(sharpness_aware=kind)
                if name not in first_mask_s and entry.sparse:
                    first_mask_s[name] = entry.optimizer.mask_update_time_s
        for kind in entry.kinds:
            steps[(name, STEP_KINDS[kind])] = lambda entry=entry, kind=kind: entry.step(sharpness_aware=kind)
        if entry.sparse and entry.later_refreshes() > 0:
            refresh_times[name] = []
            steps[(name, "refresh")] = lambda entry=entry, times=refresh_times[name]: entry.refresh(times)
    device = resolve_device(benched["sgd"].cfg.device)
    times = interleaved_times(steps, args.repeats, device)

    results = {}
    for name, entry in benched.items():
        s = shares[name]
        median = {kind: statistics.median(times[(name, kind)]) for label, kind in times if label == name}
        refreshes = entry.later_refreshes() if entry.sparse else 0
        refresh_s = statistics.median(refresh_times[name]) if refreshes else None
        masks_per_step_s = (first_mask_s.get(name, 0.0) + refreshes * (refresh_s or 0.0)) / entry.total_steps
        cost_s = (
            (1 - s) * median.get("other", 0.0) + s * median.get("sharpness_aware", 0.0) + masks_per_step_s
        )
        results[name] = {
            "overrides": run_overrides(args.preset, name, args.set),
            "step_s": median.get("sharpness_aware"),
            "other_step_s": median.get("other"),
            "sam_from": entry.sam_from,
            "sharpness_aware_share": s,
            "share_from": "method" if entry.foreseen_share is not None else "runs",
            "first_mask_s": first_mask_s.get(name),
            "refresh_s": refresh_s,
            "refreshes_after_first": refreshes,
            "total_steps": entry.total_steps,
            "masks_per_step_s": masks_per_step_s,
            "cost_s": cost_s,
            "repeats": args.repeats,
            "runs_s": {kind: times[(label, kind)] for label, kind in times if label == name},
            "refresh_runs_s": refresh_times.get(name),
        }
    for result in results.values():
        result["ratio_vs_sgd"] = result["cost_s"] / results["sgd"]["cost_s"]
    sgd = benched["sgd"]
    record = {
        "benchmark": "frontier_step_cost",
        "preset": args.preset,
        "set": args.set,
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": sgd.cfg.model.name,
        "batch_size": sgd.cfg.batch_size,
        "input_shape": list(sgd.inputs.shape[1:]),
        "epochs": sgd.cfg.epochs,
        "steps_per_epoch": sgd.steps_per_epoch,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "configs": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_cost.json").write_text(json.dumps(record, indent=2))
    print(
        f"step cost on {record['device']}, torch {record['torch']}, {record['threads']} threads, "
        f"{record['model']}, batch {record['batch_size']}, median of {args.repeats}"
    )
    print("| config | sharpness-aware step (s) | other step (s) | share | masks per step (s) | cost / SGD |")
    print("|---|---|---|---|---|---|")
    for name, result in sorted(results.items(), key=lambda item: item[1]["ratio_vs_sgd"]):
        step, other = (
            "" if result[key] is None else f"{result[key]:.4f}" for key in ("step_s", "other_step_s")
        )
        print(
            f"| {name} | {step} | {other} | {result['sharpness_aware_share']:.3f} "
            f"| {result['masks_per_step_s']:.5f} | {result['ratio_vs_sgd']:.3f} |"
        )
    return record


def weighed_flops_per_step(entry: BenchedConfig, share: float) -> float:
    """FLOPs of a step of a method whose policy chooses its sharpness-aware steps as it trains
    (RST, AE-SAM): its two kinds of step, forced as bench forces them, weighed by ``share``, and
    its masks (the first and each later refresh) amortised over the run's steps. Its choices on
    one batch given at every step, as ``training_flops_per_step`` would take them, need not be
    the share its runs took."""
    entry.step(sharpness_aware=True)  # builds Sparse SAM's first mask, counted below

    def mean_step_flops(kind: bool) -> float:
        """An epoch's steps of one kind: all full but the last, as ``training_flops_per_step`` counts."""
        full = flops_of(lambda: entry.step(sharpness_aware=kind))
        last = flops_of(lambda: entry.step(sharpness_aware=kind, last_of_epoch=True))
        return ((entry.steps_per_epoch - 1) * full + last) / entry.steps_per_epoch

    sharpness_aware, other = mean_step_flops(True), mean_step_flops(False)
    masks = 0.0
    if entry.sparse:
        masks = flops_of(entry.optimizer.update_mask) * (1 + entry.later_refreshes()) / entry.total_steps
    return (1 - share) * other + share * sharpness_aware + masks


def flops(args: argparse.Namespace) -> dict:
    """FLOPs of each configuration's mean training step relative to SGD's; writes and returns
    flops.json."""
    configs = list(dict.fromkeys(["sgd", *args.configs]))  # SGD is the unit
    batches: dict = {}
    results, sgd = {}, None
    for name in configs:
        entry = BenchedConfig(compose_config(run_overrides(args.preset, name, args.set)), batches)
        if entry.foreseen_share is None:  # a policy that chooses as it trains: its runs' share
            share = entry.share(Path(args.out), name)
            per_step, passes = weighed_flops_per_step(entry, share), 1 + share
        else:
            per_step = training_flops_per_step(
                entry.method,
                entry.passes,
                entry.inputs.contiguous(memory_format=entry.memory_format),
                entry.targets,
                epochs=entry.cfg.epochs,
                steps_per_epoch=entry.steps_per_epoch,
                last_batch_size=entry.last_batch_size,
            )
            share, passes = entry.foreseen_share, entry.method.passes_per_step
        sgd = entry if name == "sgd" else sgd
        results[name] = {
            "overrides": run_overrides(args.preset, name, args.set),
            "flops_per_step": per_step,
            "passes_per_step": passes,
            "sharpness_aware_share": share,
            "share_from": "method" if entry.foreseen_share is not None else "runs",
            "total_steps": entry.total_steps,
        }
        print(
            f"{name}: {per_step:.4g} FLOPs a step, {per_step / results['sgd']['flops_per_step']:.3f} × SGD's"
        )
    for result in results.values():
        result["flops_vs_sgd"] = result["flops_per_step"] / results["sgd"]["flops_per_step"]
    record = {
        "benchmark": "frontier_flops",
        "counted_by": "torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions, 2 a multiply-add)",
        "preset": args.preset,
        "set": args.set,
        "torch": torch.__version__,
        "model": sgd.cfg.model.name,
        "batch_size": sgd.cfg.batch_size,
        "input_shape": list(sgd.inputs.shape[1:]),
        "epochs": sgd.cfg.epochs,
        "steps_per_epoch": sgd.steps_per_epoch,
        "configs": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flops.json").write_text(json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_runs_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--preset", default="fmnist_noisy", help="configs/experiment/ preset")
        command.add_argument(
            "--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG"
        )
        command.add_argument(
            "--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every run"
        )
        command.add_argument("--out", required=True, help="the frontier's folder (runs, step_cost.json)")

    def add_sweep_options(command: argparse.ArgumentParser, seeds: list[int]) -> None:
        add_runs_options(command)
        command.add_argument("--seeds", type=int, nargs="+", default=seeds)
        command.add_argument("--jobs", type=int, default=1, help="runs at once (torch threads: cores / jobs)")

    train_parser = commands.add_parser("train", help="train every (config, seed)")
    add_sweep_options(train_parser, seeds=[0, 1, 2, 3, 4])
    train_parser.add_argument(
        "--tuned",
        metavar="PATH",
        help="a tune command's tuned.json: each config it tuned at its chosen radius",
    )
    tune_parser = commands.add_parser(
        "tune", help="choose each config's radius on validation accuracy over a grid (RADIUS_GRIDS)"
    )
    # Seeds of its own: the frontier's runs are then not the ones their radius was chosen on.
    add_sweep_options(tune_parser, seeds=[100, 101])
    tune_parser.set_defaults(configs=TUNABLE)
    bench_parser = commands.add_parser("bench", help="step cost of every config relative to SGD")
    add_runs_options(bench_parser)
    bench_parser.add_argument("--warmup", type=int, default=2)
    bench_parser.add_argument("--repeats", type=int, default=9)
    bench_parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    flops_parser = commands.add_parser("flops", help="FLOPs per step of every config relative to SGD")
    add_runs_options(flops_parser)
    report_parser = commands.add_parser("report", help="the CSV, figure and Markdown table")
    report_parser.add_argument("--out", required=True)
    report_parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=list(CONFIGS),
        metavar="CONFIG",
        help="the configurations run: those without runs are listed as not run",
    )
    report_parser.add_argument("--csv", default="docs/frontier.csv")
    report_parser.add_argument("--figure", help="default: docs/figures/frontier_<benchmark>.png")
    report_parser.add_argument("--markdown", help="a file, or - (the default) for stdout")
    args = parser.parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    untunable = [config for config in args.configs if config not in TUNABLE] if args.command == "tune" else []
    if untunable:
        parser.error(
            f"no radius to tune for {', '.join(untunable)}: RADIUS_GRIDS has no grid for their optimizer"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "train":
        return 1 if train(args) else 0
    if args.command == "tune":
        return 1 if tune(args) else 0
    if args.command == "bench":
        bench(args)
    elif args.command == "flops":
        flops(args)
    else:
        figure = Path(args.figure) if args.figure else None
        report(Path(args.out), Path(args.csv), figure, args.markdown, args.configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
