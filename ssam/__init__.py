"""ssam: Sharpness-Aware Minimization and Sparse SAM (SSAM-F, SSAM-D), with a Hydra trainer.

The optimizers import on their own, without Hydra, wandb or any data code:

    from ssam import SAM, SSAM, FisherMask, DynamicMask
    from ssam import LookSAM, MomentumSAM     # SAM's gradient reused; SAM along the momentum
    from ssam import TensorSelection, estimate_backward_cost   # whole-tensor masks, cost-aware
"""

from ssam.optim import (
    SAM,
    SSAM,
    DynamicMask,
    FisherMask,
    LookSAM,
    MomentumSAM,
    TensorSelection,
    estimate_backward_cost,
)

__all__ = [
    "SAM",
    "SSAM",
    "DynamicMask",
    "FisherMask",
    "LookSAM",
    "MomentumSAM",
    "TensorSelection",
    "estimate_backward_cost",
]
__version__ = "0.1.0"
