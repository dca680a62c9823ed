"""A Sparse SAM run's masks over training, from its masks.jsonl: the density of every layer at
every mask refresh, and how much each mask kept of the one before (Jaccard overlap)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class MaskHistory:
    layers: list[str]  # parameter names, in the model's order
    epochs: list[int]  # the epoch of each refresh
    updates: list[int]  # the refresh's number (1 for the first mask)
    density: list[list[float]]  # density[layer][refresh]: fraction of the layer's entries perturbed
    mask_density: list[float]  # over all parameters, at each refresh
    # |m_t ∩ m_{t−1}| / |m_t ∪ m_{t−1}| at each refresh, None for the first; None as a whole when
    # the run was recorded before masks.jsonl carried it (it cannot be rebuilt afterwards).
    overlap_with_previous: list[float | None] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_mask_history(path: str | Path) -> MaskHistory:
    """The history in ``path`` (a run's masks.jsonl: one JSON object per mask refresh)."""
    path = Path(path)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no mask refresh")
    layers = list(records[0]["layers"])
    for record in records:
        if list(record["layers"]) != layers:
            raise ValueError(
                f"{path}: refresh {record['update']} lists other layers than the first; "
                "it mixes two runs' masks"
            )
    overlaps = None
    if all("overlap_with_previous" in record for record in records):
        overlaps = [record["overlap_with_previous"] for record in records]
    return MaskHistory(
        layers=layers,
        epochs=[record["epoch"] for record in records],
        updates=[record["update"] for record in records],
        density=[[record["layers"][layer] for record in records] for layer in layers],
        mask_density=[record["mask_density"] for record in records],
        overlap_with_previous=overlaps,
    )
