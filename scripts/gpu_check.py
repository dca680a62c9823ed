"""The first check run on a GPU machine: the trainer on CUDA, in stages that fail soft.

    bash scripts/gpu_check.sh                   # every stage; results in results/gpu_check_<card>/
    bash scripts/gpu_check.sh --device cpu      # the same at a tiny size, on a CPU
    python scripts/gpu_check.py fisher --device cuda --results R --work W      # one stage alone

The stages, in the order ``all`` runs them (each a subcommand):

- determinism: two 20-step SAM runs with trainer.deterministic=true end with bit-identical
  weights (their last.pt); the same pair with deterministic=false, for contrast.
- fisher: SSAM-F's Fisher scores by vmap against the batch-1 loop (ssam/optim/fisher.py) on
  ResNet-18 and WRN-28-10: in float64, equal within FISHER_TOLERANCE; in float32 (TF32 off), as
  training computes them, how far apart (float32 rounding, amplified: on our CPU up to 5% of a
  WRN-28-10 tensor's largest score, where float64 agrees to 4e-15) and how much the SSAM-F masks
  differ, and the time and peak CUDA memory of each.
- steps: scripts/bench_step.py for SGD, SAM and SSAM-F at s = 0.5 (element-wise and
  tensor-granular), in float32, then in bf16 with channels-last.
- preset: ``train.py experiment=cifar10_resnet18 optimizer=ssam_f`` for 2 epochs.
- compile: 3 epochs of SAM and of tensor-masked SSAM-F with trainer.compile=true against the same
  runs eager: the graphs compiled (summary.json's ``compiled_graphs``), dynamo's recompiles (its
  ``recompiles`` log), the median step and the epoch times. Last, as the longest.

``all`` runs each stage in a process of its own under a time limit (the stage's ``cap_s`` times
the scale's ``slack``, cut to what is left of ``--budget``), keeps their console in gpu_check.log,
then writes summary.md; it exits 1 if any stage did not pass. A stage rewrites <stage>.json in the
results folder as its results come, so one stopped at its limit leaves what it measured; one that
raises records its traceback's tail.

The training runs read synthetic CIFAR-10 in the real on-disk format (the python pickle batches
torchvision downloads, read by ssam/data/cifar.py): each class a colour of its own plus noise, so
that a model can learn it; five training files of 4 batches each, so that an epoch is 20 steps.
On the CPU every stage runs at a tiny size (``SCALES``: small models, few samples, the aot_eager
backend for inductor), to check this script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ssam.data.cifar import LAYOUT
from ssam.devices import device_name
from ssam.models import build_model
from ssam.optim import fisher_scores, global_topk_mask
from ssam.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 20
TRAIN_FILES = len(LAYOUT["cifar10"][1])
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# vmap and the loop sum the same squares in other orders, through other kernels: in float64 that
# leaves rounding errors of 1e-15 (4e-15 on our CPU), where a fault would show as 1e-2 and more.
FISHER_TOLERANCE = 1e-6
FLOAT64_SAMPLES = 16  # enough to check the sums; float64 is slow on GPUs
FISHER_CHUNK = 32  # fisher_scores' vmap chunk: the warm-up runs one whole
TAIL_LINES = 30  # of a traceback, or of a failed stage's console
RECOMPILE_LINES = 20  # of dynamo's recompiles log, kept per run
REPORT_RESERVE_S = 20  # of the budget, kept for the report
SHORTEST_STAGE_S = 30  # a stage with less time left is not started


@dataclass(frozen=True)
class Scale:
    """How large the stages run: the GPU check's sizes, or tiny ones that check this script on a CPU."""

    model: str  # of the training runs
    batch_size: int
    num_samples: int  # of SSAM-F's Fisher estimate, in the training runs
    fisher_models: tuple[str, ...]
    fisher_samples: int
    bench_step: tuple[str, ...]  # scripts/bench_step.py's model, batch and repeats
    compile_backend: str  # trainer.compile_backend of the compiled runs
    slack: float  # times the GPU's time limits: a shared CPU's speed varies

    @property
    def images_per_file(self) -> int:
        """Of each training batch file (and of the test batch): an epoch of STEPS_PER_EPOCH steps."""
        return STEPS_PER_EPOCH * self.batch_size // TRAIN_FILES

    def training_overrides(self, data_root: Path, device: str) -> list[str]:
        """The runs' settings: the paper's preset, our data, this scale's model and batch size
        (on the GPU, the preset's own)."""
        return [
            "experiment=cifar10_resnet18",
            f"dataset.root={data_root}",
            f"device={device}",
            f"model={self.model}",
            f"batch_size={self.batch_size}",
        ]

    def optimizer_overrides(self, optimizer: str) -> list[str]:
        fisher = [f"optimizer.num_samples={self.num_samples}"] if optimizer == "ssam_f" else []
        return [f"optimizer={optimizer}", *fisher]


SCALES = {
    "cuda": Scale(
        model="resnet18",
        batch_size=128,
        num_samples=128,
        fisher_models=("resnet18", "wrn28_10"),
        fisher_samples=128,
        bench_step=("--model", "resnet18", "--batch-size", "128", "--warmup", "5", "--repeats", "20"),
        compile_backend="inductor",
        slack=1.0,
    ),
    "cpu": Scale(
        model="compact_resnet",
        batch_size=8,
        num_samples=16,
        fisher_models=("compact_resnet", "resnet18"),
        fisher_samples=2,
        # bench_step.py draws its 16 Fisher samples from the batch.
        bench_step=("--model", "compact_resnet", "--batch-size", "16", "--warmup", "1", "--repeats", "2"),
        compile_backend="aot_eager",  # dynamo's graphs without inductor's minutes of C++ compiling
        slack=3.0,
    ),
}


class StageRecord:
    """A stage's results, rewritten to ``path`` (JSON) whenever one is added: a stage stopped at
    its time limit leaves what it had. ``headline`` and ``table`` (markdown lines) go to summary.md."""

    def __init__(self, path: Path, stage: str, device: str) -> None:
        self.path = path
        self.values = {"stage": stage, "device": device, "passed": None, "headline": "", "table": []}
        self.save()

    def __setitem__(self, key: str, value) -> None:
        self.values[key] = value
        self.save()

    def __getitem__(self, key: str):
        return self.values[key]

    def put(self, group: str, key: str, value) -> None:
        """Set ``group[key]``, in a group of results (a dict) made on first use."""
        self.values.setdefault(group, {})[key] = value
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.values, indent=2, default=str) + "\n")


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return [
        f"| {' | '.join(header)} |",
        "|" + "---|" * len(header),
        *(f"| {' | '.join(fmt(value) for value in row)} |" for row in rows),
    ]


def fmt(value, digits: int = 4) -> str:
    """A float to ``digits`` significant digits; anything else as it is."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    return text.splitlines()[-lines:]


def run_streamed(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``command`` from the repository root, passing its console on as it comes (so that a
    stage stopped at its limit keeps what it had said); its exit status and console, with paths
    in the repository written from its root, as the results are to be read elsewhere."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    console = []
    for line in process.stdout:
        line = line.replace(f"{REPO}/", "")
        print(line, end="", flush=True)
        console.append(line)
    return process.wait(), "".join(console)


# --- synthetic CIFAR-10, in the real format --------------------------------------------------------


def write_synthetic_cifar10(root: Path, images_per_file: int, seed: int = 0) -> Path:
    """CIFAR-10 as torchvision downloads it, in ``root``/cifar-10-batches-py: data_batch_1..5 and
    test_batch (pickled dicts: 'data' uint8 N×3072 in R, G, B planes, 'labels' a list of ints)
    and batches.meta. Each image is its class's colour plus uniform noise in [-64, 64)."""
    folder_name, train_files, test_files, label_key = LAYOUT["cifar10"]
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(64, 192, size=(len(CIFAR10_CLASSES), 3, 1))
    for name in [*train_files, *test_files]:
        labels = rng.integers(0, len(CIFAR10_CLASSES), size=images_per_file)
        noise = rng.integers(-64, 64, size=(images_per_file, 3, 32 * 32))
        data = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8).reshape(images_per_file, -1)
        entry = {
            "batch_label": name,
            "data": data,
            label_key: [int(label) for label in labels],
            "filenames": [f"synthetic_{name}_{i}.png" for i in range(images_per_file)],
        }
        _pickle(folder / name, entry)
    meta = {"num_cases_per_batch": images_per_file, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    _pickle(folder / "batches.meta", meta)  # last: its presence says the set is whole
    return root


def _pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)  # the protocol of CIFAR's own files


def synthetic_cifar10(work: Path, scale: Scale) -> Path:
    """The root of the training runs' data, written on first use."""
    root = work / "data"
    if not (root / LAYOUT["cifar10"][0] / "batches.meta").exists():
        write_synthetic_cifar10(root, scale.images_per_file)
    return root


# --- training runs ---------------------------------------------------------------------------------


@dataclass
class Training:
    """One ``train.py`` run: how it ended and what it recorded."""

    name: str
    returncode: int
    wall_s: float
    run_dir: Path
    console: str

    @property
    def summary(self) -> dict | None:
        path = self.run_dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def epochs(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.summary is not None

    def facts(self) -> dict:
        """What a stage records of the run: its exit, times and results."""
        summary = self.summary or {}
        return {
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 1),
            "final_test_acc": summary.get("final_test_acc"),
            "step_time_s_median": summary.get("step_time_s"),
            "train_time_s": summary.get("train_time_s"),
            "epoch_time_s": [round(epoch["epoch_time_s"], 3) for epoch in self.epochs],
            "compiled_graphs": summary.get("compiled_graphs", "missing"),
            "compiled_graphs_by_epoch": [epoch.get("compiled_graphs") for epoch in self.epochs],
            "peak_memory_mb": summary.get("peak_memory_mb"),
        }


def train(name: str, overrides: list[str], work: Path, env: dict[str, str] | None = None) -> Training:
    """``train.py`` with ``overrides``, in a fresh run directory <work>/runs/<name>."""
    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"----- {name}: train.py {' '.join(overrides)}", flush=True)
    command = [sys.executable, "train.py", *overrides]
    started = time.perf_counter()
    returncode, console = run_streamed(
        [*command, f"hydra.run.dir={run_dir}", "trainer.progress_bar=false"], env
    )
    return Training(name, returncode, time.perf_counter() - started, run_dir, console)


# --- (a) determinism -------------------------------------------------------------------------------


def compare_weights(left: Path, right: Path) -> dict:
    """The model states of two checkpoints (last.pt), compared bit for bit."""
    a, b = load_checkpoint(left)["model"], load_checkpoint(right)["model"]
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    max_abs = max(((a[n].double() - b[n].double()).abs().max().item() for n in differing), default=0.0)
    return {
        "identical": not differing,
        "max_abs_diff": max_abs,
        "tensors": len(a),
        "tensors_differing": len(differing),
    }


def check_determinism(scale: Scale, device: str, work: Path, record: StageRecord) -> bool:
    data = synthetic_cifar10(work, scale)
    common = [*scale.training_overrides(data, device), *scale.optimizer_overrides("sam"), "epochs=1"]
    rows = []
    for deterministic in ("true", "false"):
        setting = [*common, f"trainer.deterministic={deterministic}"]
        runs = [train(f"determinism_{deterministic}_{copy}", setting, work) for copy in (1, 2)]
        for run in runs:
            facts = run.facts()
            record.put("runs", run.name, facts)
            rows.append([run.name, facts["final_test_acc"], facts["step_time_s_median"], facts["wall_s"]])
        record["table"] = markdown_table(["run", "final test acc", "median step (s)", "wall (s)"], rows)
        if all(run.ok for run in runs):
            pair = compare_weights(*(run.run_dir / "last.pt" for run in runs))
            record.put("pairs", deterministic, pair)
            headline = (
                f"deterministic={deterministic}: weights identical {'yes' if pair['identical'] else 'no'} "
                f"(max |Δw| {pair['max_abs_diff']:.3g}, {pair['tensors_differing']} of {pair['tensors']} "
                "tensors differ)"
            )
            record["headline"] = "; ".join(filter(None, [record["headline"], headline]))
    pairs = record.values.get("pairs", {})
    return "true" in pairs and pairs["true"]["identical"]


# --- (b) torch.compile -----------------------------------------------------------------------------

COMPILED_METHODS = {  # name: (optimizer, its settings)
    "sam": ("sam", []),
    "ssam_f_tensor_masked": ("ssam_f", ["optimizer.granularity=tensor", "optimizer.norm=masked"]),
}
RECOMPILE_LIMIT_WORDS = ("recompile_limit", "cache_size_limit")  # dynamo's, since and before torch 2.6
RECOMPILES_TAG = "[__recompiles]"  # starts a line of TORCH_LOGS=recompiles
MODES = ("eager", "compiled")


def recompiles(console: str) -> dict:
    """Dynamo's recompiles and their reasons as its ``recompiles`` log reports them, and whether
    the console says a recompile limit was hit (dynamo's warning, or the trainer's)."""
    lines = console.splitlines()
    log = [line.split(RECOMPILES_TAG, 1)[1].rstrip() for line in lines if RECOMPILES_TAG in line]
    limit_hit = any(word in line.lower() for line in lines for word in RECOMPILE_LIMIT_WORDS)
    return {
        "recompiles": sum("Recompiling function" in line for line in log),
        "recompiles_log": log[:RECOMPILE_LINES],
        "limit_hit": limit_hit,
    }


def check_compile(scale: Scale, device: str, work: Path, record: StageRecord) -> bool:
    common = [*scale.training_overrides(synthetic_cifar10(work, scale), device), "epochs=3"]
    compiling = ["trainer.compile=true", f"trainer.compile_backend={scale.compile_backend}"]
    # A cache of this check's own: the compile times are a cold start's, whatever ran before.
    env = {"TORCH_LOGS": "recompiles", "TORCHINDUCTOR_CACHE_DIR": str((work / "inductor_cache").resolve())}
    passed = True
    for name, (optimizer, settings) in COMPILED_METHODS.items():
        overrides = [*common, *scale.optimizer_overrides(optimizer), *settings]
        eager = train(f"compile_{name}_eager", [*overrides, "trainer.compile=false"], work)
        result = {"eager": eager.facts()}
        record.put("methods", name, result)
        compiled = train(f"compile_{name}_compiled", [*overrides, *compiling], work, env)
        result["compiled"] = {**compiled.facts(), **recompiles(compiled.console)}
        if eager.ok and compiled.ok:
            result["eager_over_compiled_step"] = (
                eager.summary["step_time_s"] / compiled.summary["step_time_s"]
            )
        record.put("methods", name, result)
        summarise_compile(record)
        passed = passed and eager.ok and compiled.ok
    return passed


def summarise_compile(record: StageRecord) -> None:
    """The compile stage's table and headline from the methods done so far."""
    methods = record["methods"]
    rows = [compile_row(name, mode, result[mode]) for name, result in methods.items() for mode in MODES]
    header = ["method", "mode", "graphs (after each epoch)", "recompiles", "limit hit", "median step (s)"]
    table = markdown_table([*header, "epochs (s)", "final test acc", "wall (s)"], rows)
    for name, result in methods.items():
        title = f"{name}, compiled: dynamo's recompiles log (TORCH_LOGS=recompiles), first lines:"
        table += ["", title, "```", *result["compiled"]["recompiles_log"], "```"]
    record["table"] = table
    record["headline"] = "; ".join(
        f"{name}: eager / compiled median step {fmt(result.get('eager_over_compiled_step', 'n/a'), 3)}"
        for name, result in methods.items()
    )


def compile_row(name: str, mode: str, run: dict) -> list:
    graphs, recompiled = run["compiled_graphs"], ["", ""]
    if mode == "compiled":
        graphs = f"{graphs} ({', '.join(str(count) for count in run['compiled_graphs_by_epoch'])})"
        recompiled = [run["recompiles"], "yes" if run["limit_hit"] else "no"]
    epochs = ", ".join(fmt(seconds, 3) for seconds in run["epoch_time_s"])
    return [
        name,
        mode,
        graphs,
        *recompiled,
        run["step_time_s_median"],
        epochs,
        run["final_test_acc"],
        run["wall_s"],
    ]


# --- (c) Fisher scores: vmap against the loop ------------------------------------------------------


def relative_difference(scores: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """max over tensors of max|s − r| / max|r| within the tensor: each tensor against its own scale,
    so that a layer of small scores counts as much as one of large scores."""
    worst = 0.0
    for s, r in zip(scores, reference):
        scale = r.abs().max().item()
        difference = (s - r).abs().max().item()
        worst = max(worst, difference / scale if scale > 0 else difference)
    return worst


def relative_l1_difference(scores: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Σ|s − r| / Σ|r| over every weight: the share of the score that moved."""
    moved = sum((s - r).abs().sum().item() for s, r in zip(scores, reference))
    return moved / sum(r.abs().sum().item() for r in reference)


def mask_agreement(scores: list[torch.Tensor], reference: list[torch.Tensor], sparsity: float = 0.5) -> float:
    """Share of the weights on which SSAM-F's element-wise masks (global top-k) of the two agree."""
    masks = global_topk_mask(scores, sparsity), global_topk_mask(reference, sparsity)
    same = sum(int((a == b).sum()) for a, b in zip(*masks))
    return same / sum(mask.numel() for mask in masks[0])


def measured(
    action: Callable[[], list[torch.Tensor]], device: torch.device
) -> tuple[list[torch.Tensor], dict]:
    """``action``'s result, its seconds and, on CUDA, its peak memory above what was allocated before."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    result = action()
    if cuda:
        torch.cuda.synchronize(device)
    facts = {"seconds": round(time.perf_counter() - started, 4)}
    if cuda:
        facts["peak_mib_above_resident"] = round(
            (torch.cuda.max_memory_allocated(device) - resident) / 2**20, 1
        )
    return result, facts


def compare_fisher_methods(
    model_name: str, device: torch.device, samples: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict:
    """The Fisher scores of ``samples`` random CIFAR-shaped examples by vmap and by the loop, on a
    freshly initialised ``model_name`` in ``dtype``: their differences, and each method's time and
    memory."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=10, in_channels=3, image_size=32).to(device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = torch.randn(samples, 3, 32, 32, device=device, dtype=dtype)
    targets = torch.randint(0, 10, (samples,), device=device)
    scores, facts = {}, {}
    for method in ("loop", "vmap"):
        # Kept out of the timing: choosing cuDNN's kernels, vmap's first trace.
        fisher_scores(model, params, inputs[:FISHER_CHUNK], targets[:FISHER_CHUNK], method=method)
        scores[method], facts[method] = measured(
            lambda method=method: fisher_scores(model, params, inputs, targets, method=method), device
        )
        scores[method] = [score.cpu() for score in scores[method]]
    return {
        "weights": sum(p.numel() for p in params),
        "samples": samples,
        **facts,
        "max_relative_difference": relative_difference(scores["vmap"], scores["loop"]),
        "relative_l1_difference": relative_l1_difference(scores["vmap"], scores["loop"]),
        "mask_agreement_s0.5": mask_agreement(scores["vmap"], scores["loop"]),
    }


def check_fisher(scale: Scale, device: str, work: Path, record: StageRecord) -> bool:
    # float32 as float32: TF32 would round the two methods' convolutions differently again.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    record["tolerance_float64"] = FISHER_TOLERANCE
    for name in scale.fisher_models:
        for dtype in (torch.float32, torch.float64):
            samples = (
                scale.fisher_samples if dtype == torch.float32 else min(scale.fisher_samples, FLOAT64_SAMPLES)
            )
            print(f"Fisher scores of {name} in {dtype}: the loop, then vmap", flush=True)
            record.put(
                dtype_name(dtype), name, compare_fisher_methods(name, torch.device(device), samples, dtype)
            )
    header = ["model", "dtype", "samples", "loop (s)", "vmap (s)", "loop peak MiB", "vmap peak MiB"]
    rows = [
        fisher_row(name, dtype, result)
        for dtype in ("float32", "float64")
        for name, result in record[dtype].items()
    ]
    record["table"] = markdown_table(
        [*header, "max rel. diff", "rel. L1 diff", "mask agreement, s = 0.5"], rows
    )
    worst = max(result["max_relative_difference"] for result in record["float64"].values())
    passed = worst <= FISHER_TOLERANCE
    record["headline"] = (
        f"in float64, vmap equals the loop within {FISHER_TOLERANCE:g} (max over tensors of max|Δ| / "
        f"max score): {'yes' if passed else 'no'}, worst {worst:.3g}"
    )
    return passed


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fisher_row(name: str, dtype: str, result: dict) -> list:
    peaks = [result[method].get("peak_mib_above_resident", "n/a") for method in ("loop", "vmap")]
    return [
        f"{name} ({result['weights']:,} weights)",
        dtype,
        result["samples"],
        result["loop"]["seconds"],
        result["vmap"]["seconds"],
        *peaks,
        f"{result['max_relative_difference']:.3g}",
        f"{result['relative_l1_difference']:.3g}",
        f"{result['mask_agreement_s0.5']:.6f}",
    ]


# --- (d) step times ---------------------------------------------------------------------------------

PRECISIONS = {"fp32": [], "bf16_channels_last": ["--amp", "bf16", "--channels-last"]}


def check_steps(scale: Scale, device: str, work: Path, record: StageRecord) -> bool:
    tables, passed = [], True
    for label, precision in PRECISIONS.items():
        output = work / f"bench_step_{label}.json"
        command = [sys.executable, "scripts/bench_step.py", "--device", device, *scale.bench_step]
        command += ["--sparse-methods", "ssam_f", "--sparsity", "0.5", *precision, "--json", str(output)]
        print(f"----- {' '.join(command[1:])}", flush=True)
        returncode, console = run_streamed(command)
        record.put("benchmarks", label, json.loads(output.read_text()) if returncode == 0 else None)
        tables += [f"{label}:", "", *(line for line in console.splitlines() if line.startswith("|")), ""]
        record["table"] = tables
        passed = passed and returncode == 0
    return passed


# --- (e) the paper's preset ------------------------------------------------------------------------

PRESET_KEYS = ("final_test_acc", "best_test_acc", "train_time_s", "step_time_s", "peak_memory_mb", "device")


def check_preset(scale: Scale, device: str, work: Path, record: StageRecord) -> bool:
    data = synthetic_cifar10(work, scale)
    overrides = [*scale.training_overrides(data, device), *scale.optimizer_overrides("ssam_f"), "epochs=2"]
    run = train("preset_cifar10_resnet18_ssam_f", overrides, work)
    record["run"], record["summary"], record["epochs"] = run.facts(), run.summary, run.epochs
    if not run.ok:
        return False
    record["table"] = markdown_table(
        ["summary.json", "value"], [[key, run.summary.get(key)] for key in PRESET_KEYS]
    )
    losses = [epoch["train_loss"] for epoch in run.epochs]
    record["headline"] = (
        f"train.py exited 0; training loss by epoch: {', '.join(fmt(loss) for loss in losses)}"
    )
    return all(math.isfinite(loss) for loss in losses)


# --- running the stages, and the report ------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    check: Callable[[Scale, str, Path, StageRecord], bool]
    checks: str  # what it checks, for the report
    cap_s: int  # its time limit on the GPU, above our estimate of its time there (never measured)


STAGES = {
    "determinism": Stage(check_determinism, "2 × 20-step SAM runs, deterministic: identical weights", 100),
    "fisher": Stage(check_fisher, f"Fisher scores: vmap = loop within {FISHER_TOLERANCE:g} in float64", 90),
    "steps": Stage(check_steps, "step times of SGD, SAM, SSAM-F: fp32, bf16 + channels-last", 90),
    "preset": Stage(check_preset, "experiment=cifar10_resnet18 optimizer=ssam_f, 2 epochs", 60),
    "compile": Stage(check_compile, "compile=true vs eager, SAM and tensor SSAM-F, 3 epochs", 210),
}
WORK_FOLDERS = ("data", "runs", "inductor_cache", "logs")  # what the stages make in --work


def run_stage(name: str, device: str, results: Path, work: Path) -> int:
    """One stage, in this process: 0 if it passed; 1 if not, or if it raised (its traceback's
    tail recorded)."""
    record = StageRecord(results / f"{name}.json", name, device_name(torch.device(device)))
    try:
        record["passed"] = bool(STAGES[name].check(SCALES[device], device, work, record))
    except Exception:
        traceback.print_exc()
        record["passed"], record["error"] = False, tail(traceback.format_exc())
    return 0 if record["passed"] else 1


@dataclass
class Outcome:
    """How a stage's process ended, as ``all`` saw it."""

    status: str  # passed, failed, timed out, or not run
    wall_s: float = 0.0
    limit_s: float = 0.0


def run_in_process(name: str, limit_s: float, args: argparse.Namespace) -> Outcome:
    """Stage ``name`` in a process of its own, its console to <work>/logs/<name>.log, stopped
    after ``limit_s`` seconds: with its whole session, so its train.py runs stop with it."""
    command = [sys.executable, __file__, name, "--device", args.device]
    command += ["--results", str(args.results), "--work", str(args.work)]
    started = time.perf_counter()
    with open(args.work / "logs" / f"{name}.log", "w") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "passed" if process.wait(timeout=limit_s) == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timed out"
        finally:  # also on Ctrl-C, which a session of its own does not receive
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return Outcome(status, round(time.perf_counter() - started, 1), round(limit_s))


def run_all(args: argparse.Namespace) -> int:
    """The stages asked for, each under its limit within ``--budget``, then summary.md: 1 if any
    did not pass."""
    for folder in WORK_FOLDERS:
        shutil.rmtree(args.work / folder, ignore_errors=True)
    (args.work / "logs").mkdir()
    for name in STAGES:  # a stage not run this time leaves no stale record
        (args.results / f"{name}.json").unlink(missing_ok=True)
    slack = SCALES[args.device].slack
    started = time.perf_counter()
    outcomes = {}
    for name in args.stages:
        left = slack * args.budget - (time.perf_counter() - started) - REPORT_RESERVE_S
        if left < SHORTEST_STAGE_S:
            outcomes[name] = Outcome("not run: out of time")
        else:
            outcomes[name] = run_in_process(name, min(slack * STAGES[name].cap_s, left), args)
        print(f"{name}: {outcomes[name].status} ({outcomes[name].wall_s} s)", flush=True)
    with open(args.results / "gpu_check.log", "w") as log:
        for name in outcomes:
            path = args.work / "logs" / f"{name}.log"
            log.write(f"===== {name}\n{path.read_text() if path.exists() else ''}")
    report = render_report(args, outcomes, time.perf_counter() - started)
    (args.results / "summary.md").write_text(report)
    print(report)
    return 0 if all(outcome.status == "passed" for outcome in outcomes.values()) else 1


def render_report(args: argparse.Namespace, outcomes: dict[str, Outcome], total_s: float) -> str:
    """summary.md: what ran where, a row per stage, then each stage's headline, table and, if it
    did not pass, its error."""
    records = {name: read_record(args.results / f"{name}.json") for name in outcomes}
    device = next((record["device"] for record in records.values() if record), args.device)
    versions = (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = f"bash scripts/gpu_check.sh --device {args.device} --stages {' '.join(outcomes)}"
    rows = [[name, STAGES[name].checks, o.status, o.wall_s, o.limit_s] for name, o in outcomes.items()]
    lines = [
        f"# GPU check: {device}",
        "",
        f"`{command}`, {when}; {versions}, Python "
        f"{sys.version.split()[0]}; {total_s:.0f} s for the stages. Every number here comes from this "
        "run; <stage>.json beside this file holds each stage's values, gpu_check.log their console.",
        "",
        *markdown_table(["stage", "checks", "status", "wall (s)", "limit (s)"], rows),
    ]
    for name, outcome in outcomes.items():
        record = records[name] or {}
        lines += ["", f"## {name}: {outcome.status}", ""]
        lines += [record["headline"], ""] if record.get("headline") else []
        lines += record.get("table", [])
        if outcome.status != "passed":
            lines += stage_error(record, args.work / "logs" / f"{name}.log")
    return "\n".join(lines) + "\n"


def read_record(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def stage_error(record: dict, log: Path) -> list[str]:
    """The traceback a stage recorded or, if none (a failed run, a stage stopped), its console's tail."""
    lines = record.get("error") or (tail(log.read_text()) if log.exists() else ["(no console)"])
    return ["", "```", *lines, "```"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--device", choices=list(SCALES), default="cuda")
    parser.add_argument("--results", type=Path, required=True, help="the folder the results go to")
    parser.add_argument(
        "--work", type=Path, required=True, help=f"data, runs, logs: all empties {WORK_FOLDERS}"
    )
    parser.add_argument(
        "--stages", nargs="+", choices=list(STAGES), default=list(STAGES), help="all: these only"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420,
        help="all: seconds for the stages together, on the GPU (times slack)",
    )
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage == "all":
        return run_all(args)
    return run_stage(args.stage, args.device, args.results, args.work)


if __name__ == "__main__":
    sys.exit(main())
