"""Common corruptions computed on the fly: the CIFAR-10-C recipe, batched, for any small image size.

Hendrycks & Dietterich (2019), *Benchmarking neural network robustness to common corruptions and
perturbations*, published CIFAR-10-C and ImageNet-C but no corrupted 8x8 digits or Fashion-MNIST. This
module recomputes eleven of their corruptions at five severities for a batch (N, C, H, W) in [0, 1], grey
(C=1) or colour (C=3), on any device: ``corrupt(x, "motion_blur", 3, seed=0)``.

Constants. Every severity table is the **CIFAR-10-C** one, from ``make_cifar_c.py`` in
github.com/hendrycks/robustness (``ImageNet-C/create_c/make_cifar_c.py``, read at commit ca36008), not the
ImageNet-C one, which is for 224 px images and much stronger.

Image size. The recipe's spatial constants are pixels of a 32x32 image. For a side of n pixels we scale them
by s = n / 32, so that a severity means the same strength relative to the image:

- defocus and motion blur: every tap of the recipe's 32-px kernel is moved to its offset times s and split
  bilinearly between the nearest pixels (a tent splat). At s = 1 this is the recipe's kernel exactly; at
  8 px it is exactly the recipe's blur of the image enlarged to 4x4 blocks and averaged back (away from a
  reflected border), so a sub-pixel blur still blurs a little instead of rounding to nothing. s is capped
  at 1: images larger than 32 px keep the 32-px kernels (spreading taps apart would leave holes).
- elastic transform: the recipe already writes its constants as fractions of the side (``IMSIZE * c``);
  we use the real side.
- pixelate (a resize factor) and zoom blur (zoom factors) are relative already; noise, contrast,
  brightness and JPEG act per pixel or per 8x8 JPEG block and are left as they are.

Where the recipe's code is per image we do the same maths batched: motion and defocus blur are grouped
convolutions (per-image kernels), pixelate is PIL's box resize as matrix products, zoom blur averages
bilinear zooms (``grid_sample``) instead of scipy's crop and resize, and elastic composes its affine and
elastic warps into one bilinear resampling instead of two. JPEG loops over images through PIL, as the
recipe does. Results stay floats (the recipe saved 8-bit images; here only JPEG rounds to 8 bits). At 32 px,
motion blur agrees with a numpy port of ImageMagick's kernel to 1e-15, pixelate with PIL to 1e-7, and
elastic with the recipe's two resamplings to about 0.003 mean absolute difference on interior pixels.

One quirk is the recipe's own: motion blur severities 3 and 4, (radius 6, sigma 2) and (8, 2), differ only
in taps beyond 6 sigma, so their outputs agree to float precision (1e-7).

The official files. For CIFAR-10 itself, :func:`load_cifar10c` reads the released CIFAR-10-C arrays (all 19
corruptions, memory-mapped). :func:`corruption_table` (on the fly) and :func:`cifar10c_table` (official files)
give the accuracy of several models in one long DataFrame; :func:`summarise_corruptions` makes it wide.
"""
from __future__ import annotations

import io
import math
from numbers import Integral
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from .data import ImageData, to_float
from .evaluate import accuracy
from .io import RobustlibError

RECIPE_SIZE = 32   # make_cifar_c.py's constants are for 32x32 images


# --- helpers --------------------------------------------------------------------------------------------

def _uniform(g: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low


def _scale(x: torch.Tensor) -> torch.Tensor:
    """(rows, cols) factors that take the recipe's 32-px offsets to this image size, capped at 1."""
    h, w = x.shape[-2:]
    return torch.tensor([min(h, RECIPE_SIZE), min(w, RECIPE_SIZE)], dtype=torch.float64) / RECIPE_SIZE


def _splat(offsets: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Kernels (..., K, K) with taps ``weights`` (..., T) at ``offsets * scale`` (..., T, 2; rows, cols in
    pixels), each tap split bilinearly between its nearest pixels, so the weights still sum to one."""
    pos = offsets * scale
    r = int(math.ceil(pos.abs().max().item() - 1e-9))
    grid = torch.arange(-r, r + 1, dtype=pos.dtype)
    wy = (1 - (grid - pos[..., 0, None]).abs()).clamp(min=0)      # (..., T, K)
    wx = (1 - (grid - pos[..., 1, None]).abs()).clamp(min=0)
    return torch.einsum("...t,...ti,...tj->...ij", weights, wy, wx)


def _filter(x: torch.Tensor, kernels: torch.Tensor, border: str) -> torch.Tensor:
    """Correlate every image with a kernel, (K, K) shared or (N, K, K) per image, as one grouped conv."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    weight = kernels.to(x.device, x.dtype).expand(n, k, k).repeat_interleave(c, 0)[:, None]  # (N*C, 1, K, K)
    padded = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode=border)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


# --- noise: per pixel, no spatial constant ----------------------------------------------------------------

def gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise."""
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]         # make_cifar_c.py gaussian_noise: std, [0, 1] units
    return (x + c * torch.randn(x.shape, generator=g).to(x.device, x.dtype)).clamp(0, 1)


def shot_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Poisson (photon) noise: fewer photons per unit of intensity, more noise."""
    c = [500, 250, 100, 75, 50][severity - 1]                 # make_cifar_c.py shot_noise: photons at intensity 1
    counts = torch.poisson(x.detach().cpu().double() * c, generator=g)   # the seeded generator lives on the CPU
    return (counts / c).to(x.device, x.dtype).clamp(0, 1)


def impulse_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise: each value (each channel apart, as skimage's ``random_noise`` does) is
    replaced with probability c by 0 or 1, half and half."""
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]         # make_cifar_c.py impulse_noise: fraction replaced
    flipped = (torch.rand(x.shape, generator=g) < c).to(x.device)
    salt = (torch.rand(x.shape, generator=g) < 0.5).to(x.device, x.dtype)
    return torch.where(flipped, salt, x)


# --- blur ---------------------------------------------------------------------------------------------

def _defocus_taps(radius: float, alias_blur: float) -> tuple[torch.Tensor, torch.Tensor]:
    """make_cifar_c.py's ``disk``: the lattice points within ``radius`` (weights equal, summing to one),
    smoothed by cv2's 3x3 Gaussian of std ``alias_blur``; returned as (offsets (T, 2), weights (T,))."""
    r = int(math.ceil(radius)) + 1
    axis = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    disk = (yy ** 2 + xx ** 2 <= radius ** 2).double()
    g1 = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias_blur ** 2))
    g1 = g1 / g1.sum()
    kernel = F.conv2d(disk[None, None] / disk.sum(), (g1[:, None] * g1[None, :])[None, None], padding=1)[0, 0]
    idx = torch.nonzero(kernel > 1e-12)
    return (idx - r).double(), kernel[idx[:, 0], idx[:, 1]]


def defocus_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Defocus: a disk of the given radius (32-px pixels), slightly smoothed."""
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]  # make_cifar_c.py
    offsets, weights = _defocus_taps(radius, alias_blur)
    return _filter(x, _splat(offsets, weights, _scale(x)), "reflect")   # cv2.filter2D reflects the border (101)


def motion_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Motion blur in one random direction per image, within 45 degrees of horizontal.

    The recipe calls ImageMagick's ``MotionBlurImage(radius, sigma, angle)``: 2*radius+1 taps on a line from
    the pixel along ``angle``, each rounded to the nearest pixel, weighted by a half-Gaussian of std sigma.
    """
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]   # make_cifar_c.py motion_blur
    n = x.shape[0]
    i = torch.arange(2 * radius + 1, dtype=torch.float64)
    weights = torch.exp(-i ** 2 / (2 * sigma ** 2))
    angle = torch.deg2rad(_uniform(g, (n,), -45, 45))
    direction = torch.stack([angle.sin(), angle.cos()], -1)                       # (N, 2): rows, cols
    offsets = torch.ceil(i[None, :, None] * direction[:, None, :] - 0.5)          # ImageMagick's rounding
    kernels = _splat(offsets, (weights / weights.sum()).expand(n, -1), _scale(x))
    return _filter(x, kernels, "replicate")       # ImageMagick's default virtual pixels repeat the edge


def zoom_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """The mean of the image and of its zooms about the centre by each factor of the severity."""
    # make_cifar_c.py zoom_blur, the same np.arange calls: float round-off makes them 7, 12, 16, 21, 26 long
    zooms = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
             np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]
    out = x.clone()
    for z in zooms:                                   # a loop over zoom factors; each step is batched
        theta = torch.tensor([[1 / z, 0, 0], [0, 1 / z, 0]], dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out += F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out / (len(zooms) + 1)


# --- digital and weather --------------------------------------------------------------------------------

def contrast(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Pull every pixel towards its image's mean, channel by channel."""
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]            # make_cifar_c.py contrast: contrast kept
    means = x.mean(dim=(2, 3), keepdim=True)                 # the recipe's np.mean(x, axis=(0, 1)) of H x W x C
    return (x - means) * c + means


def brightness(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Add c to the HSV value V (clipped at 1), hue and saturation unchanged."""
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]            # make_cifar_c.py brightness: added to V
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1)
    # with H and S fixed, RGB is proportional to V; a black pixel has S = 0, so it turns grey at V'
    return torch.where(v > 0, x * v_new / torch.where(v > 0, v, torch.ones_like(v)), v_new)


def elastic_transform(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """A random affine warp (three points moved) and a smooth random displacement field, sampled bilinearly
    with reflected borders."""
    # make_cifar_c.py elastic_transform, without its IMSIZE factor: (displacement alpha, smoothing sigma,
    # affine jitter), each a fraction of the image side
    alpha, sigma, jitter = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03)][severity - 1]
    n, _, h, w = x.shape
    side = torch.tensor([w, h], dtype=torch.float64)                 # points are (x, y), as in cv2
    centre, sq = torch.tensor([w // 2, h // 2], dtype=torch.float64), min(h, w) // 3
    src = torch.stack([centre + sq, centre + torch.tensor([sq, -sq]), centre - sq])      # (3, 2)
    dst = src + _uniform(g, (n, 3, 2), -1, 1) * jitter * side
    # the warp moves src to dst; sampling needs its inverse, dst -> src: solve [dst, 1] @ A^T = src
    inverse = torch.linalg.solve(torch.cat([dst, torch.ones(n, 3, 1, dtype=torch.float64)], 2), src.expand(n, 3, 2))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    points = torch.stack([xs, ys], -1).expand(n, h, w, 2)
    if alpha > 0:
        noise = _uniform(g, (n, 2, h, w), -1, 1).numpy()
        # skimage.filters.gaussian(mode="reflect", truncate=3) is scipy's gaussian_filter; axis 0, 1 not smoothed
        field = gaussian_filter(noise, sigma=(0, 0, sigma * h, sigma * w), mode="reflect", truncate=3)
        points = points + torch.from_numpy(field).permute(0, 2, 3, 1) * alpha * side
    source = torch.cat([points, torch.ones(n, h, w, 1, dtype=torch.float64)], -1) @ inverse[:, None]  # (N, H, W, 2)
    # align_corners=True puts -1 and 1 on the edge pixels' centres, so "reflection" is cv2's BORDER_REFLECT_101
    grid = source / torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=torch.float64) * 2 - 1
    return F.grid_sample(x, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=True)


def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """PIL's ``Image.BOX`` resize from ``n_in`` to ``n_out`` pixels as an (n_out, n_in) matrix (the
    ``precompute_coeffs`` of PIL's Resample.c): the mean of the input pixels whose centres fall in the
    output pixel's box. torch's ``area`` mode is not the same: for 32 -> 30 it averages overlapping pairs,
    which blurs four times more than the recipe's severity 1."""
    scale = n_in / n_out
    center = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    t = (torch.arange(n_in, dtype=torch.float64)[None, :] + 0.5 - center[:, None]) / max(scale, 1.0)
    inside = ((t > -0.5) & (t <= 0.5)).double()
    return inside / inside.sum(1, keepdim=True)


def pixelate(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Shrink to a fraction c of the side and enlarge back, both with PIL's box filter, as two matrix
    products per axis."""
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]           # make_cifar_c.py pixelate: kept fraction of the side
    h, w = x.shape[-2:]
    rows, cols = (_box_matrix(max(1, int(n * c)), n) @ _box_matrix(n, max(1, int(n * c))) for n in (h, w))
    return rows.to(x.device, x.dtype) @ x @ cols.to(x.device, x.dtype).T


def jpeg_compression(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Save as JPEG at the severity's quality (0-100) with PIL and read back, one image at a time."""
    quality = [80, 65, 58, 50, 40][severity - 1]              # make_cifar_c.py jpeg_compression: PIL quality
    images = (x.detach().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()   # 8-bit, as the recipe
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer)).reshape(image.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    f.__name__: f for f in (gaussian_noise, shot_noise, impulse_noise, defocus_blur, motion_blur, zoom_blur,
                            brightness, contrast, elastic_transform, pixelate, jpeg_compression)
}


def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch with one of :data:`CORRUPTIONS` at a severity from 1 to 5 (CIFAR-10-C constants).

    Parameters
    ----------
    x : float tensor (N, C, H, W) with values in [0, 1], C = 1 (grey) or 3 (RGB), on any device.
    name : a key of :data:`CORRUPTIONS`, e.g. ``"gaussian_noise"``.
    severity : 1 (mildest) to 5.
    seed : seeds a private generator for the random parts (noise, blur direction, warp), so the same call
        gives the same tensor on any device and the global random state is untouched.

    Returns
    -------
    Tensor of the shape, dtype and device of ``x``, with values in [0, 1].

    Example
    -------
    >>> x = torch.rand(4, 1, 28, 28)
    >>> y = corrupt(x, "motion_blur", 3, seed=1)
    >>> y.shape == x.shape and bool(((y >= 0) & (y <= 1)).all()), torch.equal(y, corrupt(x, "motion_blur", 3, seed=1))
    (True, True)
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, Integral) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}; pass one of 1, 2, 3, 4, 5")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 4-D tensor (N, C, H, W), got {shape}; add a batch axis with x[None]")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor in [0, 1], got {x.dtype}; convert it with x.float() / 255")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"x must have 1 (grey) or 3 (RGB) channels, got {x.shape[1]}; corruptions are defined "
                         f"for those only")
    if x.numel() == 0:
        return x.clone()
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))
    if not (0 <= lo and hi <= 1):        # also catches NaN
        raise ValueError(f"x must hold values in [0, 1], got min {lo:.4g} and max {hi:.4g}; clamp it, or undo "
                         f"normalisation (corruptions act on raw pixels)")
    work = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
    with torch.no_grad():
        out = CORRUPTIONS[name](work, int(severity), torch.Generator().manual_seed(seed))
    return out.clamp(0, 1).to(x.dtype)    # the clamp guards float round-off of the blurs (1 + 1e-7)


# --- the official CIFAR-10-C files ------------------------------------------------------------------------

# Hendrycks & Dietterich (2019), Table 1 / Figure 1: the 15 benchmark corruptions (noise, blur, weather,
# digital), in the paper's order; mCE and relative mCE average over these.
CIFAR10C_BENCHMARK: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# Appendix "extra corruptions": released for validation, not part of the benchmark average
CIFAR10C_EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CIFAR10C_CORRUPTIONS: tuple[str, ...] = CIFAR10C_BENCHMARK + CIFAR10C_EXTRA   # the 19 ``<name>.npy`` stems
CIFAR10C_URL = "https://zenodo.org/record/2535967"
_CIFAR10C_FOLDERS = ("CIFAR-10-C", "cifar10-c", ".")     # under the data root, in the order searched
_TABLE_COLUMNS = ["corruption", "severity", "model", "accuracy", "n"]


def find_cifar10c(root: str | Path) -> Path | None:
    """The folder holding the official CIFAR-10-C files under ``root``, or None if there is none.

    Looks for ``labels.npy`` in ``root/CIFAR-10-C``, ``root/cifar10-c`` and ``root`` itself, in that order, so
    a notebook can decide whether to use the official files or fall back to :func:`corrupt`.

    Example
    -------
    >>> find_cifar10c("/nonexistent") is None
    True
    """
    for sub in _CIFAR10C_FOLDERS:
        folder = Path(root) / sub
        if (folder / "labels.npy").is_file():
            return folder if sub != "." else Path(root)
    return None


def _load_npy(path: Path) -> np.ndarray:
    """``np.load`` memory-mapped (nothing is read until sliced), with a one-line error for a bad file."""
    try:
        return np.load(path, mmap_mode="r")
    except Exception as e:   # not .npy, truncated, or pickled objects: all mean "not the official file"
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise RobustlibError(f"cannot read {path} ({first}); replace it with the file from CIFAR-10-C.tar "
                             f"({CIFAR10C_URL})") from None


def _check_cifar10c_args(corruption: str, severity, limit) -> None:
    if corruption not in CIFAR10C_CORRUPTIONS:
        raise RobustlibError(f"unknown CIFAR-10-C corruption {corruption!r}; choose one of "
                             f"{', '.join(CIFAR10C_CORRUPTIONS)}")
    if severity is not None and (isinstance(severity, bool) or not isinstance(severity, Integral)
                                 or not 1 <= severity <= 5):
        raise RobustlibError(f"severity must be an integer from 1 to 5 or None (all five), got {severity!r}; "
                             f"pass one of 1, 2, 3, 4, 5")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, Integral) or limit < 0):
        raise RobustlibError(f"limit must be None or an integer >= 0, got {limit!r}; pass the number of "
                             f"images to keep per severity")


def load_cifar10c(root: str | Path, corruption: str, severity: int | None = None,
                  limit: int | None = None) -> ImageData:
    """One corruption of the official CIFAR-10-C release (Hendrycks & Dietterich, 2019), read lazily.

    The release (``CIFAR-10-C.tar``, zenodo record 2535967) holds ``<corruption>.npy``, a uint8 array
    (50000, 32, 32, 3) in HWC order: the 10,000 CIFAR-10 test images, in test-set order, at severity 1, then
    all of them at severity 2, ... up to 5; and ``labels.npy`` (50000,), the test labels five times over.
    Files are memory-mapped, so one severity reads 30 MB of the 150 MB file.

    Parameters
    ----------
    root : data root; the files may be in ``root/CIFAR-10-C``, ``root/cifar10-c`` or ``root`` itself.
    corruption : one of :data:`CIFAR10C_CORRUPTIONS` (the 15 of :data:`CIFAR10C_BENCHMARK` and 4 extras).
    severity : 1 (mildest) to 5 for that block, or None for all five blocks in order (5 x 10,000 images).
    limit : keep the first ``limit`` images of each severity block (deterministic: the first test images,
        the same ones at every severity); None keeps all. With ``severity=None`` that is ``5 * limit``.

    Returns
    -------
    ImageData named ``"cifar10"`` with split ``"cifar10-c/<corruption>/<severity>"`` (``.../1-5`` for all),
    ``x`` uint8 (N, 3, 32, 32) CHW and ``y`` int64 (N,).

    Example
    -------
    >>> d = load_cifar10c("data", "fog", severity=5, limit=100) if find_cifar10c("data") else None
    """
    _check_cifar10c_args(corruption, severity, limit)
    folder = find_cifar10c(root)
    if folder is None:
        looked = ", ".join(str(Path(root) / sub) if sub != "." else str(Path(root)) for sub in _CIFAR10C_FOLDERS)
        raise RobustlibError(f"CIFAR-10-C not found under {root} (looked in {looked} for labels.npy); download "
                             f"CIFAR-10-C.tar from {CIFAR10C_URL} and extract it there, or pass data_root=...")
    path = folder / f"{corruption}.npy"
    if not path.is_file():
        raise RobustlibError(f"{path} not found (the folder has labels.npy); extract {corruption}.npy from "
                             f"CIFAR-10-C.tar ({CIFAR10C_URL}) into {folder}")
    images, labels = _load_npy(path), _load_npy(folder / "labels.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) % 5:
        raise RobustlibError(f"{path} holds {images.dtype} {tuple(images.shape)}; expected uint8 (5*n, 32, 32, 3) "
                             f"(HWC, severities 1..5 one after another, n = 10000 in the official release); "
                             f"replace it with the file from CIFAR-10-C.tar")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise RobustlibError(f"{folder / 'labels.npy'} holds {labels.dtype} {tuple(labels.shape)} but {path.name} "
                             f"holds {len(images)} images; expected integer labels ({len(images)},): extract both "
                             f"from the same CIFAR-10-C.tar")
    per = len(images) // 5
    keep = per if limit is None else min(limit, per)
    blocks = range(5) if severity is None else [severity - 1]
    # slicing the memory map reads only these rows; the copy leaves no view into the file
    x = np.concatenate([images[b * per:b * per + keep] for b in blocks]).transpose(0, 3, 1, 2)
    y = np.concatenate([labels[b * per:b * per + keep] for b in blocks]).astype(np.int64)
    split = f"cifar10-c/{corruption}/{'1-5' if severity is None else int(severity)}"
    return ImageData("cifar10", split, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))


# --- accuracy tables ----------------------------------------------------------------------------------------

def _clean_rows(models: dict, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[dict]:
    return [{"corruption": "clean", "severity": 0, "model": m, "accuracy": accuracy(model, x, y, batch_size=batch_size),
             "n": len(y)} for m, model in models.items()]


def corruption_table(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     names: list[str] | None = None, severities=(1, 2, 3, 4, 5), seed: int = 0,
                     batch_size: int = 512) -> pd.DataFrame:
    """Accuracy of every model on ``x`` under every corruption of the on-the-fly suite, and clean.

    Each corrupted set is computed once, batch by batch (batch ``k`` with ``corrupt(..., seed=seed + k)``),
    and shared by all models, so models are compared on the very same images; the same call gives the same
    table. Changing ``batch_size`` changes which random draws fall on which image.

    Parameters
    ----------
    models : name -> model taking (N, C, H, W) in [0, 1]; column order of :func:`summarise_corruptions`.
    x : images (N, C, H, W), float in [0, 1] or uint8; C = 1 or 3.
    y : labels (N,).
    names : keys of :data:`CORRUPTIONS`; None for all eleven.
    severities : severities to run, each 1 to 5.
    seed : seed of the random corruptions (noise, blur direction, warp).
    batch_size : images per corruption call and per forward pass.

    Returns
    -------
    Long DataFrame, one row per (corruption, severity, model): corruption, severity, model, accuracy in
    [0, 1], n. The first rows, one per model, are ``("clean", 0)``: accuracy on ``x`` itself.

    Example
    -------
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> t = corruption_table({"m": model}, torch.rand(8, 1, 8, 8), torch.arange(8), names=["contrast"])
    >>> t.shape
    (6, 5)
    """
    names = list(CORRUPTIONS) if names is None else list(names)
    for name in names:                   # fail before any work is done
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, Integral) or not 1 <= s <= 5:
            raise ValueError(f"severities must be integers from 1 to 5, got {s!r}; pass e.g. (1, 2, 3, 4, 5)")
    x, y = to_float(x), y.cpu()
    rows = _clean_rows(models, x, y, batch_size)
    for name in names:
        for s in severities:
            xc = torch.cat([corrupt(x[i:i + batch_size], name, int(s), seed=seed + k)
                            for k, i in enumerate(range(0, len(x), batch_size))]) if len(x) else x
            rows += [{"corruption": name, "severity": int(s), "model": m,
                      "accuracy": accuracy(model, xc, y, batch_size=batch_size), "n": len(y)}
                     for m, model in models.items()]
    return pd.DataFrame(rows, columns=_TABLE_COLUMNS)


def cifar10c_table(models: dict[str, nn.Module], root: str | Path, *, names: list[str] | None = None,
                   severities=(1, 2, 3, 4, 5), limit: int | None = None, batch_size: int = 512,
                   clean: tuple[torch.Tensor, torch.Tensor] | ImageData | None = None) -> pd.DataFrame:
    """Accuracy of every model on the official CIFAR-10-C files, in the long format of :func:`corruption_table`.

    Parameters
    ----------
    models : name -> model taking (N, 3, 32, 32) in [0, 1].
    root : data root for :func:`load_cifar10c`.
    names : stems of :data:`CIFAR10C_CORRUPTIONS`; None for the 15 of :data:`CIFAR10C_BENCHMARK`.
    severities : severities to run, each 1 to 5.
    limit : the first ``limit`` test images of each severity (see :func:`load_cifar10c`); None for all 10,000.
    batch_size : images per forward pass.
    clean : the clean CIFAR-10 test set, ``(x, y)`` or an ImageData, for the ``("clean", 0)`` rows; cut to
        its first ``limit`` images, which are the images CIFAR-10-C corrupts. None: no clean rows.

    Returns
    -------
    Long DataFrame: corruption, severity, model, accuracy in [0, 1], n.

    Example
    -------
    >>> t = cifar10c_table({"m": model}, "data", limit=1000) if find_cifar10c("data") else None
    """
    names = list(CIFAR10C_BENCHMARK) if names is None else list(names)
    rows = []
    if clean is not None:
        cx, cy = (clean.x, clean.y) if isinstance(clean, ImageData) else clean
        rows = _clean_rows(models, to_float(cx[:limit]), cy[:limit].cpu(), batch_size)
    for name in names:
        for s in severities:
            data = load_cifar10c(root, name, s, limit)      # read once, shared by all models
            xc = data.float_x()
            rows += [{"corruption": name, "severity": int(s), "model": m,
                      "accuracy": accuracy(model, xc, data.y, batch_size=batch_size), "n": len(data)}
                     for m, model in models.items()]
    return pd.DataFrame(rows, columns=_TABLE_COLUMNS)


def summarise_corruptions(long_df: pd.DataFrame) -> pd.DataFrame:
    """Wide table from :func:`corruption_table` or :func:`cifar10c_table`: mean accuracy over severities.

    One row per corruption in the order met (``clean`` first if present), one column per model in the order
    met, and a last row ``mean``: the mean over the corruption rows, clean excluded (the paper's average over
    corruptions, of accuracy rather than of corruption error).
    """
    models = list(pd.unique(long_df["model"]))
    names = list(pd.unique(long_df["corruption"]))
    if "clean" in names:
        names.remove("clean")
        names.insert(0, "clean")
    wide = long_df.groupby(["corruption", "model"])["accuracy"].mean().unstack("model")
    wide = wide.reindex(index=names, columns=models)
    wide.loc["mean"] = wide.drop(index="clean", errors="ignore").mean()
    wide.index.name, wide.columns.name = "corruption", "model"
    return wide
