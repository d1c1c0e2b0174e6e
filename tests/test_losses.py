"""Objectives and the method runner: the schedule, the replay, TRADES/MART against hand computations, λ."""
import dataclasses
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlib
from robustlib import get_profile
from robustlib.evaluate import evaluate_table
from robustlib.losses import Adversary, Constrained, EpsSchedule, finetune, madry, madry_mix, mart, trades
from robustlib.methods import train_method
from robustlib.train import batch_updates, fit


def test_eps_schedule_is_section_va_scaled_to_the_epochs():
    s = EpsSchedule(2.0, 0.5, 60)                          # CIFAR-10: 2 -> 0.5 over 50 epochs, 10 clean
    assert s.adversarial_epochs == 50
    assert s(0) == 2.0 and s(49) == pytest.approx(0.5) and s(25) == pytest.approx(2 - 1.5 * 25 / 49)
    assert all(s(e) == 0 for e in range(50, 60))
    short = EpsSchedule(6.0, 1.5, 12)
    assert [short(e) > 0 for e in range(12)] == [True] * 10 + [False] * 2
    assert EpsSchedule(1.0, 0.2, 6, kind="constant", clean_tail=False)(5) == 1.0


def fixed(x_adv):
    """An attack that returns a given adversarial batch, to compare objectives with hand computations."""
    return lambda model, x, y, loss_fn=None, x_init=None: x_adv


def updates(objective, x_adv, model, x, y, **kwargs):
    """The updates fit makes for one batch, as a list of (loss, logits, parts), with the weights unchanged."""
    return list(batch_updates(objective, fixed(x_adv), model, x, y, **kwargs))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(6, 1, 4, 4)
    return model, x, torch.tensor([0, 1, 2, 3, 0, 1]), (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def test_finetune_replays_clean_and_adversarial_one_to_one(batch):
    model, x, y, xa = batch
    (update,) = updates(finetune, xa, model, x, y)
    loss, _, parts = update
    expected = (F.cross_entropy(model(x), y) + F.cross_entropy(model(xa), y)) / 2
    assert torch.allclose(loss, expected) and set(parts) == {"clean_loss", "adv_loss"}
    assert len(updates(madry, xa, model, x, y, replay="alternating")) == 2
    schedule = Adversary("pgd", eps=EpsSchedule(1.0, 0.5, 6), steps=1, step_factor=1.0)
    assert schedule.at(5) is None                                                  # epoch 6: the clean-only tail
    tail = list(batch_updates(finetune, schedule.at(5), model, x, y, clean_tail=True))
    assert len(tail) == 1 and torch.allclose(tail[0][0], F.cross_entropy(model(x), y))


def test_trades_and_mart_match_their_reference_formulas(batch):
    model, x, y, xa = batch
    loss, _, parts = trades(model, x, y, attack=fixed(xa), beta=6.0)
    kl = F.kl_div(F.log_softmax(model(xa), 1), F.softmax(model(x), 1), reduction="sum") / len(x)
    assert torch.allclose(loss, F.cross_entropy(model(x), y) + 6.0 * kl, atol=1e-6)

    loss, _, _ = mart(model, x, y, attack=fixed(xa), beta=6.0)
    pa, pn = F.softmax(model(xa), 1), F.softmax(model(x), 1)
    other = pa.clone()
    other[torch.arange(6), y] = -1                        # the most likely wrong class
    bce = F.cross_entropy(model(xa), y) - torch.log(1.0001 - pa[torch.arange(6), other.argmax(1)] + 1e-12).mean()
    kl = ((pn * (torch.log(pn) - torch.log(pa + 1e-12))).sum(1) * (1.0000001 - pn[torch.arange(6), y])).mean()
    assert torch.allclose(loss, bce + 6.0 * kl, atol=1e-5)

    loss, _, _ = madry_mix(model, x, y, attack=fixed(xa))
    assert torch.allclose(loss, F.cross_entropy(model(x), y) + F.cross_entropy(model(xa), y))


def test_constrained_multiplier_follows_the_constraint(batch):
    model, x, y, xa = batch
    def confidently_wrong():
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
        with torch.no_grad():
            m[1].weight.zero_()
            m[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 20.0]))     # always class 3: a huge clean loss
        return m
    obj = Constrained.for_theta_std(model, (x, y), lam=1.0, lam_lr=0.1)
    out = obj.end_epoch(confidently_wrong())              # clean loss far above theta_std's: lambda rises
    assert out["constraint_gap"] > 5 and out["lambda"] == 1.0 and obj.lam > 1.5
    relaxed = Constrained.for_theta_std(confidently_wrong(), (x, y), lam=1.0, lam_lr=10.0)
    relaxed.end_epoch(model)                              # far below theta_std's: lambda falls, never below 0
    assert relaxed.lam == 0.0
    loss, _, _ = obj(model, x, y, attack=fixed(xa))
    expected = (F.cross_entropy(model(xa), y) + obj.lam * F.cross_entropy(model(x), y)) / (1 + obj.lam)
    assert torch.allclose(loss, expected)                 # normalised: the recipe's 1:1 mean at lambda = 1
    at_one = Constrained.for_theta_std(model, (x, y), lam=1.0)
    recipe, _, _ = finetune(model, x, y, attack=fixed(xa))
    assert torch.allclose(at_one(model, x, y, attack=fixed(xa))[0], recipe)
    assert obj.state_dict() == {"lam": obj.lam}


def test_fit_takes_any_module_and_any_dataloader_for_the_finetune():
    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    adv = Adversary("dra", eps=EpsSchedule(2.0, 0.5, 3), steps=3, p=1 / 3)
    hist = fit(model, loader, epochs=3, lr=0.05, objective="finetune", adversary=adv, progress=False)
    assert {"clean_loss", "adv_loss", "train_loss"} <= set(hist.columns)
    assert hist["adv_loss"].isna().tolist() == [False, False, True]       # epoch 3 is the clean-only tail


@pytest.mark.parametrize("method", ["ours", "ours-constrained", "trades", "mart", "madry", "control", "ours-trades",
                                    "ours-swa"])
def test_every_method_trains_checkpoints_and_reloads(tmp_path, method):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    r = train_method(cfg, method, progress=False)
    hist = r["history"]
    assert len(hist) == cfg.profile.ft_epochs and {"val_acc", "val_robust_acc"} <= set(hist.columns)
    assert (tmp_path / "checkpoints" / f"{r['name']}.best.pt").exists()
    if method == "ours-constrained":
        assert "lambda" in hist.columns
    again = train_method(cfg, method, progress=False)     # second call loads, does not train
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(again["model"](x), r["model"](x))


def test_evaluate_table_columns_keep_eps_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    t = evaluate_table({"A": model}, x, y, eps_list=["0.1", "8/255"])
    assert list(t.columns) == ["method", "natural", "pgd@0.1", "pgd-rs@0.1", "pgd@8/255", "pgd-rs@8/255", "images"]
    assert t.loc[0, "images"] == 20
    assert (t[["pgd@0.1", "pgd-rs@0.1"]].to_numpy() <= t["natural"].to_numpy()[:, None] + 1e-9).all()


def test_readme_hardening_example(tmp_path):
    import torchvision

    from robustlib import losses, models, train

    torch.manual_seed(0)
    my_dataset = torch.utils.data.TensorDataset(torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Linear(net.fc.in_features, 10)
    model = torch.nn.Sequential(models.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), net)
    loader = torch.utils.data.DataLoader(my_dataset, batch_size=8, shuffle=True)
    train.fit(model, loader, epochs=1, lr=0.01, progress=False)
    adversary = losses.Adversary("dra", eps=losses.EpsSchedule(2.0, 0.5, epochs=2), steps=2, p=1 / 3)
    hist = train.fit(model, loader, epochs=2, lr=0.01, objective="finetune", adversary=adversary,
                     run_dir=tmp_path, name="finetune", progress=False)
    assert (tmp_path / "checkpoints" / "finetune.pt").exists() and hist["adv_loss"].notna().iloc[0]


def test_schedule_without_clean_tail_holds_eps_min_and_bad_schedules_are_refused():
    s = EpsSchedule(2.0, 0.5, 12, clean_tail=False)
    assert s(0) == 2.0 and s(9) == pytest.approx(0.5) and s(10) == s(11) == 0.5
    with pytest.raises(ValueError, match="eps_min <= eps_max"):
        EpsSchedule(0.5, 2.0, 12)
    with pytest.raises(ValueError, match="steps must be an integer"):
        Adversary("dra", eps=1.0, steps=0)
    with pytest.raises(ValueError, match="weighs both losses in one update; leave replay=None"):
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        fit(m, [(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))], epochs=1, lr=0.1, replay="alternating",
            objective=Constrained.for_theta_std(m, (torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))),
            adversary=Adversary("dra", eps=1.0, steps=2, p=0.5))


def test_a_finetune_from_another_theta_std_is_refused(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    train_method(cfg, "control", progress=False)
    from robustlib.models import build_model, model_spec
    torch.manual_seed(123)                                # replace theta_std by other weights ...
    path = tmp_path / "checkpoints" / "vanilla.pt"
    state = torch.load(path, weights_only=True)
    state["state_dict"] = build_model(**model_spec(cfg.profile)).state_dict()
    torch.save(state, path)
    with pytest.raises(robustlib.RobustlibError, match="was made with theta_std="):
        train_method(cfg, "control", progress=False)      # ... so the old fine-tune no longer applies


@pytest.mark.parametrize("ratio", [0.0, 1 / 3, 1.0, 3.0])
def test_replay_ratio_weighs_clean_against_adversarial(batch, ratio):
    model, x, y, xa = batch
    clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(xa), y)
    (update,) = updates(partial(finetune, clean_weight=ratio), xa, model, x, y)
    assert torch.allclose(update[0], (ratio * clean + adv) / (1 + ratio), atol=1e-6)
    c, a = updates(madry, xa, model, x, y, replay="alternating", clean_weight=ratio)
    # the two alternating updates weigh their losses like the concatenated batch (mean weight 1)
    assert torch.allclose((c[0] + a[0]) / 2, (ratio * clean + adv) / (1 + ratio), atol=1e-6)


def test_replay_ratio_is_validated(batch):
    model, x, y, xa = batch
    with pytest.raises(ValueError, match="clean:adversarial weight"):
        finetune(model, x, y, attack=fixed(xa), clean_weight=-1)
    with pytest.raises(ValueError, match="profile field ft_replay_ratio"):
        dataclasses.replace(get_profile("quick"), ft_replay_ratio=-0.5)


def test_fit_refuses_what_it_would_ignore_or_crash_on_before_training():
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    batches = [(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))]
    adv = Adversary("pgd", eps=0.1, steps=1)
    with pytest.raises(robustlib.RobustlibError, match="Constrained carries state: pass an instance"):
        fit(m, batches, epochs=1, lr=0.1, objective="constrained", adversary=adv)
    with pytest.raises(ValueError, match="the concatenated 1:1 replay is the objective.s own batch"):
        fit(m, batches, epochs=1, lr=0.1, objective="madry", adversary=adv, replay="concat")
    with pytest.raises(ValueError, match="clean_weight weighs the alternating replay"):
        fit(m, batches, epochs=1, lr=0.1, objective="madry", adversary=adv, clean_weight=3.0)
    with pytest.raises(ValueError, match="clean:adversarial weight"):
        fit(m, batches, epochs=1, lr=0.1, objective="madry", adversary=adv, replay="alternating", clean_weight=-1)
    with pytest.raises(robustlib.RobustlibError, match="objective 'madry' needs an adversary"):
        fit(m, batches, epochs=1, lr=0.1, objective="madry")


def test_a_training_adversary_checks_its_settings_and_draws_from_the_seeded_generator():
    with pytest.raises(ValueError, match="adversary 'dra': missing a required argument: 'p'"):
        Adversary("dra", eps=1.0, steps=2)
    with pytest.raises(ValueError, match="unexpected keyword argument 'q'"):
        Adversary("pgd", eps=0.1, steps=2, q=1)
    madry_like = Adversary("pgd", eps=0.1, steps=2, random_start=True)
    assert madry_like.settings["seed"] is None                 # fit's per-epoch torch.manual_seed decides
    assert madry_like.describe() == "PGD-2 (eps=0.1, step=2.5*eps/2)"   # Madry et al.'s step by default
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    small_steps = Adversary("pgd", eps=0.1, steps=1, step_factor=0.1, random_start=True)   # the start shows
    torch.manual_seed(5)
    a = small_steps.at(0)(model, x, y)
    torch.manual_seed(5)
    assert torch.equal(a, small_steps.at(0)(model, x, y))
    assert not torch.equal(a, small_steps.at(0)(model, x, y))    # a new draw, not a fixed seed


def test_a_default_beta_and_the_same_explicit_beta_are_the_same_run(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                          overrides={"ft_epochs": 1, "train_limit": 128})
    first = train_method(cfg, "trades", progress=False)
    again = train_method(cfg, "trades", beta=cfg.profile.trades_betas[0], progress=False)
    assert first["name"] == again["name"] == "trades-b1-s0"
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(first["model"](x), again["model"](x))
    more = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                           overrides={"ft_epochs": 1, "train_limit": 128, "trades_betas": [1.0, 0.5]})
    assert torch.equal(train_method(more, "trades", progress=False)["model"](x), first["model"](x))


def _swa_setting(bn=False):
    torch.manual_seed(0)
    x, y = torch.rand(48, 1, 8, 8), torch.randint(0, 3, (48,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(),
                          nn.Linear(16, 3))
    adv = Adversary("dra", eps=EpsSchedule(2.0, 0.5, 4), steps=2, p=1 / 3)
    return model, loader, adv


def test_the_averaged_fine_tune_ends_as_the_mean_of_its_last_epochs_and_resumes_to_the_same(tmp_path):
    from robustlib.losses import Averaged
    seen = []

    def keep(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return {}

    model, loader, adv = _swa_setting()
    fit(model, loader, epochs=4, lr=0.05, objective="finetune", adversary=adv, evaluate=keep, progress=False)
    mean = {k: sum(w[k] for w in seen[1:]) / 3 for k in seen[0]}          # epochs 2, 3 and 4: start = 1

    averaged, loader, adv = _swa_setting()
    hist = fit(averaged, loader, epochs=4, lr=0.05, objective=Averaged(4, 1), adversary=adv, progress=False)
    assert hist["averaged_epochs"].tolist() == [0, 1, 2, 3]
    for k, v in averaged.state_dict().items():
        assert torch.allclose(v, mean[k], atol=1e-6), k                    # the same path, then its average
    assert not torch.allclose(averaged.state_dict()["1.weight"], seen[-1]["1.weight"])

    def stop(m):                                   # interrupted after epoch 2 (its checkpoint is written)
        if len(stopped) == 2:
            raise RuntimeError("stopped")
        stopped.append(1)
        return {}
    stopped = []
    part, loader, adv = _swa_setting()
    with pytest.raises(RuntimeError, match="stopped"):
        fit(part, loader, epochs=4, lr=0.05, objective=Averaged(4, 1), adversary=adv, evaluate=stop,
            run_dir=tmp_path, name="swa", progress=False)
    resumed, loader, adv = _swa_setting()
    stopped.clear()
    fit(resumed, loader, epochs=4, lr=0.05, objective=Averaged(4, 1), adversary=adv, evaluate=lambda m: {},
        run_dir=tmp_path, name="swa", progress=False)
    for k, v in resumed.state_dict().items():
        assert torch.allclose(v, averaged.state_dict()[k], atol=1e-6), k
    with pytest.raises(ValueError, match="must start at an epoch from 0 to epochs - 1"):
        Averaged(4, 4)
    longer, loader, adv = _swa_setting()
    with pytest.raises(ValueError, match=r"Averaged\(epochs=2\) was asked to end epoch 3"):
        fit(longer, loader, epochs=3, lr=0.05, objective=Averaged(2, 0), adversary=adv, progress=False)


def test_the_average_covers_batchnorm_statistics_and_keeps_integer_buffers():
    from robustlib.losses import Averaged
    seen = []
    plain, loader, adv = _swa_setting(bn=True)
    fit(plain, loader, epochs=3, lr=0.05, objective="finetune", adversary=adv, progress=False,
        evaluate=lambda m: seen.append({k: v.clone() for k, v in m.state_dict().items()}) or {})
    averaged, loader, adv = _swa_setting(bn=True)
    fit(averaged, loader, epochs=3, lr=0.05, objective=Averaged(3, 0), adversary=adv, progress=False)
    state = averaged.state_dict()
    assert torch.allclose(state["2.running_var"], sum(w["2.running_var"] for w in seen) / 3, atol=1e-6)
    assert torch.equal(state["2.num_batches_tracked"], seen[-1]["2.num_batches_tracked"])   # an integer: the last


def test_the_averaged_fine_tune_needs_a_constant_rate(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                          overrides={"ft_lr_schedule": "cosine"})
    with pytest.raises(robustlib.RobustlibError, match="SWA does at a constant rate"):
        train_method(cfg, "ours-swa", progress=False)


@pytest.mark.parametrize("objective", ["trades", "mart", "madry", "finetune"])
def test_every_loss_is_float32_under_bf16_autocast_on_a_cpu(objective):
    """On a CPU, bf16 autocast keeps softmax in bf16, where 1.0001 is 1: MART's log(1.0001 - p) of a confidently
    wrong class was log(1e-12), its gradient 1e12, and a fashion MART run diverged to inf weights. Every
    objective computes its loss in float32: the same loss, and gradient, as without autocast, up to the
    model's bf16 logits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 24.0, 0.0]))   # class 1, whatever the image: wrong for y = 0
    x, y = torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    attack = lambda m, xb, yb, **kw: xb                     # the attack's point: the clean one (only the loss matters)
    fn = {"trades": partial(trades, beta=6.0), "mart": partial(mart, beta=6.0), "madry": madry,
          "finetune": finetune}[objective]
    out = {}
    for on in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            loss = fn(model, x, y, attack=attack)[0]
        loss.backward()
        out[on] = (loss.item(), model[1].bias.grad.clone())
    assert out[True][0] == pytest.approx(out[False][0], rel=0.02), out
    assert torch.allclose(out[True][1], out[False][1], rtol=0.05, atol=1e-3), out
