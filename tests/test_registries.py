"""Adding one idea is one entry in one registry.

A toy dataset, a toy training method, a toy training adversary and a toy evaluation protocol are each
registered from outside the package (one entry each, in ``data.DATASETS``, ``methods.METHODS``,
``attacks.ATTACKS`` and ``evaluate.PROTOCOLS``) and run through ``fit``, the methods table and the calls
the notebooks make.
"""
import pytest
import torch
import torch.nn.functional as F

import robustlib
from robustlib import attacks, data, evaluate, methods
from robustlib.profiles import parse_eps


def _toy_images(root, split, download):
    """Three classes of 8x8 images: a bright top, middle or bottom band on faint noise."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 300 if split == "train" else 90
    y = torch.arange(n) % 3
    x = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    for k in range(3):
        x[y == k, :, 3 * k:3 * k + 2, :] += 0.7
    return data.ImageData("toy", split, x.clamp(0, 1), y)


def _toy_loss(model, x, y, *, attack):
    """A toy method: the adversarial cross-entropy plus half the clean one."""
    logits = model(x)
    adv = F.cross_entropy(model(attack(model, x, y)), y)
    return adv + 0.5 * F.cross_entropy(logits, y), logits, {"adv_loss": adv.detach()}


def _toy_attack(model, x, y, *, eps, loss_fn=None, x_init=None):
    """A toy adversary: every value moved by eps against its class's band (no gradient at all)."""
    return (x - eps * (2 * x.gt(0.5).float() - 1)).clamp(0, 1)


def _toy_protocol(model, x, y, ok, *, eps, label, steps, batch_size, seed, **_):
    """A toy protocol: the toy attack, counted like the paper protocol (robust only if also correct clean)."""
    x_adv = _toy_attack(model, x, y, eps=eps)
    return ok & (evaluate.predict(model, x_adv) == y), x_adv, f"toy attack, eps={label}", {}


@pytest.fixture
def registered(monkeypatch, tmp_path):
    info = data.DatasetInfo(3, 1, 8, (0.3,), (0.3,), ("top", "middle", "bottom"), 1, False, _toy_images)
    monkeypatch.setitem(data.DATASETS, "toy", info)
    monkeypatch.setitem(methods.METHODS, "toy", methods.Method(_toy_loss, "pgd"))
    monkeypatch.setitem(attacks.ATTACKS, "toy", attacks.Attack(
        _toy_attack, lambda e, **_: f"toy (eps={e})", lambda p, scheduled: (parse_eps(p.main_eps)[0], None, {})))
    monkeypatch.setitem(evaluate.PROTOCOLS, "toy", evaluate.Protocol("toy", "the toy attack", _toy_protocol))
    return robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                           overrides={"dataset": "toy", "val_size": 30, "eval_eps": ["0.1"]})


def test_a_dataset_method_adversary_and_protocol_are_one_entry_each(registered, tmp_path):
    cfg = registered
    train, test = data.load_splits(cfg.profile, cfg.data_root)          # the dataset: through the profile
    assert train.info.classes == ("top", "middle", "bottom") and test.x.shape[1:] == (1, 8, 8)

    toy = methods.train_method(cfg, "toy", progress=False)             # the method: through fit
    assert toy["name"] == "toy-s0" and len(toy["history"]) == cfg.profile.ft_epochs
    assert toy["history"]["adv_loss"].notna().all() and (tmp_path / "checkpoints" / "toy-s0.pt").exists()
    assert toy["adversary"].startswith("PGD-")

    madry_toy = methods.train_method(cfg, "madry", adversary="toy", progress=False)   # the adversary
    assert madry_toy["name"] == "madry-toy-s0" and madry_toy["adversary"] == "toy (eps=0.1)"

    x, y = test.float_x(), test.y
    table = evaluate.evaluate_table({"Toy": toy["model"], "Madry + toy": madry_toy["model"]}, x, y,
                                    eps_list=["0.1"], protocols=("paper", "toy"))   # the protocol: a column
    assert list(table.columns) == ["method", "natural", "pgd@0.1", "toy@0.1", "images"]
    assert (table["toy@0.1"] <= table["natural"] + 1e-9).all()
    row, _ = evaluate.robust_accuracy(toy["model"], x, y, eps="0.1", protocol="toy")
    assert row["attack"] == "toy attack, eps=0.1" and row["robust_acc"] == pytest.approx(table.loc[0, "toy@0.1"])

    # the notebook-style call (notebook 04's grid) takes the new method and adversary by name, and loads
    grid = methods.train_grid([dict(name="Toy", cfg=cfg, method="toy"),
                               dict(name="Madry + toy", cfg=cfg, method="madry", adversary="toy")],
                              x, y, seeds=(0,), eps_list=["0.1"])
    assert list(grid["run"]) == ["toy-s0", "madry-toy-s0"]
    assert grid.loc[0, "natural"] == pytest.approx(table.loc[0, "natural"])


def test_unknown_registry_names_are_one_clear_line(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    with pytest.raises(robustlib.RobustlibError, match="unknown method 'nope'; choose one of vanilla"):
        methods.train_method(cfg, "nope", progress=False)
    with pytest.raises(robustlib.RobustlibError,
                       match="unknown training adversary 'nope'; choose one of fgsm, pgd, dra"):
        methods.train_method(cfg, "madry", adversary="nope", progress=False)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate.evaluate_table({}, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), eps_list=["0.1"], protocols=("x",))
    with pytest.raises(robustlib.RobustlibError, match="dataset='nope' is invalid"):
        robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), overrides={"dataset": "nope"})
