"""Peak memory of training steps under gradient accumulation (trainer.accumulate_steps = k).

    python scripts/bench_memory.py                    # ResNet-18, CIFAR input, batch 128, k = 1 2 4
    python scripts/bench_memory.py --device cuda --json docs/bench_memory_cuda.json

Each (optimizer, k) runs in a process of its own, since a process's peak only grows: the model
and optimizer are built, one batch is made, and ``--steps`` steps are taken on it. SSAM-F's first
step also builds its mask from the Fisher scores of 16 samples. What each row includes:

- on CUDA, the steady-state step: one warm-up step first (it builds SSAM-F's first mask, whose
  vmap Fisher pass holds a chunk of per-sample gradients, and the optimizer's state), then the
  peak is reset. ``before`` is what is allocated after the warm-up: weights, batch, momentum,
  SAM's copy of w, Sparse SAM's mask, and the gradients SGD's step leaves (SAM's steps free
  theirs); ``peak`` is ``torch.cuda.max_memory_allocated`` (tensors only) over the ``--steps``
  steps, and the rise is what a step needs on top: the activations of a micro-batch, the
  gradients SAM's steps make, ε;
- on the CPU, whose peak resident set size (max RSS) cannot be reset, the peak over the whole
  process and its rise over the RSS before the first step: every step from the first, SSAM-F's
  first mask included (on the CPU its Fisher pass is the batch-1 loop, which holds one sample's
  gradients at a time). RSS is a coarse measure: it counts the interpreter, torch's libraries
  and pages the allocator keeps after freeing them, so only the differences between rows mean
  much.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from ssam.devices import device_name
from ssam.models import build_model
from ssam.train.kinds import SparseSAMMethod
from ssam.train.methods import build_mask_strategy, build_optimizer, method_named
from ssam.train.records import peak_memory_mb
from ssam.train.steps import training_step

IMAGE_SIZE, CHANNELS, CLASSES = 32, 3, 10


def resident_mb() -> float:
    """This process's current resident set size, from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(args: argparse.Namespace) -> dict:
    """The child's job: build, step, and report this process's memory."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=CLASSES, in_channels=CHANNELS, image_size=IMAGE_SIZE).to(
        device
    )
    inputs = torch.randn(args.batch_size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, device=device)
    targets = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    method = method_named(args.optimizer)
    settings = dict(lr=0.01, weight_decay=0.0)
    if "rho" in method.settings:
        settings["rho"] = 0.05
    if issubclass(method, SparseSAMMethod):
        examples = torch.utils.data.TensorDataset(inputs.cpu(), targets.cpu())
        fisher = {"num_samples": 16} if "num_samples" in method.settings else {}
        mask = build_mask_strategy(args.optimizer, model, examples, epochs=1, seed=0, **fisher)
        settings.update(sparsity=0.5, mask_strategy=mask)
    optimizer = build_optimizer(args.optimizer, model, **settings)
    if device.type == "cuda":
        # The steady-state step: the warm-up step builds SSAM-F's first mask (the Fisher pass)
        # and the optimizer's state, then the peak starts afresh. A CPU process's cannot.
        training_step(model, optimizer, inputs, targets, accumulate_steps=args.accumulate_steps)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = resident_mb()
    for _ in range(args.steps):
        training_step(model, optimizer, inputs, targets, accumulate_steps=args.accumulate_steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = peak_memory_mb(device)  # as a run's summary.json records it
    kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss"
    return {
        "optimizer": args.optimizer,
        "accumulate_steps": args.accumulate_steps,
        "micro_batch": -(-args.batch_size // args.accumulate_steps),
        "peak_mb": round(peak, 1),
        "before_steps_mb": round(before, 1),
        "rise_mb": round(peak - before, 1),
        "kind": kind,
    }


def child_command(args: argparse.Namespace, optimizer: str, accumulate_steps: int) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--child",
        f"--model={args.model}",
        f"--batch-size={args.batch_size}",
        f"--steps={args.steps}",
        f"--device={args.device}",
        f"--optimizer={optimizer}",
        f"--accumulate-steps={accumulate_steps}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--accumulate", type=int, nargs="+", default=[1, 2, 4], help="values of k")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "sam", "ssam_f"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    parser.add_argument("--accumulate-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    rows = []
    print(
        f"{args.model}, batch {args.batch_size}, {args.steps} steps, {device_name(torch.device(args.device))}"
    )
    print(f"{'optimizer':<8} {'k':>2} {'micro-batch':>11} {'peak MiB':>9} {'before MiB':>10} {'rise MiB':>9}")
    for optimizer in args.optimizers:
        for k in args.accumulate:
            done = subprocess.run(
                child_command(args, optimizer, k), capture_output=True, text=True, check=True
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{optimizer:<8} {k:>2} {row['micro_batch']:>11} {row['peak_mb']:>9.1f} "
                f"{row['before_steps_mb']:>10.1f} {row['rise_mb']:>9.1f}"
            )
    if args.json:
        record = {
            "model": args.model,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "device": device_name(torch.device(args.device)),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
