"""The command line: one clear line and a non-zero exit for bad input; a smoke run writes its results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "robustlib", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.parametrize("args,message", [
    (["run", "--profile", "nope"], "unknown profile 'nope'"),
    (["run", "--only", "99"], "--only 99 matches no notebook"),
    (["run", "--overrides", "{epoch: 3}"], "unknown profile field(s) epoch"),
    (["run", "--overrides", "[1, 2]"], "must be a YAML mapping"),
    (["run", "--overrides", "{lr: -1}"], "lr=-1 is invalid"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    r = cli(*args, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_unwritable_run_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    r = cli("run", "--run-dir", str(tmp_path / "f" / "sub"))
    assert r.returncode == 2 and "cannot create directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_help_lists_the_options():
    r = cli("run", "--help")
    assert r.returncode == 0
    for opt in ("--profile", "--device", "--run-dir", "--only", "--overrides", "--smoke"):
        assert opt in r.stdout


def test_smoke_run_of_the_pretraining_notebook(tmp_path):
    run_dir = tmp_path / "run"
    notebooks = Path(__file__).parents[1] / "notebooks"
    sockets = set(notebooks.glob("kernel-*"))
    r = cli("run", "--profile", "quick", "--smoke", "--only", "02", "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"results in {run_dir}" in r.stdout
    assert set(notebooks.glob("kernel-*")) == sockets      # the kernel's ipc sockets live in a temporary folder
    executed = json.loads((run_dir / "notebooks" / "02_pretraining.ipynb").read_text())
    params = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert params and "profile = \"quick\"" in "".join(params[0]["source"])
    for f in ("checkpoints/vanilla.pt", "metrics/vanilla.csv", "figures/02_confusion_matrix.svg",
              "tables/02_pretraining.csv", "timings.json"):
        assert (run_dir / f).exists(), f
    timing = json.loads((run_dir / "timings.json").read_text())["02_pretraining"]
    assert timing["smoke"] is True and timing["settings"]["epochs"] == "2"     # what it ran with (smoke: 2)
    assert not list((run_dir / "notebooks").glob(".*settings.json"))          # the kernel's record, taken in

    # a damaged checkpoint: one line naming the file, non-zero exit, and the file is left as it was
    ckpt = run_dir / "checkpoints" / "vanilla.pt"
    ckpt.write_bytes(b"garbage")
    r = cli("run", "--profile", "quick", "--smoke", "--only", "02", "--run-dir", str(run_dir))
    assert r.returncode == 2 and "cannot read checkpoint" in r.stderr and "retrain=True" in r.stderr
    assert ckpt.read_bytes() == b"garbage"


def test_the_parameters_cell_shows_a_run_inside_the_checkout_relative_to_the_notebooks(tmp_path):
    """What a committed course shows: ``run_dir = "../runs/quick"``, the same on every machine; a folder outside
    the checkout stays absolute (relative to the kernel's working directory, notebooks/, both resolve alike)."""
    from robustlib.config import repo_root
    from robustlib.run import _from_notebooks
    assert _from_notebooks(repo_root() / "runs" / "quick") == os.path.join("..", "runs", "quick")
    assert _from_notebooks(repo_root() / "data") == os.path.join("..", "data")
    assert _from_notebooks(tmp_path / "run") == str((tmp_path / "run").resolve())
    assert (repo_root() / "notebooks" / _from_notebooks(repo_root() / "runs" / "quick")).resolve() == \
        (repo_root() / "runs" / "quick").resolve()


def test_select_finetune_script_compares_variants_on_the_held_out_split(tmp_path, monkeypatch):
    """scripts/select_finetune.py: Ours per variant beside the control it shares, held-out numbers in a CSV."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    monkeypatch.setenv("ROBUSTLIB_SMOKE", "1")
    path = Path(__file__).parents[1] / "scripts" / "select_finetune.py"
    spec = importlib.util.spec_from_file_location("select_finetune", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run_dir = tmp_path / "run"
    code = script.main(["--profile", "quick", "--device", "cpu", "--run-dir", str(run_dir), "--eps", "0.1",
                        "--variants", "{base: {}, half: {ft_eps_max: 1.0, ft_eps_min: 0.5}, lr: {ft_lr: 0.002}, "
                                      "init: {baseline_init: scratch}}"])
    assert code == 0
    t = pd.read_csv(run_dir / "tables" / "select_finetune.csv")
    assert list(t["run"]) == ["control-s0", "ours-s0", "control-s0", "ours-half-s0", "control-lr-s0", "ours-lr-s0",
                              "control-s0", "ours-init-s0"]     # baseline_init concerns only the baselines
    assert t[["val_natural", "val_pgd@0.1"]].apply(lambda c: c.between(0, 1)).all().all()
    assert t.loc[0, "val_natural"] == t.loc[2, "val_natural"]        # the eps variant shares the control
    for bad in (["--variants", "{x: 3}"], ["--variants", "{v: {val_size: 10}}"], ["--variants", "{v: {1: 2}}"],
                ["--variants", "{v: {}}", "--eps", "abc"]):
        assert script.main(["--profile", "quick", "--run-dir", str(tmp_path / "bad"), *bad]) == 2, bad
    assert not (tmp_path / "bad" / "checkpoints").exists()            # refused before anything trained


def test_precision_pairs_script_trains_each_seed_in_both_precisions(tmp_path, monkeypatch, capsys):
    """scripts/precision_pairs.py: per seed, theta_std, the control and Ours in float32 and in the profile's
    precision, one table of both arms; a float32 profile has nothing to pair and is refused before training."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    monkeypatch.setenv("ROBUSTLIB_SMOKE", "1")
    path = Path(__file__).parents[1] / "scripts" / "precision_pairs.py"
    spec = importlib.util.spec_from_file_location("precision_pairs", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--profile", "quick", "--device", "cpu", "--run-dir", str(tmp_path / "bad")]) == 2
    assert "already trains in float32" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()
    run_dir = tmp_path / "run"
    code = script.main(["--profile", "quick", "--device", "cpu", "--run-dir", str(run_dir), "--eps", "0.1",
                        "--seeds", "0", "1", "--overrides", "{precision: bf16}"])
    assert code == 0
    t = pd.read_csv(run_dir / "tables" / "precision_pairs.csv")
    assert len(t) == 2 * 2 * 3 and set(t["precision"]) == {"bf16", "fp32"} and set(t["seed"]) == {0, 1}
    assert set(t["method"]) == {"vanilla", "control", "ours"}
    assert (run_dir / "checkpoints" / "ours-fp32-s1.pt").exists() and (run_dir / "checkpoints" / "ours-s1.pt").exists()
    assert "bf16 - fp32, paired by seed" in capsys.readouterr().out
