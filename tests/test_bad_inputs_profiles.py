"""Issue #13: every bad input is refused up front, in one line that names it and the fix.

Profile fields (overrides as YAML or papermill's ``-p`` strings give them), the smoke switch and the device
go through :func:`robustlib.config.setup`, which must refuse them before it creates anything; CIFAR-10's
pickled batches are read with an unpickler that runs no code; :func:`robustlib.data.check_files` finds a
missing dataset file before a run starts.
"""
import dataclasses
import io
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch

import robustlib.config
from robustlib import PROFILES, RobustlibError
from robustlib.config import apply_overrides, check_profile, get_profile, resolve_device, smoke_requested
from robustlib.data import check_files, load_dataset
from robustlib.profiles import FIELD_TYPES

# (what is bad, its value, a substring the one-line error must hold: it names the field or the input)
BAD = [
    # bools are ints to Python, never a count here
    ("overrides", {"epochs": True}, "epochs=True is invalid: expected an integer >= 1"),
    ("overrides", {"seeds": [0, True]}, "seeds=(0, True) is invalid"),
    # ranges
    ("overrides", {"lam_lr": -5}, "lam_lr=-5 is invalid: expected a finite float > 0"),
    ("overrides", {"mart_beta": -1}, "mart_beta=-1 is invalid: expected a finite float >= 0"),
    ("overrides", {"trades_betas": [-1]}, "trades_betas=(-1,) is invalid"),
    ("overrides", {"lr": float("inf")}, "lr=inf is invalid: expected a finite float > 0"),
    ("overrides", {"lr": "nan"}, "lr=nan is invalid"),
    ("overrides", {"autoattack_limit": -5}, "autoattack_limit=-5 is invalid: expected an integer >= 1"),
    ("overrides", {"expected_clean_acc": 1.5}, "expected_clean_acc=1.5 is invalid"),
    ("overrides", {"val_size": -1}, "val_size=-1 is invalid: expected an integer >= 0"),
    ("overrides", {"batch_size": 0}, "batch_size=0 is invalid: expected an integer >= 1"),
    ("overrides", {"ft_eps_min": 10.0}, "ft_eps_min=10.0 is invalid: expected ft_eps_min <= ft_eps_max"),
    # the notebooks read main_eps' column of the eval_eps tables (it crashed nb03 before it was checked)
    ("overrides", {"main_eps": "0.15"}, "main_eps='0.15' is invalid: expected one of eval_eps (0.05, 0.1, 0.2)"),
    ("overrides", {"eval_eps": ["0.05", "0.2"]}, "main_eps='0.1' is invalid: expected one of eval_eps"),
    # a tuple field needs a list, even for one value
    ("overrides", {"trades_betas": 1}, "trades_betas=1 is invalid: expected a non-empty list"),
    ("overrides", {"eval_eps": "0.1"}, "eval_eps='0.1' is invalid"),
    ("overrides", {"eval_eps": []}, "eval_eps=() is invalid: expected a non-empty list"),
    # strings that read as no value of the field's type (papermill's -p, a YAML typo)
    ("overrides", {"lr": "abc"}, "lr='abc' is invalid: expected a finite float > 0"),
    ("overrides", {"weight_decay": "x"}, "weight_decay='x' is invalid"),
    ("overrides", {"milestones": ["a"]}, "milestones=('a',) is invalid"),
    ("overrides", {"ft_replay_ratio": "x"}, "ft_replay_ratio='x' is invalid"),
    ("overrides", {"seed": "abc"}, "seed='abc' is invalid: expected an integer >= 0"),
    ("overrides", {"epochs": "5.0"}, "epochs='5.0' is invalid"),
    ("overrides", {"dra_eps_grid": [1.0, "two"]}, "dra_eps_grid=(1.0, 'two') is invalid"),
    ("overrides", {"main_eps": "abc"}, "main_eps='abc' is invalid"),        # not blamed on eval_eps
    # real bools only
    ("overrides", {"in_memory": "yes"}, "in_memory='yes' is invalid: expected true or false"),
    ("overrides", {"augment": "yes"}, "augment='yes' is invalid"),
    ("overrides", {"ft_clean_tail": 1}, "ft_clean_tail=1 is invalid"),
    # choices and names
    ("overrides", {"lr_schedule": "linear"}, "lr_schedule='linear' is invalid: expected one of cosine"),
    ("overrides", {"backbones": ["resnet18/x"]}, "backbones=('resnet18/x',) is invalid"),
    ("overrides", {"backbones": ["resnet18/0"]}, "backbones=('resnet18/0',) is invalid"),
    ("overrides", {"autoattack_attacks": ["apgd-ce", "pgd"]}, "autoattack_attacks=('apgd-ce', 'pgd') is invalid"),
    ("overrides", {"epoch": 3}, "unknown profile field(s) epoch in overrides"),
    # fields that say which profile runs: runs of quick filed under runs/fashion, or a full run called smoke
    ("overrides", {"name": "fashion"}, "'name' cannot be overridden; pick the profile itself with profile="),
    ("overrides", {"description": "mine"}, "'description' cannot be overridden"),
    ("overrides", {"smoke": True}, "'smoke' cannot be overridden; ask for the smoke setting with smoke=True"),
    # the smoke switch: no guessing
    ("smoke_env", "maybe", "ROBUSTLIB_SMOKE='maybe' is invalid: use 1, true, yes or on"),
    ("smoke_env", "2", "ROBUSTLIB_SMOKE='2' is invalid"),
    # devices that pass torch.device() but cannot run a notebook here
    ("device", "tpu", "unknown device 'tpu'"),
    ("device", "meta", "device 'meta' cannot run a model's numbers; use auto, cpu or cuda"),
    ("device", "xla", "device 'xla' is not supported"),
    ("device", "cuda:-1", "unknown device 'cuda:-1'"),
    ("device", 3, "unknown device 3"),
    ("device", "cuda:99", "device 'cuda:99' asked for but"),     # no CUDA here, or not 100 GPUs
]
if not torch.backends.mps.is_available():
    BAD.append(("device", "mps", "device 'mps' asked for but Apple's MPS is not available here"))


@pytest.mark.parametrize("kind,value,expected", BAD, ids=[f"{k}-{v}" for k, v, _ in BAD])
def test_a_bad_input_is_one_line_before_anything_is_created(tmp_path, monkeypatch, kind, value, expected):
    monkeypatch.setenv("ROBUSTLIB_SMOKE", value if kind == "smoke_env" else "0")
    run_dir = tmp_path / "run"
    kwargs = {"device": "cpu", "run_dir": str(run_dir), "overrides": None, "smoke": False}
    if kind == "overrides":
        kwargs["overrides"] = value
    elif kind == "device":
        kwargs["device"] = value
    else:
        kwargs["smoke"] = None                   # the environment switch decides
    with pytest.raises(RobustlibError) as e:
        robustlib.config.setup("quick", **kwargs)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    assert expected in msg, msg
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []       # refused before any work


def test_every_field_refuses_a_value_of_no_type_naming_itself():
    quick = get_profile("quick")
    for name in FIELD_TYPES:                     # the check is generated from the annotations: no field escapes
        with pytest.raises(ValueError, match=f"^profile field {name}=<object object at .*> is invalid: expected "):
            dataclasses.replace(quick, **{name: object()})


def test_every_profile_and_its_smoke_setting_stay_valid():
    for profile in PROFILES.values():
        assert check_profile(profile.shrink_for_smoke()).smoke
        assert dataclasses.replace(profile) == profile                   # the checks accept their own output


def test_papermill_strings_and_yaml_lists_still_read():
    p = apply_overrides(get_profile("quick"), {
        "epochs": "5", "lr": "0.1", "augment": "True", "in_memory": "false", "eval_limit": "None",
        "seeds": ["1", 2], "trades_betas": [1, "0.5"], "milestones": (0.25,), "autoattack_attacks": "None",
        "eval_eps": [0.1, "8/255"], "main_eps": "8/255", "backbones": ["resnet18/4"]})
    assert (p.epochs, p.lr, p.augment, p.in_memory, p.eval_limit) == (5, 0.1, True, False, None)
    assert (p.seeds, p.trades_betas, p.milestones, p.autoattack_attacks) == ((1, 2), (1, 0.5), (0.25,), None)
    assert (p.eval_eps, p.main_eps, p.backbones) == ((0.1, "8/255"), "8/255", ("resnet18/4",))
    assert all(isinstance(getattr(p, f), tuple) for f in ("seeds", "trades_betas", "eval_eps", "backbones"))


@pytest.mark.parametrize("value,smoke", [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                         ("", False), ("0", False), ("False", False), ("no", False), ("OFF", False)])
def test_the_smoke_switch_reads_its_documented_values(monkeypatch, value, smoke):
    monkeypatch.setenv("ROBUSTLIB_SMOKE", value)
    assert smoke_requested() is smoke


def test_cuda_index_is_checked_against_the_gpus_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(RobustlibError, match=r"^device 'cuda:5' asked for but this machine has 1 CUDA device\(s\); "
                                             r"use cuda or cuda:N with N < 1$"):
        resolve_device("cuda:5")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")           # Apple's GPU, where it exists


# --- CIFAR-10's pickles ---------------------------------------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (BINSTRING), as the official batches (Python 2's cPickle) hold them."""

    def save_bytes(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def _official_batch(data, labels) -> bytes:
    """A batch as cifar-10-python.tar.gz holds it: protocol 2, bytes keys, numpy 1's module name."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"batch_label": b"testing batch 1 of 1", b"labels": list(labels),
                                       b"data": data, b"filenames": [b"x_%d.png" % i for i in range(len(labels))]})
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batches(tmp_path, n=3):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    data = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
    return folder, data


def test_an_official_style_batch_loads(tmp_path):
    folder, data = _batches(tmp_path)
    raw = _official_batch(data, [7, 0, 9])
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    (folder / "test_batch").write_bytes(raw)
    d = load_dataset("cifar10", "test", tmp_path)
    assert torch.equal(d.x.flatten(1), torch.from_numpy(data)) and d.y.tolist() == [7, 0, 9]
    with open(folder / "test_batch", "wb") as f:             # Python 3's protocol 2: bytes via _codecs.encode
        pickle.dump({b"data": data, b"labels": [1, 2, 3]}, f, protocol=2)
    assert load_dataset("cifar10", "test", tmp_path).y.tolist() == [1, 2, 3]


class _Payload:
    """A pickle that, unpickled, calls ``call(arg)``: here, creates the marker file."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", [os.system, eval, exec])
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("split,file", [("test", "test_batch"), ("train", "data_batch_3")])
def test_a_hostile_batch_is_refused_and_its_payload_never_runs(tmp_path, call, protocol, split, file):
    folder, data = _batches(tmp_path)
    marker = tmp_path / "pwned"
    code = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(_official_batch(data, [1, 2, 3]))
    with open(folder / file, "wb") as f:
        pickle.dump({"data": _Payload(call, code), "labels": [1, 2, 3]}, f, protocol=protocol)
    with pytest.raises(RobustlibError) as e:
        load_dataset("cifar10", split, tmp_path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"refusing {folder / file}: it asks to call ")
    assert re.search(rf"call (posix|builtins|__builtin__)\.{call.__name__}, which no CIFAR-10 batch does", msg), msg
    assert "replace it with the official file" in msg
    assert not marker.exists()


def test_a_batch_of_the_wrong_shape_is_refused(tmp_path):
    folder, data = _batches(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data.astype(np.float32), "labels": [1, 2, 3]}, f)
    with pytest.raises(RobustlibError, match=r"test_batch is not a CIFAR-10 batch \(a dict of 'data', N x 3072 uint8"):
        load_dataset("cifar10", "test", tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [1, 2, 10]}, f)                 # a label out of range
    with pytest.raises(RobustlibError, match="is not a CIFAR-10 batch"):
        load_dataset("cifar10", "test", tmp_path)


# --- check_files: a missing dataset before a run starts ---------------------------------------------------

def _idx(path, shape):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}i", *shape)
    path.write_bytes(header + bytes(int(np.prod(shape))))


def test_check_files_names_the_missing_mnist_file_as_load_dataset_does(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    for prefix in ("train", "t10k"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", (2, 28, 28))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", (2,))
    check_files("mnist", tmp_path)                                          # all there: no error
    (raw / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(RobustlibError) as e:
        check_files("mnist", tmp_path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert f"mnist not found: expected train-labels-idx1-ubyte[.gz] in {raw}" in msg
    assert "--data-root" in msg and "train-images" not in msg              # only what is missing
    with pytest.raises(RobustlibError) as loading:
        load_dataset("mnist", "train", tmp_path)
    assert str(loading.value) == msg                                          # one locating code, one message


def test_check_files_looks_without_reading(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(b"not read by check_files")
    with pytest.raises(RobustlibError, match=r"^cifar10 not found: expected data_batch_3 in .*--data-root"):
        check_files("cifar10", tmp_path)
    (folder / "data_batch_3").write_bytes(b"")
    check_files("cifar10", tmp_path)                                         # present is all it asks
    with pytest.raises(RobustlibError, match=r"cannot read .*data_batch_1 \(UnpicklingError\)"):   # load_dataset reads
        load_dataset("cifar10", "train", tmp_path)


def test_check_files_of_a_bundled_or_unknown_dataset(tmp_path):
    assert check_files("digits", tmp_path / "nowhere") is None
    with pytest.raises(RobustlibError, match="^unknown dataset 'svhn'; choose one of"):
        check_files("svhn", tmp_path)
