"""Datasets by name, as tensors in [0, 1], and a seeded batch loader with batched augmentation.

``digits`` (scikit-learn's 1,797 real 8x8 handwritten digits) is bundled and needs no download: it is the
offline default. ``mnist``, ``fashion-mnist`` and ``cifar10`` are read from a data root in their official
on-disk formats (the layout ``torchvision.datasets`` downloads to). Nothing is ever downloaded unless you
pass ``download=True``; a missing dataset raises one line saying where it was looked for and how to get it,
and :func:`check_files` raises that line before a run starts. CIFAR-10's pickled batches are read with an
unpickler that admits only what a batch holds (a uint8 array), so a hostile file cannot run code.

Images are float tensors in [0, 1]; normalisation lives inside the model (:mod:`robustlib.models`), so
every epsilon in this project is in [0, 1] pixel units.
"""
from __future__ import annotations

import codecs
import gzip
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .io import RobustlibError
from .profiles import REGISTRIES

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a dataset."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    crop_padding: int          # Section V.A "random cropping": pixels of zero padding before the crop
    flip: bool                 # Section V.A "random flipping": only where a mirror image keeps the label
    # load(root, split, download) -> ImageData of this dataset, split "train" or "test"
    load: Callable[[Path, str, bool], "ImageData"] | None = None
    # files(root, split) -> the files that split is read from, looked for but not read; a one-line
    # RobustlibError naming what is missing and where otherwise. None: nothing on disk (bundled)
    files: Callable[[Path, str], list[Path]] | None = None
    # (training images, test images) of the official splits: what a cost estimate counts without the files
    sizes: tuple[int, int] | None = None


@dataclass
class ImageData:
    """One split of a dataset: ``x`` is (N, C, H, W) uint8 or float in [0, 1], ``y`` is (N,) int64."""

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.name]

    def __len__(self) -> int:
        return len(self.y)

    def float_x(self) -> torch.Tensor:
        return to_float(self.x)

    def subset(self, n: int | None, seed: int = 0) -> "ImageData":
        """A seeded random subset of ``n`` images (all of them if ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return ImageData(self.name, self.split, self.x[idx], self.y[idx])


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise RobustlibError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# --- readers for the official on-disk formats -----------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise RobustlibError(f"{path} is not an unsigned-byte idx file; replace it with the official file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise RobustlibError(f"{path} is truncated ({data.size} of {int(np.prod(dims))} values); download it again")
    return data.reshape(tuple(int(d) for d in dims))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


_DATA_ROOT_FIX = "or point --data-root (data_root=) at the folder that holds"


def _idx_files(name: str, root: Path, split: str) -> list[Path]:
    """The images and labels files of one split of MNIST or Fashion-MNIST: the first folder holding both."""
    tv_name = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    folders = [root / tv_name / "raw"] + ([DEBIAN_FASHION] if name == "fashion-mnist" else [])
    found = [[_find(folder, stem) for stem in stems] for folder in folders]
    for files in found:
        if all(files):
            return files
    best = max(found, key=lambda files: sum(f is not None for f in files))   # the first, unless another has more
    missing = [stem + "[.gz]" for stem, f in zip(stems, best) if f is None]
    hint = " or install Debian's package (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
    raise RobustlibError(
        f"{name} not found: expected {' and '.join(missing)} in {' or '.join(map(str, folders))}; copy the "
        f"official files there{hint}, {_DATA_ROOT_FIX} {tv_name}/raw "
        f"(or call load_dataset(..., download=True) with internet access)"
    )


def _cifar10_files(root: Path, split: str) -> list[Path]:
    """The pickled batches of one split of CIFAR-10 (python version)."""
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise RobustlibError(
            f"cifar10 not found: expected {', '.join(missing)} in {folder}; extract the official "
            f"cifar-10-python.tar.gz into {root}, {_DATA_ROOT_FIX} cifar-10-batches-py "
            f"(or call load_dataset(..., download=True) with internet access)"
        )
    return [folder / n for n in names]


def _present(files: Callable[[Path, str], list[Path]], root: Path, split: str) -> bool:
    try:
        files(root, split)
        return True
    except RobustlibError:
        return False


def _load_idx_dataset(name: str, root: Path, split: str, download: bool) -> ImageData:
    if download and not _present(partial(_idx_files, name), root, split):
        import torchvision

        tv_name = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
        getattr(torchvision.datasets, tv_name)(str(root), train=split == "train", download=True)
    images, labels = _idx_files(name, root, split)
    x = torch.from_numpy(_read_idx(images).copy()).unsqueeze(1)
    y = torch.from_numpy(_read_idx(labels).astype(np.int64))
    if len(x) != len(y):
        raise RobustlibError(f"{images} and {labels} hold different numbers of items; download them again")
    return ImageData(name, split, x, y)


# everything a pickled CIFAR-10 batch may name: numpy's array reconstruction (under the module name
# numpy 1 and 2 each write), and _codecs.encode, by which Python 3's protocol 2 writes bytes. No other
# function can be called while a batch is read, so a hostile file cannot run code (``os.system``, ...)
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_BATCH_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _Refused(pickle.UnpicklingError):
    """A pickle that names something outside ``_BATCH_NAMES``."""


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names of ``_BATCH_NAMES`` (lists, dicts, strings need none)."""

    def find_class(self, module: str, name: str):
        try:
            return _BATCH_NAMES[(module, name)]
        except KeyError:
            raise _Refused(f"it asks to call {module}.{name}, which no CIFAR-10 batch does") from None


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the official python version: a dict with ``data`` (N x 3072 uint8, channel-major rows)
    and ``labels`` (N ints in 0..9), keys as bytes (Python 2's pickles) or str."""
    fix = "replace it with the official file (cifar-10-python.tar.gz)"
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise RobustlibError(f"refusing {path}: {e}; {fix}") from None
    except Exception as e:
        raise RobustlibError(f"cannot read {path} ({type(e).__name__}); {fix}") from None
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data, labels = batch.get("data"), np.asarray(batch.get("labels", []))
        if (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
                and labels.shape == (len(data),) and np.issubdtype(labels.dtype, np.integer)
                and ((labels >= 0) & (labels < 10)).all()):
            return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
    raise RobustlibError(f"{path} is not a CIFAR-10 batch (a dict of 'data', N x 3072 uint8, and 'labels', "
                         f"N ints in 0..9); {fix}")


def _load_cifar10(root: Path, split: str, download: bool) -> ImageData:
    if download and not _present(_cifar10_files, root, split):
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
    xs, ys = zip(*(_read_cifar10_batch(path) for path in _cifar10_files(root, split)))
    return ImageData("cifar10", split, torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def _load_digits(split: str) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0     # 17 grey levels, 0..16
    idx_train, idx_test = train_test_split(
        np.arange(len(x)), test_size=360, stratify=digits.target, random_state=0
    )
    idx = np.sort(idx_train if split == "train" else idx_test)
    return ImageData(
        "digits", split, torch.from_numpy(x[idx]).unsqueeze(1), torch.from_numpy(digits.target[idx].astype(np.int64))
    )


def load_dataset(name: str, split: str = "train", root: str | Path = "data", download: bool = False) -> ImageData:
    """Load one split of a dataset by name.

    Parameters
    ----------
    name : a key of ``DATASETS``: ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    split : ``"train"`` or ``"test"``. ``digits`` has a fixed stratified split (1,437 / 360 images).
    root : data root holding ``MNIST/raw``, ``FashionMNIST/raw`` or ``cifar-10-batches-py`` (Fashion-MNIST
        is also found in ``/usr/share/datasets/fashion-mnist``, where Debian's package puts it).
    download : fetch missing files with torchvision (needs internet). Never done implicitly.

    Returns
    -------
    ImageData with ``x`` of shape (N, C, H, W) in [0, 1] (uint8 or float) and ``y`` of shape (N,).

    Example
    -------
    >>> d = load_dataset("digits", "test")
    >>> tuple(d.x.shape), d.x.max().item() <= 1.0
    ((360, 1, 8, 8), True)
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise RobustlibError(f"unknown split {split!r}; use 'train' or 'test'")
    return info.load(Path(root), split, download)


def check_files(name: str, root: str | Path) -> None:
    """Check, before a run starts, that the files of both splits of dataset ``name`` are under ``root``.

    The files are looked for, not read (a few ``stat`` calls, whatever the dataset's size), exactly where
    :func:`load_dataset` looks: a missing one raises the same one-line :class:`RobustlibError`, naming it,
    where it was looked for, and the fix. A bundled dataset (``digits``) needs no files.

    Example
    -------
    >>> check_files("digits", "data")          # bundled: nothing to look for
    """
    info = dataset_info(name)
    if info.files is not None:
        for split in ("train", "test"):
            info.files(Path(root), split)


# name -> what a model and a loader need, the loader and its files; adding a dataset is one entry here
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 1, 8, (0.306,), (0.378,), tuple("0123456789"), 1, False,
                          lambda root, split, download: _load_digits(split), sizes=(1437, 360)),
    "mnist": DatasetInfo(10, 1, 28, (0.1307,), (0.3081,), tuple("0123456789"), 2, False,
                         partial(_load_idx_dataset, "mnist"), partial(_idx_files, "mnist"), sizes=(60_000, 10_000)),
    "fashion-mnist": DatasetInfo(
        10, 1, 28, (0.2860,), (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        2, True, partial(_load_idx_dataset, "fashion-mnist"), partial(_idx_files, "fashion-mnist"), sizes=(60_000, 10_000),
    ),
    "cifar10": DatasetInfo(
        10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        4, True, _load_cifar10, _cifar10_files, sizes=(50_000, 10_000),
    ),
}
REGISTRIES["datasets"] = DATASETS     # profiles check their dataset name against it


# --- batches ----------------------------------------------------------------------------------------

def augment_batch(x: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a whole batch at once.

    The random numbers come from ``generator`` (on the CPU), so a seeded run is repeatable on any device.
    """
    b, c, h, w = x.shape
    if crop_padding > 0:
        p = crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]      # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]      # (B, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class TensorLoader:
    """Seeded mini-batches from in-memory tensors, with batched augmentation.

    Far faster than a ``DataLoader`` over single images for the small datasets used here. With
    ``device`` set the whole dataset is moved there once (``in_memory``); otherwise batches are moved one
    at a time. Epoch ``e`` of a loader seeded with ``s`` always yields the same batches, so a resumed run
    sees the data it would have seen (call :meth:`set_epoch`). A ``sampler`` (e.g. a
    ``DistributedSampler``) may supply the index order instead of the built-in shuffle.
    """

    def __init__(self, data: ImageData, *, batch_size: int, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu", in_memory: bool = True, drop_last: bool = False,
                 sampler=None):
        self.device = torch.device(device)
        self.x = data.float_x().to(self.device) if in_memory else data.float_x()
        self.y = data.y.to(self.device) if in_memory else data.y
        self.info = data.info
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.sampler, self.epoch = seed, drop_last, sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.sampler is not None:
            order = torch.as_tensor(list(iter(self.sampler)))
        elif self.shuffle:
            order = torch.randperm(len(self.y), generator=g)
        else:
            order = torch.arange(len(self.y))
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.x.device)
            x, y = self.x[idx], self.y[idx]
            if x.device != self.device:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.augment:
                x = augment_batch(x, self.info.crop_padding, self.info.flip, g)
            yield x, y


def load_splits(profile, data_root: str | Path, download: bool = False) -> tuple[ImageData, ImageData]:
    """The train and test splits a profile uses (after its ``train_limit`` / ``test_limit``)."""
    train = load_dataset(profile.dataset, "train", data_root, download).subset(profile.train_limit, profile.seed)
    test = load_dataset(profile.dataset, "test", data_root, download).subset(profile.test_limit, profile.seed)
    return train, test


def split_validation(train: ImageData, n: int, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Hold ``n`` seeded random images out of ``train``: (the rest, the held-out split).

    The held-out split picks the best checkpoint; the test split is never used to choose anything.
    """
    if n <= 0:
        return train, ImageData(train.name, "val", train.x[:0], train.y[:0])
    if n >= len(train):
        raise RobustlibError(f"val_size={n} leaves no training images (the split has {len(train)}); lower it")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(10_000 + seed))
    keep, held = perm[n:].sort().values, perm[:n].sort().values
    return (ImageData(train.name, "train", train.x[keep], train.y[keep]),
            ImageData(train.name, "val", train.x[held], train.y[held]))
