"""The corruption suite: shape, dtype and range, seeding, the order of severities, the recipe's formulas, and
one-line errors, for every corruption."""
import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from robustlib.corruptions import CORRUPTIONS, corrupt

NAMES = list(CORRUPTIONS)
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "elastic_transform"}
SIZES = [(1, 8), (1, 28), (3, 32)]                         # (channels, side): digits, Fashion-MNIST, CIFAR-10


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    """48 real 8x8 digits, bilinearly enlarged to 28 and 32 px; the colour batch puts three digits in R, G, B."""
    from sklearn.datasets import load_digits

    d = torch.from_numpy(load_digits().images[:48].astype(np.float32) / 16)[:, None]
    up = lambda n: F.interpolate(d, size=n, mode="bilinear", align_corners=False).clamp(0, 1)
    return {(1, 8): d, (1, 28): up(28), (3, 32): torch.cat([up(32).roll(k, 0) for k in range(3)], 1)}


def test_registry_holds_the_eleven_corruptions():
    assert set(NAMES) == {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
                          "zoom_blur", "contrast", "brightness", "pixelate", "jpeg_compression", "elastic_transform"}


@pytest.mark.parametrize("c,n", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range_and_input_untouched(name, c, n):
    x = torch.rand(3, c, n, n, generator=torch.Generator().manual_seed(0))
    x[0, :, :2], x[1, :, :2] = 0.0, 1.0                    # the ends of the range must survive too
    before = x.clone()
    for severity in (1, 5):
        y = corrupt(x, name, severity)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert y.min() >= 0 and y.max() <= 1 and not y.isnan().any()
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_other_float_dtypes_come_back_unchanged(name, dtype):
    y = corrupt(torch.rand(2, 1, 8, 8).to(dtype), name, 3)
    assert y.dtype == dtype and y.shape == (2, 1, 8, 8) and 0 <= y.min() and y.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_seeded_and_leaves_global_random_state_alone(name):
    x = torch.rand(4, 3, 32, 32)
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    a, b, other = corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=8)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], np_state)
    if name in RANDOM:
        assert not torch.equal(a, other)
    else:                                                   # nothing random: the seed must not matter
        assert torch.equal(a, other)


def _mad(name, x, severity):
    return (corrupt(x, name, severity) - x).abs().mean().item()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("elastic_transform", "pixelate")])
def test_higher_severity_moves_images_further(digits, name, size):
    x = digits[size]
    mads = [_mad(name, x, s) for s in range(1, 6)]
    assert mads[0] > 0 and mads[4] > 1.2 * mads[0], mads
    # non-decreasing; the slack is for motion blur's severities 3 and 4, equal to 1e-7 in the recipe itself
    assert all(b >= a - 1e-6 for a, b in zip(mads, mads[1:])), mads


@pytest.mark.parametrize("c,n", SIZES)
def test_elastic_severity_orders_the_non_affine_distortion(c, n):
    # The recipe trades its two parts against each other: the random affine jitter shrinks from 8% to 3% of
    # the side while the elastic field grows, so the distance to the clean image falls from severity 1 to 5
    # at 28 and 32 px. What the severity orders is the local (non-affine) distortion. An affine warp maps a
    # linear ramp to a linear ramp, and bilinear sampling is exact on it, so the residual of a plane fitted
    # to the centre of a warped ramp (away from the reflected border) measures the elastic part alone.
    i = torch.arange(n, dtype=torch.float32)
    ramp = (0.2 + 0.6 * (0.35 * i[:, None] + 0.65 * i[None, :]) / (n - 1)).expand(48, c, n, n)
    m = n // 4
    yy, xx = torch.meshgrid(i[m:n - m], i[m:n - m], indexing="ij")
    plane = torch.stack([yy.flatten(), xx.flatten(), torch.ones(yy.numel())], 1).double()

    def residual(severity):
        core = corrupt(ramp, "elastic_transform", severity)[:, 0, m:n - m, m:n - m].reshape(48, -1, 1).double()
        fit = torch.linalg.lstsq(plane.expand(48, -1, -1), core).solution
        return (core - plane @ fit).abs().mean().item()

    res = [residual(s) for s in range(1, 6)]
    assert all(b >= a for a, b in zip(res, res[1:])), res
    assert res[0] < 1e-3 < res[4], res                      # severity 1 is (almost) purely affine
    assert _mad("elastic_transform", ramp, 1) > 0.01        # ... but it does move the image


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pixelate_severity_orders_the_resolution_left(digits, size):
    # Shrinking to 6 px and back can land closer to an 8-px original than shrinking to 7 px (the pixel grids
    # alias differently), so the distance to the clean image is not monotone, in the recipe's PIL code as
    # here (8 px: 0.060, 0.060, 0.125, 0.125, 0.112). What the severity orders is the resolution left: rows
    # and columns that differ from their neighbour, which cannot exceed int(side * c).
    x = digits[size]
    n = x.shape[-1]

    def resolution(y):
        rows = ((y[:, :, 1:] != y[:, :, :-1]).any(3).any(1).sum(1) + 1).float()
        cols = ((y[..., 1:] != y[..., :-1]).any(2).any(1).sum(1) + 1).float()
        return rows, cols

    kept = [0.95, 0.9, 0.85, 0.75, 0.65]
    mean_res = []
    for severity, c in enumerate(kept, 1):
        y = corrupt(x, "pixelate", severity)
        rows, cols = resolution(y)
        assert rows.max() <= int(n * c) and cols.max() <= int(n * c)
        mean_res.append((rows.mean() + cols.mean()).item() / 2)
    assert all(b <= a for a, b in zip(mean_res, mean_res[1:])) and mean_res[4] < mean_res[0], mean_res
    assert _mad("pixelate", x, 1) > 0


# --- the recipe's formulas, at 32 px where its constants apply unscaled -----------------------------------

def test_pixelate_is_pils_box_resize():
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    for severity, side in zip(range(1, 6), (30, 28, 27, 24, 20)):
        ref = [np.asarray(Image.fromarray(im[0].numpy().astype(np.float32), mode="F")
                          .resize((side, side), Image.BOX).resize((32, 32), Image.BOX)) for im in x]
        assert np.abs(corrupt(x, "pixelate", severity)[:, 0].numpy() - np.stack(ref)).max() < 1e-6


def test_contrast_and_brightness_follow_the_recipe():
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    means = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(corrupt(x, "contrast", 5), (x - means) * 0.15 + means)
    grey = torch.rand(2, 1, 8, 8)
    assert torch.allclose(corrupt(grey, "brightness", 5), (grey + 0.3).clamp(max=1))
    y = corrupt(x, "brightness", 2)                        # HSV value + 0.1, hue and saturation kept
    for img, out in zip(x, y):
        for r, g, b, *rgb in zip(*img.flatten(1).tolist(), *out.flatten(1).tolist()):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            assert np.allclose(colorsys.hsv_to_rgb(h, s, min(v + 0.1, 1)), rgb)


def test_defocus_mild_severities_are_the_recipes_3x3_gaussian():
    # radii 0.3 to 0.5 cover only the centre pixel, so the kernel is cv2's 3x3 Gaussian of std 0.4 to 0.6
    delta = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    delta[0, 0, 16, 16] = 1.0
    for severity, sigma in zip((1, 2, 3), (0.4, 0.5, 0.6)):
        g1 = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma ** 2))
        g1 /= g1.sum()
        out = corrupt(delta, "defocus_blur", severity)[0, 0, 15:18, 15:18].numpy()
        assert np.allclose(out, np.outer(g1, g1)) and np.isclose(out.sum(), 1)


def test_gaussian_noise_has_the_recipes_std():
    y = corrupt(torch.full((8, 1, 32, 32), 0.5), "gaussian_noise", 5)
    assert abs(y.std().item() - 0.10) < 0.005


@pytest.mark.parametrize("name,inner", [("defocus_blur", slice(1, -1)), ("motion_blur", slice(None))])
def test_blur_at_8_px_is_the_32_px_blur_of_4x4_blocks(name, inner):
    # what scaling the kernels by 8/32 means: enlarge each pixel to a 4x4 block, blur with the recipe's 32-px
    # kernel, average the blocks back; exact away from the border, where defocus reflects at another scale
    x8 = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for severity in range(1, 6):
        ref = F.avg_pool2d(corrupt(x8.repeat_interleave(4, 2).repeat_interleave(4, 3), name, severity), 4)
        ours = corrupt(x8, name, severity)
        assert torch.allclose(ours[..., inner, inner], ref[..., inner, inner], atol=1e-12)
        assert (ours - x8).abs().mean() > 0.01


# --- errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    ((torch.rand(1, 1, 8, 8), "fog", 1), "unknown corruption 'fog'; choose one of gaussian_noise, shot_noise"),
    ((torch.rand(1, 1, 8, 8), "contrast", 0), "severity must be an integer from 1 to 5, got 0"),
    ((torch.rand(1, 1, 8, 8), "contrast", 6), "severity must be an integer from 1 to 5, got 6"),
    ((torch.rand(1, 1, 8, 8), "contrast", 2.0), "severity must be an integer from 1 to 5, got 2.0"),
    ((torch.rand(1, 8, 8), "contrast", 1), r"x must be a 4-D tensor \(N, C, H, W\), got \(1, 8, 8\); add a batch"),
    ((np.zeros((1, 1, 8, 8)), "contrast", 1), "x must be a 4-D tensor"),
    ((torch.rand(1, 1, 8, 8) * 255, "contrast", 1), r"x must hold values in \[0, 1\], got min"),
    ((torch.rand(1, 1, 8, 8) - 0.5, "contrast", 1), r"x must hold values in \[0, 1\]"),
    ((torch.full((1, 1, 8, 8), float("nan")), "contrast", 1), r"x must hold values in \[0, 1\]"),
    ((torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "contrast", 1), r"float tensor in \[0, 1\], got torch.uint8"),
    ((torch.rand(1, 2, 8, 8), "contrast", 1), r"1 \(grey\) or 3 \(RGB\) channels, got 2"),
])
def test_bad_input_is_one_clear_value_error(args, message):
    with pytest.raises(ValueError, match=message) as err:
        corrupt(*args)
    assert "\n" not in str(err.value)


def test_numpy_integer_severity_and_empty_batch_are_fine():
    assert corrupt(torch.rand(1, 1, 8, 8), "contrast", np.int64(3)).shape == (1, 1, 8, 8)
    assert corrupt(torch.rand(0, 3, 32, 32), "motion_blur", 2).shape == (0, 3, 32, 32)
