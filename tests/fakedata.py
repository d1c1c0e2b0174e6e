"""Small data sets written in the official on-disk formats (MNIST's idx, CIFAR-10's python pickles), at full
image size, for running the paper profiles end to end where the real files cannot be downloaded.

Each class is a fixed random pattern plus noise, so a model can learn them in a few epochs: enough for every
code path (pretraining, fine-tunes, attacks, calibration, the report) to see numbers that are not NaN.

    python tests/fakedata.py mnist DIR        # DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    python tests/fakedata.py cifar10 DIR      # DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
"""
from __future__ import annotations

import pickle
import struct
import sys
from pathlib import Path

import numpy as np


def _images(n: int, shape: tuple, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images of ``shape``: class ``c`` is pattern ``c`` (fixed by the shape) plus noise."""
    patterns = np.random.default_rng(12345).uniform(40, 215, size=(classes, *shape))
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    x = patterns[labels] + rng.normal(0, 40, size=(n, *shape))
    return np.clip(x, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, each a big-endian int."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root, n_train: int = 1200, n_test: int = 400, folder: str = "MNIST") -> Path:
    """MNIST's four idx files under ``root/<folder>/raw`` (28x28 grey images); returns ``root``."""
    raw = Path(root) / folder / "raw"
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = _images(n, (28, 28), seed)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return Path(root)


def write_cifar10(root, n_train: int = 1000, n_test: int = 400) -> Path:
    """CIFAR-10's python batches under ``root/cifar-10-batches-py`` (five training batches and the test batch,
    each a protocol-2 pickle of a dict with byte-string keys, ``data`` N x 3072 uint8 in CHW order)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = _images(n_train, (3, 32, 32), 0)
    parts = np.array_split(np.arange(n_train), 5)
    batches = [(f"data_batch_{i + 1}", x[idx], y[idx]) for i, idx in enumerate(parts)]
    xt, yt = _images(n_test, (3, 32, 32), 1)
    for name, xs, ys in batches + [("test_batch", xt, yt)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in ys],
                         b"data": xs.reshape(len(xs), -1), b"filenames": [b"x.png"] * len(xs)}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, f, protocol=2)
    return Path(root)


if __name__ == "__main__":
    kind, where = sys.argv[1], sys.argv[2]
    {"mnist": write_mnist, "cifar10": write_cifar10}[kind](where)
    print(f"wrote a small {kind} in its official format under {where}")
