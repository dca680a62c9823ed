"""SAM and Sparse SAM optimizers, and the mask strategies of SSAM-F and SSAM-D (torch only)."""

from ssam.optim.batchnorm import frozen_batchnorm_stats
from ssam.optim.fisher import fisher_scores
from ssam.optim.masks import DynamicMask, FisherMask, active_count, global_topk_mask
from ssam.optim.sam import SAM
from ssam.optim.ssam import SSAM

__all__ = [
    "SAM",
    "SSAM",
    "DynamicMask",
    "FisherMask",
    "active_count",
    "fisher_scores",
    "frozen_batchnorm_stats",
    "global_topk_mask",
]
