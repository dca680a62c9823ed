"""Sharpness, loss landscapes and mask maps of a trained run, from its checkpoint.

python -m ssam.analyze checkpoint=outputs/runs/<run>/last.pt            # everything
python -m ssam.analyze checkpoint=<run>/last.pt what=[hessian,sharpness]
python -m ssam.analyze checkpoint=<sam run>/last.pt what=[landscape] \\
    landscape.other_checkpoint=<sparse sam run>/last.pt                  # + the line between them

The model and data are rebuilt from the run's own config (.hydra/config.yaml next to the
checkpoint); the results go next to the checkpoint as analysis_<what>.json and .png files.
Settings and their defaults: configs/analyze.yaml. Like train.py, this is the only place that
reads the config: ssam.analysis takes plain arguments.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

import ssam.train.resolvers  # noqa: F401  (registers the resolvers the run configs use)
from ssam.analysis import figures
from ssam.analysis.hessian import hutchinson_trace, top_eigenvalues
from ssam.analysis.landscape import filter_normalized_direction, interpolation_losses, surface_losses
from ssam.analysis.loss import Batches, fixed_batches, mean_loss
from ssam.analysis.mask_maps import read_mask_history
from ssam.analysis.sharpness import ascent_sharpness, random_sharpness
from ssam.data import DataError, dataset_named
from ssam.devices import device_name, resolve_device
from ssam.errors import ConfigError
from ssam.extensions import load_extensions
from ssam.train.builders import datasets_from_config, model_from_config
from ssam.train.checkpoint import CheckpointError, load_checkpoint
from ssam.train.metrics import write_json
from ssam.train.overrides import unknown_key_message
from ssam.train.run_settings import DEVICES

ANALYSES = ("hessian", "sharpness", "landscape", "masks")
PATH_SETTINGS = ("checkpoint", "landscape.other_checkpoint")
SPLITS = ("train", "test")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
LOSS = F.cross_entropy
LOSS_DESCRIPTION = "mean cross-entropy over the examples, model in eval mode (BatchNorm running statistics)"


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _existing_file(key: str, value: Any) -> Path:
    _require(isinstance(value, str) and value != "", key, value, "the path of a run's last.pt")
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{key} must be an existing file (a run's last.pt), got {value!r}: no such file")
    return path


def requested_analyses(cfg: DictConfig) -> list[str]:
    """``what`` as a list, every setting checked first: a bad one fails before any work."""
    what = cfg.what
    items = [what] if isinstance(what, str) else list(what or [])
    unknown = [item for item in items if item not in ANALYSES]
    if unknown or not items:
        got = repr(unknown[0]) if unknown else "nothing"
        raise ConfigError(f"what must list some of {', '.join(ANALYSES)}, got {got}")
    if cfg.checkpoint is None:
        raise ConfigError("checkpoint must be set: python -m ssam.analyze checkpoint=outputs/.../last.pt")
    _existing_file("checkpoint", cfg.checkpoint)
    _require(cfg.device in DEVICES, "device", cfg.device, f"one of {', '.join(DEVICES)}")
    _require(_is_int_at_least(cfg.seed, 0), "seed", cfg.seed, "an integer >= 0")
    _require(cfg.data.split in SPLITS, "data.split", cfg.data.split, f"one of {', '.join(SPLITS)}")
    for key in ("data.batches", "data.batch_size", "hessian.top_k", "hessian.trace_probes"):
        _require(
            _is_int_at_least(OmegaConf.select(cfg, key), 1),
            key,
            OmegaConf.select(cfg, key),
            "an integer >= 1",
        )
    hessian = cfg.hessian
    _require(
        _is_int_at_least(hessian.lanczos_steps, hessian.top_k),
        "hessian.lanczos_steps",
        hessian.lanczos_steps,
        f"an integer >= hessian.top_k ({hessian.top_k})",
    )
    _require(_is_positive_number(cfg.sharpness.rho), "sharpness.rho", cfg.sharpness.rho, "> 0")
    for key, low in (("sharpness.random_samples", 1), ("landscape.steps", 2), ("landscape.line_points", 1)):
        value = OmegaConf.select(cfg, key)
        _require(_is_int_at_least(value, low), key, value, f"an integer >= {low}")
    _require(_is_positive_number(cfg.landscape.span), "landscape.span", cfg.landscape.span, "> 0")
    margin = cfg.landscape.line_margin
    _require(_is_positive_number(margin) or margin == 0, "landscape.line_margin", margin, ">= 0")
    if cfg.landscape.other_checkpoint is not None:
        _existing_file("landscape.other_checkpoint", cfg.landscape.other_checkpoint)
    return items


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's config, with the extensions it names imported (their datasets and models)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the analysis rebuilds the model and data from the config that "
            "train.py writes there, so the checkpoint must stay in its run directory"
        )
    run_config = OmegaConf.load(path)
    load_extensions(run_config.get("extensions", []))  # absent from runs recorded before extensions
    return run_config


def load_model(run_config: DictConfig, state: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    model = model_from_config(run_config).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"the checkpoint's weights do not fit the model its run directory's config describes "
            f"({run_config.model.name}): {error}"
        ) from error
    return model


def analysis_batches(run_config: DictConfig, *, split: str, batches: int, batch_size: int) -> Batches:
    name = run_config.dataset.name
    if split == "train" and dataset_named(name).always_augmented:
        raise ConfigError(
            f"data.split=train needs the training images without augmentation, which {name}'s "
            "training transform (a random resized crop, say) cannot give; use data.split=test"
        )
    train_set, test_set, _ = datasets_from_config(run_config, augment=False)
    dataset = train_set if split == "train" else test_set
    examples = batches * batch_size
    if examples > len(dataset):
        raise ConfigError(
            f"data.batches × data.batch_size = {examples} examples, but the run's {split} set has "
            f"{len(dataset)}"
        )
    return fixed_batches(dataset, examples=examples, batch_size=batch_size)


def hessian_report(model: nn.Module, batches: Batches, settings: DictConfig, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    spectrum = top_eigenvalues(
        model, LOSS, batches, k=settings.top_k, steps=settings.lanczos_steps, seed=seed
    )
    trace = hutchinson_trace(model, LOSS, batches, probes=settings.trace_probes, seed=seed)
    eigenvalues = spectrum.eigenvalues
    return {
        "top_eigenvalues": eigenvalues,
        "ritz_residuals": spectrum.residuals,
        "lanczos_steps": spectrum.steps,
        "lambda_max": eigenvalues[0],
        # The paper's measure of how far the top direction stands out; meaningless (None) unless
        # λ_5 > 0, as at a well-trained minimum.
        "lambda_max_over_lambda_5": (
            eigenvalues[0] / eigenvalues[4] if len(eigenvalues) >= 5 and eigenvalues[4] > 0 else None
        ),
        "trace": trace.trace,
        "trace_std_error": trace.std_error,
        "trace_probes": trace.probes,
        "time_s": time.perf_counter() - started,
    }


def sharpness_report(model: nn.Module, batches: Batches, settings: DictConfig, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    ascent = ascent_sharpness(model, LOSS, batches, rho=settings.rho)
    random = random_sharpness(
        model, LOSS, batches, rho=settings.rho, samples=settings.random_samples, seed=seed
    )
    return {
        "rho": settings.rho,
        "m": len(batches[0][1]),
        "m_sharpness": ascent.mean,
        "m_sharpness_per_batch": ascent.values,
        "random_sharpness": random.mean,
        "random_sharpness_std": random.std,
        "random_samples": settings.random_samples,
        "time_s": time.perf_counter() - started,
    }


def landscape_report(
    model: nn.Module,
    batches: Batches,
    settings: DictConfig,
    seed: int,
    out_dir: Path,
    labels: tuple[str, str],
) -> dict[str, Any]:
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    directions = (
        filter_normalized_direction(model, generator=generator),
        filter_normalized_direction(model, generator=generator),
    )
    steps = settings.steps
    coordinates = [-settings.span + 2 * settings.span * i / (steps - 1) for i in range(steps)]
    losses = surface_losses(model, LOSS, batches, directions, coordinates)
    figures.plot_surface(
        coordinates,
        losses,
        contour_path=out_dir / "analysis_landscape_contour.png",
        surface_path=out_dir / "analysis_landscape_surface.png",
    )
    report = {
        "surface": {
            "directions": "two Gaussian directions, filter-normalised (Li et al., 2018); biases and "
            "BatchNorm parameters not moved",
            "coordinates": coordinates,
            "losses": losses,
        },
        "interpolation": None,
    }
    if settings.other_checkpoint is not None:
        end = load_checkpoint(settings.other_checkpoint)["model"]
        extra = round(settings.line_margin * settings.line_points)
        alphas = [i / settings.line_points for i in range(-extra, settings.line_points + extra + 1)]
        try:
            line = interpolation_losses(model, LOSS, batches, model.state_dict(), end, alphas)
        except (ValueError, RuntimeError) as error:
            raise ConfigError(f"landscape.other_checkpoint={settings.other_checkpoint}: {error}") from error
        figures.plot_interpolation(alphas, line, labels, out_dir / "analysis_interpolation.png")
        report["interpolation"] = {
            "other_checkpoint": settings.other_checkpoint,
            "alphas": alphas,
            "losses": line,
        }
    report["time_s"] = time.perf_counter() - started
    return report


def masks_report(run_dir: Path) -> dict[str, Any] | None:
    """The mask history of a Sparse SAM run, None for a run without masks."""
    path = run_dir / "masks.jsonl"
    if not path.is_file() or not path.read_text().strip():
        return None
    try:
        history = read_mask_history(path)
    except (ValueError, KeyError) as error:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{path} cannot be read as a mask history: {error!r}") from error
    figures.plot_mask_history(history, run_dir / "analysis_masks.png")
    report = history.to_json()
    if history.overlap_with_previous is None:
        report["overlap_note"] = "unavailable: this run's masks.jsonl was written before overlaps were logged"
    return report


def analyze(cfg: DictConfig) -> None:
    analyses = requested_analyses(cfg)
    checkpoint_path = Path(cfg.checkpoint)
    run_dir = checkpoint_path.parent
    provenance = {"checkpoint": str(checkpoint_path), "seed": cfg.seed, "torch_version": torch.__version__}

    def write(name: str, report: dict[str, Any]) -> None:
        path = run_dir / f"analysis_{name}.json"
        write_json(path, {**provenance, **report})
        print(f"{name}: {path}")

    if "masks" in analyses:
        report = masks_report(run_dir)
        if report is None:
            print(f"masks: skipped, {run_dir} has no masks.jsonl (not a Sparse SAM run)")
        else:
            write("masks", report)
    if not set(analyses) & {"hessian", "sharpness", "landscape"}:
        return
    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    run_config = load_run_config(run_dir)
    model = load_model(run_config, load_checkpoint(checkpoint_path)["model"], device)
    data = cfg.data
    batches = analysis_batches(run_config, split=data.split, batches=data.batches, batch_size=data.batch_size)
    provenance |= {
        "data": {
            "split": data.split,
            "examples": data.batches * data.batch_size,
            "batches": data.batches,
            "batch_size": data.batch_size,
            "selection": "a fixed random subset of the split (ssam.data.fixed_subset), without augmentation",
        },
        "loss_definition": LOSS_DESCRIPTION,
        "loss": mean_loss(model, LOSS, batches),
        "device": device_name(device),
    }
    if "hessian" in analyses:
        write("hessian", hessian_report(model, batches, cfg.hessian, cfg.seed))
    if "sharpness" in analyses:
        write("sharpness", sharpness_report(model, batches, cfg.sharpness, cfg.seed))
    if "landscape" in analyses:
        other = cfg.landscape.other_checkpoint
        labels = (run_dir.name, Path(other).parent.name if other else "")
        write("landscape", landscape_report(model, batches, cfg.landscape, cfg.seed, run_dir, labels))


def quoted_paths(arguments: list[str]) -> list[str]:
    """The command line with path settings quoted for Hydra, so that a sweep's run directory
    (``optimizer=sam,seed=0``) is taken as written instead of parsed as overrides and lists."""
    quoted = []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if key in PATH_SETTINGS and equals and value not in ("", "null") and value[0] not in "'\"":
            escaped = value.replace("'", r"\'")
            argument = f"{key}='{escaped}'"
        quoted.append(argument)
    return quoted


@hydra.main(version_base="1.3", config_path="../configs", config_name="analyze")
def main(cfg: DictConfig) -> None:
    try:
        analyze(cfg)
    except (ConfigError, CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    message = unknown_key_message(sys.argv[1:], CONFIG_DIR, config_name="analyze")
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = quoted_paths(sys.argv[1:])
    main()
