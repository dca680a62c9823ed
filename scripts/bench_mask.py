"""Time one SSAM-F mask refresh (Fisher scores + global top-k) for each exact method.

    python scripts/bench_mask.py                       # CIFAR ResNet-18, 16/128/1024 samples
    python scripts/bench_mask.py --samples 16 128 --repeats 5 --json docs/bench_mask_cpu.json

All methods run in this one process, interleaved, on the same random 32×32 images, and are
reported as the median over repeats and as ratios to the batch-1 loop. ``paper`` is the
authors' refresh: a new 4-worker DataLoader with batch size 1, backward() into .grad.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ssam.devices import device_name
from ssam.models import build_model
from ssam.optim import FisherMask


def paper_refresh(model: torch.nn.Module, dataset: TensorDataset, num_samples: int, sparsity: float) -> None:
    """What the authors' code does each refresh (re-implemented for timing only)."""
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=4)
    scores = [torch.zeros_like(p) for p in model.parameters()]
    device = scores[0].device
    for index, (x, y) in enumerate(loader):
        if index == num_samples:
            break
        x, y = x.to(device), y.to(device)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for score, p in zip(scores, model.parameters()):
            score += p.grad**2
    flat = torch.cat([s.flatten() for s in scores])
    torch.topk(flat, int(flat.numel() * (1 - sparsity)))
    model.zero_grad()


def time_once(action, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    action()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 128, 1024])
    parser.add_argument("--methods", nargs="+", default=["loop", "vmap", "paper"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=32).to(device).train()
    pool = max(args.samples)
    dataset = TensorDataset(torch.randn(pool, 3, 32, 32), torch.randint(0, 10, (pool,)))
    params = list(model.parameters())
    rows = []
    for num_samples in args.samples:
        timings = {method: [] for method in args.methods}
        for _ in range(args.repeats):
            for method in args.methods:
                if method == "paper":
                    action = lambda n=num_samples: paper_refresh(model, dataset, n, args.sparsity)  # noqa: E731
                else:
                    strategy = FisherMask(
                        model, dataset, num_samples=num_samples, method=method, chunk_size=args.chunk_size
                    )
                    action = lambda s=strategy: s(params, None, args.sparsity, epoch=0)  # noqa: E731
                timings[method].append(time_once(action, device))
        medians = {method: statistics.median(times) for method, times in timings.items()}
        rows.append({"num_samples": num_samples, "median_s": medians, "runs": timings})

    name = device_name(device)
    print(
        f"Fisher mask refresh, {args.model}, {name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    header = "| num_samples | " + " | ".join(f"{m} (s)" for m in args.methods) + " | "
    header += " | ".join(f"{m} / loop" for m in args.methods if m != "loop") + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(args.methods) - ("loop" in args.methods)))
    for row in rows:
        medians = row["median_s"]
        cells = [f"{medians[m]:.3f}" for m in args.methods]
        if "loop" in medians:
            cells += [f"{medians[m] / medians['loop']:.2f}" for m in args.methods if m != "loop"]
        print(f"| {row['num_samples']} | " + " | ".join(cells) + " |")
    if args.json:
        record = {
            "benchmark": "fisher_mask_refresh",
            "model": args.model,
            "device": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "sparsity": args.sparsity,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
