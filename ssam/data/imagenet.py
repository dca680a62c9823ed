"""ImageNet-1K as the standard ImageFolder tree: ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from ssam.data.errors import DataError

FETCH_HINT = (
    "ImageNet cannot be downloaded automatically: get ILSVRC2012 from image-net.org and lay "
    "it out as ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG, then set dataset.root"
)


def imagenet_split_dir(root: str, train: bool) -> Path:
    return Path(root) / ("train" if train else "val")


def _open_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as error:
        raise DataError(f"cannot read image {path}: {error}") from error


class _FolderWithClasses(ImageFolder):
    """An ImageFolder whose class indices are given, so val/ is labelled as train/ is even when
    it lacks some class folders."""

    def __init__(self, root: str, class_to_idx: dict[str, int], **kwargs) -> None:
        self._given_classes = class_to_idx
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        found, _ = super().find_classes(directory)
        unknown = sorted(set(found) - set(self._given_classes))
        if unknown:
            raise DataError(f"{directory} has classes that train/ lacks: {', '.join(unknown[:5])}")
        return sorted(self._given_classes, key=self._given_classes.get), self._given_classes


def load_imagenet(root: str, train: bool, transform) -> ImageFolder:
    """One split; class indices always come from train/'s folders (sorted names)."""
    _, train_classes = find_classes(str(imagenet_split_dir(root, True)))
    return _FolderWithClasses(
        str(imagenet_split_dir(root, train)), train_classes, transform=transform, loader=_open_rgb
    )
