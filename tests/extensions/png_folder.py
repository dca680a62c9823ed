"""A dataset of PNG images in class folders, ROOT/train/<class>/*.png and ROOT/test/<class>/*.png
(torchvision's ImageFolder layout): 3 classes of 8×8 colour images.

    python train.py extensions=[tests/extensions/png_folder.py] dataset=pngs dataset.root=/data/pngs
"""

from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ssam.data.catalog import DatasetSpec
from ssam.data.transforms import small_image_transform
from ssam.registry import register


def missing(root: str | None) -> str | None:
    if root is not None and all((Path(root) / split).is_dir() for split in ("train", "test")):
        return None
    return f"no folders train/ and test/ under dataset.root={root}: set dataset.root to the PNG folder"


register(
    DatasetSpec(
        "pngs",
        "PNG images in class folders (ROOT/train/<class>/*.png, ROOT/test/<class>/*.png)",
        defaults=dict(num_classes=3, in_channels=3, image_size=8, mean=[0.5] * 3, std=[0.25] * 3, hflip=True),
        load=lambda root, train, transform: ImageFolder(
            Path(root) / ("train" if train else "test"), transform
        ),
        missing=missing,
        # ImageFolder gives PIL images; the usual augmentation takes uint8 tensors.
        transform=lambda **settings: v2.Compose([v2.PILToTensor(), small_image_transform(**settings)]),
    )
)
