"""The CIFAR-10-C reader on small folders written in the official layout, its one-line errors, and the
accuracy tables (on the fly and from the files) with their wide summary."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import robustlib.corruptions as corruptions
from robustlib import RobustlibError
from robustlib.corruptions import (CIFAR10C_BENCHMARK, CIFAR10C_CORRUPTIONS, CIFAR10C_EXTRA, CORRUPTIONS,
                                   cifar10c_table, corrupt, corruption_table, find_cifar10c, load_cifar10c,
                                   summarise_corruptions)
from robustlib.evaluate import accuracy

PER = 4                                     # images per severity in the fake release (the real one has 10,000)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def fake_images(per=PER):
    """(5*per, 32, 32, 3) uint8, HWC: pixel value 100*channel + 10*severity + index, and a marker of 255 at
    row 0, column 1 that tells rows from columns."""
    s = np.repeat(np.arange(1, 6), per)
    i = np.tile(np.arange(per), 5)
    c = np.arange(3)
    images = np.broadcast_to((100 * c + 10 * s[:, None] + i[:, None])[:, None, None, :], (5 * per, 32, 32, 3))
    images = images.astype(np.uint8)
    images[:, 0, 1, :] = 255
    return images


def write_release(folder, names=("fog", "contrast"), per=PER):
    """A fake CIFAR-10-C folder. The labels differ from block to block (the official ones repeat), so a
    wrong severity slice of labels.npy shows."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        np.save(folder / f"{name}.npy", fake_images(per))
    np.save(folder / "labels.npy", (np.arange(5 * per) % 10).astype(np.uint8))
    return folder


def raises_one_line(match, *args, **kwargs):
    with pytest.raises(RobustlibError, match=match) as e:
        load_cifar10c(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- the names --------------------------------------------------------------------------------------------

def test_nineteen_names_fifteen_in_the_benchmark():
    assert len(CIFAR10C_CORRUPTIONS) == len(set(CIFAR10C_CORRUPTIONS)) == 19
    assert len(CIFAR10C_BENCHMARK) == 15 and CIFAR10C_CORRUPTIONS[:15] == CIFAR10C_BENCHMARK
    assert set(CIFAR10C_EXTRA) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert {"glass_blur", "snow", "frost", "fog"} <= set(CIFAR10C_BENCHMARK)
    assert set(CORRUPTIONS) <= set(CIFAR10C_BENCHMARK)       # the on-the-fly suite is 11 of the 15


# --- reading the files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_one_severity_is_its_block_in_chw(tmp_path, severity):
    write_release(tmp_path / "CIFAR-10-C")
    d = load_cifar10c(tmp_path, "fog", severity)
    assert d.x.shape == (PER, 3, 32, 32) and d.x.dtype == torch.uint8 and d.y.dtype == torch.int64
    expected = 100 * torch.arange(3)[None, :] + 10 * severity + torch.arange(PER)[:, None]      # (N, C)
    assert torch.equal(d.x[:, :, 5, 7].long(), expected)
    assert torch.equal(d.y, (torch.arange(PER) + PER * (severity - 1)) % 10)
    assert (d.name, d.split, len(d)) == ("cifar10", f"cifar10-c/fog/{severity}", PER)


def test_hwc_becomes_chw_rows_stay_rows(tmp_path):
    write_release(tmp_path / "CIFAR-10-C")
    x = load_cifar10c(tmp_path, "contrast", 2).x
    assert (x[:, :, 0, 1] == 255).all() and not (x[:, :, 1, 0] == 255).any()
    assert x.is_contiguous() and x[2, 1, 9, 4].item() == 100 + 20 + 2     # channel 1, severity 2, image 2


def test_all_severities_in_order(tmp_path):
    write_release(tmp_path / "CIFAR-10-C")
    d = load_cifar10c(tmp_path, "fog")
    assert d.x.shape == (5 * PER, 3, 32, 32) and d.split == "cifar10-c/fog/1-5"
    assert torch.equal(d.x[:, 0, 3, 3].long(), torch.from_numpy(fake_images()[:, 3, 3, 0]).long())
    assert d.y.tolist() == [k % 10 for k in range(5 * PER)]


def test_limit_keeps_the_first_images_of_each_block(tmp_path):
    write_release(tmp_path / "CIFAR-10-C")
    d = load_cifar10c(tmp_path, "fog", 3, limit=2)
    assert d.x[:, 0, 5, 5].tolist() == [30, 31] and d.y.tolist() == [8, 9]
    every = load_cifar10c(tmp_path, "fog", limit=2)
    assert every.x[:, 0, 5, 5].tolist() == [10, 11, 20, 21, 30, 31, 40, 41, 50, 51]
    assert len(load_cifar10c(tmp_path, "fog", 1, limit=100)) == PER
    assert len(load_cifar10c(tmp_path, "fog", 1, limit=0)) == 0
    assert torch.equal(load_cifar10c(tmp_path, "fog", 3, limit=2).x, d.x)       # deterministic


@pytest.mark.parametrize("sub", ["CIFAR-10-C", "cifar10-c", ""])
def test_both_layouts_are_found(tmp_path, sub):
    folder = write_release(tmp_path / sub if sub else tmp_path)
    assert find_cifar10c(tmp_path) == folder and find_cifar10c(str(tmp_path)) == folder
    assert load_cifar10c(str(tmp_path), "fog", 5).x[0, 0, 5, 5].item() == 50


def test_find_returns_none_without_labels(tmp_path):
    assert find_cifar10c(tmp_path) is None and find_cifar10c(tmp_path / "nope") is None
    (tmp_path / "CIFAR-10-C").mkdir()
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", fake_images())
    assert find_cifar10c(tmp_path) is None


def test_files_are_memory_mapped_and_the_result_owns_its_memory(tmp_path, monkeypatch):
    write_release(tmp_path)
    modes, load = [], np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: modes.append(k.get("mmap_mode")) or load(*a, **k))
    d = load_cifar10c(tmp_path, "fog", 1)
    assert modes == ["r", "r"]
    d.x[:] = 0                                               # writable, and not a view into the file
    assert load_cifar10c(tmp_path, "fog", 1).x[0, 0, 5, 5].item() == 10


# --- errors -----------------------------------------------------------------------------------------------

def test_missing_folder_says_where_to_put_the_files(tmp_path):
    msg = raises_one_line("CIFAR-10-C not found under", tmp_path, "fog", 1)
    for part in (str(tmp_path / "CIFAR-10-C"), str(tmp_path / "cifar10-c"), "labels.npy", "CIFAR-10-C.tar",
                 "https://zenodo.org/record/2535967", "extract it there", "data_root="):
        assert part in msg, part


def test_unknown_corruption_lists_the_names(tmp_path):
    msg = raises_one_line(r"unknown CIFAR-10-C corruption 'fogg'; choose one of gaussian_noise, shot_noise",
                          tmp_path, "fogg")
    assert all(name in msg for name in CIFAR10C_CORRUPTIONS) and msg.endswith("saturate")


def test_missing_npy_names_the_file(tmp_path):
    folder = write_release(tmp_path / "CIFAR-10-C", names=("fog",))
    raises_one_line(rf"{folder / 'snow.npy'} not found .*extract snow.npy from CIFAR-10-C.tar", tmp_path, "snow", 1)


@pytest.mark.parametrize("array", [
    fake_images().transpose(0, 3, 1, 2).copy(),              # CHW instead of HWC
    fake_images().astype(np.float32),                        # not uint8
    fake_images()[:19],                                      # not five equal blocks
    fake_images()[:, :16, :16],                              # not 32x32
], ids=["chw", "float", "19-rows", "16px"])
def test_wrong_shape_or_dtype_says_the_layout(tmp_path, array):
    folder = write_release(tmp_path)
    np.save(folder / "fog.npy", array)
    raises_one_line(r"fog.npy holds .*; expected uint8 \(5\*n, 32, 32, 3\) \(HWC, severities 1..5", tmp_path, "fog", 1)


def test_labels_length_mismatch(tmp_path):
    folder = write_release(tmp_path)
    np.save(folder / "labels.npy", np.zeros(5 * PER - 1, dtype=np.uint8))
    raises_one_line(r"labels.npy holds uint8 \(19,\) but fog.npy holds 20 images; .*same CIFAR-10-C.tar",
                    tmp_path, "fog", 1)


def test_unreadable_file(tmp_path):
    folder = write_release(tmp_path)
    (folder / "fog.npy").write_bytes(b"not an npy file")
    raises_one_line(r"cannot read .*fog.npy \(.*\); replace it with the file from CIFAR-10-C.tar", tmp_path, "fog")


@pytest.mark.parametrize("severity", [0, 6, "3", True, 2.0])
def test_severity_out_of_range(tmp_path, severity):
    write_release(tmp_path)
    raises_one_line(rf"severity must be an integer from 1 to 5 or None \(all five\), got {severity!r}",
                    tmp_path, "fog", severity)


def test_negative_limit(tmp_path):
    write_release(tmp_path)
    raises_one_line("limit must be None or an integer >= 0, got -1", tmp_path, "fog", 1, limit=-1)


# --- tables -----------------------------------------------------------------------------------------------

def linear(shape, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 10))


def constant(shape, label):
    """Predicts ``label`` for every image."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), 10).float())
    return model


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["8x8", "32x32x3"])
def test_corruption_table_long_format_clean_rows_and_determinism(shape):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, *shape, generator=g), torch.randint(0, 10, (24,), generator=g)
    models = {"zeta": linear(shape, 1), "alpha": linear(shape, 2), "const": constant(shape, 3)}
    names = ["gaussian_noise", "motion_blur", "contrast"]
    t = corruption_table(models, x, y, names=names, severities=(1, 3, 5), batch_size=10)
    assert list(t.columns) == ["corruption", "severity", "model", "accuracy", "n"]
    assert len(t) == 3 * (1 + 3 * 3) and (t["n"] == 24).all()
    clean = t.iloc[:3]
    assert clean["corruption"].eq("clean").all() and clean["severity"].eq(0).all()
    assert clean["model"].tolist() == ["zeta", "alpha", "const"]
    assert clean["accuracy"].tolist() == [accuracy(m, x, y) for m in models.values()]
    assert t["accuracy"].between(0, 1).all()
    pd.testing.assert_frame_equal(t, corruption_table(models, x, y, names=names, severities=(1, 3, 5), batch_size=10))
    # a model that always says 3 scores the frequency of 3, whatever the corruption
    assert np.allclose(t.loc[t["model"] == "const", "accuracy"], (y == 3).float().mean().item())


def test_corruption_table_shares_each_corrupted_set_and_matches_corrupt(monkeypatch):
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 10
    models = {"a": linear((1, 8, 8), 1), "b": linear((1, 8, 8), 2)}
    calls, real = [], corruptions.corrupt
    monkeypatch.setattr(corruptions, "corrupt",
                        lambda xb, *a, **k: calls.append((len(xb), k["seed"])) or real(xb, *a, **k))
    t = corruption_table(models, x, y, names=["shot_noise"], severities=(2,), seed=5, batch_size=5)
    assert calls == [(5, 5), (5, 6), (2, 7)]                 # once per batch (seed + k), not once per model
    monkeypatch.undo()
    one = corruption_table(models, x, y, names=["shot_noise"], severities=(2,), seed=5, batch_size=64)
    xc = corrupt(x, "shot_noise", 2, seed=5)                 # one batch: seed + 0
    assert one["accuracy"].iloc[2:].tolist() == [accuracy(m, xc, y) for m in models.values()]
    assert len(t) == len(one) == 4


def test_corruption_table_takes_uint8_and_rejects_unknown_names():
    x = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    t = corruption_table({"c": constant((3, 32, 32), 0)}, x, torch.zeros(6, dtype=torch.long), names=["pixelate"])
    assert t["accuracy"].eq(1.0).all() and t["severity"].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="unknown corruption 'fog'; choose one of"):
        corruption_table({"c": constant((3, 32, 32), 0)}, x, torch.zeros(6), names=["fog"])
    with pytest.raises(ValueError, match="severities must be integers from 1 to 5, got 6"):
        corruption_table({"c": constant((3, 32, 32), 0)}, x, torch.zeros(6), names=["contrast"], severities=(6,))


def test_summary_is_wide_with_clean_first_and_mean_last():
    shape = (1, 8, 8)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(20, *shape, generator=g), torch.randint(0, 10, (20,), generator=g)
    models = {"zeta": linear(shape, 1), "alpha": linear(shape, 2)}
    names = ["impulse_noise", "defocus_blur", "brightness"]
    t = corruption_table(models, x, y, names=names, severities=(1, 2, 5))
    wide = summarise_corruptions(t)
    assert wide.shape == (5, 2) and list(wide.columns) == ["zeta", "alpha"]
    assert list(wide.index) == ["clean", *names, "mean"]
    for name in names:
        for m in models:
            rows = t[(t["corruption"] == name) & (t["model"] == m)]
            assert wide.loc[name, m] == pytest.approx(rows["accuracy"].mean())
    assert np.allclose(wide.loc["mean"], wide.loc[names].mean())            # clean left out of the mean
    assert np.allclose(wide.loc["clean"], t.iloc[:2]["accuracy"])
    no_clean = summarise_corruptions(t[t["corruption"] != "clean"])
    assert list(no_clean.index) == [*names, "mean"] and np.allclose(no_clean.loc["mean"], wide.loc["mean"])


def test_cifar10c_table_reads_each_block_with_optional_clean_rows(tmp_path):
    write_release(tmp_path / "CIFAR-10-C")
    shape = (3, 32, 32)
    models = {"three": constant(shape, 3), "lin": linear(shape, 0)}
    t = cifar10c_table(models, tmp_path, names=["fog", "contrast"], severities=(1, 2, 3, 4, 5))
    assert len(t) == 2 * 5 * 2 and "clean" not in set(t["corruption"]) and (t["n"] == PER).all()
    for s in range(1, 6):      # the labels of block s are (4(s-1) + i) % 10: 3 appears in blocks 1 and 3
        acc = t[(t["model"] == "three") & (t["severity"] == s)]["accuracy"]
        assert np.allclose(acc, ((torch.arange(PER) + PER * (s - 1)) % 10 == 3).float().mean().item())
    x = load_cifar10c(tmp_path, "fog", 1).x
    clean_y = torch.tensor([3, 3, 0, 3])
    lim = cifar10c_table(models, tmp_path, names=["fog"], severities=(1,), limit=2, clean=(x, clean_y))
    assert lim["corruption"].tolist() == ["clean", "clean", "fog", "fog"] and lim["n"].tolist() == [2, 2, 2, 2]
    assert lim["accuracy"].iloc[0] == 1.0                    # the clean rows use the first `limit` images too
    wide = summarise_corruptions(lim)
    assert list(wide.index) == ["clean", "fog", "mean"] and list(wide.columns) == ["three", "lin"]


def test_cifar10c_table_defaults_to_the_benchmark_and_fails_clearly(tmp_path):
    write_release(tmp_path, names=("gaussian_noise",))
    with pytest.raises(RobustlibError, match=r"shot_noise.npy not found"):
        cifar10c_table({"c": constant((3, 32, 32), 0)}, tmp_path)
