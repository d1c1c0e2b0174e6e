"""The pieces notebook 04 is built from: variants, the replay ratio, train_grid, mean_std, AutoAttack subsets."""
import dataclasses

import pytest
import torch
from torch import nn

import robustlib
from robustlib.attacks import autoattack
from robustlib.io import RobustlibError
from robustlib.evaluate import accuracy
from robustlib import get_profile
from robustlib.config import apply_overrides
from robustlib.evaluate import evaluate_table, format_mean_std, mean_std
from robustlib.methods import run_name, train_grid, train_method
from robustlib.train import vanilla_name


def test_a_variant_names_its_runs_and_shares_theta_std_unless_the_model_changes(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    p0 = cfg.variant("p0", dra_p=0.0)
    assert p0.profile.dra_p == 0.0 and cfg.profile.dra_p == pytest.approx(1 / 3)
    assert p0.tag == "p0"
    assert vanilla_name(p0) == vanilla_name(cfg) == "vanilla"
    wide = cfg.variant("resnet18w4", model="resnet18", width=4)
    assert vanilla_name(wide) == "vanilla-resnet18w4" and vanilla_name(wide, 1) == "vanilla-resnet18w4-s1"
    assert vanilla_name(wide.variant("p0", dra_p=0.0)) == "vanilla-resnet18w4"    # only the tags theta_std reads
    assert run_name("ours", 0, tag=p0.tag) == "ours-p0-s0"
    assert cfg.variant("a", dra_p=0.5).variant("b", ft_epochs=3).tag == "a-b"
    assert cfg.variant("same", dra_p=cfg.profile.dra_p) is cfg          # no change: the profile's own runs
    with pytest.raises(RobustlibError, match="variant tag 'a b'"):
        cfg.variant("a b", dra_p=0.5)
    with pytest.raises(RobustlibError, match="unknown profile field"):
        cfg.variant("x", not_a_field=1)


def test_backbones_autoattack_subsets_and_ft_train_limit_are_validated():
    q = get_profile("quick")
    with pytest.raises(ValueError, match="backbones"):
        dataclasses.replace(q, backbones=("resnet7/8",))
    with pytest.raises(RobustlibError, match="backbones"):
        apply_overrides(q, {"backbones": ("resnet7/8",)})
    with pytest.raises(ValueError, match="backbones"):
        dataclasses.replace(q, backbones=("resnet18/wide",))
    with pytest.raises(ValueError, match="autoattack_attacks"):
        dataclasses.replace(q, autoattack_attacks=("apgd-ce", "magic"))
    with pytest.raises(ValueError, match="ft_train_limit"):
        dataclasses.replace(q, ft_train_limit=0)
    smoke = get_profile("paper-cifar10").shrink_for_smoke()
    assert smoke.backbones == ("resnet18/4", "resnet34/4")
    assert len(set(q.shrink_for_smoke().backbones)) == len(q.backbones)     # smoke keeps a ladder


def test_train_grid_and_mean_std(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    cfg = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, ft_epochs=1, train_limit=128))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    rows = [dict(name="p = 1/3", cfg=cfg, method="ours", p=1 / 3),
            dict(name="p = 1", cfg=cfg.variant("p1", dra_p=1.0), method="ours", p=1.0)]
    per_seed = train_grid(rows, x, y, seeds=(0, 1), eps_list=["0.1"])
    assert len(per_seed) == 4 and list(per_seed["run"][:2]) == ["ours-s0", "ours-p1-s0"]
    assert {"method", "natural", "pgd@0.1", "pgd-rs@0.1", "seed", "p"} <= set(per_seed.columns)
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "ours-p1-s1.pt").exists()
    # a variant's learning curve and best checkpoint are never read: it trains without the held-out check;
    # the profile's own run keeps it (notebook 03 draws its curve)
    assert (ckpt / "ours-s0.best.pt").exists() and not (ckpt / "ours-p1-s0.best.pt").exists()
    before = {n: (ckpt / n).stat().st_mtime_ns for n in ("ours-s0.pt", "ours-p1-s0.pt")}
    twice = train_grid(rows + rows, x, y, seeds=(0,), eps_list=["0.1"], retrain=True)
    assert list(twice["method"]) == [r["name"] for r in rows + rows]     # a name may repeat in one table
    # retrain redoes a tagged variant (once, though listed twice) and never the profile's own run (notebook 03's)
    assert (ckpt / "ours-s0.pt").stat().st_mtime_ns == before["ours-s0.pt"]
    assert (ckpt / "ours-p1-s0.pt").stat().st_mtime_ns > before["ours-p1-s0.pt"]
    # the seed's runs share one table, yet each model is attacked exactly as alone (its own seed, its own draw)
    alone = evaluate_table({"m": train_method(cfg.variant("p1", dra_p=1.0), "ours", seed=1, progress=False)["model"]},
                           x, y, eps_list=["0.1"], seed=1)
    row = per_seed[(per_seed.run == "ours-p1-s1")].iloc[0]
    assert [row[c] for c in ("natural", "pgd@0.1", "pgd-rs@0.1")] == [alone.loc[0, c] for c in ("natural", "pgd@0.1", "pgd-rs@0.1")]
    # the held-out columns a choice is made on, at each radius asked for (notebook 06: main_eps and its target)
    held = train_grid(rows[:1], x, y, seeds=(0,), eps_list=["0.1"], heldout=(x[:8], y[:8]), heldout_eps=["0.1", "0.03"])
    assert {"heldout natural", "heldout pgd@0.1", "heldout pgd@0.03"} <= set(held.columns)
    assert "heldout pgd@0.03" not in train_grid(rows[:1], x, y, seeds=(0,), eps_list=["0.1"], heldout=(x[:8], y[:8]),
                                                heldout_eps="0.1").columns
    with pytest.raises(RobustlibError, match="needs heldout_eps"):
        train_grid(rows[:1], x, y, seeds=(0,), eps_list=["0.1"], heldout=(x[:8], y[:8]))
    with pytest.raises(RobustlibError, match="no rows"):
        train_grid([], x, y, seeds=(0,), eps_list=["0.1"])
    mean, std = mean_std(per_seed)
    assert list(mean["method"]) == ["p = 1/3", "p = 1"] and "p" not in mean.columns
    # each row says what it rests on: the seeds averaged and the images every column was measured on
    assert list(mean["seeds"]) == [2, 2] and list(mean["images"]) == [len(y)] * 2 and "seeds" not in std.columns
    sel = per_seed[per_seed.method == "p = 1"]["natural"]
    assert mean.loc[1, "natural"] == pytest.approx(sel.mean()) and std.loc[1, "natural"] == pytest.approx(sel.std(ddof=1))
    one_seed = mean_std(per_seed[per_seed.seed == 0])[1]
    assert one_seed[["natural", "pgd@0.1"]].isna().all().all()          # no spread claimed from one seed
    shown = format_mean_std(mean, std)
    assert shown.loc["p = 1", "natural"] == f"{100 * sel.mean():.1f} ± {100 * sel.std(ddof=1):.1f}"


def test_evaluate_table_can_measure_clean_accuracy_on_the_whole_test_split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    t = evaluate_table({"m": model}, x[:8], y[:8], eps_list=["0.1"], natural_on=(x, y))
    assert t.loc[0, "natural-all"] == pytest.approx(accuracy(model, x, y))
    assert t.loc[0, "natural"] == pytest.approx(accuracy(model, x[:8], y[:8]))
    mean, _ = mean_std(t.assign(seed=0))
    assert "natural-all" in mean.columns and "natural-all" in format_mean_std(mean, mean).columns


def test_autoattack_subset_runs_only_the_named_attacks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    xa = autoattack(model, x, y, eps=0.1, attacks=("apgd-ce",))
    assert (xa - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="unknown AutoAttack attacks"):
        autoattack(model, x, y, eps=0.1, attacks=("apgd-xx",))
