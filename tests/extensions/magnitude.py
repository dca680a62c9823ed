"""Sparse SAM whose mask perturbs the weights of largest (or smallest) magnitude |w|.

python train.py extensions=[tests/extensions/magnitude.py] optimizer=magnitude sparsity=0.5
"""

from ssam.optim import mask_from_scores
from ssam.registry import register
from ssam.settings import BOOLEAN, Setting
from ssam.train.kinds import KEY_EQUALS_VALUE, SparseSAMMethod


class MagnitudeMask:
    """Keeps the N·(1−s) entries of largest |w| (``largest=False``: smallest), chosen again
    every ``update_freq`` epochs; whole tensors by their summed |w| given a ``selection``."""

    def __init__(self, *, largest: bool, update_freq: int, selection=None) -> None:
        self.sign = 1.0 if largest else -1.0
        self.update_freq = update_freq
        self.selection = selection

    def is_due(self, epoch: int) -> bool:
        return epoch % self.update_freq == 0

    def __call__(self, params, masks, sparsity: float, epoch: int):
        scores = [self.sign * p.detach().abs() for p in params]
        return mask_from_scores(scores, params, sparsity, self.selection)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Magnitude(SparseSAMMethod):
    name = "magnitude"
    label = "Magnitude"
    description = "Sparse SAM perturbing the weights of largest |w|"
    settings = {
        **SparseSAMMethod.settings,
        "largest": Setting(
            True, BOOLEAN, "true: the largest |w|; false: the smallest", variant=KEY_EQUALS_VALUE
        ),
    }

    @classmethod
    def build_mask(cls, context, values):
        return MagnitudeMask(
            largest=values["largest"], update_freq=values["update_freq"], selection=context.selection
        )


register(Magnitude)
