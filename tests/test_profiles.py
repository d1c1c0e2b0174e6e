import dataclasses

import pytest

import robustlib
from robustlib import PROFILES, RobustlibError, get_profile
from robustlib.config import apply_overrides


def test_paper_profiles_hold_section_va_settings():
    for name in ("paper-mnist", "paper-cifar10"):
        p = get_profile(name)
        assert (p.batch_size, p.momentum, p.weight_decay, p.augment) == (128, 0.9, 2e-4, True)
    assert get_profile("paper-mnist").model == "mnist-cnn"
    assert get_profile("paper-cifar10").model == "resnet50" and get_profile("paper-cifar10").width == 64


def test_unknown_profile_lists_choices():
    with pytest.raises(RobustlibError, match="unknown profile 'nope'; choose one of " + ", ".join(PROFILES)):
        get_profile("nope")


def test_overrides_replace_fields_and_coerce_papermill_strings():
    p = apply_overrides(get_profile("quick"), {"epochs": "5", "lr": "0.1", "augment": "false", "train_limit": "None"})
    assert (p.epochs, p.lr, p.augment, p.train_limit) == (5, 0.1, False, None)
    assert get_profile("quick").epochs == 30                       # profiles are frozen: nothing mutated
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 3


def test_bad_overrides_name_the_field():
    with pytest.raises(RobustlibError, match="unknown profile field.*epoch[^s]"):
        apply_overrides(get_profile("quick"), {"epoch": 3})
    with pytest.raises(RobustlibError, match="lr=-1.0 is invalid"):
        apply_overrides(get_profile("quick"), {"lr": -1.0})
    with pytest.raises(RobustlibError, match="dataset='svhn' is invalid"):
        apply_overrides(get_profile("quick"), {"dataset": "svhn"})


def test_setup_smoke_and_default_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLIB_RUNS", str(tmp_path))
    cfg = robustlib.setup("quick", device="cpu", smoke=True)
    assert cfg.run_dir == tmp_path / "quick-smoke" and cfg.run_dir.is_dir()
    assert cfg.profile.smoke and cfg.profile.epochs == 2 and cfg.profile.expected_clean_acc is None
    full = robustlib.setup("quick", device="cpu", smoke=False)
    assert full.run_dir == tmp_path / "quick" and not full.profile.smoke
    assert "profile    quick" in str(full)


def test_setup_rejects_an_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RobustlibError, match="cannot create directory"):
        robustlib.setup("quick", device="cpu", run_dir=str(blocker / "run"))


def test_cuda_requested_without_cuda_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RobustlibError, match="CUDA is not available"):
        robustlib.setup("quick", device="cuda")


def test_eval_eps_are_validated_and_kept_as_written():
    assert get_profile("paper-cifar10").eval_eps == ("2/255", "5/255", "8/255")
    with pytest.raises(RobustlibError, match="eval_eps=.*is invalid"):
        apply_overrides(get_profile("quick"), {"eval_eps": ["8/0"]})
    with pytest.raises(RobustlibError, match="dra_p=1.5 is invalid"):
        apply_overrides(get_profile("quick"), {"dra_p": 1.5})


@pytest.mark.parametrize("name", ["quick", "fashion"])
def test_every_verdict_of_the_cpu_profiles_rests_on_three_paired_seeds(name):
    # the verdict rule needs >= 2 seeds for an interval; the issue asks >= 3 wherever a verdict rests on them
    p = PROFILES[name]
    assert len(set(p.seeds)) >= 3 and len(set(p.ablation_seeds)) >= 3
    assert set(p.ablation_seeds) <= set(p.seeds)        # ablations pair with notebook 03's runs, seed by seed
