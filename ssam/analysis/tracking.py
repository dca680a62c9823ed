"""λ_max of the training loss during training (``trainer.track_sharpness_every``), measured so
that the run itself does not notice: same weights, BatchNorm statistics and random streams."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ssam.analysis.hessian import top_eigenvalues
from ssam.analysis.loss import fixed_batches

# 256 fixed training examples (fewer if the training set is smaller) and 10 Lanczos steps:
# 10 Hessian-vector products, about the cost of 20 to 30 training steps on those examples;
# enough for the trend, not a converged λ_max.
TRACKING_EXAMPLES = 256
TRACKING_BATCH_SIZE = 128
TRACKING_LANCZOS_STEPS = 10


class SharpnessTracker:
    """Picks its examples once, when made: make it before the first epoch, so that their
    augmentation is epoch 0's whatever epoch a resumed run starts at, and every measurement of
    a run (and of its resumption) sees the same images."""

    def __init__(self, train_set: Dataset) -> None:
        # The dataset draws each augmentation from a seed of its own and gives the global random
        # state back, so reading these examples leaves the training RNG as it was.
        examples = min(TRACKING_EXAMPLES, len(train_set))
        self.batches = fixed_batches(train_set, examples=examples, batch_size=TRACKING_BATCH_SIZE)

    def lambda_max(self, model: nn.Module) -> float:
        """The largest Hessian eigenvalue of the cross-entropy on the tracking examples, in eval mode."""
        spectrum = top_eigenvalues(model, F.cross_entropy, self.batches, k=1, steps=TRACKING_LANCZOS_STEPS)
        return spectrum.eigenvalues[0]
