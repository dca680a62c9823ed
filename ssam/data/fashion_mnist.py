"""Fashion-MNIST (Xiao et al., 2017) from its original gzip IDX files.

The Debian package ``dataset-fashion-mnist`` installs them in /usr/share/datasets/fashion-mnist;
a torchvision download keeps them in ROOT/FashionMNIST/raw. Both are read in place.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ssam.data.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Where a download goes when no root is given (`make data` as a user who cannot use apt).
DEFAULT_DOWNLOAD_ROOT = "data/fashion_mnist"
FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FETCH_HINT = (
    "install the Debian package (as root: apt-get install -y dataset-fashion-mnist), "
    "or download it with dataset.download=true"
)


def candidate_dirs(root: str | None) -> list[Path]:
    if root is None:
        return [DEBIAN_DIR, *candidate_dirs(DEFAULT_DOWNLOAD_ROOT)]
    return [Path(root), Path(root) / "FashionMNIST" / "raw"]


def find_fashion_mnist(root: str | None) -> Path | None:
    """The first folder holding all four IDX files, or None."""
    for folder in candidate_dirs(root):
        if all((folder / name).is_file() for pair in FILES.values() for name in pair):
            return folder
    return None


def download_fashion_mnist(root: str | None) -> None:
    import torchvision

    root = root or DEFAULT_DOWNLOAD_ROOT
    for train in (True, False):
        torchvision.datasets.FashionMNIST(root, train=train, download=True)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): magic (0, 0, type, ndim), big-endian sizes, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {data.size} bytes of data, its header says {shape}")
    return data.reshape(shape)


def load_fashion_mnist(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 N×1×28×28 and labels as int64 N."""
    images_file, labels_file = FILES[train]
    images = torch.from_numpy(read_idx(folder / images_file).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(folder / labels_file).astype(np.int64))
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels
