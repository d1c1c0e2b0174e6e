"""The unit of DRA's eps: the readings, N_eff, the decision by the paper's calibration point (both outcomes),
and the refusal of a fine-tune whose DRA would change nothing."""
import pytest
import torch
from torch import nn

import robustlib
from robustlib import RobustlibError, attacks, evaluate, methods
from robustlib.io import read_json

N = 3 * 32 * 32     # CIFAR-sized images: the paper's point needs e/r = 100 (per image) or N/2.55 (per value/255)


class Linear(nn.Module):
    """Two classes; class 1 wins by ``(10 / k) * sum_j (x_j - 0.5)`` over the ``k`` values of its support."""

    def __init__(self, k: int):
        super().__init__()
        w = torch.zeros(N)
        w[:k] = 10 / k                  # margins up to 0.5: the softmax never saturates
        self.register_buffer("w", w)

    def forward(self, x):
        score = (x.flatten(1) - 0.5) @ self.w
        return torch.stack([torch.zeros_like(score), score], 1)


def images(k: int, n: int = 400):
    """Class-1 images whose margin is ``10 u`` with u spread evenly in (0, 0.05]: PGD at r = 0.01 (per value
    on the k support values) breaks exactly those with u < 0.01, a fifth of them."""
    u = torch.linspace(0.05 / n, 0.05, n)
    x = torch.full((n, N), 0.5)
    x[:, :k] += u[:, None]
    return x.view(n, 3, 32, 32), torch.ones(n, dtype=torch.long)


def test_l1_budget_readings():
    assert attacks.l1_budget(2.0, 3072, "per_image") == 2.0
    assert attacks.l1_budget(0.1, 784, "per_value") == pytest.approx(78.4)
    assert attacks.l1_budget(1.0, 3072, "per_value/255") == pytest.approx(3072 / 255)
    with pytest.raises(ValueError, match="budget must be one of"):
        attacks.l1_budget(1.0, 10, "per_pixel")


def test_n_eff_counts_the_values_the_gradient_is_spread_over():
    for k in (1, 100, 1200):
        x, y = images(k, n=4)
        assert evaluate.n_eff(Linear(k), x, y) == pytest.approx(torch.full((4,), float(k)), rel=1e-4)


@pytest.mark.parametrize("k, reading", [(100, "per_image"), (1200, "per_value/255")])
def test_the_calibration_point_decides_the_reading(k, reading):
    # with the gradient on k values, DRA (L1 e) and PGD (Linf r) are equally strong at e / r = k: 100 is the
    # paper's point read per image, 1200 read per value in pixel levels
    x, y = images(k)
    found = evaluate.dra_readings(Linear(k), x, y, p=1.0, steps=5, dra_eps=1.0, pgd_eps="2.55/255")
    assert found["chosen"] == reading and found["predicted"] == reading
    assert found["pgd_robust_acc"] == pytest.approx(0.8, abs=0.01)
    assert found["n_eff"] == pytest.approx(k, rel=1e-3)
    chosen = next(r for r in found["readings"] if r["reading"] == reading)
    assert chosen["gap"] < 0.02 and chosen["ratio"] == pytest.approx(100 if k == 100 else N / 2.55)


def test_a_no_op_fine_tune_is_refused_before_it_trains(tmp_path):
    small = {"epochs": 2, "ft_epochs": 1, "val_size": 64}
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False,
                          overrides={**small, "ft_eps_max": 1e-4, "ft_eps_min": 1e-4})
    with pytest.raises(RobustlibError, match=r"changes 0\.0% of theta_std's correct held-out predictions.*no-op"):
        methods.train_method(cfg, "ours", progress=False)
    assert not list((tmp_path / "checkpoints").glob("ours*"))
    fine = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False,
                           overrides={**small, "ft_eps_max": 50.0})
    run = methods.build_run(fine, "ours", progress=False)           # a budget that does something
    assert run["adversary"].describe().startswith("DRA (eps=50")
    assert robustlib.setup("quick", smoke=True).profile.dra_min_effect == 0     # no evidence from a smoke model
    p0 = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False,
                         overrides={**small, "ft_eps_max": 1e-4, "ft_eps_min": 1e-4, "dra_p": 0.0})
    assert methods.build_run(p0, "ours", progress=False)["adversary"]   # p = 0 (Table VI's row) is meant to do nothing


def test_paper_reading_is_decided_once_and_recorded(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                          overrides={"dra_budget": "paper", "epochs": 1})
    resolved = methods.resolve_dra_budget(cfg)
    entry = read_json(tmp_path / "dra_budget.json")
    assert resolved.profile.dra_budget == entry["reading"] in ("per_image", "per_value")   # paper_unit "1"
    assert entry["chosen"] in ("per_image", "per_value/255") and entry["images"].startswith("held-out split")
    assert (entry["dra_p"], entry["dra_steps"]) == (1 / 3, 5)        # the paper's point, not the profile's p, T
    run = methods.build_run(cfg, "ours", progress=False)
    assert run["meta"]["settings"]["dra_budget"] == entry["reading"]       # the run is checked against it
    with pytest.raises(RobustlibError, match="is not resolved"):
        methods.calibrate(cfg, run["theta_std"], run["train"])
    # a variant with a theta_std of its own (a Table IV backbone) inherits the directory's reading
    other = cfg.variant("lr", lr=0.02)
    assert methods.resolve_dra_budget(other).profile.dra_budget == entry["reading"]
    assert read_json(tmp_path / "dra_budget.json") == entry                 # not decided again


@pytest.mark.parametrize("chosen, unit, reading", [("per_value/255", "1", "per_value"),
                                                   ("per_value/255", "1/255", "per_value/255"),
                                                   ("per_image", "1/255", "per_image")])
def test_the_paper_unit_maps_the_decision(tmp_path, monkeypatch, chosen, unit, reading):
    monkeypatch.setattr(methods, "dra_readings", lambda *a, **k: {"chosen": chosen, "readings": []})
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                          overrides={"dra_budget": "paper", "paper_unit": unit, "epochs": 1})
    assert methods.resolve_dra_budget(cfg).profile.dra_budget == reading


def test_a_variant_asking_first_gets_the_profiles_own_decision(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                          overrides={"dra_budget": "paper", "epochs": 1})
    first = methods.resolve_dra_budget(cfg.variant("lr", lr=0.02))          # another theta_std, asking first
    entry = read_json(tmp_path / "dra_budget.json")
    assert entry["theta_std_name"] == "vanilla" and first.profile.dra_budget == entry["reading"]
    assert first.tag == "lr" and first.profile.lr == 0.02                    # the variant stays the variant


def test_n_eff_with_the_top_p_mask():
    class Weighted(nn.Module):      # gradient proportional to w: 1 value of weight 3, 3 of weight 1, the rest 0
        def forward(self, x):
            w = torch.zeros(x[0].numel())
            w[0], w[1:4] = 3.0, 1.0
            s = x.flatten(1) @ w
            return torch.stack([torch.zeros_like(s), s], 1)

    x, y = torch.full((2, 1, 2, 4), 0.5), torch.ones(2, dtype=torch.long)     # N = 8
    assert attacks.effective_dimension(Weighted(), x, y) == pytest.approx(torch.full((2,), 36 / 12))   # 6^2 / 12
    assert attacks.effective_dimension(Weighted(), x, y, p=1 / 8) == pytest.approx(torch.full((2,), 36 / 9))  # top 1


def test_a_measurement_within_its_noise_leaves_the_decision_to_the_prediction():
    # 8 images: the two gaps (0 and 12.5 points) cannot be told apart, so N_eff (= k = 1200, near the
    # per-value/255 ratio) decides
    x, y = images(1200, n=8)
    found = evaluate.dra_readings(Linear(1200), x, y, p=1.0, steps=5, dra_eps=1.0, pgd_eps="2.55/255")
    assert found["measured"] is None and found["chosen"] == found["predicted"] == "per_value/255"
    assert found["decided_by"].startswith("N_eff prediction")
    many = evaluate.dra_readings(Linear(1200), *images(1200), p=1.0, steps=5, dra_eps=1.0, pgd_eps="2.55/255")
    assert many["measured"] == "per_value/255" and many["decided_by"] == "measurement"


def test_the_no_op_check_refuses_when_theta_std_gets_no_held_out_image_right(tmp_path):
    # with no correct prediction to change there is no evidence either way: refused, not silently passed
    from robustlib.data import ImageData
    from robustlib.losses import Adversary

    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False)
    x, y = images(100, n=16)
    wrong = ImageData("digits", "val", x, torch.zeros_like(y))       # Linear(100) says class 1 for every one
    adversary = Adversary("dra", eps=1.0, p=1 / 3, steps=2, budget="per_image")
    with pytest.raises(RobustlibError, match="classifies none of the first 16 held-out images correctly"):
        methods.check_dra_effect(cfg, Linear(100), wrong, adversary)
