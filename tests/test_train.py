"""The training loop: it learns, it checkpoints atomically, it resumes exactly, it refuses wrong checkpoints."""
from unittest import mock

import pytest
import torch

import robustlib
from robustlib import RobustlibError
from robustlib.data import ImageData, TensorLoader, load_dataset
from robustlib.evaluate import accuracy, clean_report
from robustlib.models import build_model
from robustlib.train import fit, load_checkpoint, pretrain


def _setup():
    train, test = load_dataset("digits", "train").subset(400), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.38])
    loader = TensorLoader(train, batch_size=32, shuffle=True, augment=True, seed=0)
    return model, loader, test


class Stop(Exception):
    pass


def stop_in_epoch(n: int):
    """An ``evaluate`` for fit that raises :class:`Stop` in epoch ``n``: epochs before it are on disk."""
    calls = []

    def evaluate(m):
        calls.append(1)
        if len(calls) == n:
            raise Stop
        return {}
    return evaluate


def test_fit_learns_digits():
    model, loader, test = _setup()
    before = accuracy(model, test.float_x(), test.y)
    hist = fit(model, loader, epochs=4, lr=0.05, progress=False)
    assert list(hist.epoch) == [1, 2, 3, 4] and hist.train_loss.iloc[-1] < hist.train_loss.iloc[0]
    assert accuracy(model, test.float_x(), test.y) > max(0.6, before + 0.4)


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    model, loader, _ = _setup()
    fit(model, loader, epochs=3, lr=0.05, progress=False, run_dir=tmp_path / "a", name="m")
    ref = {k: v.clone() for k, v in model.state_dict().items()}

    model, loader, _ = _setup()
    with pytest.raises(Stop):     # killed during epoch 2's evaluation: epoch 1 is on disk, epoch 2 is not
        fit(model, loader, epochs=3, lr=0.05, progress=False, run_dir=tmp_path / "b", name="m",
            evaluate=stop_in_epoch(2))
    assert torch.load(tmp_path / "b" / "checkpoints" / "m.last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "b" / "checkpoints" / "m.pt").exists()
    model, loader, _ = _setup()
    hist = fit(model, loader, epochs=3, lr=0.05, progress=False, run_dir=tmp_path / "b", name="m")
    assert list(hist.epoch) == [1, 2, 3]
    for k, v in model.state_dict().items():
        assert torch.allclose(v, ref[k], atol=1e-6), k
    assert not list((tmp_path / "b" / "checkpoints").glob(".*.tmp"))          # no temp files left behind


def test_pretrain_writes_a_checkpoint_that_rebuilds_the_model(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    model, hist = pretrain(cfg, progress=False)
    assert len(hist) == cfg.profile.epochs and (tmp_path / "metrics" / "vanilla.csv").exists()
    loaded, meta = load_checkpoint(tmp_path / "checkpoints" / "vanilla.pt")
    assert meta["dataset"] == "digits" and meta["profile"] == "quick" and meta["model"]["name"] == "digits-cnn"
    test = load_dataset("digits", "test")
    assert torch.equal(loaded(test.float_x()), model(test.float_x()))
    again, _ = pretrain(cfg, progress=False)          # second call loads instead of training
    assert torch.equal(again(test.float_x()), model(test.float_x()))
    assert clean_report(loaded, test)["confusion"].to_numpy().sum() == len(test)


def test_a_checkpoint_for_other_data_is_refused_not_overwritten(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    pretrain(cfg, progress=False)
    ckpt = tmp_path / "checkpoints" / "vanilla.pt"
    before = ckpt.read_bytes()
    other = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                            overrides={"model": "smallcnn", "dataset": "digits"})
    with pytest.raises(RobustlibError, match="was made with model=.*use another run_dir"):
        pretrain(other, progress=False)
    assert ckpt.read_bytes() == before


def test_an_unreadable_checkpoint_is_one_clear_line(tmp_path):
    bad = tmp_path / "checkpoints" / "vanilla.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a checkpoint")
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    with pytest.raises(RobustlibError, match="cannot read checkpoint .*retrain=True") as e:
        pretrain(cfg, progress=False)
    assert "\n" not in str(e.value)
    assert bad.read_bytes() == b"this is not a checkpoint"


def test_bf16_autocast_runs():
    model, loader, _ = _setup()
    hist = fit(model, loader, epochs=1, lr=0.05, progress=False, precision="bf16")
    assert torch.isfinite(torch.tensor(hist.train_loss.iloc[0]))
    with pytest.raises(RobustlibError, match="unknown precision"):
        fit(model, loader, epochs=1, lr=0.05, precision="fp8")


def test_fold_bn_attacks_a_folded_view_and_trains_as_without_it(tmp_path, monkeypatch):
    """fit's attacks on the BatchNorm-folded view: the same updates up to float rounding; the run records it,
    and resuming it without folding is refused."""
    import functools

    from robustlib import losses
    from robustlib.losses import Adversary
    from robustlib.models import FoldedBatchNorm
    refreshed, refresh = [], FoldedBatchNorm.refresh
    monkeypatch.setattr(FoldedBatchNorm, "refresh", lambda self: refreshed.append(1) or refresh(self))
    torch.manual_seed(0)
    data = ImageData("cifar10", "train", torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    init = build_model("resnet18", width=4).state_dict()
    hist, attacked = {}, {False: set(), True: set()}
    for objective in ("madry", functools.partial(losses.trades, beta=1.0)):
        for fold in (False, True):
            model = build_model("resnet18", width=4)
            model.load_state_dict(init)
            adversary = Adversary("pgd", eps=4 / 255, steps=3)
            at = adversary.at                     # which module each attack is handed

            def spy(epoch, at=at, fold=fold):
                attack = at(epoch)
                return lambda m, x, y, **kw: attacked[fold].add(isinstance(m, torch.fx.GraphModule)) or attack(m, x, y, **kw)
            adversary.at = spy
            loader = TensorLoader(data, batch_size=32, shuffle=True, seed=0)
            hist[objective, fold] = fit(model, loader, epochs=2, lr=0.05, objective=objective, progress=False,
                                        fold_bn=fold, adversary=adversary, run_dir=tmp_path,
                                        name=f"{'madry' if objective == 'madry' else 'trades'}{fold}")
        a, b = hist[objective, False].train_loss.to_numpy(), hist[objective, True].train_loss.to_numpy()
        # TRADES' KL starts near 0, where its sign steps turn float rounding into other examples: the same
        # trajectory to 1% over two epochs (the first epoch agrees to 1e-5); Madry's to 0.1%
        assert abs(a - b).max() < (1e-3 if objective == "madry" else 1e-2) * abs(a).max(), (objective, a, b)
    assert attacked == {False: {False}, True: {True}}         # with folding, every attack ran on the fx view
    # before each batch's attack (2 epochs of 2 batches); TRADES also before its clean reference on the view
    assert len(refreshed) == 2 + 4 + 4 + 4       # (+2: each view's first refresh, when it is built)
    model = build_model("resnet18", width=4)
    with pytest.raises(RobustlibError, match="fold_bn"):
        fit(model, TensorLoader(data, batch_size=32, shuffle=True, seed=0), epochs=3, lr=0.05, objective="madry",
            progress=False, adversary=Adversary("pgd", eps=4 / 255, steps=3), run_dir=tmp_path, name="madryTrue")


def test_a_checkpoint_trained_with_other_settings_is_refused(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    pretrain(cfg, progress=False)
    changed = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True, overrides={"lr": 0.02})
    with pytest.raises(RobustlibError, match="trained with lr=0.05 but the profile now says 0.02.*retrain=True"):
        pretrain(changed, progress=False)
    model, _ = pretrain(changed, progress=False, retrain=True)      # asked for explicitly: trains again
    assert model is not None


def test_a_changed_dra_budget_retrains_ours_but_keeps_the_pgd_baselines(tmp_path):
    from robustlib.methods import train_method
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    for method in ("madry", "ours"):
        train_method(cfg, method, progress=False)
    wider = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                            overrides={"ft_eps_max": 2 * cfg.profile.ft_eps_max})
    assert train_method(wider, "madry", progress=False)["model"] is not None      # PGD: eps is main_eps
    with pytest.raises(RobustlibError, match="ours-s0.pt was trained with ft_eps_max=.*retrain=True"):
        train_method(wider, "ours", progress=False)
    steps = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True,
                            overrides={"at_steps": cfg.profile.at_steps - 1})
    with pytest.raises(RobustlibError, match="madry-s0.pt was trained with at_steps="):
        train_method(steps, "madry", progress=False)


def test_resuming_with_another_number_of_epochs_is_refused(tmp_path):
    model, loader, _ = _setup()
    fit(model, loader, epochs=2, lr=0.05, progress=False, run_dir=tmp_path, name="m")
    with pytest.raises(RobustlibError, match=r"was made by fit\(epochs=2, \.\.\.\), not fit\(epochs=3, \.\.\.\); pass resume=False"):
        fit(model, loader, epochs=3, lr=0.05, progress=False, run_dir=tmp_path, name="m")


def test_a_runs_settings_are_exactly_the_profile_fields_it_read(tmp_path):
    from robustlib.methods import build_run
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    settings = {m: set(build_run(cfg, m, progress=False)["meta"]["settings"]) for m in ("control", "madry", "ours")}
    shared = {"dataset", "model", "width", "train_limit", "seed", "val_size", "batch_size", "augment", "ft_epochs",
              "ft_lr", "ft_lr_schedule", "momentum", "weight_decay", "milestones", "main_eps", "at_steps"}
    assert shared <= settings["control"] and not settings["control"] & {"dra_p", "ft_eps_max", "baseline_init"}
    assert settings["madry"] - settings["control"] == {"baseline_init", "fold_bn"}   # PGD: main_eps, at_steps
    assert {"ft_eps_max", "ft_eps_min", "ft_decay", "ft_clean_tail", "ft_replay", "ft_replay_ratio", "dra_p",
            "dra_steps", "dra_budget", "fold_bn"} == settings["ours"] - settings["control"]
    assert "ft_eps_max" not in settings["madry"] and "lr" not in settings["ours"]   # lr is theta_std's, not Ours'


def test_the_per_epoch_check_attacks_at_the_profiles_attack_precision(tmp_path, monkeypatch):
    """A run's held-out check (what picks its best epoch): PGD iterates under bf16 autocast where the profile's
    attack_precision says bf16, its decisions in float32; a float32 profile's runs read (and record) nothing new."""
    from robustlib.methods import build_run, heldout_metrics
    plain = build_run(robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "a"), smoke=True), "madry",
                      progress=False)
    assert plain["fit"]["evaluate"].keywords["precision"] == "fp32"
    assert "attack_precision" not in plain["meta"]["settings"]
    fast = build_run(robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "b"), smoke=True,
                                     overrides={"attack_precision": "bf16"}), "madry", progress=False)
    assert fast["fit"]["evaluate"].keywords["precision"] == "bf16"
    assert fast["meta"]["settings"]["attack_precision"] == "bf16"      # the check's precision is the run's setting
    seen = []

    class Spy(torch.nn.Module):          # records, per forward, whether it attacks (grad) and under autocast
        def __init__(self):
            super().__init__()
            self.net = build_model("digits-cnn", in_channels=1, image_size=8)

        def forward(self, x):
            seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
            return self.net(x)

    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    spy = Spy().eval()
    before = {k: v.clone() for k, v in spy.state_dict().items()}
    strides = [w.stride() for w in spy.parameters()] + [b.stride() for b in spy.buffers()]
    for precision in ("fp32", "bf16"):
        seen.clear()
        heldout_metrics(spy, x, y, eps=0.1, steps=2, precision=precision)
        attacks, decisions = [a for g, a in seen if g], [a for g, a in seen if not g]
        assert len(attacks) == 2 and decisions, seen
        assert set(attacks) == {precision == "bf16"} and set(decisions) == {False}, (precision, seen)
        # the check hands the model back as it found it: the same weights, with the same strides
        assert all(torch.equal(v, before[k]) for k, v in spy.state_dict().items()), precision
        assert [w.stride() for w in spy.parameters()] + [b.stride() for b in spy.buffers()] == strides, precision
    for native, resolved in ((True, "bf16"), (False, "fp32")):    # "auto": bf16 only where the device has it
        monkeypatch.setattr(robustlib.train, "native_bf16", lambda device, native=native: native)
        run = build_run(robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / f"auto-{native}"), smoke=True,
                                        overrides={"attack_precision": "auto"}), "madry", progress=False)
        assert run["fit"]["evaluate"].keywords["precision"] == resolved, native


def test_training_does_not_depend_on_the_per_epoch_check(tmp_path):
    """The check only reads the model: runs that differ in nothing but the check's precision, or in whether it
    runs at all, train the same weights (the best epoch it picks may differ; the last model may not). Without
    it, no best checkpoint is written and the history has no held-out columns."""
    from robustlib.methods import train_method
    arms = {(precision, check): train_method(
        robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / f"{precision}-{check}"), smoke=True,
                        overrides={"attack_precision": precision}), "madry", progress=False, check=check)
        for precision, check in (("fp32", True), ("bf16", True), ("fp32", False))}
    weights = [r["model"].state_dict() for r in arms.values()]
    assert all(w.keys() == weights[0].keys() and all(torch.equal(w[k], weights[0][k]) for k in w) for w in weights)
    assert (tmp_path / "fp32-True" / "checkpoints" / "madry-s0.best.pt").exists()
    assert not (tmp_path / "fp32-False" / "checkpoints" / "madry-s0.best.pt").exists()
    assert "val_robust_acc" in arms["fp32", True]["history"]
    assert "val_robust_acc" not in arms["fp32", False]["history"]
    unchecked = arms["fp32", False]
    assert unchecked["best"] is unchecked["model"]
    # trained again without the check, a run leaves no best checkpoint of an earlier attempt to be read as its own
    again = train_method(robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "fp32-True"), smoke=True),
                         "madry", progress=False, check=False, retrain=True)
    assert not (tmp_path / "fp32-True" / "checkpoints" / "madry-s0.best.pt").exists()
    assert again["best"] is again["model"]


def test_a_checkpoint_from_before_the_settings_hash_loads_when_its_fields_agree(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    model, _ = pretrain(cfg, progress=False)
    path = tmp_path / "checkpoints" / "vanilla.pt"
    state = torch.load(path, weights_only=True)
    legacy = {k: v for k, v in state.items() if k not in ("settings", "settings_hash")}
    legacy["profile_fields"] = cfg.profile.as_dict()                 # what the checkpoints of 803e341 recorded
    torch.save(legacy, path)
    again, _ = pretrain(cfg, progress=False)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(again(x), model(x))
    legacy["profile_fields"] = {**cfg.profile.as_dict(), "lr": 0.5}
    torch.save(legacy, path)
    with pytest.raises(RobustlibError, match="vanilla.pt was trained with lr=0.5 but the profile now says"):
        pretrain(cfg, progress=False)


def test_a_checkpoint_whose_run_did_not_read_a_setting_is_refused_even_if_its_profile_agrees(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    pretrain(cfg, progress=False)
    path = tmp_path / "checkpoints" / "vanilla.pt"
    state = torch.load(path, weights_only=True)
    assert state["profile_fields"]["augment"] == state["settings"]["augment"]
    del state["settings"]["augment"]                       # as if an older version had not read it ...
    state["settings_hash"] = "0" * 16
    torch.save(state, path)
    with pytest.raises(RobustlibError, match="vanilla.pt was trained by a run that did not read augment"):
        pretrain(cfg, progress=False)                      # ... its weights may not follow the profile's value


def test_the_alternating_replay_matches_the_concatenated_one_in_updates_and_samples(tmp_path):
    from torch import nn
    from robustlib.losses import madry
    from robustlib.methods import build_run
    from robustlib.train import batch_updates
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    tail = list(batch_updates(madry, None, model, x, y, replay="alternating", clean_tail=True))
    assert [len(logits) for _, logits, _ in tail] == [4, 4]          # two clean updates, on the two halves
    assert len(list(batch_updates(madry, None, model, x, y, clean_tail=True))) == 1
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    alt = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True, overrides={"ft_replay": "alternating"})
    assert build_run(alt, "ours", progress=False)["loader"]["batch_size"] == 2 * cfg.profile.batch_size
    assert build_run(cfg, "ours", progress=False)["loader"]["batch_size"] == cfg.profile.batch_size
    assert build_run(cfg, "ours", progress=False)["meta"]["recipe"] == 2
    # end to end through a clean-tail epoch, with an odd batch (the halves are 3 and 4 images)
    from robustlib.losses import Adversary, EpsSchedule
    torch.manual_seed(0)
    xs, ys = torch.rand(7, 1, 4, 4), torch.randint(0, 3, (7,))
    adv = Adversary("dra", eps=EpsSchedule(1.0, 0.5, 2, decay=0.5), steps=1, p=0.5)
    history = fit(model, [(xs, ys)], epochs=2, lr=0.01, objective="madry", adversary=adv, replay="alternating")
    assert len(history) == 2 and history["train_acc"].between(0, 1).all()


def test_a_checkpoint_of_an_older_recipe_is_refused_with_the_way_out(tmp_path):
    from robustlib.train import CHECKPOINT_FORMAT, RECIPE, check_checkpoint
    old = {"format": CHECKPOINT_FORMAT, "state_dict": {}, "kind": "ours-s0"}
    with pytest.raises(RobustlibError, match=r"fine-tune recipe before 2; this code is recipe 2 .*retrain=True"):
        check_checkpoint(old, "ours-s0.pt", expect={"kind": "ours-s0", "recipe": RECIPE})
    check_checkpoint({**old, "recipe": RECIPE}, "ours-s0.pt", expect={"kind": "ours-s0", "recipe": RECIPE})
    check_checkpoint(old, "vanilla.pt", expect={"kind": "ours-s0"})         # theta_std records no recipe


_KILLED_RUN = """
import sys, time, pathlib, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from tests.test_train import _setup
from robustlib.train import fit
model, loader, _ = _setup()
def stall_in_epoch_three(m, calls=[]):
    calls.append(1)
    if len(calls) == 3:                       # epochs 1 and 2 are on disk: wait here to be killed
        pathlib.Path({marker!r}).write_text("ready")
        time.sleep(600)
    return {{}}
fit(model, loader, epochs=4, lr=0.05, progress=False, run_dir={run!r}, name="m", evaluate=stall_in_epoch_three)
"""


def test_kill_9_mid_run_then_resume_is_bit_identical(tmp_path):
    """A real SIGKILL in the middle of epoch 3 (after its training, before its checkpoint): the same call
    afterwards resumes from epoch 2 and ends with exactly the weights of a run never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # the same arithmetic in the killed process and here
    try:
        model, loader, _ = _setup()
        fit(model, loader, epochs=4, lr=0.05, progress=False, run_dir=tmp_path / "ref", name="m",
            evaluate=lambda m: {})
        ref = {k: v.clone() for k, v in model.state_dict().items()}

        marker, run = tmp_path / "ready", tmp_path / "killed"
        code = _KILLED_RUN.format(root=str(Path(__file__).resolve().parent.parent), marker=str(marker), run=str(run))
        proc = subprocess.Popen([sys.executable, "-c", code])
        t0 = time.time()
        while not marker.exists() and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.1)
        assert marker.exists(), "the training process never reached epoch 3"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert torch.load(run / "checkpoints" / "m.last.pt", weights_only=True)["epoch"] == 2

        model, loader, _ = _setup()
        hist = fit(model, loader, epochs=4, lr=0.05, progress=False, run_dir=run, name="m", evaluate=lambda m: {})
        assert list(hist.epoch) == [1, 2, 3, 4]
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref[k]), k
    finally:
        torch.set_num_threads(threads)


def test_fp16_autocast_trains_with_a_gradient_scaler_and_resumes_exactly(tmp_path):
    model, loader, _ = _setup()
    fit(model, loader, epochs=2, lr=0.05, progress=False, precision="fp16", run_dir=tmp_path / "a", name="m",
        evaluate=lambda m: {})
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in ref.values() if v.is_floating_point())   # weights stay fp32
    last = torch.load(tmp_path / "a" / "checkpoints" / "m.last.pt", weights_only=True)
    assert last["grad_scaler"]["scale"] > 0                          # the scaler's state is kept for resuming
    model, loader, _ = _setup()
    with pytest.raises(Stop):     # stopped in epoch 2: epoch 1 (weights, optimiser, scaler) on disk
        fit(model, loader, epochs=2, lr=0.05, progress=False, precision="fp16", run_dir=tmp_path / "b", name="m",
            evaluate=stop_in_epoch(2))
    model, loader, _ = _setup()
    fit(model, loader, epochs=2, lr=0.05, progress=False, precision="fp16", run_dir=tmp_path / "b", name="m",
        evaluate=lambda m: {})
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_the_fast_paths_resolve_per_device_and_keep_the_numbers():
    from robustlib.train import build_fast, fast_plan, resolve_precision

    assert resolve_precision("auto", "cuda") == "bf16"
    with mock.patch.object(torch.cpu, "_is_avx512_bf16_supported", lambda: False, create=True), \
            mock.patch.object(torch.cpu, "_is_amx_tile_supported", lambda: False, create=True):
        assert resolve_precision("auto", "cpu") == "fp32"          # bf16 emulated: slower than fp32
    with mock.patch.object(torch.cpu, "_is_avx512_bf16_supported", lambda: True, create=True):
        assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp16", "cpu") == "fp16"
    paper = robustlib.get_profile("paper-cifar10")
    assert fast_plan(paper) == {"precision": "auto", "channels_last": True}
    assert fast_plan(robustlib.get_profile("quick")) == {"precision": "fp32", "channels_last": False}
    spec = dict(name="resnet18", num_classes=10, in_channels=3, image_size=32, width=4)
    torch.manual_seed(0)
    plain = build_fast(spec, "cpu", {"channels_last": False}).eval()
    torch.manual_seed(0)
    fast = build_fast(spec, "cpu", {"channels_last": True}).eval()
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(plain(x), fast(x), atol=1e-5)


def test_a_setting_added_since_is_accepted_at_its_default_and_refused_otherwise(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
    pretrain(cfg, progress=False)
    path = tmp_path / "checkpoints" / "vanilla.pt"
    state = torch.load(path, weights_only=True)
    for added in ("precision", "channels_last"):       # theta_std of the code before the fast paths
        del state["settings"][added]
    state["settings_hash"] = "0" * 16
    torch.save(state, path)
    pretrain(cfg, progress=False)                      # the defaults do what that code did: loaded
    fast = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True, overrides={"channels_last": True})
    with pytest.raises(RobustlibError, match="did not read channels_last, which this run reads \\(channels_last=True\\)"):
        pretrain(fast, progress=False)
