"""The cost estimate: what it counts from a profile, what it times, and the command lines that print it."""
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import robustlib
from robustlib import estimate
from robustlib.config import RunConfig, get_profile

ROOT = Path(__file__).resolve().parent.parent


def config(name: str, run_dir: Path, smoke: bool = False, **fields) -> RunConfig:
    prof = get_profile(name)
    prof = prof.shrink_for_smoke() if smoke else prof
    return RunConfig(robustlib.config.apply_overrides(prof, fields), torch.device("cpu"), run_dir, ROOT / "data")


def by_what(items):
    return {w.what: w for w in items}


def test_the_plan_counts_each_training_run_once_in_the_notebook_that_trains_it(tmp_path):
    items, names = estimate.plan(config("quick", tmp_path))
    work = by_what(items)
    # theta_std: 30 epochs on the 1,437 training digits less the 180 held out
    vanilla = work["train vanilla"]
    assert vanilla.notebook == "00" and vanilla.unit[2] == "clean" and vanilla.count == 30 * (1437 - 180)
    # notebook 00's TRADES sweep trains trades-b1-s0 first; notebook 03 loads it (not counted twice)
    assert work["train trades-b1-s0"].notebook == "00"
    assert sum(w.what == "train trades-b1-s0" for w in items) == 1
    # the fine-tune: 10 epochs, the last 2 the clean tail (decay 5/6 of 10 -> 8 adversarial epochs)
    ours, tail = work["train ours-s0"], work["train ours-s0 (clean tail)"]
    assert ours.notebook == "03" and ours.unit[2] == "ours+dra" and ours.count == 8 * (1437 - 180)
    assert tail.unit[2] == "clean" and tail.count == 2 * (1437 - 180)
    # notebook 04: Table V at the calibrated pair, the p sweep, schedule, backbones, replay; 3 seeds each
    assert {"ours-pgd-cal-s2", "trades-dra-b1-cal-s0", "ours-p1-s1", "ours-alt-s2", "ours-resnet18w8-s0",
            "vanilla-resnet18w4-s2", "ours-const-notail-s1"} <= names
    assert "ours-lin-tail-s0" not in names            # the profile's own schedule is notebook 03's run
    # a grid's own runs (notebook 04's variants, notebook 06's new knob values) train without the per-epoch
    # held-out check (methods.train_grid); notebook 03's keep it
    assert "ours-s1: held-out check per epoch" in work and "ours-p1-s1: held-out check per epoch" not in work
    assert not any(w.notebook == "04" and w.what.endswith("held-out check per epoch") for w in items)
    assert "ours-swa-s0: held-out check per epoch" not in work and "madry-eps0.025-s0: held-out check per epoch" \
        not in work
    assert work["train ours-alt-s0"].unit[3] == 2 * 128   # the alternating replay at twice the batch
    assert {w.notebook for w in items} == {"00", "01", "02", "03", "04", "05", "06"}
    # notebook 06's frontier: the runs notebook 03 trained are loaded; the new knob values and variants are trained
    assert work["train ours-swa-dra2x-s1"].notebook == "06" and work["train madry-eps0.025-s0"].notebook == "06"
    assert work["train ours-trades-b1-s0"].unit[2] == "ours-trades+dra"
    assert not any(w.notebook == "06" and w.what in ("train ours-s0", "train trades-b0.1-s2") for w in items)
    # notebook 03's last vs best: Ours, Ours (constrained), Madry, MART and both TRADES, two models each, PGD-20
    # under two protocols at main_eps on the 360 test images
    assert work["last vs best"].count == 2 * (4 + 2) * 2 * 20 * 360
    # the masking probes on the first seed's 8 models, 100 AutoAttack images: PGD-20 + PGD-100 x (5 + 1)
    assert work["methods table (masking probes)"].count == 8 * (20 + 100 * 6) * 100
    # the evaluation tables' PGD (and the masking probes beside them) is its own unit, timed at the profile's
    # attack_precision, as is each run's per-epoch held-out check; AutoAttack and notebook 01's attacks (which
    # choose settings) stay float32 passes
    assert {work[w].unit[0] for w in ("methods table, seed 0", "last vs best", "methods table (masking probes)",
                                      "ablation rows, seed 1", "ours-s0: held-out check per epoch")} == {"eval-pgd"}
    assert work["strong (AutoAttack, as if no image fell)"].unit[0] == "grad"
    assert work["frontier, held-out columns, seed 0"].unit[0] == "grad"      # a choice: float32 everywhere
    assert {w.unit[0] for w in items if w.notebook == "01" and w.unit[0] != "forward"} <= {"grad", "train", "toy"}
    assert work["frontier, held-out columns, seed 0"].count == 24 * 20 * 180     # quick: one choice radius


def test_fashions_frontier_counts_the_held_out_pgd_at_both_choice_radii_and_borrows_notebook_04s_run(tmp_path):
    cfg = config("fashion", tmp_path)
    rows = robustlib.frontier.sweep(cfg)
    items, names = estimate.plan(cfg)
    work = by_what(items)
    # PGD-20 on the 2,000 held-out images at main_eps 0.1 and at the target radius 0.03, for every run
    assert work["frontier, held-out columns, seed 0"].count == len(rows) * 2 * 20 * 2000
    # Ours + constant eps_max at the profile's budget is notebook 04's run: counted there, once, without the check
    assert work["train ours-const-notail-s0"].notebook == "04"
    assert sum(w.what == "train ours-const-notail-s0" for w in items) == 1
    assert work["train ours-const-notail-dra4x-s2"].notebook == "06"
    assert "ours-const-notail-s0: held-out check per epoch" not in work


def test_the_evaluation_pgd_is_timed_at_the_attack_precision(tmp_path):
    """A bf16 attack_precision times the protocols' PGD under it, apart from the float32 gradient passes."""
    seen = []
    real = estimate._pgd_iterates
    spy = lambda *a, **k: (seen.append(robustlib.evaluate.attack_precision()), real(*a, **k))[1]
    cfg = config("quick", tmp_path, smoke=True, attack_precision="bf16", channels_last=True)
    with mock.patch.object(estimate, "_pgd_iterates", spy):
        times = estimate._time_passes(cfg.profile, estimate._model_key(cfg.profile), cfg.device, 1)
    assert {u[0] for u in times} == {"grad", "eval-pgd", "forward"} and all(t > 0 for t in times.values())
    assert seen and set(seen) == {"bf16"}                         # the protocol's PGD was timed under bf16
    assert robustlib.evaluate.attack_precision() == "fp32"       # set back after timing


def test_finished_runs_are_loaded_not_counted(tmp_path):
    cfg = config("quick", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for f in ("vanilla.pt", "vanilla.last.pt", "ours-s0.last.pt"):     # ours-s0 is only part-way: counted
        (tmp_path / "checkpoints" / f).write_bytes(b"")
    done = estimate.finished_runs(cfg)
    assert done == {"vanilla"}
    items, names = estimate.plan(cfg, done=done)
    assert "vanilla" not in names and "ours-s0" in names
    assert "train vanilla" not in by_what(items) and "train vanilla-s1" in by_what(items)
    assert "train vanilla: torchrun start" not in by_what(items)          # a loaded run starts nothing
    assert "train ours-s0: torchrun start" in by_what(items)              # a part-way one resumes under torchrun


def test_only_some_notebooks(tmp_path):
    items, names = estimate.plan(config("quick", tmp_path), only=["02"])
    assert {w.notebook for w in items} == {"02"} and names == {"vanilla"}


def test_under_nproc_the_evaluation_tables_are_split_among_the_processes_and_the_rest_is_not(tmp_path):
    cfg = config("quick", tmp_path)
    work = by_what(estimate.plan(cfg, only=["03"])[0])
    assert work["methods table, seed 0"].shared and work["strong (AutoAttack, as if no image fell)"].shared
    assert work["methods table (masking probes)"].shared and not work["natural-all, seed 0"].shared
    one_second = lambda cfg, units, **kw: {u: 1.0 for u in units}        # every unit costs 1 s: count what is split
    exchange = lambda n, device, sizes: [1e-3 * n] * len(sizes)          # one all-reduce: 2 ms with 2 processes
    with mock.patch.object(estimate, "measure", one_second), \
            mock.patch.object(estimate.launch, "startup_seconds", lambda n, device: 10.0 * n), \
            mock.patch.object(estimate.launch, "exchange_seconds", exchange):
        one, two = (estimate.estimate(cfg, only=["03"], nproc=n).set_index("what")["seconds"] for n in (1, 2))
    for what, w in work.items():
        if w.unit[0] == estimate.LAUNCH:        # a torchrun start: none with one process, its measured time with two
            assert what not in one and two[what] == 20.0 * w.count, what
            continue
        if w.unit[0] == estimate.EXCHANGE:      # each update's all-reduce: none with one process, 2 ms each with two
            assert what not in one and two[what] == pytest.approx(2e-3 * w.count), what
            continue
        split = w.shared or w.unit[0] == "train"
        assert two[what] == (one[what] / 2 if split else one[what]), what
    # a start per run trained and per evaluation table: 3 seeds x (theta_std + 9 runs), 3 methods tables, 6 last/best
    starts = {w: x.count for w, x in work.items() if x.unit[0] == estimate.LAUNCH}
    assert starts["methods table, seed 2: torchrun start"] == 1 and starts["last vs best: torchrun start"] == 4 + 2
    assert starts["methods table (masking probes): torchrun start"] == 1          # the probes beside seed 0's table
    assert sum(w.startswith("train ") for w in starts) == len([w for w in work if w.startswith("train ") and
                                                               not w.endswith(("(clean tail)", "torchrun start", "gradient exchange"))])


def test_an_exchange_the_device_cannot_time_says_so_in_its_rows(tmp_path):
    cfg = config("quick", tmp_path)
    one_second = lambda cfg, units, **kw: {u: 1.0 for u in units}
    for seconds, processes, said in ((None, 1, "(not timed: one GPU here)"), ([0.5], 2, "(timed with 2 processes)"),
                                     ([0.5], 4, None)):
        with mock.patch.object(estimate, "measure", one_second), \
                mock.patch.object(estimate.launch, "startup_seconds", lambda n, device: 1.0), \
                mock.patch.object(estimate.launch, "exchange_seconds", lambda n, device, sizes: seconds), \
                mock.patch.object(estimate.launch, "exchange_processes", lambda n, device: processes):
            table = estimate.estimate(cfg, only=["02"], nproc=4)
        rows = table[table["unit"].str.startswith(estimate.EXCHANGE)]
        assert len(rows) == 1 and rows["what"].iloc[0].startswith("train vanilla: gradient exchange")
        assert rows["what"].iloc[0].endswith(said) if said else rows["what"].iloc[0].endswith("exchange")
        assert rows["seconds"].iloc[0] == (0.0 if seconds is None else pytest.approx(0.5 * rows["count"].iloc[0]))
        assert "exchange" in estimate.summary(table).splitlines()[0]


def test_the_frontier_and_ablation_grids_start_torchrun_once_per_table_not_per_run(tmp_path):
    work = by_what(estimate.plan(config("fashion", tmp_path), only=["04", "06"])[0])
    assert work["frontier table, seed 1: torchrun start"].count == 1
    assert work["frontier, held-out columns, seed 1: torchrun start"].count == 1
    assert work["frontier rows (masking probes): torchrun start"].count == 1       # the first seed's runs, one call
    assert work["ablation tables, seed 0: torchrun start"].count == 4      # Table V, p, schedule, replay (no backbones)
    assert work["ablation rows (masking probes): torchrun start"].count == 4   # each grid's probes, on the first seed
    # a run's updates exchange the gradient once each: its images over the profile's batch, the alternating
    # replay's double batch (two updates each, its clean tail two on the halves) making as many as the others
    ours, alt = work["train ours-s0"], work["train ours-alt-s0"]
    assert alt.unit[3] == 2 * ours.unit[3]
    assert work["train ours-alt-s0: gradient exchange"].count == work["train ours-s0: gradient exchange"].count == \
        (ours.count + work["train ours-s0 (clean tail)"].count) / ours.unit[3]
    assert "ablation rows, seed 0: torchrun start" not in work


def test_the_estimate_times_every_kind_of_work_on_the_device(tmp_path):
    cfg = config("quick", tmp_path, smoke=True)
    table = estimate.estimate(cfg, batches=1)
    assert set(table["notebook"]) == {"00", "01", "02", "03", "04", "05", "06"}
    assert (table["seconds"] > 0).all() and table["seconds"].map(lambda s: s == s).all()
    # a training item costs its images times the measured seconds per image of its kind
    train = table[table["unit"].str.startswith("train")]
    per_image = train["seconds"] / train["count"]
    assert per_image.groupby(train["unit"]).nunique().eq(1).all()
    text = estimate.summary(table)
    assert text.splitlines()[0].startswith("notebook") and "total" in text and "largest items:" in text


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "robustlib", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, **(env or {})})


def test_the_estimate_command(tmp_path):
    r = cli("estimate", "--profile", "quick", "--smoke", "--device", "cpu", "--only", "02", "--batches", "1",
            "--run-dir", str(tmp_path / "run"), "--csv", str(tmp_path / "items.csv"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "02" in r.stdout and "total" in r.stdout and (tmp_path / "items.csv").exists()
    assert not (tmp_path / "run").exists()                   # an estimate writes nothing in the run directory
    r = cli("estimate", "--profile", "quick", "--batches", "0")
    assert r.returncode == 2 and r.stderr.strip() == ("error: --batches 0 is invalid: time at least 1 batch per "
                                                      "kind of work")


def test_a_full_run_prints_its_estimate_before_it_starts(tmp_path):
    r = cli("run", "--profile", "quick", "--device", "cpu", "--only", "02", "--run-dir", str(tmp_path / "run"),
            "--overrides", "{epochs: 1, expected_clean_acc: null}", env={"ROBUSTLIB_SMOKE": "0"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    out = r.stdout
    assert out.index("predicted wall time") < out.index("02_pretraining.ipynb ...")
    assert "total" in out.split("02_pretraining.ipynb ...")[0]
    r = cli("run", "--profile", "quick", "--device", "cpu", "--only", "02", "--run-dir", str(tmp_path / "run"),
            "--overrides", "{epochs: 1, expected_clean_acc: null}", "--no-estimate", env={"ROBUSTLIB_SMOKE": "0"})
    assert r.returncode == 0 and "predicted wall time" not in r.stdout
