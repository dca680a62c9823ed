"""A multilayer perceptron: the image flattened, one hidden layer of ReLUs.

python train.py extensions=[tests/extensions/mlp.py] model=mlp model.hidden=256
"""

from torch import nn

from ssam.models.catalog import ModelSpec
from ssam.registry import register
from ssam.settings import POSITIVE_INT, Setting


def mlp(*, num_classes: int, in_channels: int, image_size: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size**2, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


register(
    ModelSpec(
        "mlp",
        "a multilayer perceptron with one hidden layer",
        build=mlp,
        settings={"hidden": Setting(64, POSITIVE_INT, "width of the hidden layer")},
    )
)
