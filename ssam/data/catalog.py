"""The datasets of ``dataset=<name>``, each declared once as a ``DatasetSpec``.

Every dataset has the same settings (``DATASET_SETTINGS``: where it is, subsets, the validation
split, label noise, its shape and normalisation, augmentation); a declaration gives its own values
for them, how to read a split, and how to tell (and say) that it is missing. Subsets, the
validation split and label noise work alike for all (ssam.data.build_datasets). Adding a
dataset: docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ssam.data import cifar, fashion_mnist, imagenet
from ssam.data.errors import DataError
from ssam.data.tensor_dataset import ImageTensorDataset
from ssam.data.transforms import imagenet_transform, small_image_transform
from ssam.errors import ConfigError
from ssam.settings import (
    BOOLEAN,
    FRACTION,
    INTEGER,
    NON_NEGATIVE_INT,
    NUMBERS,
    POSITIVE_INT,
    REQUIRED,
    Check,
    Setting,
    named,
    optional,
    refuse_taken_names,
    with_defaults,
)

Transform = Callable[[Any], Any]
# (root, train, transform, **own settings) -> the split, each example an (image, label) pair
SplitLoader = Callable[..., Dataset]
# (train=, image_size=, mean=, std=, crop_padding=, hflip=, cutout=) -> the transform
TransformBuilder = Callable[..., Transform]

FOLDER = Check(lambda value: value is None or isinstance(value, str), "a folder or null", "a folder, or null")

# A dataset's own settings cannot take these names: the config's, and the loader's arguments.
RESERVED_NAMES = ("name", "train", "transform")

DATASET_SETTINGS = {
    "root": Setting(None, FOLDER, "folder that holds the data"),
    "download": Setting(
        False, BOOLEAN, "true: fetch it into root if missing (needs the network)", changes_results=False
    ),
    "train_size": Setting(
        None, optional(POSITIVE_INT), "null = all; an int takes a fixed, seed-independent subset"
    ),
    "test_size": Setting(None, optional(POSITIVE_INT), "likewise for the test set"),
    "val_size": Setting(
        None,
        optional(POSITIVE_INT),
        "null = none; an int holds out that many training examples (the same for every seed; "
        "train_size is drawn from the rest), evaluated each epoch",
    ),
    "label_noise": Setting(
        0.0, FRACTION, "fraction of training (and validation) labels replaced by another class"
    ),
    "label_noise_seed": Setting(
        0, INTEGER, "seeds which labels change and to what; independent of the run's seed"
    ),
    "num_classes": Setting(REQUIRED, POSITIVE_INT, "number of classes"),
    "in_channels": Setting(REQUIRED, POSITIVE_INT, "channels of an image"),
    "image_size": Setting(REQUIRED, POSITIVE_INT, "side of the (square) images the model sees"),
    "mean": Setting(REQUIRED, NUMBERS, "per-channel mean, subtracted in normalisation"),
    "std": Setting(REQUIRED, NUMBERS, "per-channel standard deviation, divided by in normalisation"),
    "crop_padding": Setting(0, NON_NEGATIVE_INT, "random crop with this zero padding (0 = none)"),
    "hflip": Setting(False, BOOLEAN, "random horizontal flip"),
    "cutout": Setting(False, BOOLEAN, "Cutout 16×16 with p = 0.5"),
    "on_device": Setting(
        False, BOOLEAN, "true: keep the whole dataset on the training device and augment there (GPUs)"
    ),
}


# (what was being done, what to do) when a declaration's load or missing raises.
READING = ("reading it from", "Check the data files there, or fetch them again")
LOOKING = ("looking for it in", "Check that dataset.root names the data's folder and that it can be read")


class _NamingTheDataset:
    """A declaration's ``load`` or ``missing``, whose errors become DataErrors naming the dataset,
    its root and the original error. A reader can raise anything (np.load a BadZipFile, pickle an
    UnpicklingError, open an OSError), and a damaged file must stop the run with a message saying
    which data to fix (exit 2), not a traceback. A ConfigError already names its setting, and a
    DataError the file to fix: they pass as they are."""

    def __init__(self, dataset: str, function: Callable[..., Any], doing: str, remedy: str) -> None:
        self.dataset = dataset
        self.function = function
        self.doing = doing
        self.remedy = remedy

    def __call__(self, root: str | None, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.function(root, *args, **kwargs)
        except (ConfigError, DataError):
            raise
        except Exception as error:
            where = "null" if root is None else root
            raise DataError(
                f"dataset {self.dataset!r}: {self.doing} dataset.root={where} failed: "
                f"{type(error).__name__}: {error}. {self.remedy}"
            ) from error


@dataclass(frozen=True)
class DatasetSpec:
    """One ``dataset=<name>``. Whatever its ``load`` or ``missing`` raises reaches the caller as a
    DataError naming the dataset (a ConfigError or DataError as it is)."""

    name: str
    description: str  # one line, for the settings reference
    defaults: Mapping[str, Any]  # its values of DATASET_SETTINGS (those REQUIRED, and any other)
    load: SplitLoader
    missing: Callable[[str | None], str | None]  # why root lacks the data, and how to get it; None: present
    download: Callable[[str | None], None] | None = None  # None: it cannot be fetched automatically
    # load returns an ImageTensorDataset (all images in one tensor): it can go on the device whole.
    in_memory: bool = False
    transform: TransformBuilder = small_image_transform
    # Its training transform augments whatever crop_padding, hflip and cutout say (ImageNet's
    # random resized crop), so an analysis cannot read its training images as they are.
    always_augmented: bool = False
    own_settings: Mapping[str, Setting] = field(default_factory=dict)  # passed to load

    def __post_init__(self) -> None:
        unknown = [key for key in self.defaults if key not in DATASET_SETTINGS]
        required = [key for key, s in DATASET_SETTINGS.items() if s.default is REQUIRED and key not in self.defaults]
        if unknown or required:
            raise ValueError(
                f"dataset {self.name!r}: defaults must give {', '.join(required) or 'nothing more'} "
                f"and only settings of DATASET_SETTINGS (declare others in own_settings): {', '.join(unknown)}"
            )
        refuse_taken_names(
            f"dataset {self.name!r}",
            self.own_settings,
            f"every dataset's settings or {', '.join(RESERVED_NAMES)}",
            [*DATASET_SETTINGS, *RESERVED_NAMES],
        )
        # Wrapped here, once, so that every caller (the validation, the builders, ssam.analyze)
        # gets a DataError naming the dataset, whatever a reader raises; frozen, hence __setattr__.
        for attribute, (doing, remedy) in (("load", READING), ("missing", LOOKING)):
            declared = getattr(self, attribute)
            if isinstance(declared, _NamingTheDataset):  # a copy made by dataclasses.replace
                declared = declared.function
            object.__setattr__(self, attribute, _NamingTheDataset(self.name, declared, doing, remedy))

    @property
    def settings(self) -> dict[str, Setting]:
        shared = {
            key: replace(setting, default=self.defaults.get(key, setting.default))
            for key, setting in DATASET_SETTINGS.items()
        }
        return {**shared, **self.own_settings}

    def with_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        return with_defaults(self.settings, given, what=f"dataset {self.name!r}")


# --- Fashion-MNIST --------------------------------------------------------------------------------


def _fashion_mnist_missing(root: str | None) -> str | None:
    if fashion_mnist.find_fashion_mnist(root) is not None:
        return None
    where = ", ".join(str(p) for p in fashion_mnist.candidate_dirs(root))
    return f"Fashion-MNIST not found in {where}: {fashion_mnist.FETCH_HINT}"


FASHION_MNIST = DatasetSpec(
    "fashion_mnist",
    "Fashion-MNIST: 60k/10k 28×28 greyscale images, 10 classes, read in place from the Debian package "
    "dataset-fashion-mnist (root: null) or from a folder with the four gzip IDX files",
    defaults=dict(
        num_classes=10, in_channels=1, image_size=28, mean=[0.2860], std=[0.3530], crop_padding=2, hflip=True
    ),
    load=lambda root, train, transform: ImageTensorDataset(
        *fashion_mnist.load_fashion_mnist(fashion_mnist.find_fashion_mnist(root), train), transform
    ),
    missing=_fashion_mnist_missing,
    download=fashion_mnist.download_fashion_mnist,
    in_memory=True,
)

# --- CIFAR ----------------------------------------------------------------------------------------


def _cifar(name: str, title: str, classes: int, mean: list[float], std: list[float]) -> DatasetSpec:
    """CIFAR-10 or -100 in torchvision's layout with the paper's augmentation: random crop 32
    pad 4, horizontal flip, normalise, Cutout 16×16 (p = 0.5)."""

    def missing(root: str | None) -> str | None:
        folder = cifar.cifar_folder(name, root)
        if folder.is_dir():
            return None
        return (
            f"{name} not found: no folder {folder}. Fetch it with "
            f"`python train.py dataset={name} dataset.root={root} dataset.download=true`"
        )

    return DatasetSpec(
        name,
        f"{title} in torchvision's layout (ROOT/{cifar.LAYOUT[name][0]}) "
        "with the paper's augmentation: random crop 32 pad 4, flip, Cutout 16×16",
        defaults=dict(
            root="data", num_classes=classes, in_channels=3, image_size=32, mean=mean, std=std,
            crop_padding=4, hflip=True, cutout=True,
        ),  # fmt: skip
        load=lambda root, train, transform: ImageTensorDataset(*cifar.load_cifar(name, root, train), transform),
        missing=missing,
        download=lambda root: cifar.download_cifar(name, root),
        in_memory=True,
    )


CIFAR10 = _cifar("cifar10", "CIFAR-10", 10, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
CIFAR100 = _cifar("cifar100", "CIFAR-100", 100, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])

# --- ImageNet -------------------------------------------------------------------------------------


def _imagenet_missing(root: str | None) -> str | None:
    missing = [str(imagenet.imagenet_split_dir(root, t)) for t in (True, False)]
    missing = [m for m in missing if not Path(m).is_dir()]
    return None if not missing else f"no folder {', '.join(missing)}. {imagenet.FETCH_HINT}"


def _imagenet_transform(*, train: bool, image_size: int, mean: list[float], std: list[float], **_: Any) -> Transform:
    # ImageNet has its own augmentation: crop_padding, hflip and cutout do not apply.
    return imagenet_transform(train=train, image_size=image_size, mean=mean, std=std)


IMAGENET = DatasetSpec(
    "imagenet",
    "ImageNet-1K as an ImageFolder tree (ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG): "
    "RandomResizedCrop 224 + flip for training, resize 256 + centre crop 224 for evaluation",
    defaults=dict(
        root="data/imagenet", num_classes=1000, in_channels=3, image_size=224,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], hflip=True,
    ),  # fmt: skip
    load=imagenet.load_imagenet,
    missing=_imagenet_missing,
    transform=_imagenet_transform,
    always_augmented=True,
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (FASHION_MNIST, CIFAR10, CIFAR100, IMAGENET)}


def dataset_named(name: str) -> DatasetSpec:
    return named(DATASETS, name, group="dataset")
