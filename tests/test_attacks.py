"""Attacks: agreement with an independent implementation, bounds, Algorithm 1 by hand, hygiene, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlib import evaluate as E
from robustlib.attacks import ATTACKS, autoattack, dra, fgsm, input_gradient, pgd
from robustlib.data import TensorLoader, load_dataset
from robustlib.models import build_model
from robustlib.train import fit


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.38])
    fit(model, TensorLoader(train, batch_size=64, shuffle=True, seed=0), epochs=3, lr=0.05, progress=False)
    return model.eval(), test.float_x()[:96], test.y[:96]


def test_pgd_equals_torchattacks(trained):
    torchattacks = pytest.importorskip("torchattacks")   # installed by `make test` (--no-deps, see Makefile)
    model, x, y = trained
    ours = pgd(model, x, y, eps=0.1, steps=10, step_size=0.02, random_start=False)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert (ours != x).any()


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_eps_ball_and_unit_box(trained, random_start):
    model, x, y = trained
    xa = pgd(model, x, y, eps=8 / 255, steps=5, step_size=2 / 255, random_start=random_start, seed=1)
    assert (xa - x).abs().max() <= 8 / 255 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert E.accuracy(model, xa, y) < E.accuracy(model, x, y)


def test_fgsm_is_one_signed_step(trained):
    model, x, y = trained
    xa = fgsm(model, x, y, eps=0.05)
    d = (xa - x)[(x > 0.05) & (x < 0.95)]               # away from the box edges every value moves by eps
    assert torch.allclose(d.abs(), torch.full_like(d, 0.05), atol=1e-6)


def test_pgd_random_start_is_deterministic_under_a_seed(trained):
    model, x, y = trained
    a = pgd(model, x, y, eps=0.1, steps=2, step_size=0.05, random_start=True, seed=7)
    b = pgd(model, x, y, eps=0.1, steps=2, step_size=0.05, random_start=True, seed=7)
    c = pgd(model, x, y, eps=0.1, steps=2, step_size=0.05, random_start=True, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("p", [0.1, 1 / 3, 2 / 3, 1.0])
def test_dra_changes_at_most_k_values_per_image(trained, p):
    model, x, y = trained
    xa = dra(model, x, y, eps=2.0, p=p, steps=5)
    changed = (xa != x).flatten(1).sum(1)
    assert changed.max() <= round(p * 64) and changed.float().mean() > 0.5 * round(p * 64) * 0.5
    assert xa.min() >= 0 and xa.max() <= 1


def test_dra_l1_budget_before_truncation(trained):
    model, x, y = trained
    full = dra(model, x, y, eps=1.5, p=1.0, steps=10)          # p = 1 keeps everything: x_T itself
    assert (full - x).abs().flatten(1).sum(1).max() <= 1.5 + 1e-5
    mid = torch.full_like(x, 0.5)                              # far from the box edges: no clipping,
    step = dra(model, mid, y, eps=0.2, p=1.0, steps=1)         # so one step moves exactly alpha = eps in L1
    assert torch.allclose((step - mid).abs().flatten(1).sum(1), torch.full((len(x),), 0.2), atol=1e-5)
    per_value = dra(model, mid, y, eps=0.2 / 64, p=1.0, steps=1, budget="per_value")
    assert torch.allclose(per_value, step, atol=1e-6)          # per_value eps * N == per_image eps


def test_dra_matches_a_hand_computation_on_a_linear_model():
    torch.manual_seed(3)
    lin = nn.Linear(12, 3).double()
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(5, 1, 3, 4, dtype=torch.float64) * 0.6 + 0.2
    y = torch.tensor([0, 1, 2, 1, 0])
    eps, p, T = 0.3, 0.5, 3
    W, b = lin.weight.detach(), lin.bias.detach()
    xt, xf = x.flatten(1).clone(), x.flatten(1)
    for _ in range(T):   # closed-form cross-entropy gradient of a linear model: W^T (softmax(Wx + b) - onehot(y))
        g = (torch.softmax(xt @ W.T + b, 1) - F.one_hot(y, 3).double()) @ W
        xt = (xt + (eps / T) * g / g.abs().sum(1, keepdim=True)).clamp(0, 1)
    k = round(p * 12)
    expected = xf.clone()
    for i in range(5):   # keep the k values with the largest |g| of the last gradient
        top = g[i].abs().argsort(descending=True)[:k]
        expected[i, top] = xt[i, top]
    got = dra(model, x, y, eps=eps, p=p, steps=T)
    assert torch.allclose(got.flatten(1), expected, atol=1e-12)


def test_dra_edge_cases(trained):
    model, x, y = trained
    assert torch.equal(dra(model, x, y, eps=1.0, p=0.0, steps=5), x)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(flat[1].weight)
    out = dra(flat, x, y, eps=1.0, p=0.5, steps=3)            # zero gradient: no step, no NaN
    assert torch.isfinite(out).all() and torch.equal(out, x)


class CountingModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("rank_by,passes", [("last_grad", 5), ("perturbation", 5), ("final_grad", 6)])
def test_dra_costs_t_passes(trained, rank_by, passes):
    model, x, y = trained
    counting = CountingModel(model)
    xa = dra(counting, x, y, eps=1.0, p=1 / 3, steps=5, rank_by=rank_by)
    assert counting.calls == passes and (xa != x).any()


def test_rank_options_differ(trained):
    model, x, y = trained
    outs = {r: dra(model, x, y, eps=2.0, p=0.25, steps=5, rank_by=r) for r in ("last_grad", "final_grad", "perturbation")}
    assert not torch.equal(outs["last_grad"], outs["perturbation"])


@pytest.mark.parametrize("name", ["fgsm", "pgd", "dra"])
def test_attacks_restore_mode_and_leave_no_parameter_gradients(name):
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=3, image_size=32, width=4)
    model.train()
    stats = model.net.bn1.running_mean.clone()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    kwargs = {"fgsm": dict(eps=0.03), "pgd": dict(eps=0.03, steps=2, step_size=0.01),
              "dra": dict(eps=1.0, p=0.5, steps=2)}[name]
    ATTACKS[name](model, x, y, **kwargs)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.net.bn1.running_mean, stats)      # eval mode: batch-norm statistics untouched


@pytest.mark.parametrize("call,message", [
    (lambda m, x, y: pgd(m, x, y, eps=-0.1, steps=3, step_size=0.01), "eps must be"),
    (lambda m, x, y: pgd(m, x, y, eps=0.1, steps=0, step_size=0.01), "steps must be"),
    (lambda m, x, y: dra(m, x, y, eps=1.0, p=1.5, steps=3), "p must be a fraction"),
    (lambda m, x, y: dra(m, x, y, eps=1.0, p=0.5, steps=3, rank_by="x"), "rank_by must be"),
    (lambda m, x, y: dra(m, x * 255, y, eps=1.0, p=0.5, steps=3), "x must lie in \\[0, 1\\]"),
    (lambda m, x, y: fgsm(m, x, y[:3], eps=0.1), "one label per image"),
    (lambda m, x, y: fgsm(m, (x * 255).byte(), y, eps=0.1), "float tensor"),
])
def test_bad_arguments_are_clear_value_errors(trained, call, message):
    model, x, y = trained
    with pytest.raises(ValueError, match=message):
        call(model, x, y)


def test_eval_predictions_do_not_depend_on_batch_size():
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=3, image_size=32, width=4)
    model.train()
    for _ in range(3):                                          # give batch norm non-trivial statistics
        model(torch.rand(16, 3, 32, 32))
    x = torch.rand(10, 3, 32, 32)
    assert torch.equal(E.predict(model, x, batch_size=1), E.predict(model, x, batch_size=7))


def test_paper_protocol_row_states_settings_and_keeps_eps_exact(trained):
    model, x, y = trained
    row, xa = E.robust_accuracy(model, x, y, eps="8/255", protocol="paper")
    assert row["eps"] == "8/255" and row["eps_value"] == 8 / 255
    assert row["attack"] == "PGD-20, eps=8/255, step=8/255/20, no random start"
    assert math.isclose(row["robust_acc"], E.accuracy(model, xa, y))
    assert row["robust_acc"] <= row["clean_acc"]


def test_strong_protocol_is_the_worst_case_and_reproducible_from_its_batch(trained, tmp_path):
    model, x, y = trained
    x, y = x[:12], y[:12]
    row, xa = E.robust_accuracy(model, x, y, eps=0.1, protocol="strong", state_dir=tmp_path)
    assert row["robust_acc"] <= row["pgd_rs_acc"] <= row["clean_acc"]
    assert math.isclose(row["robust_acc"], E.accuracy(model, xa, y))   # the reported number is the batch's
    assert (xa - x).abs().max() <= 0.1 + 1e-6


def test_autoattack_resumes_from_its_state_dir(trained, tmp_path, monkeypatch):
    model, x, y = trained
    x, y = x[:16], y[:16]
    first = autoattack(model, x, y, eps=0.3, state_dir=tmp_path, chunk_size=8)
    assert len(list(tmp_path.glob("autoattack-Linf-*.pt"))) == 2
    import pyautoattack

    def refuse(*a, **k):
        raise AssertionError("a finished chunk was attacked again")
    monkeypatch.setattr(pyautoattack, "AutoAttack", refuse)
    again = autoattack(model, x, y, eps=0.3, state_dir=tmp_path, chunk_size=8)
    assert torch.equal(first, again)


def test_success_rate_and_perturbation_stats(trained):
    model, x, y = trained
    xa = dra(model, x, y, eps=2.0, p=0.5, steps=5)
    asr = E.attack_success_rate(model, x, y, xa)
    assert 0 <= asr <= 1
    stats = E.perturbation_stats(x, xa)
    assert stats.loc["max", "L0"] <= 32 and stats.loc["max", "L1"] <= 2.0 + 1e-5
    assert set(stats.columns) == {"L0", "L1", "L2", "Linf"}


def test_environment_keeps_jupyterlab_beside_the_test_only_torchattacks():
    import importlib

    import jupyterlab  # noqa: F401  (the notebooks' front end must survive the torchattacks install)
    requests = importlib.import_module("requests")
    assert tuple(int(v) for v in requests.__version__.split(".")[:2]) >= (2, 28)   # not torchattacks' 2.25 pin


def test_calibration_finds_a_pgd_radius_of_equal_strength(trained):
    model, x, y = trained
    c = E.calibrate_pgd_to_dra(model, x, y, dra_eps=3.0, p=1 / 3, steps=5, iters=10)
    assert c["converged"] and 0 < c["pgd_eps"] < 0.5
    assert abs(c["pgd_robust_acc"] - c["dra_robust_acc"]) <= 0.05
    row, _ = E.robust_accuracy(model, x, y, eps=c["pgd_eps"])
    assert row["robust_acc"] == c["pgd_robust_acc"]                    # reproducible from the stored radius


def test_labels_must_be_an_integer_tensor(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="integer tensor of class labels"):
        pgd(model, x, y.float(), eps=0.1, steps=2, step_size=0.05)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        E.run_attack("cw", model, x, y)
    with pytest.raises(ValueError, match="cannot read eps"):
        E.parse_eps(None)


def test_run_attack_seeds_each_batch_of_an_attack_that_takes_a_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 10, (10,))
    kw = dict(eps=0.1, steps=2, step_factor=2.5, random_start=True)
    whole = E.run_attack("pgd", model, x, y, batch_size=4, seed=7, **kw)
    assert torch.equal(whole[4:8], pgd(model, x[4:8], y[4:8], seed=8, **kw))      # batch 1 gets seed + 1
    assert E.takes_seed(pgd) and not E.takes_seed(dra)
    assert E.run_attack("dra", model, x, y, batch_size=4, eps=1.0, p=0.5, steps=2).shape == x.shape
    with pytest.raises(ValueError, match="protocol 'paper' takes no state_dirr; its options: none"):
        E.robust_accuracy(model, x, y, eps=0.1, protocol="paper", state_dirr="/tmp")


def test_pgd_rs_counts_an_image_only_if_it_is_also_correct_clean(monkeypatch):
    # class k is the brightest of the first 10 pixels; half the images are lit at a wrong class, and the
    # "attack" lights the true one: those are wrong clean and right attacked, and must not count
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(10, 64))
    y = torch.arange(20) % 10
    lit = torch.where(torch.arange(20) < 10, y, (y + 1) % 10)
    x = torch.zeros(20, 64).scatter_(1, lit[:, None], 1.0).view(20, 1, 8, 8)
    oracle = lambda m, xb, yb, **_: torch.zeros(len(yb), 64).scatter_(1, yb[:, None], 1.0).view(-1, 1, 8, 8)
    monkeypatch.setitem(E.ATTACKS, "pgd", oracle)
    t = E.evaluate_table({"m": model}, x, y, eps_list=["0.1"])
    assert t.loc[0, "natural"] == 0.5 and t.loc[0, "pgd@0.1"] == 0.5 and t.loc[0, "pgd-rs@0.1"] == 0.5


def test_strong_runs_on_a_random_subset_beside_pgd_rs_on_the_same_images():
    idx = E.attack_subset(360, 100, seed=0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and not torch.equal(idx, torch.arange(100))
    assert torch.equal(idx, E.attack_subset(360, 100, seed=0)) and bool((idx[1:] > idx[:-1]).all())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(24, 1, 8, 8)
    y = E.predict(model, x)                                              # every image correct clean
    t = E.evaluate_table({"m": model}, x, y, eps_list=["0.05"], autoattack_eps="0.05", autoattack_n=12,
                         autoattack_attacks=("apgd-ce",))
    assert list(t.columns) == ["method", "natural", "pgd@0.05", "pgd-rs@0.05", "natural (aa)", "pgd-rs@0.05 (aa)",
                               "strong@0.05", "images (aa)", "images"]
    assert (t.loc[0, "images (aa)"], t.loc[0, "images"]) == (12, 24)
    sub = E.attack_subset(24, 12, seed=0)
    same = E.robust_accuracy(model, x[sub], y[sub], eps="0.05", protocol="pgd-rs", seed=0)[0]["robust_acc"]
    assert t.loc[0, "pgd-rs@0.05 (aa)"] == pytest.approx(same)           # pgd-rs on strong's own images
    assert t.loc[0, "strong@0.05"] <= t.loc[0, "pgd-rs@0.05 (aa)"] <= t.loc[0, "natural (aa)"] == 1.0


def test_under_bf16_autocast_the_attacks_keep_their_bounds_and_half_precision_images_are_refused():
    """The model may compute in bfloat16 (torch.autocast); the attacks' arithmetic stays float32 (the input
    gradient of a float32 image is float32), so PGD's ball, DRA's L1 budget and its top-p mask still hold."""
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=3, image_size=32, width=4).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert input_gradient(model, x, y).dtype == torch.float32
        xa = pgd(model, x, y, eps=8 / 255, steps=3, step_factor=2.5, random_start=True)
        xd = dra(model, x, y, eps=2.0, p=1 / 3, steps=3)
    assert xa.dtype == xd.dtype == torch.float32
    assert (xa - x).abs().max() <= 8 / 255 + 1e-7 and xa.min() >= 0 and xa.max() <= 1
    d = (xd - x).flatten(1)
    assert (d.abs().sum(1) <= 2.0 + 1e-5).all() and ((d != 0).sum(1) <= round(3072 / 3)).all()
    assert (d != 0).any()                                   # it moved: the bounds are not held by doing nothing
    for half in (torch.bfloat16, torch.float16):
        with pytest.raises(ValueError, match="at half precision an attack's budget cannot hold") as e:
            pgd(model, x.to(half), y, eps=8 / 255, steps=1, step_factor=1.0)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", ["paper", "pgd-rs"])
def test_bf16_attack_iterates_keep_the_ball_decide_in_fp32_and_hand_the_model_back(trained, protocol):
    """attack_precision bf16: the tables' PGD iterates (fast=True) under bf16 autocast with channels-last weights;
    the ball holds, the settings say so, robust means "predicted right in float32 on the image it returns", and
    the model leaves in the memory format it came in. Without fast=True (a calibration) nothing changes."""
    model, x, y = trained
    fp32_row, fp32_adv = E.robust_accuracy(model, x, y, eps="0.1", protocol=protocol)
    assert "bf16" not in fp32_row["attack"] and E.attack_precision() == "fp32"
    for start in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=start)
        E.set_attack_precision("bf16")
        try:
            row, xa = E.robust_accuracy(model, x, y, eps="0.1", protocol=protocol, fast=True)
            plain, plain_adv = E.robust_accuracy(model, x, y, eps="0.1", protocol=protocol)
        finally:
            E.set_attack_precision("fp32")
        assert "iterates in bf16, decisions in fp32" in row["attack"]
        assert plain["attack"] == fp32_row["attack"] and torch.equal(plain_adv, fp32_adv)   # float32 when not asked
        assert xa.dtype == torch.float32 and (xa - x).abs().max() <= 0.1 + 1e-6 and 0 <= xa.min() <= xa.max() <= 1
        assert (xa != x).any()
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=start) for p in convs), start
        model.to(memory_format=torch.contiguous_format)
        robust = (E.predict(model, x) == y) & (E.predict(model, xa) == y)
        assert row["robust_acc"] == pytest.approx(robust.float().mean().item())
        assert row["clean_acc"] == fp32_row["clean_acc"]        # the clean decision is float32 either way
    with pytest.raises(ValueError, match="attack precision 'auto': use fp32 or bf16"):
        E.set_attack_precision("auto")


def test_under_bf16_the_tables_and_the_masking_probes_attack_alike(trained):
    """evaluate_table's columns are robust_accuracy(fast=True)'s; strong's PGD half is bf16 and says so; the
    masking probe's PGD-20 baseline is the very pgd-rs (aa) of the table (like with like for the restarts check)."""
    from robustlib import masking
    model, x, y = trained
    E.set_attack_precision("bf16")
    try:
        t = E.evaluate_table({"m": model}, x, y, eps_list=["0.1"], autoattack_eps="0.1", autoattack_n=24,
                             autoattack_attacks=("apgd-ce",))
        same = E.robust_accuracy(model, x, y, eps="0.1", protocol="pgd-rs", fast=True)[0]["robust_acc"]
        sub = E.attack_subset(len(y), 24, seed=0)
        strong = E.robust_accuracy(model, x[sub], y[sub], eps="0.1", protocol="strong", fast=True,
                                   autoattack_attacks=("apgd-ce",))[0]
        probe = masking.probe(model, x, y, eps="0.1", n=24, steps=5, restarts=1)
        chooser = E.evaluate_table({"m": model}, x, y, eps_list=["0.1"], fast=False)   # a held-out selection's
    finally:
        E.set_attack_precision("fp32")
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(chooser, E.evaluate_table({"m": model}, x, y, eps_list=["0.1"]))  # float32
    assert t.loc[0, "pgd-rs@0.1"] == pytest.approx(same)
    assert "iterates in bf16, decisions in fp32" in strong["attack"] and "AutoAttack" in strong["attack"]
    assert t.loc[0, "pgd-rs@0.1 (aa)"] == pytest.approx(strong["pgd_rs_acc"]) == pytest.approx(probe["pgd-rs@0.1 (aa)"])


def test_setup_sets_the_attack_precision_from_the_profile():
    from unittest import mock

    import robustlib

    for native, expect in ((True, "bf16"), (False, "fp32")):
        with mock.patch("robustlib.train.native_bf16", lambda device, n=native: n):
            cfg = robustlib.setup("fashion", device="cpu", create=False)
            assert E.attack_precision() == expect
            said = str(cfg).splitlines()
            assert any(line.startswith("device") and ("attack iterates in bf16" in line) == native for line in said)
    robustlib.setup("quick", device="cpu", create=False)
    assert E.attack_precision() == "fp32"
    robustlib.setup("quick", device="cpu", create=False, overrides={"attack_precision": "bf16"})
    assert E.attack_precision() == "bf16"
