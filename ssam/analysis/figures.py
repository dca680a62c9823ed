"""PNG figures of the analysis results. Built on matplotlib's Figure directly (not pyplot), so
no display and no global backend setting is needed, and nothing is left open."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ssam.analysis.mask_maps import MaskHistory

DPI = 110
# Loss contours 6 a decade (×1.47 apart), the same in every figure so that two runs' figures
# compare directly: dense near a minimum, where the shape matters, sparse on the high walls.
CONTOUR_LEVELS = np.logspace(-3, 3, 37)


def _save(figure: Figure, path: str | Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)


def plot_interpolation(
    alphas: Sequence[float], losses: Sequence[float], labels: tuple[str, str], path: str | Path
) -> None:
    """The loss along the line from one model (α = 0) to the other (α = 1), both marked."""
    figure = Figure(figsize=(5.5, 3.8))
    axes = figure.add_subplot()
    axes.plot(alphas, losses, marker=".", color="C0")
    for alpha in (0.0, 1.0):
        axes.axvline(alpha, color="0.6", linestyle=":", linewidth=1)
    axes.set_xlabel(f"α\n0: {labels[0]}\n1: {labels[1]}", fontsize=8)
    axes.set_ylabel("loss")
    axes.set_title("loss on the line between two models", fontsize=10)
    _save(figure, path)


def plot_surface(
    coordinates: Sequence[float],
    losses: Sequence[Sequence[float]],
    *,
    contour_path: str | Path,
    surface_path: str | Path,
) -> None:
    """L(w + a d₁ + b d₂) as contour lines around the model (a star at the centre), and in 3-D."""
    contour = Figure(figsize=(4.8, 4.2))
    axes = contour.add_subplot()
    # losses[i][j] is at (a_i, b_j): a runs down the rows, so it is the y axis of the plot.
    lines = axes.contour(
        coordinates, coordinates, losses, levels=CONTOUR_LEVELS, cmap="viridis", norm=LogNorm(0.1, 100)
    )
    axes.clabel(lines, fontsize=6, fmt="%.3g")
    axes.plot([0], [0], marker="*", color="C3", markersize=9)
    axes.set(xlabel="b (direction 2)", ylabel="a (direction 1)", aspect="equal")
    axes.set_title("loss, filter-normalised directions", fontsize=10)
    _save(contour, contour_path)

    surface = Figure(figsize=(5.5, 4.5))
    axes = surface.add_subplot(projection="3d")
    b_grid, a_grid = np.meshgrid(coordinates, coordinates)
    axes.plot_surface(b_grid, a_grid, np.asarray(losses), cmap="viridis", linewidth=0)
    axes.set(xlabel="b (direction 2)", ylabel="a (direction 1)", zlabel="loss")
    _save(surface, surface_path)


def plot_mask_history(history: MaskHistory, path: str | Path) -> None:
    """Heat-map of each layer's mask density at each refresh; above it, when the run logged it,
    the Jaccard overlap of each mask with the one before."""
    refreshes = len(history.updates)
    rows = len(history.layers)
    overlaps = [(i, v) for i, v in enumerate(history.overlap_with_previous or []) if v is not None]
    with_overlap = bool(overlaps)  # not for older runs, nor for a single mask
    figure = Figure(
        figsize=(max(4.5, 2.8 + 0.35 * refreshes), 1.8 + 0.22 * rows + (1.3 if with_overlap else 0))
    )
    if with_overlap:
        overlap_axes, axes = figure.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [1.3, 0.22 * rows + 0.5]}
        )
        overlap_axes.plot(*zip(*overlaps), marker="o", color="C0")
        overlap_axes.set_ylim(0, 1.05)
        overlap_axes.set_ylabel("Jaccard with\nprevious mask", fontsize=8)
    else:
        axes = figure.add_subplot()
    image = axes.imshow(
        history.density, aspect="auto", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    axes.set_yticks(range(rows), history.layers, fontsize=6)
    axes.set_xticks(
        range(refreshes), [f"{u}\n(e{e})" for u, e in zip(history.updates, history.epochs)], fontsize=7
    )
    axes.set_xlabel("mask refresh (epoch)")
    figure.colorbar(image, ax=axes, label="fraction perturbed", fraction=0.04)
    figure.suptitle("Sparse SAM mask density per layer", fontsize=10)
    _save(figure, path)
