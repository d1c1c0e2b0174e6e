"""Every choice of a training setting reads the held-out split; the test split waits for the final evaluation."""
import pytest
import torch

import robustlib
from robustlib import RobustlibError, evaluate, methods
from robustlib.data import load_splits


class Untouchable:
    """Stands in for the test split: any read of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name}) before the final evaluation")

    def __len__(self):
        raise AssertionError("the test split was read (len) before the final evaluation")


def test_training_selection_and_calibration_never_read_the_test_split(tmp_path, one_thread):
    # dra_budget "paper" and a no-op floor: the budget decision and the no-op check run too
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False,
                          overrides={"epochs": 1, "ft_epochs": 2, "train_limit": 300, "val_size": 64,
                                     "dra_budget": "paper", "dra_min_effect": 0.01, "ft_eps_max": 50.0})
    train, _ = load_splits(cfg.profile, cfg.data_root)
    data = (train, Untouchable())
    vanilla = methods.train_method(cfg, "vanilla", data=data, progress=False)
    assert "val_acc" in vanilla["history"] and "test_acc" not in vanilla["history"]
    for method in ("ours", "madry", "ours-constrained"):
        run = methods.train_method(cfg, method, data=data, progress=False)      # best epoch: held-out PGD
        assert {"val_acc", "val_robust_acc"} <= set(run["history"].columns)
    decision = methods.budget_decision(cfg, data)
    assert decision["images"].startswith("held-out split: 64 images") and decision["n"] == 64
    calib = methods.calibrate(methods.resolve_dra_budget(cfg, data), vanilla["model"], train)
    assert calib["images"].startswith(f"held-out split: {cfg.profile.val_size} images")
    assert calib["n"] == cfg.profile.val_size


def test_no_held_out_images_is_refused_for_a_calibration(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True, overrides={"val_size": 0})
    train, _ = load_splits(cfg.profile, cfg.data_root)
    with pytest.raises(RobustlibError, match="holds out no images.*set val_size"):
        methods.calibrate(cfg, torch.nn.Identity(), train)


def test_robust_counts_need_a_correct_clean_prediction():
    # a "model" that is wrong on every clean image and right on the shifted ones: no image is robust
    class Shifted(torch.nn.Module):          # class 1 where the mean pixel is above 0.5, else class 0
        def forward(self, x):
            score = 10 * (x.flatten(1).mean(1, keepdim=True) - 0.5)
            return torch.cat([torch.zeros_like(score), score, torch.full((len(x), 8), -1e3)], 1)

    x, y = torch.zeros(6, 1, 8, 8), torch.ones(6, dtype=torch.long)
    x_adv = torch.ones(6, 1, 8, 8)
    assert evaluate.accuracy(Shifted(), x_adv, y) == 1.0
    assert evaluate.robust_fraction(Shifted(), x, x_adv, y) == 0.0
    m = methods.heldout_metrics(Shifted(), x, y, eps=0.0001, steps=1)
    assert m["val_acc"] == 0.0 and m["val_robust_acc"] == 0.0
