"""Time one training step of SGD, SAM, SSAM-F and SSAM-D, side by side in one process.

    python scripts/bench_step.py                       # CIFAR ResNet-18, batch 64, both granularities
    python scripts/bench_step.py --sparsity 0.5 0.9 --repeats 7 --json docs/bench_step_cpu.json
    python scripts/bench_step.py --device cuda --amp bf16 --channels-last
    python scripts/bench_step.py --sparsity 0.5 --granularity tensor --ascent-cost 1 0.5 auto 0.1
    python scripts/bench_step.py --sparse-methods ssam_f --sparsity 0.5   # SGD, SAM and SSAM-F only

Every optimizer steps on the same batch with its own copy of the model; the optimizers take
turns (interleaved) so that drifts in machine speed hit all of them alike. Sparse SAM runs at
each sparsity with the element-wise mask (the paper's, ``--element-norm``, default full) and
with the tensor-granular, cost-aware one (norm masked, which is what lets the ascent skip
gradients; ``--ascent-cost``, one row per value). The masks are built before timing (refreshes
are timed by bench_mask.py). Reported per optimizer: the median step time and its ratio to SGD
and to SAM; the mask density, the share of the total Fisher score the mask holds (SSAM-F: how
much of the paper's choice a coarser one keeps) and the ascent's estimated backward cost (share
of a full backward); the
bytes per parameter its state keeps between steps (momentum, the copy of w, the mask); and on
CUDA the memory one step needs above what is already resident.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import TensorDataset

from ssam.devices import device_name
from ssam.models import build_model
from ssam.optim import SAM, SSAM, fisher_scores
from ssam.train.methods import build_mask_strategy, build_optimizer, build_tensor_selection
from ssam.train.precision import AMP, Precision
from ssam.train.steps import training_step


def sparse_variants(args):
    """(label, optimizer name, sparsity, granularity, norm, ascent cost) of each Sparse SAM variant."""
    variants = []
    for granularity in args.granularity:
        costs = args.ascent_cost if granularity == "tensor" else [1.0]
        norm = "masked" if granularity == "tensor" else args.element_norm
        for cost in costs:
            for sparsity in args.sparsity:
                for name in args.sparse_methods:
                    label = f"{name} {granularity} s={sparsity}" + (f" cost={cost}" if len(costs) > 1 else "")
                    variants.append((label, name, sparsity, granularity, norm, cost))
    return variants


def make_optimizers(model, dataset, args):
    """(label, model copy, optimizer) for SGD, SAM and each Sparse SAM variant."""
    entries = []
    plain = dict(lr=0.01, weight_decay=0.0)
    replica = copy.deepcopy(model)
    entries.append(("sgd", replica, build_optimizer("sgd", replica, **plain)))
    replica = copy.deepcopy(model)
    entries.append(("sam", replica, build_optimizer("sam", replica, rho=args.rho, **plain)))
    for label, name, sparsity, granularity, norm, cost in sparse_variants(args):
        replica = copy.deepcopy(model)
        strategy = build_mask_strategy(
            name,
            replica,
            dataset,
            epochs=10,
            seed=0,
            update_freq=1,
            granularity=granularity,
            ascent_cost=cost,
            **({"num_samples": min(16, len(dataset))} if name == "ssam_f" else {}),
        )
        optimizer = build_optimizer(
            name, replica, rho=args.rho, sparsity=sparsity, norm=norm, mask_strategy=strategy, **plain
        )
        entries.append((label, replica, optimizer))
    return entries


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer) -> float:
    """Bytes the optimizer keeps between steps, per parameter: momentum buffers, SAM's copy of
    w (for the tensors it perturbs), Sparse SAM's mask (one bool per weight)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    base = getattr(optimizer, "base_optimizer", optimizer)
    held = [t for state in base.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    if isinstance(optimizer, SAM):
        held += list(optimizer._origins.values())
    if isinstance(optimizer, SSAM) and optimizer.masks is not None:
        held += optimizer.masks
    return sum(t.numel() * t.element_size() for t in held) / sum(p.numel() for p in params)


def ascent_cost_share(optimizer: torch.optim.Optimizer, model: torch.nn.Module, dataset) -> float:
    """The ascent backward's estimated cost as a share of a full backward (1 for SAM)."""
    if not isinstance(optimizer, SAM):
        return float("nan")
    cost = build_tensor_selection(model, dataset, tensor_score="sum", ascent_cost=1.0).cost
    wanted = {id(p) for p in optimizer.ascent_parameters()}
    chosen = {i for i, p in enumerate(model.parameters()) if id(p) in wanted}
    return cost.of(chosen) / cost.full


def initial_fisher_scores(model: torch.nn.Module, dataset) -> list[torch.Tensor]:
    """The Fisher scores SSAM-F's first mask is built from (same samples, same weights)."""
    strategy = build_mask_strategy("ssam_f", model, dataset, epochs=10, seed=0, update_freq=1, num_samples=16)
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, targets = strategy.samples(0, params[0].device)
    return fisher_scores(model, params, inputs, targets, method=strategy.method)


def fisher_share(optimizer: torch.optim.Optimizer, scores: list[torch.Tensor]) -> float:
    """Share of the total Fisher score on the weights the mask perturbs (1 for SAM)."""
    if not isinstance(optimizer, SAM):
        return float("nan")
    if not isinstance(optimizer, SSAM):
        return 1.0
    held = sum(float((s * m).sum()) for s, m in zip(scores, optimizer.masks))
    return held / sum(float(s.sum()) for s in scores)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    steps: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each of ``steps`` per repeat, the steps taking turns within each repeat, so
    that drifts in machine speed hit all of them alike."""
    times = {label: [] for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            synchronize(device)
            started = time.perf_counter()
            step()
            synchronize(device)
            times[label].append(time.perf_counter() - started)
    return times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--sparse-methods", nargs="+", default=["ssam_f", "ssam_d"], choices=["ssam_f", "ssam_d"]
    )
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument(
        "--granularity", nargs="+", default=["element", "tensor"], choices=["element", "tensor"]
    )
    parser.add_argument("--element-norm", default="full", choices=["full", "masked"])
    parser.add_argument(
        "--ascent-cost",
        type=lambda value: value if value == "auto" else float(value),
        nargs="+",
        default=["auto"],
        help="tensor granularity's cost budgets: auto ((1 - s)/2) or shares in (0, 1]",
    )
    parser.add_argument(
        "--ascent-fraction", type=float, default=1.0, help="m-sharpness: ascent on this share"
    )
    parser.add_argument("--amp", default="none", choices=AMP)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    precision = Precision(args.amp, device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=32)
    model = model.to(device, memory_format=memory_format)
    inputs = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    dataset = TensorDataset(inputs.cpu(), targets.cpu())
    entries = make_optimizers(model, dataset, args)
    fisher = initial_fisher_scores(model, dataset)

    def step(replica, optimizer):
        training_step(
            replica, optimizer, inputs, targets, ascent_fraction=args.ascent_fraction, precision=precision
        )

    peak_mb = {}
    for label, replica, optimizer in entries:  # warm-up; builds the masks
        for _ in range(args.warmup):
            step(replica, optimizer)
        synchronize(device)
        if device.type == "cuda":
            # What one step adds on top of everything already resident (all replicas and their
            # optimizer state): the step's working memory, not the mask refresh's.
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step(replica, optimizer)
            synchronize(device)
            peak_mb[label] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
    steps = {label: functools.partial(step, replica, optimizer) for label, replica, optimizer in entries}
    times = interleaved_times(steps, args.repeats, device)

    medians = {label: statistics.median(values) for label, values in times.items()}
    density = {label: opt.mask_density() if isinstance(opt, SSAM) else 1.0 for label, _, opt in entries}
    held = {label: fisher_share(opt, fisher) for label, _, opt in entries}
    ascent_cost = {label: ascent_cost_share(opt, replica, dataset) for label, replica, opt in entries}
    state_bytes = {label: state_bytes_per_parameter(opt) for label, _, opt in entries}
    name = device_name(device)
    print(
        f"training step, {args.model}, batch {args.batch_size}, {name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, amp {args.amp}, channels_last {args.channels_last}, "
        f"ascent_fraction {args.ascent_fraction}, element norm {args.element_norm}, tensor norm masked "
        f"with ascent_cost {args.ascent_cost}; median of {args.repeats} (after {args.warmup} warm-up)"
    )
    header = "| optimizer | step (s) | / SGD | / SAM | density | Fisher held | ascent cost (est.) | state B/param |"
    print(header + (" step peak MiB above resident |" if peak_mb else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if peak_mb else ""))
    for label, median in medians.items():
        row = (
            f"| {label} | {median:.3f} | {median / medians['sgd']:.3f} | {median / medians['sam']:.3f} "
            f"| {density[label]:.3f} | {held[label]:.3f} | {ascent_cost[label]:.2f} | {state_bytes[label]:.2f} |"
        )
        print(row + (f" {peak_mb[label]:.0f} |" if peak_mb else ""))
    if args.json:
        record = {
            "benchmark": "training_step",
            "settings": vars(args),
            "device": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "median_s": medians,
            "runs_s": times,
            "mask_density": density,
            "fisher_share": held,
            "ascent_cost_share": ascent_cost,
            "state_bytes_per_param": state_bytes,
            "peak_memory_mib": peak_mb or None,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
