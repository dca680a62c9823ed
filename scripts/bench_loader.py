"""Images per second of the training loaders, side by side in one process: the CPU pipeline
(per-sample torchvision transforms in a DataLoader, then a copy to the device) against
dataset.on_device (the whole dataset on the device, augmented there in batches).

    python scripts/bench_loader.py                                  # Fashion-MNIST, batch 128
    python scripts/bench_loader.py --dataset cifar10 --device cuda --json docs/bench_loader_gpu.json

Both loaders are built by the trainer's own functions from the composed config (the
dataset's augmentation, mean, std and root) over the full training set, and deliver the same
examples in the same order to the device; nothing trains, so this is the loader's cost alone.
They take turns, each pass reading the first --batches batches of a new epoch; reported: the
median over --repeats passes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import ssam.train.resolvers  # noqa: F401  (registers the configs' resolvers)
from ssam.data.catalog import DATASETS
from ssam.data.sampling import EpochShuffle, PerSampleSeeded
from ssam.devices import device_name
from ssam.train.builders import build_loaders, datasets_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADERS = {"cpu_dataloader": "false", "on_device": "true"}  # label: dataset.on_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(loader, batches: int, device: torch.device) -> float:
    """Read ``batches`` batches onto ``device`` as the training loop does; images per second."""
    images = 0
    synchronize(device)
    started = time.perf_counter()
    for inputs, targets in itertools.islice(loader, batches):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        images += len(targets)
    synchronize(device)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    in_memory = [name for name, spec in DATASETS.items() if spec.in_memory]  # those the device loader takes
    parser.add_argument("--dataset", default="fashion_mnist", choices=in_memory)
    parser.add_argument("--root", help="the dataset's folder (default: the config's dataset.root)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=300, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=0, help="CPU DataLoader processes (trainer.num_workers)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    overrides = [
        f"dataset={args.dataset}",
        f"batch_size={args.batch_size}",
        f"trainer.num_workers={args.workers}",
        *([f"dataset.root={args.root}"] if args.root else []),
    ]
    loaders = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for label, on_device in LOADERS.items():
            cfg = compose(config_name="train", overrides=[*overrides, f"dataset.on_device={on_device}"])
            train_set, test_set, _ = datasets_from_config(cfg)
            sampler = EpochShuffle(len(train_set), cfg.seed)
            train_loader, _ = build_loaders(
                cfg, PerSampleSeeded(train_set, cfg.seed), test_set, sampler, device
            )
            loaders[label] = (train_loader, sampler)
    batches = min(args.batches, len(loaders["on_device"][0]))
    rates = {label: [] for label in loaders}
    for repeat in range(args.repeats):
        for label, (loader, sampler) in loaders.items():
            sampler.set_epoch(repeat)
            rates[label].append(images_per_s(loader, batches, device))

    medians = {label: statistics.median(values) for label, values in rates.items()}
    name = device_name(device)
    print(
        f"training loader, {args.dataset} ({len(train_set)} images), batch {args.batch_size}, "
        f"{batches} batches per pass, {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.workers} DataLoader workers, median of {args.repeats}"
    )
    print("| loader | images/s | / cpu_dataloader |")
    print("|---|---|---|")
    for label, median in medians.items():
        print(f"| {label} | {median:.0f} | {median / medians['cpu_dataloader']:.2f} |")
    if args.json:
        record = {
            "benchmark": "training_loader",
            "dataset": args.dataset,
            "train_images": len(train_set),
            "batch_size": args.batch_size,
            "batches_per_pass": batches,
            "device": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "workers": args.workers,
            "repeats": args.repeats,
            "median_images_per_s": medians,
            "runs_images_per_s": rates,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
