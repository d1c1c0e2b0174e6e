"""The benchmark scripts run and count right (their timings are printed, never asserted: no timed tests)."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_method_makes_exactly_the_passes_its_algorithm_must(tmp_path):
    out = tmp_path / "train.json"
    r = subprocess.run([sys.executable, "bench/train.py", "--profile", "quick", "--batches", "1", "--rounds", "1",
                        "--device", "cpu", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ratio" in r.stdout and "appended to" in r.stdout
    rows = [x for x in json.loads(out.read_text())[-1]["results"] if "method" in x]
    assert len(rows) == 7
    for row in rows:
        must, made = row["must"], row["made"]
        # forward passes in images per batch image: a "cat" pass is one over twice the batch
        assert made.get("grad", 0) == must.get("grad", 0), row
        assert made.get("fwd", 0) == must.get("fwd", 0), row
        assert made.get("train", 0) == must.get("train", 0) + 2 * must.get("cat", 0), row
        assert row["floor_s"] > 0 and math.isfinite(row["batch_s"])   # (a 1-batch slope may be noise's sign)


def test_the_attack_benchmark_prints_its_ratio(tmp_path):
    r = subprocess.run([sys.executable, "bench/attacks.py", "--width", "4", "--batch", "8", "--steps", "2",
                        "--rounds", "1", "--device", "cpu", "--out", str(tmp_path / "a.json")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "a.json").read_text())[-1]
    assert result["dra_over_bare"] > 0 and "ratio" in r.stdout


def test_folded_batchnorm_passes_are_counted_and_compared(tmp_path):
    """--fast all on a profile that folds: fp32, the fast paths without folding and with it, three times the
    same passes (the folded view's are counted through the layer it shares with the model)."""
    out = tmp_path / "train.json"
    r = subprocess.run([sys.executable, "bench/train.py", "--profile", "paper-cifar10", "--model", "resnet18",
                        "--width", "4", "--batch", "8", "--batches", "1", "--rounds", "1", "--fast", "all",
                        "--methods", "ours+dra", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fast paths with folded BN: epoch speed-up over fp32 ours+dra" in r.stdout
    rows = [x for x in json.loads(out.read_text())[-1]["results"] if "method" in x]
    assert [(x["fast"], x["fold_bn"]) for x in rows] == [(False, False), (True, False), (True, True)]
    assert all(x["made"] == {"grad": 5.0, "train": 2.0} for x in rows), rows


def test_the_passes_probe_checks_the_folded_view_and_times_each_pass(tmp_path):
    out = tmp_path / "passes.json"
    r = subprocess.run([sys.executable, "bench/passes.py", "--model", "resnet18", "--width", "4", "--batch", "4",
                        "--rounds", "1", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    err = float(r.stdout.split("input-gradient rel. error ")[1].split()[0])
    assert err < 1e-5, r.stdout                               # the folded view: the same function in float32
    rows = json.loads(out.read_text())[-1]["rows"]
    assert {(x["precision"], x["batch"]) for x in rows} == {("fp32", 4), ("bf16", 4)}
    assert all(x[k] > 0 for x in rows for k in ("train_ms", "grad_ms", "grad_frozen_ms", "grad_fused_ms", "fwd_ms"))


def test_the_attack_precision_comparison_pairs_the_images_of_each_finished_run(tmp_path):
    """bench/attack_precision.py on a run directory holding one finished digits run: a row per radius and
    protocol, both robust accuracies, the images only one attack broke, written as CSV."""
    import pandas as pd
    import torch

    from robustlib.config import get_profile
    from robustlib.data import TensorLoader, load_dataset
    from robustlib.models import build_model, model_spec
    from robustlib.train import fit

    torch.manual_seed(0)
    train = load_dataset("digits", "train")
    spec = model_spec(get_profile("quick"))
    fit(build_model(**spec), TensorLoader(train, batch_size=64, shuffle=True, seed=0), epochs=1, lr=0.05,
        progress=False, run_dir=tmp_path / "run", name="m-s0", meta={"model": spec})
    assert (tmp_path / "run" / "checkpoints" / "m-s0.pt").exists()
    out = tmp_path / "cmp"
    r = subprocess.run([sys.executable, "bench/attack_precision.py", "--run-dir", str(tmp_path / "run"), "--profile",
                        "quick", "--runs", "m-*", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=600, env={**__import__("os").environ, "ROBUSTLIB_SMOKE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(out.with_suffix(".csv"))
    assert set(table["protocol"]) == {"paper", "pgd-rs"} and set(table["run"]) == {"m-s0"}
    assert ((table[["fp32", "bf16"]] >= 0) & (table[["fp32", "bf16"]] <= 1)).all().all()
    assert "bf16 minus fp32 robust accuracy from" in r.stdout
    r = subprocess.run([sys.executable, "bench/attack_precision.py", "--run-dir", str(tmp_path / "run"), "--profile",
                        "quick", "--runs", "m-*", "--out", str(out), "--check"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env={**__import__("os").environ, "ROBUSTLIB_SMOKE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(out.with_suffix(".csv"))     # the held-out check's attack: one row, at the main radius
    steps = get_profile("quick").shrink_for_smoke().at_steps
    assert list(table["protocol"]) == [f"check (PGD-{steps})"] and list(table["eps"].astype(str)) == ["0.1"]
    assert "(1 models x the held-out check)" in r.stdout
    r = subprocess.run([sys.executable, "bench/attack_precision.py", "--run-dir", str(tmp_path / "run"), "--profile",
                        "quick", "--runs", "nothing*", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode != 0 and "no finished run matching" in r.stderr
