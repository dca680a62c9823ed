"""Time one training step of SGD, SAM, SSAM-F and SSAM-D, side by side in one process.

    python scripts/bench_step.py                               # CIFAR ResNet-18, batch 64, CPU
    python scripts/bench_step.py --sparsity 0.5 0.9 --repeats 7 --json docs/bench_step_cpu.json

Every optimizer steps on the same batch with its own copy of the model; the optimizers take
turns (interleaved) so that drifts in machine speed hit all of them alike. The mask is built
before timing (mask refreshes are timed by bench_mask.py). Reported: the median step time
and its ratio to SGD and to SAM, and (CUDA only) the memory one step needs above what is
already resident.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from ssam.devices import device_name
from ssam.models import build_model
from ssam.train.loop import training_step
from ssam.train.optimizers import build_mask_strategy, build_optimizer


def make_optimizers(model, dataset, sparsities, rho):
    """(label, model copy, optimizer) for SGD, SAM and each Sparse SAM variant."""
    entries = []
    for name in ("sgd", "sam"):
        replica = copy.deepcopy(model)
        entries.append((name, replica, build_optimizer(name, replica, lr=0.01, rho=rho)))
    for sparsity in sparsities:
        for name in ("ssam_f", "ssam_d"):
            replica = copy.deepcopy(model)
            strategy = build_mask_strategy(
                name, replica, dataset, epochs=10, seed=0, update_freq=1, num_samples=min(16, len(dataset))
            )
            optimizer = build_optimizer(
                name, replica, lr=0.01, rho=rho, sparsity=sparsity, mask_strategy=strategy
            )
            entries.append((f"{name} s={sparsity}", replica, optimizer))
    return entries


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=32).to(device)
    inputs = torch.randn(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    dataset = TensorDataset(inputs.cpu(), targets.cpu())
    entries = make_optimizers(model, dataset, args.sparsity, args.rho)
    times = {label: [] for label, _, _ in entries}
    peak_mb = {}
    for label, replica, optimizer in entries:  # warm-up; builds the masks
        for _ in range(args.warmup):
            training_step(replica, optimizer, inputs, targets)
        synchronize(device)
        if device.type == "cuda":
            # What one step adds on top of everything already resident (all replicas and their
            # optimizer state): the step's working memory, not the mask refresh's.
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            training_step(replica, optimizer, inputs, targets)
            synchronize(device)
            peak_mb[label] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
    for _ in range(args.repeats):
        for label, replica, optimizer in entries:
            synchronize(device)
            started = time.perf_counter()
            training_step(replica, optimizer, inputs, targets)
            synchronize(device)
            times[label].append(time.perf_counter() - started)

    medians = {label: statistics.median(values) for label, values in times.items()}
    name = device_name(device)
    print(
        f"training step, {args.model}, batch {args.batch_size}, {name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} (after {args.warmup} warm-up)"
    )
    print("| optimizer | step (s) | / SGD | / SAM |" + (" step peak MiB above resident |" if peak_mb else ""))
    print("|---|---|---|---|" + ("---|" if peak_mb else ""))
    for label, median in medians.items():
        row = f"| {label} | {median:.3f} | {median / medians['sgd']:.2f} | {median / medians['sam']:.2f} |"
        print(row + (f" {peak_mb[label]:.0f} |" if peak_mb else ""))
    if args.json:
        record = {
            "benchmark": "training_step",
            "model": args.model,
            "batch_size": args.batch_size,
            "device": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "median_s": medians,
            "runs_s": times,
            "peak_memory_mib": peak_mb or None,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
