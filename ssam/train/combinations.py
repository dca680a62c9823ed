"""Sparse SAM's mask with the cheap mechanisms of the other SAMs: does the paper's Fisher mask add
anything once SAM's cost is already cut by reusing or skipping its steps?

- ``optimizer=ssam_f_rst``: RST's random schedule (ssam/train/switching.py) chooses which steps
  are sharpness-aware, and those steps climb along SSAM-F's Fisher-masked ε.
- ``optimizer=ssam_f_looksam``: LookSAM's rhythm (ssam/train/looksam.py): an SSAM-F step every
  k-th step, whose gradient's part orthogonal to g is reused in between.

Each is the two methods it combines, by ordinary inheritance: the schedule's class first (its
step and its choice of SAM steps), SSAM-F's second (its optimizer, mask and records), with both
settings and both sets of metrics. The mask is refreshed at the first SAM step of an epoch that is
due one, as SSAM-F's is.

python train.py optimizer=ssam_f_rst sparsity=0.5 optimizer.probability=0.25
python train.py optimizer=ssam_f_looksam sparsity=0.5 optimizer.k=5
"""

from __future__ import annotations

from typing import Any

from ssam.optim.looksam import LookSAM
from ssam.optim.ssam import SSAM, MaskStrategy
from ssam.train.kinds import SettingValues, sparse_sam_options
from ssam.train.looksam import LookSAMMethod
from ssam.train.sparse_sam import SSAMFMethod
from ssam.train.switching import RandomSwitchingMethod


def _both(first: tuple, second: tuple) -> tuple:
    """The declarations of ``first`` then those of ``second`` not already in it."""
    return tuple(dict.fromkeys((*first, *second)))


class FisherMaskedRSTMethod(RandomSwitchingMethod, SSAMFMethod):
    """RST's steps, whose SAM steps are SSAM-F's: passes per step 1 + the share of SAM steps."""

    name = "ssam_f_rst"
    label = "SSAM-F + RST"
    description = "SSAM-F's Fisher-masked steps on RST's random schedule, SGD's otherwise"
    settings = {**SSAMFMethod.settings, **RandomSwitchingMethod.settings}
    totals = _both(RandomSwitchingMethod.totals, SSAMFMethod.totals)
    metrics = _both(RandomSwitchingMethod.metrics, SSAMFMethod.metrics)


class FisherMaskedLookSAM(LookSAM, SSAM):
    """LookSAM whose SAM steps are Sparse SAM's: g_v is taken from the masked ε's gradient g_s."""


class FisherMaskedLookSAMMethod(LookSAMMethod, SSAMFMethod):
    """LookSAM's rhythm with SSAM-F's SAM steps: passes per step 1 + 1/k."""

    name = "ssam_f_looksam"
    label = "SSAM-F + LookSAM"
    description = "SSAM-F every k-th step, its gradient's part orthogonal to g reused in between (LookSAM)"
    settings = {**SSAMFMethod.settings, **LookSAMMethod.settings}
    metrics = _both(LookSAMMethod.metrics, SSAMFMethod.metrics)

    optimizer_class = FisherMaskedLookSAM

    @classmethod
    def perturbation_options(cls, values: SettingValues, mask: MaskStrategy | None) -> dict[str, Any]:
        return sparse_sam_options(cls.name, values, mask)
