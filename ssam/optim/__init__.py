"""SAM, Sparse SAM, LookSAM and Momentum-SAM optimizers, and the mask strategies of SSAM-F and SSAM-D
(torch only)."""

from ssam.optim.backward_cost import BackwardCost, estimate_backward_cost
from ssam.optim.batchnorm import frozen_batchnorm_stats
from ssam.optim.fisher import fisher_scores
from ssam.optim.looksam import LookSAM
from ssam.optim.masks import DynamicMask, FisherMask, active_count, global_topk_mask, mask_from_scores
from ssam.optim.msam import MomentumSAM
from ssam.optim.sam import SAM
from ssam.optim.ssam import SSAM
from ssam.optim.tensor_selection import TensorSelection

__all__ = [
    "SAM",
    "SSAM",
    "BackwardCost",
    "MomentumSAM",
    "DynamicMask",
    "FisherMask",
    "LookSAM",
    "TensorSelection",
    "active_count",
    "estimate_backward_cost",
    "fisher_scores",
    "frozen_batchnorm_stats",
    "global_topk_mask",
    "mask_from_scores",
]
