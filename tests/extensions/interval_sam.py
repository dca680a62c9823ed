"""SAM every k-th step, plain SGD steps in between (Composer's SAM ``interval``): a method with
a step of its own, declared in one file.

python train.py extensions=[tests/extensions/interval_sam.py] optimizer=interval_sam optimizer.interval=2
"""

from ssam.registry import register
from ssam.settings import POSITIVE_INT, Setting
from ssam.train.kinds import KEY_EQUALS_VALUE, SharpnessAwareMethod


class IntervalSAM(SharpnessAwareMethod):
    name = "interval_sam"
    label = "Interval SAM"
    description = "SAM every k-th step (optimizer.interval), plain SGD steps in between"
    settings = {
        **SharpnessAwareMethod.settings,
        "interval": Setting(2, POSITIVE_INT, "a SAM step every this many steps", variant=KEY_EQUALS_VALUE),
    }

    def is_sharpness_aware(self, index: int) -> bool:
        # Counted from the start of training, so that a resumed run keeps the same rhythm; the
        # late phase (sam_from) still holds back every step before it.
        return super().is_sharpness_aware(index) and index % self.values["interval"] == 0


register(IntervalSAM)
