"""Bad inputs to the library (attacks, evaluation, fit and its checkpoints): each is one clear line, before
any work where it can be, and nothing already written is lost or overwritten."""
import io
import time
from functools import partial

import pandas as pd
import pytest
import torch
from torch import nn

import robustlib
from robustlib import RobustlibError
from robustlib import evaluate as E
from robustlib.attacks import dra, fgsm, pgd
from robustlib.io import save_torch
from robustlib.losses import Adversary, Constrained, EpsSchedule, finetune
from robustlib.methods import run_name
from robustlib.models import build_model
from robustlib.train import _check_name, checkpoint_payload, fit, load_checkpoint, pretrain, settings_hash

X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])
BATCHES = [(X, Y), (X.flip(0), Y.flip(0))]
SPEC = dict(name="digits-cnn", num_classes=10, in_channels=1, image_size=8)


def tiny(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("digits-cnn", in_channels=1, image_size=8, **kwargs)


def with_bad(x, value=float("nan")):
    x = x.clone()
    x[0, 0, 0, 0] = value
    return x


def nan_weights(model=None):
    model = model or tiny()
    with torch.no_grad():
        model.net.classifier[3].weight[0, 0] = float("nan")      # logit 0 is NaN on every image
    return model


def poison_after_epoch_one(model):
    nan_weights(model)                  # as if the last step of epoch 1 had blown the weights up
    return {}


def nan_checkpoint(tmp):
    save_torch(checkpoint_payload(nan_weights(), {"model": SPEC}), tmp / "nan.pt")
    return load_checkpoint(tmp / "nan.pt")


def garbage_last_checkpoint(tmp):
    (tmp / "checkpoints").mkdir()
    (tmp / "checkpoints" / "m.last.pt").write_bytes(b"not a checkpoint")
    return run(tmp, name="m")


def run(tmp, **kwargs):
    return fit(tiny(), BATCHES, **{"epochs": 1, "lr": 0.1, "progress": False, "run_dir": tmp, **kwargs})


PGD = dict(eps=0.1, steps=2, step_size=0.05)
NAN_LOGITS = "the model's logits are NaN/inf on 4 of 4 images; its weights are not finite (net.classifier.3.weight"

BAD = [   # (what, the bad call given a scratch directory, the exception, a substring of its one line)
    ("nan-pixel", lambda t: pgd(tiny(), with_bad(X), Y, **PGD), ValueError,
     "x holds 1 non-finite values (NaN/inf); clean the images first"),
    ("inf-pixel", lambda t: dra(tiny(), with_bad(X, float("inf")), Y, eps=1.0, p=0.5, steps=2), ValueError,
     "x holds 1 non-finite values (NaN/inf)"),
    ("nan-x_init", lambda t: fgsm(tiny(), X, Y, eps=0.1, x_init=with_bad(X)), ValueError,
     "x_init holds 1 non-finite values (NaN/inf)"),
    ("x_init-out-of-range", lambda t: pgd(tiny(), X, Y, **PGD, x_init=X + 2), ValueError, "x_init must lie in [0, 1]"),
    ("x_init-wrong-shape", lambda t: dra(tiny(), X, Y, eps=1.0, p=0.5, steps=2, x_init=X[:2]), ValueError,
     "x_init must have x's shape (4, 1, 8, 8), got (2, 1, 8, 8)"),
    ("label-10-of-10", lambda t: pgd(tiny(), X, Y + 7, **PGD), ValueError,
     "y holds label 10 but the model gives 10 logits (classes 0-9)"),
    ("label-ignore_index", lambda t: fgsm(tiny(), X, torch.tensor([0, -100, 2, 3]), eps=0.1), ValueError,
     "y holds label -100: labels must be class indices >= 0"),
    ("wrong-channels", lambda t: pgd(tiny(), torch.rand(4, 3, 8, 8), Y, **PGD), ValueError,
     "the model cannot take x of shape (4, 3, 8, 8): Given groups=1"),
    ("wrong-image-size", lambda t: dra(tiny(), torch.rand(4, 1, 16, 16), Y, eps=1.0, p=0.5, steps=2), ValueError,
     "the model cannot take x of shape (4, 1, 16, 16): mat1 and mat2 shapes cannot be multiplied"),
    ("predict-wrong-shape", lambda t: E.predict(tiny(), torch.rand(4, 3, 8, 8)), ValueError,
     "; check the dataset/model pair"),
    ("nan-weights-attack", lambda t: pgd(nan_weights(), X, Y, **PGD), ValueError, NAN_LOGITS),
    ("nan-weights-accuracy", lambda t: E.accuracy(nan_weights(), X, Y), ValueError, NAN_LOGITS),
    ("nan-weights-predict", lambda t: E.predict(nan_weights(), X), ValueError, NAN_LOGITS),
    ("nan-pixel-accuracy", lambda t: E.accuracy(tiny(), with_bad(X), Y), ValueError, "x holds 1 non-finite values"),
    ("accuracy-of-nothing", lambda t: E.accuracy(tiny(), X[:0], Y[:0]), ValueError, "no images to score"),
    ("robust-accuracy-of-nothing", lambda t: E.robust_accuracy(tiny(), X[:0], Y[:0], eps=0.1), ValueError,
     "no images to attack"),
    ("accuracy-label-10", lambda t: E.accuracy(tiny(), X, Y + 7), ValueError,
     "y holds label 10 but the model gives 10 logits"),
    ("step_size-0", lambda t: pgd(tiny(), X, Y, eps=0.1, steps=2, step_size=0), ValueError, "step_size must be > 0"),
    ("step_factor-0", lambda t: pgd(tiny(), X, Y, eps=0.1, steps=2, step_factor=0), ValueError,
     "step_factor must be > 0"),
    ("run_attack-lengths", lambda t: E.run_attack("pgd", tiny(), X, Y[:3], **PGD), ValueError,
     "x has 4 images, y has 3 labels"),
    ("fit-name-parent", lambda t: run(t, name="../../x"), RobustlibError, "name '../../x' must be letters, digits"),
    ("fit-name-absolute", lambda t: run(t, name="/tmp/x"), RobustlibError, "never a path"),
    ("fit-name-empty", lambda t: run(t, name=""), RobustlibError, "name '' must be"),
    ("fit-nan-batch", lambda t: fit(tiny(), [(with_bad(X), Y)], epochs=1, lr=0.1, progress=False), RobustlibError,
     "model: the batch holds 1 non-finite pixels (NaN/inf) in epoch 1; clean the data"),
    ("fit-nan-batch-adversarial", lambda t: fit(tiny(), [(with_bad(X), Y)], epochs=1, lr=0.1, progress=False,
                                                objective="madry", adversary=Adversary("pgd", eps=0.1, steps=1)),
     RobustlibError, "the batch holds 1 non-finite pixels (NaN/inf) in epoch 1; clean the data"),
    ("fit-nan-weights", lambda t: fit(nan_weights(), BATCHES, epochs=1, lr=0.1, progress=False), RobustlibError,
     "weights were already non-finite before epoch 1 (net.classifier.3.weight holds NaN/inf)"),
    ("fit-weights-blow-up", lambda t: fit(tiny(), BATCHES, epochs=2, lr=0.1, progress=False,
                                          evaluate=poison_after_epoch_one), RobustlibError,
     "weights became non-finite during training (net.classifier.3.weight holds NaN/inf before a step of epoch 2)"),
    ("fit-lr-too-large", lambda t: fit(tiny(), BATCHES * 2, epochs=2, lr=1e10, progress=False), RobustlibError,
     "(the batch and the weights are finite); lower the learning rate"),
    ("fit-unknown-schedule", lambda t: run(t, lr_schedule="step"), RobustlibError, "unknown lr_schedule 'step'"),
    ("fit-unreadable-last-checkpoint", garbage_last_checkpoint, RobustlibError,
     "); pass resume=False to train from scratch (it overwrites that run), or another name/run_dir"),
    ("nan-checkpoint", nan_checkpoint, RobustlibError,
     "nan.pt holds non-finite weights (NaN/inf) in net.classifier.3.weight; delete it (retrain=True)"),
]


@pytest.mark.parametrize("call,kind,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_input_is_one_clear_line(tmp_path, call, kind, message):
    start = time.perf_counter()
    with pytest.raises(kind) as e:
        call(tmp_path)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    assert message in str(e.value)
    assert time.perf_counter() - start < 10


def test_the_table_covers_many_distinct_bad_inputs():
    assert len({b[0] for b in BAD}) == len(BAD) >= 15


# --- attacks and evaluation: what is accepted -----------------------------------------------------------

def test_pgd_with_a_zero_budget_returns_x_and_robust_accuracy_is_clean_accuracy():
    model = tiny()
    for kwargs in (dict(step_size=0.01), dict(step_factor=2.5, random_start=True, seed=None),
                   dict(step_factor=1.0, x_init=X.flip(0))):
        out = pgd(model, X, Y, eps=0, steps=3, **kwargs)
        assert torch.equal(out, X) and out is not X
    assert torch.equal(fgsm(model, X, Y, eps=0), X)
    y = E.predict(model, X)                                  # every image correct clean
    row, x_adv = E.robust_accuracy(model, X, y, eps=0)
    assert row["clean_acc"] == row["robust_acc"] == 1.0 and torch.equal(x_adv, X)
    with pytest.raises(ValueError, match="step_size must be > 0"):   # an explicit bad step is still refused
        pgd(model, X, Y, eps=0, steps=3, step_size=-1)


def test_labels_of_any_integer_dtype_are_read_as_int64():
    model = tiny()
    ref = pgd(model, X, Y, **PGD)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(pgd(model, X, Y.to(dtype), **PGD), ref)
        assert torch.equal(dra(model, X, Y.to(dtype), eps=1.0, p=0.5, steps=2), dra(model, X, Y, eps=1.0, p=0.5, steps=2))
    assert E.accuracy(model, X, Y.int()) == E.accuracy(model, X, Y)


def test_an_empty_batch_is_attacked_into_an_empty_batch():
    model = tiny()
    for out in (pgd(model, X[:0], Y[:0], **PGD), fgsm(model, X[:0], Y[:0], eps=0.1),
                dra(model, X[:0], Y[:0], eps=1.0, p=0.5, steps=2),
                E.run_attack("pgd", model, X[:0], Y[:0], **PGD)):
        assert out.shape == (0, 1, 8, 8)


def test_the_label_check_costs_no_extra_forward_pass():
    model, calls = tiny(), []
    model.register_forward_hook(lambda *_: calls.append(1))
    pgd(model, X, Y, eps=0.1, steps=3, step_size=0.05)
    assert len(calls) == 3


# --- fit: a resume continues the same call, or is refused before anything is touched -----------------------

def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change,message", [
    (dict(lr=0.01), r"m.last.pt was made by fit\(lr=0.05, \.\.\.\), not fit\(lr=0.01, \.\.\.\); pass resume=False "
                    r"to train from scratch \(it overwrites that run\), or another name/run_dir$"),
    (dict(objective="madry", adversary=Adversary("pgd", eps=0.1, steps=1)),
     r"made by fit\(objective='clean', adversary=None, \.\.\.\), not fit\(objective='madry', adversary=PGD-1 "),
    (dict(epochs=3), r"made by fit\(epochs=2, \.\.\.\), not fit\(epochs=3, \.\.\.\); pass resume=False"),
    (dict(batches=BATCHES[:-1]), r"made by fit\(batches=\d+, \.\.\.\), not fit\(batches=\d+, \.\.\.\); pass resume"),
    (dict(model=partial(tiny, num_classes=5)), r"m.last.pt was made for another model: model architecture differs "
     r"\(net.classifier.3.weight is \(10, 128\) in the checkpoint, \(5, 128\) here\); pass resume=False"),
    (dict(model=lambda seed: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))),
     r"model differs \(Sequential\(Normalize, DigitsCNN\) in the checkpoint, Sequential\(Flatten, Linear\) here\)"),
])
def test_resuming_with_another_call_is_refused_before_the_model_or_the_files_change(tmp_path, change, message):
    fit(tiny(), BATCHES, epochs=2, lr=0.05, progress=False, run_dir=tmp_path, name="m")
    on_disk = files(tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "m.last.pt", weights_only=True)["state_dict"]
    change = dict(change)
    model = change.pop("model", tiny)(seed=1)
    before = weights(model)
    assert before.keys() != saved.keys() or not same(before, saved)    # a load would show
    batches = change.pop("batches", BATCHES)          # another loader: another number of batches per epoch
    args = {"epochs": 2, "lr": 0.05, **change}
    with pytest.raises(RobustlibError, match=message) as e:
        fit(model, batches, progress=False, run_dir=tmp_path, name="m", **args)
    assert len(str(e.value).splitlines()) == 1
    assert same(weights(model), before)
    assert files(tmp_path) == on_disk


def test_the_same_call_resumes_whatever_objects_it_is_given_afresh(tmp_path, capsys):
    calls = []

    def call(model):
        adversary = Adversary("dra", eps=EpsSchedule(1.0, 0.5, 2), steps=1, p=0.5)
        # its lambda is state, its std_loss measured on theta_std (another device may round it otherwise)
        objective = Constrained((X, Y), std_loss=2.3 + 1e-7 * len(calls), lam_lr=0.5)
        calls.append(1)
        return fit(model, BATCHES, epochs=2, lr=0.05, objective=objective, adversary=adversary, progress=False,
                   run_dir=tmp_path, name="c"), objective
    first, objective = call(tiny())
    assert objective.lam != 1.0
    model = tiny(seed=1)
    again, objective = call(model)
    assert "resuming c from" in capsys.readouterr().out
    pd.testing.assert_frame_equal(again, first)
    assert same(weights(model), torch.load(tmp_path / "checkpoints" / "c.pt", weights_only=True)["state_dict"])
    tuned = fit(tiny(), BATCHES, epochs=1, lr=0.05, objective=partial(finetune, clean_weight=0.5),
                adversary=Adversary("pgd", eps=0.1, steps=1), progress=False, run_dir=tmp_path, name="f")
    with pytest.raises(RobustlibError, match=r"made by fit\(objective=finetune\(clean_weight=0.5\), \.\.\.\), "
                                             r"not fit\(objective=finetune\(clean_weight=1.0\), \.\.\.\)"):
        fit(tiny(), BATCHES, epochs=1, lr=0.05, objective=partial(finetune, clean_weight=1.0),
            adversary=Adversary("pgd", eps=0.1, steps=1), progress=False, run_dir=tmp_path, name="f")
    again = fit(tiny(), BATCHES, epochs=1, lr=0.05, objective=partial(finetune, clean_weight=0.5),
                adversary=Adversary("pgd", eps=0.1, steps=1), progress=False, run_dir=tmp_path, name="f")
    pd.testing.assert_frame_equal(again, tuned)


class Stop(Exception):
    pass


def interrupted(tmp_path, meta=None):
    """A 2-epoch run killed during epoch 2: epoch 1 is on disk."""
    calls = []

    def stop_in_epoch_two(model):
        calls.append(1)
        if len(calls) == 2:
            raise Stop
        return {}
    with pytest.raises(Stop):
        fit(tiny(), BATCHES, epochs=2, lr=0.05, progress=False, run_dir=tmp_path, name="m", meta=meta,
            evaluate=stop_in_epoch_two)
    return tmp_path / "checkpoints" / "m.last.pt"


def test_a_checkpoint_without_fit_args_resumes_for_a_profile_run_and_is_refused_for_a_plain_call(tmp_path, capsys):
    settings = {"lr": 0.05, "epochs": 2}
    meta = {"kind": "m", "settings": settings, "settings_hash": settings_hash(settings)}
    last = interrupted(tmp_path, meta)
    state = torch.load(last, weights_only=True)
    assert state["fit_args"]["lr"] == 0.05 and state["fit_args"]["model"] == "Sequential(Normalize, DigitsCNN)"
    del state["fit_args"]                                      # as written before fit recorded its call
    torch.save(state, last)
    older = last.read_bytes()
    with pytest.raises(RobustlibError, match="m.last.pt records no fit arguments .*; pass resume=False"):
        fit(tiny(), BATCHES, epochs=2, lr=0.05, progress=False, run_dir=tmp_path, name="m")
    assert last.read_bytes() == older
    changed = {**settings, "lr": 0.01}
    with pytest.raises(RobustlibError, match="trained with lr=0.05 but the profile now says 0.01; pass retrain=True"):
        fit(tiny(), BATCHES, epochs=2, lr=0.01, progress=False, run_dir=tmp_path, name="m",
            meta={**meta, "settings": changed, "settings_hash": settings_hash(changed)})
    hist = fit(tiny(seed=1), BATCHES, epochs=2, lr=0.05, progress=False, run_dir=tmp_path, name="m", meta=meta)
    assert "resuming m from" in capsys.readouterr().out and list(hist.epoch) == [1, 2]
    assert hist.iloc[0].to_dict() == pd.DataFrame(state["history"]).iloc[0].to_dict()   # epoch 1 kept, not retrained
    assert "fit_args" in torch.load(last, weights_only=True)                           # recorded from now on


def test_a_profile_runs_refusal_names_retrain(tmp_path):
    settings = {"lr": 0.05}
    meta = {"kind": "m", "settings": settings, "settings_hash": settings_hash(settings)}
    interrupted(tmp_path, meta)
    with pytest.raises(RobustlibError, match=r"fit\(momentum=0.9, \.\.\.\), not fit\(momentum=0.5, .*retrain=True"):
        fit(tiny(), BATCHES, epochs=2, lr=0.05, momentum=0.5, progress=False, run_dir=tmp_path, name="m", meta=meta)


def test_a_checkpoint_with_nan_weights_is_refused_on_resume_and_on_load(tmp_path):
    last = interrupted(tmp_path)
    state = torch.load(last, weights_only=True)
    state["state_dict"]["net.features.0.bias"][3] = float("inf")
    torch.save(state, last)
    model = tiny(seed=1)
    before = weights(model)
    with pytest.raises(RobustlibError, match=r"m.last.pt holds non-finite weights \(NaN/inf\) in net.features.0.bias; "
                                             r"pass resume=False"):
        fit(model, BATCHES, epochs=2, lr=0.05, progress=False, run_dir=tmp_path, name="m")
    assert same(weights(model), before)
    save_torch(checkpoint_payload(nan_weights(), {"model": SPEC}), tmp_path / "nan.pt")
    with pytest.raises(RobustlibError, match="holds non-finite weights"):
        load_checkpoint(tmp_path / "nan.pt")


def test_a_path_like_name_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    for name in ("../x", "../../x", "/tmp/x", "a/b", "a\\b", "", "..", "x y", None):
        with pytest.raises(RobustlibError, match="must be letters, digits or _.+=- without '..'"):
            fit(tiny(), BATCHES, epochs=1, lr=0.1, progress=False, run_dir=run_dir, name=name)
    assert list(tmp_path.rglob("*")) == []
    for name in (run_name("ours", 0, tag="p0"), run_name("trades", 1, beta=0.1), run_name("madry", 0, "dra"),
                 run_name("trades", 2, beta=1e-5), "vanilla-resnet18w4", "vanilla-s2", "model"):
        _check_name(name)                                  # the repository's own names stay valid
    fit(tiny(), BATCHES, epochs=1, lr=0.1, progress=False, name="../x")   # no run_dir: the name names no file


# --- the metrics CSV beside a good checkpoint ------------------------------------------------------------

def test_an_empty_metrics_csv_is_rebuilt_from_the_last_checkpoint_else_one_line(tmp_path, capsys):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    pretrain(cfg, progress=False)
    csv = tmp_path / "metrics" / "vanilla.csv"
    good = csv.read_bytes()
    csv.write_bytes(b"")
    capsys.readouterr()
    _, history = pretrain(cfg, progress=False)
    out = capsys.readouterr().out
    assert "vanilla.csv was unreadable (No columns to parse from file); rebuilt it from the history in" in out
    pd.testing.assert_frame_equal(history, pd.read_csv(io.BytesIO(good)))
    assert csv.read_bytes() == good                                   # nothing written is lost
    csv.write_bytes(b"")
    (tmp_path / "checkpoints" / "vanilla.last.pt").unlink()
    with pytest.raises(RobustlibError, match=r"cannot read .*vanilla.csv \(No columns to parse from file\) and no "
                                             r"finished vanilla.last.pt keeps a copy; delete it and pass retrain=True"
                       ) as e:
        pretrain(cfg, progress=False)
    assert len(str(e.value).splitlines()) == 1 and csv.read_bytes() == b""
    _, history = pretrain(cfg, progress=False, retrain=True)          # the way out it names
    assert len(pd.read_csv(csv)) == len(history) == cfg.profile.epochs
