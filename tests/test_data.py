"""Dataset readers on small files written in the official formats, the digits split, and the loader."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from robustlib import RobustlibError
from robustlib.data import ImageData, TensorLoader, augment_batch, load_dataset


def write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(payload)


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)])
def test_idx_datasets_read_official_layout(tmp_path, name, folder, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    raw = tmp_path / folder / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", images, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels, gz)
    d = load_dataset(name, "test", tmp_path)
    assert d.x.shape == (7, 1, 28, 28) and d.x.dtype == torch.uint8
    assert torch.equal(d.x[:, 0], torch.from_numpy(images))
    assert d.y.tolist() == labels.tolist()
    xf = d.float_x()
    assert xf.min() >= 0 and xf.max() <= 1 and torch.allclose(xf * 255, d.x.float())


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), False)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(3), False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RobustlibError, match="truncated"):
        load_dataset("mnist", "test", tmp_path)


def test_cifar10_reads_the_python_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [3, 1, 4, 1, 5]}, f)
    d = load_dataset("cifar10", "test", tmp_path)
    assert d.x.shape == (5, 3, 32, 32)
    assert torch.equal(d.x[2, 1].flatten(), torch.from_numpy(data[2, 1024:2048]))   # channel-major rows
    assert d.y.tolist() == [3, 1, 4, 1, 5]


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_dataset_names_path_and_fix(tmp_path, name):
    with pytest.raises(RobustlibError) as e:
        load_dataset(name, "train", tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "download=True" in msg and "\n" not in msg


def test_unknown_dataset_and_split():
    with pytest.raises(RobustlibError, match="unknown dataset 'svhn'; choose one of"):
        load_dataset("svhn")
    with pytest.raises(RobustlibError, match="unknown split"):
        load_dataset("digits", "val")


def test_digits_split_is_fixed_stratified_and_in_unit_range():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.x.shape[1:] == (1, 8, 8) and 0 <= train.x.min() and train.x.max() <= 1
    counts = torch.bincount(test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37                   # stratified: ~36 per class
    assert torch.equal(load_dataset("digits", "test").x, test.x)      # the same split every time
    flat = lambda d: {tuple(v.tolist()) for v in d.x.flatten(1)}
    assert len(flat(train) & flat(test)) <= 2                         # disjoint up to exact duplicate images


def _data(n=50):
    return ImageData("digits", "train", torch.rand(n, 1, 8, 8), torch.arange(n) % 10)


def test_loader_is_seeded_per_epoch_and_covers_every_image():
    a = TensorLoader(_data(), batch_size=16, shuffle=True, seed=3)
    b = TensorLoader(_data(), batch_size=16, shuffle=True, seed=3)
    first = [y for _, y in a]
    assert [y.tolist() for y in first] == [y.tolist() for _, y in b]
    assert sorted(torch.cat(first).tolist()) == sorted((torch.arange(50) % 10).tolist())
    assert len(first) == len(a) == 4
    second = [y for _, y in a]
    assert any(not torch.equal(u, v) for u, v in zip(first, second))    # a new order each epoch
    b.set_epoch(1)
    assert [y.tolist() for _, y in b] == [y.tolist() for y in second]    # resume: epoch 1 is epoch 1


def test_augment_crop_is_a_translation_with_zero_fill_and_flip_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1) / 16
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, crop_padding=1, flip=False, generator=g)
    assert out.shape == x.shape
    for img in out:   # every output is the input shifted by at most one pixel, zeros coming in
        assert any(torch.equal(img[0], torch.nn.functional.pad(x[0, 0], (1, 1, 1, 1))[dy:dy + 4, dx:dx + 4])
                   for dy in range(3) for dx in range(3))
    flipped = augment_batch(x, crop_padding=0, flip=True, generator=g)
    is_flip = [torch.equal(f, x[0].flip(2)) for f in flipped]
    is_same = [torch.equal(f, x[0]) for f in flipped]
    assert all(a or b for a, b in zip(is_flip, is_same)) and 10 < sum(is_flip) < 54


def test_the_test_writers_make_official_files_the_loaders_read_at_full_size(tmp_path):
    from tests.fakedata import write_cifar10, write_mnist
    from robustlib.data import check_files

    write_mnist(tmp_path, n_train=50, n_test=20)
    write_cifar10(tmp_path, n_train=50, n_test=20)
    for name, shape in (("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))):
        check_files(name, tmp_path)
        train, test = load_dataset(name, "train", tmp_path), load_dataset(name, "test", tmp_path)
        assert tuple(train.x.shape) == (50, *shape) and tuple(test.x.shape) == (20, *shape)
        assert train.x.dtype == torch.uint8 and set(train.y.tolist()) == set(range(10))
