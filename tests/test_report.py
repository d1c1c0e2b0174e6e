"""The run report: each claim's rule on known numbers, and a whole report built from a fake run directory."""
import base64
import dataclasses
import json

import pandas as pd
import pytest

import robustlib
from robustlib import report
from robustlib.io import write_csv, write_json, write_text
from robustlib.report import FAILS, HOLDS, INCONCLUSIVE, UNTESTED

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def digits():
    return robustlib.get_profile("quick")          # main_eps "0.1", dataset digits


@pytest.fixture(scope="module")
def cifar(digits):
    return dataclasses.replace(digits, dataset="cifar10")


def methods(ours=(0.995, 0.70), vanilla=(0.995, 0.50), trades=((0.980, 0.65), (0.992, 0.60))):
    rows = [("Vanilla", *vanilla), ("Control", 0.996, 0.51), ("Madry", 0.98, 0.80), ("Ours", *ours)]
    rows += [(f"TRADES (1/λ={b})", *t) for b, t in zip((1, 0.1), trades)]
    return pd.DataFrame(rows, columns=["method", "natural", "pgd@0.1"]).assign(**{"pgd@0.2": 0.1})


def seeded(df, key="method", noise=None, images=10_000):
    """``df`` as three training seeds: every row's accuracies plus ``noise[row][seed]`` (0 where not given),
    measured on ``images`` test images."""
    acc = [c for c in df.columns if c.startswith("natural") or "@" in c or c in ("Ours", "Vanilla")]
    out = []
    for s in range(3):
        d = df.copy()
        for row, jitter in (noise or {}).items():
            d.loc[d[key].astype(str) == row, acc] += jitter[s]
        out.append(d.assign(seed=s, images=images))
    return pd.concat(out, ignore_index=True)


def table_v(dra=(0.6, 0.55, 0.7), pgd=(0.5, 0.5, 0.6)):
    rows = [(f"{t} + {a}", t, a, 0.9, r) for t, d, p in zip(("Madry", "TRADES", "Ours"), dra, pgd)
            for a, r in (("PGD", p), ("DRA", d))]
    return pd.DataFrame(rows, columns=["method", "training", "adversary", "natural", "pgd@0.1"])


def p_sweep(r=(0.50, 0.60, 0.68, 0.69, 0.70)):
    ps = [(0.0, "0"), (1 / 6, "1/6"), (1 / 3, "1/3"), (0.5, "1/2"), (1.0, "1")]
    return pd.DataFrame([(p, lab, 0.99 - 0.01 * i, v) for i, ((p, lab), v) in enumerate(zip(ps, r))],
                        columns=["p", "label", "natural", "pgd@0.1"])


def backbones(gains=(0.1, 0.2, 0.3)):
    rows = []
    for i, g in enumerate(gains):
        rows += [(f"net{i}", "Vanilla", 0.99, 0.4), (f"net{i}", "Ours", 0.99, 0.4 + g)]
    return pd.DataFrame(rows, columns=["backbone", "method", "natural", "pgd@0.1"])


def corruptions(ours=(0.80, 0.70, 0.60), vanilla=(0.70, 0.60, 0.65)):
    names = ["gaussian_noise", "snow", "fog", "frost"][:len(ours)]
    rows = [("clean", 0.99, 0.99)] + list(zip(names, ours, vanilla))
    rows.append(("mean", sum(ours) / len(ours), sum(vanilla) / len(ours)))
    df = pd.DataFrame(rows, columns=["corruption", "Ours", "Vanilla"])
    return df.assign(source="on-the-fly suite")


def M(df, **kw):
    return {"03_methods_per_seed.csv": seeded(df, **kw)}


def test_keeps_accuracy(digits):
    v = report.claim_keeps_accuracy(M(methods()), digits)
    assert v.verdict == HOLDS and v.source == "03_methods.csv" and "> -0.5" in v.rule
    assert "natural Ours - Vanilla +0.0 [-0.2, +0.2] points (3 seeds; claim > -0.5)" in v.numbers
    assert "pgd@0.1 Ours - Vanilla +20.0 [" in v.numbers and "pgd@0.1 Ours - Control +19.0" in v.numbers
    # exactly half a point lower: the interval contains the margin
    assert report.claim_keeps_accuracy(M(methods(ours=(0.990, 0.7))), digits).verdict == INCONCLUSIVE
    assert report.claim_keeps_accuracy(M(methods(ours=(0.97, 0.7))), digits).verdict == FAILS
    assert report.claim_keeps_accuracy(M(methods(ours=(0.995, 0.4))), digits).verdict == FAILS
    # +5 points of robustness, but the seeds spread by 30: seed noise makes it inconclusive
    noisy = M(methods(ours=(0.995, 0.55)), noise={"Ours": (-0.3, 0.0, 0.3)})
    v = report.claim_keeps_accuracy(noisy, digits)
    assert v.verdict == INCONCLUSIVE and "pgd@0.1 Ours - Vanilla +5.0 [" in v.numbers
    # the same numbers from one seed (only the mean table): no estimate of seed noise, never a verdict
    v = report.claim_keeps_accuracy({"03_methods.csv": methods()}, digits)
    assert v.verdict == INCONCLUSIVE and "no interval: 1 seed" in v.numbers
    # the per-seed table, where the run wrote one, is the one judged
    both = {"03_methods.csv": methods(ours=(0.9, 0.1)), **M(methods())}
    assert report.claim_keeps_accuracy(both, digits).verdict == HOLDS
    v = report.claim_keeps_accuracy({}, digits)
    assert v.verdict == UNTESTED and "03_methods.csv not produced" in v.numbers
    # clean accuracy on the whole test split, where the table has it, is the one judged
    whole = methods(ours=(0.98, 0.7)).assign(**{"natural-all": [0.995, 0.996, 0.98, 0.995, 0.98, 0.99]})
    v = report.claim_keeps_accuracy(M(whole), digits)
    assert v.verdict == HOLDS and "natural-all Ours - Vanilla +0.0" in v.numbers


def test_keeps_accuracy_counts_test_sample_noise(digits):
    # identical seeds (no seed noise), but 100 test images: +3 points of robustness is inside the binomial error
    v = report.claim_keeps_accuracy(M(methods(ours=(0.995, 0.53)), images=100), digits)
    assert v.verdict == INCONCLUSIVE
    assert report.claim_keeps_accuracy(M(methods(ours=(0.995, 0.53)), images=100_000), digits).verdict == HOLDS


def test_missing_column_is_named_not_a_crash(digits):
    v = report.claim_keeps_accuracy(M(methods().drop(columns="pgd@0.1")), digits)
    assert v.verdict == UNTESTED and "'pgd@0.1'" in v.numbers and "pgd@0.2" in v.numbers
    v = report.claim_keeps_accuracy(M(methods().query("method != 'Ours'")), digits)
    assert v.verdict == UNTESTED and "'Ours'" in v.numbers


def test_beats_trades_only_judged_on_cifar10(digits, cifar):
    # loses natural to TRADES (1/λ=0.1) by 2 points: that part does not hold
    assert report.claim_beats_trades(M(methods(ours=(0.972, 0.7))), cifar).verdict == FAILS
    win = M(methods(ours=(0.995, 0.7)))
    v = report.claim_beats_trades(win, cifar)
    assert v.verdict == HOLDS and "pgd@0.1 Ours - TRADES (1/λ=1) +5.0" in v.numbers
    assert report.claim_beats_trades(M(methods(ours=(0.97, 0.55))), cifar).verdict == FAILS
    v = report.claim_beats_trades(win, digits)
    assert v.verdict == UNTESTED and "the claim is about CIFAR-10; on digits" in v.numbers


def test_dra_beats_pgd(digits):
    tv = lambda **kw: {"04_table_v_per_seed.csv": seeded(table_v(**kw))}
    v = report.claim_dra_beats_pgd(tv(), digits)
    assert v.verdict == HOLDS and "Madry: DRA - PGD +10.0" in v.numbers
    assert report.claim_dra_beats_pgd(tv(dra=(0.6, 0.4, 0.7)), digits).verdict == FAILS   # behind in TRADES
    noisy = {"04_table_v_per_seed.csv": seeded(table_v(dra=(0.52, 0.55, 0.7)), noise={"Madry + DRA": (-.1, 0, .1)})}
    assert report.claim_dra_beats_pgd(noisy, digits).verdict == INCONCLUSIVE
    # a tie measured on few images is inconclusive, not "does not hold"
    tie = {"04_table_v_per_seed.csv": seeded(table_v(dra=(0.5, 0.5, 0.6)), images=360)}
    assert report.claim_dra_beats_pgd(tie, digits).verdict == INCONCLUSIVE
    assert report.claim_dra_beats_pgd({}, digits).verdict == UNTESTED


def test_p_saturates(digits):
    fig4 = pd.DataFrame({"share of p=1 reached at p=1/3": [0.8, 0.9]})
    ps = lambda r, **kw: {"04_p_sweep_per_seed.csv": seeded(p_sweep(r), key="label", **kw)}
    v = report.claim_p_saturates({**ps((0.50, 0.60, 0.68, 0.69, 0.70)), "01_fig4_saturation.csv": fig4}, digits)
    assert v.verdict == HOLDS and "50.0%, 68.0% and 70.0%" in v.numbers and "80.0%-90.0%" in v.numbers
    assert "natural at p=1/3 97.0% vs p=1 95.0%" in v.numbers
    # 40% of the p=0 -> p=1 gain comes after p = 1/3: more than the quarter the rule allows
    assert report.claim_p_saturates(ps((0.5, 0.55, 0.62, 0.66, 0.7)), digits).verdict == FAILS
    assert report.claim_p_saturates(ps((0.5, 0.45, 0.4, 0.45, 0.5)), digits).verdict == FAILS   # p=1/3 worse than 0
    assert report.claim_p_saturates(ps((0.5,) * 5), digits).verdict == INCONCLUSIVE   # a tie is not a verdict
    noisy = ps((0.50, 0.60, 0.68, 0.69, 0.70), noise={"1/3": (-0.1, 0, 0.1)})
    assert report.claim_p_saturates(noisy, digits).verdict == INCONCLUSIVE
    v = report.claim_p_saturates({"01_fig4_saturation.csv": fig4}, digits)
    assert v.verdict == UNTESTED and "04_p_sweep.csv not produced" in v.numbers and "Fig. 4" in v.numbers


def test_bigger_backbones_gain_more(digits):
    bb = lambda g, **kw: {"04_backbones_per_seed.csv": seeded(backbones(g), key="backbone", **kw)}
    v = report.claim_bigger_gains_more(bb((0.1, 0.2, 0.3)), digits)
    assert v.verdict == HOLDS and "net0 +10.0, net1 +20.0, net2 +30.0" in v.numbers
    assert "gain net1 - gain net0 +10.0" in v.numbers
    assert report.claim_bigger_gains_more(bb((0.1, 0.3, 0.2)), digits).verdict == FAILS
    assert report.claim_bigger_gains_more(bb((0.1, 0.1, 0.3)), digits).verdict == INCONCLUSIVE
    v = report.claim_bigger_gains_more(bb((0.1,)), digits)
    assert v.verdict == UNTESTED and "need 2" in v.numbers


def test_corruptions(digits):
    cc = lambda **kw: {"05_corruptions_per_seed.csv": seeded(corruptions(**kw), key="corruption", images=1000)}
    v = report.claim_corruptions(cc(), digits)
    assert v.verdict == HOLDS and "of the 3 corruptions, Ours is ahead beyond the interval on 2 and behind beyond it on 1" in v.numbers
    assert "on-the-fly suite" in v.numbers
    worse = cc(ours=(0.6, 0.5, 0.7), vanilla=(0.7, 0.6, 0.65))
    assert report.claim_corruptions(worse, digits).verdict == FAILS
    close = cc(ours=(0.71, 0.60, 0.65), vanilla=(0.70, 0.60, 0.65))       # +0.3 points on the mean, 1000 images
    assert report.claim_corruptions(close, digits).verdict == INCONCLUSIVE


def chosen(ours=(0.99, 0.60), trades=(0.99, 0.55), madry=(0.99, 0.50), control=(0.99, 0.20), jitter=0.01,
           images=10_000):
    """A frontier table as notebook 06 writes it (frontier.select): one chosen run per method and seed, on
    ``images`` test images; seed s adds s * jitter to every robust accuracy (the differences have no seed spread)."""
    rows = [(m, s, nat, rob + s * jitter, images) for s in (0, 1, 2)
            for m, (nat, rob) in (("Control", control), ("TRADES", trades), ("Madry", madry), ("Ours", ours))
            if rob is not None]
    return {"06_frontier_chosen.csv": pd.DataFrame(rows, columns=["method", "seed", "natural", "pgd@0.1", "images"])}


def test_the_frontier_claim(digits):
    v = report.claim_frontier(chosen(), digits)
    assert v.verdict == HOLDS and "pgd@0.1 Ours - TRADES +5.0" in v.numbers and "natural Ours - Control" in v.numbers
    assert report.claim_frontier(chosen(trades=(0.99, 0.70)), digits).verdict == FAILS          # TRADES ahead
    assert report.claim_frontier(chosen(images=360), digits).verdict == INCONCLUSIVE            # +5 points, 360 images
    assert report.claim_frontier(chosen(ours=(0.95, 0.80)), digits).verdict == FAILS            # lost the accuracy
    lost = chosen(ours=(0.99, None))
    lost["06_frontier_chosen.csv"].loc[len(lost["06_frontier_chosen.csv"])] = ["Ours", 0, float("nan"), float("nan"), 360]
    v = report.claim_frontier(lost, digits)
    assert v.verdict == FAILS and "at none of its DRA budgets" in v.numbers
    assert report.claim_frontier({}, digits).verdict == UNTESTED
    assert report.claim_frontier(chosen(ours=(0.99, None)), digits).verdict == UNTESTED        # no Ours row at all
    v = report.claim_frontier(chosen(madry=(0.99, None)) | {"06_frontier_chosen.csv": pd.concat([
        chosen()["06_frontier_chosen.csv"].query("method != 'Madry'"),
        pd.DataFrame([["Madry", 0, float("nan"), float("nan"), 10_000]], columns=["method", "seed", "natural", "pgd@0.1", "images"])])},
        digits)
    assert "Madry: no run at the control's held-out clean accuracy" in v.numbers


def test_every_claim_has_a_documented_rule():
    assert len(report.CLAIMS) == 7
    for rule in report.CLAIMS:
        assert rule.text and rule.source.endswith(".csv") and "must" in rule.__doc__.lower() or "> 0" in rule.__doc__


def test_markdown_table_formats_accuracies_only():
    df = pd.DataFrame({"method": ["a|b"], "eps": [0.1], "p": [1 / 3], "n": [120], "natural": [0.99444],
                       "pgd@8/255": [0.5], "success_rate": [0.25], "seconds": [1234.56]})
    lines = report.markdown_table(df).splitlines()
    assert lines[0] == "| method | eps | p | n | natural | pgd@8/255 | success_rate | seconds |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| a\\|b | 0.1 | 0.3333 | 120 | 99.4% | 50.0% | 25.0% | 1234.6 |"


@pytest.fixture
def run_dir(tmp_path):
    cfg = robustlib.setup("quick", run_dir=str(tmp_path), device="cpu")
    write_csv(tmp_path / "tables" / "03_methods.csv", methods())
    write_csv(tmp_path / "tables" / "03_methods_vs_paper.csv",
              pd.DataFrame({"method": ["Ours"], "paper": [0.98], "measured": [0.97]}))
    write_csv(tmp_path / "tables" / "03_methods_per_seed.csv", seeded(methods()))
    write_csv(tmp_path / "tables" / "04_table_v.csv", table_v(dra=(0.4, 0.4, 0.5)))
    write_csv(tmp_path / "tables" / "04_table_v_per_seed.csv", seeded(table_v(dra=(0.4, 0.4, 0.5))))
    write_csv(tmp_path / "tables" / "02_pretraining.csv", pd.DataFrame({"method": ["Vanilla"], "natural": [0.99]}))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "03_tradeoff.png").write_bytes(PNG)
    write_json(tmp_path / "timings.json", {"02_pretraining": {"seconds": 9.5, "smoke": True, "device": "cpu"},
                                           "03_transfer_finetune": {"seconds": 100.25, "smoke": True, "device": "cpu"}})
    write_json(tmp_path / "calibration.json", {"dra_eps": 2.0, "pgd_eps": 0.055})
    # a run from before timings.json recorded settings: the notebook printed every field (RunConfig.describe)
    printed = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, dra_steps=999)).describe() + "\n"
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 03 · The fine-tune\n", "text"]},
                    {"cell_type": "code", "source": "print(cfg)", "execution_count": 2,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": printed}]}],
          "metadata": {"papermill": {"end_time": "2026-01-02T03:04:05.6+00:00", "exception": None}}}
    write_text(tmp_path / "notebooks" / "03_transfer_finetune.ipynb", json.dumps(nb))
    return cfg


def test_build_report(run_dir):
    path = report.build_report(run_dir)
    md = path.read_text()
    assert path == run_dir.path("report.md")
    # the ledger comes first, before any notebook section
    assert md.index("## Claims ledger") < md.index("## 02_pretraining") < md.index("## 03 · The fine-tune")
    assert "| The fine-tune keeps clean accuracy while adding robustness | **holds** |" in md
    assert "Table V) | **does not hold** | DRA - PGD on the pgd@0.1 > 0 points in every training |" in md
    assert "**The rule** (`robustlib/verdicts.py`), for every claim: paired by training seed" in md
    assert "1 holds, 0 inconclusive, 1 does not hold, 5 not tested on this profile" in md
    assert "table 05_corruptions.csv not produced" in md
    # per notebook: wall time, title from the executed notebook, tables in percent, paper tables, figures
    assert "9.5 s on cpu" in md and "finished 2026-01-02 03:04:05 UTC" in md
    assert "| Vanilla | 99.5% |" in md
    assert "[`tables/03_methods_per_seed.csv`](tables/03_methods_per_seed.csv): 18 rows, one per run and seed" in md
    assert "> **Measured beside the paper**: [`tables/03_methods_vs_paper.csv`]" in md
    assert "![03_tradeoff](figures/03_tradeoff.png)" in md
    # settings, with the drift between the profile now and what the notebook printed
    assert "## Exact settings" in md and "| main_eps | 0.1 |" in md and "| pgd_eps | 0.055 |" in md
    assert f"| dra_steps | {run_dir.profile.dra_steps} | 999 | 03 |" in md
    assert "Settings changed since the notebooks ran** (fields dra_steps)" in md
    assert "## Software" in md and "| torch |" in md and "| CPU count |" in md and "| papermill |" in md
    assert "| **total** | 109.8 |" in md and "Total: 109.8 s" in md
    assert "Smoke run" in md
    page = run_dir.path("report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and 'src="figures/03_tradeoff.png"' in page


def test_the_settings_a_run_recorded_are_what_the_drift_check_reads(run_dir):
    """``run`` records in timings.json the settings each notebook ran with; the report compares those (an
    executed notebook's printout is read only for a run that recorded none)."""
    timings = json.loads(run_dir.path("timings.json").read_text())
    ran = dataclasses.replace(run_dir.profile, ft_epochs=77)
    timings["02_pretraining"]["settings"] = dataclasses.replace(run_dir, profile=ran).settings()
    write_json(run_dir.path("timings.json"), timings)
    md = report.build_report(run_dir).read_text()
    assert f"| ft_epochs | {run_dir.profile.ft_epochs} | 77 | 02 |" in md
    assert f"| dra_steps | {run_dir.profile.dra_steps} | 999 | 03 |" in md      # 03 recorded none: its printout


def test_a_kernel_of_run_records_the_settings_its_notebook_runs_with(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLIB_NOTEBOOK", "04_ablations")
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True, overrides={"lr": 0.07})
    assert json.loads((tmp_path / "notebooks" / ".04_ablations.settings.json").read_text()) == cfg.settings()
    assert cfg.settings()["lr"] == "0.07"
    monkeypatch.delenv("ROBUSTLIB_NOTEBOOK")
    robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "b"), smoke=True)   # a notebook opened by hand
    assert not (tmp_path / "b" / "notebooks").exists()


@pytest.mark.parametrize("profile", ["quick", "fashion", "paper-mnist", "paper-cifar10"])
@pytest.mark.parametrize("smoke", [False, True])
def test_the_configuration_prints_as_a_short_summary(profile, smoke):
    text = str(robustlib.setup(profile, device="cpu", smoke=smoke, create=False))
    lines = [line for line in text.splitlines() if not line.startswith("run_dir")]      # (a path's own length)
    assert len(lines) <= 11 and all(len(line) <= 110 for line in lines), text
    assert ("SMOKE" in text) == smoke


def test_the_summarys_counts_are_the_splits_the_notebooks_use():
    from robustlib.data import load_splits, split_validation

    for smoke in (False, True):
        cfg = robustlib.setup("quick", device="cpu", smoke=smoke, create=False)
        train, test = load_splits(cfg.profile, cfg.data_root)
        rest, held = split_validation(train, cfg.profile.val_size, cfg.profile.seed)
        attacked = test.subset(cfg.profile.eval_limit, seed=1)
        text = str(cfg)
        assert f"{len(train):,} training images, {len(held):,} of them held out" in text
        assert f"; {len(test):,} test" in text and f"attacked: {len(attacked):,} test images" in text
        assert f"on {len(rest):,} images" in text
    text = str(robustlib.setup("paper-mnist", device="cpu", smoke=False, create=False))
    assert "60,000 training images, 5,000 of them held out" in text and "p = 2/3, T = 20" in text
    assert "DRA eps 0.1 (read as notebook 01 decides) for all 50 epochs" in text
    assert "  dra_steps            20" in robustlib.setup("paper-mnist", device="cpu", smoke=False, create=False).describe()


def test_build_report_on_an_empty_run_dir(tmp_path):
    cfg = robustlib.setup("quick", run_dir=str(tmp_path), device="cpu")
    md = report.build_report(cfg).read_text()
    assert md.count(f"**{UNTESTED}**") == 7 and "Total: 0.0 s" in md


def test_run_sequence_survives_a_failing_report(tmp_path, monkeypatch, capsys):
    import shutil

    import papermill

    from robustlib import run

    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, **kw: shutil.copy(src, dst))
    out = run.run_sequence("quick", run_dir=str(tmp_path), only=["02"], device="cpu")
    assert (out / "report.md").exists() and "report.md" in capsys.readouterr().out

    def broken(cfg):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(report, "build_report", broken)
    run.run_sequence("quick", run_dir=str(tmp_path), only=["02"], device="cpu")
    printed = capsys.readouterr().out
    assert "warning: report not built (ValueError: boom); the notebooks' results are intact" in printed
    assert "results in" in printed and "second line" not in printed


def test_a_profiles_expected_gaps_pass_fail_and_name_what_is_wrong():
    from robustlib.io import RobustlibError

    p = dataclasses.replace(robustlib.setup("quick", device="cpu", smoke=False, create=False).profile,
                            expected_gaps=("Ours - Vanilla natural-all >= -0.005", "Ours - Vanilla pgd-rs@0.1 >= 0.10"))
    table = pd.DataFrame({"natural-all": [0.99, 0.992], "pgd-rs@0.1": [0.70, 0.55]}, index=["Ours", "Vanilla"])
    assert ("expected gaps hold: Ours - Vanilla natural-all -0.2 points (floor -0.5)"
            in report.check_expected_gaps(table, p))
    with pytest.raises(RobustlibError, match=r"far off the profile's record: Ours - Vanilla pgd-rs@0.1 \+5.0 points"):
        report.check_expected_gaps(table.assign(**{"pgd-rs@0.1": [0.60, 0.55]}), p)
    # a column this run did not evaluate (another eval_eps) is said unchecked; a missing row is a profile error
    assert "unchecked: pgd-rs@0.1" in report.check_expected_gaps(table.drop(columns="pgd-rs@0.1"), p)
    with pytest.raises(RobustlibError, match="no row Vanilla in the table"):
        report.check_expected_gaps(table.drop(index="Vanilla"), p)
    with pytest.raises(RobustlibError, match=r"clean accuracy 96.0% is below the floor of profile 'quick', 97.0%"):
        report.check_expected_clean_acc(0.96, p)
    assert "above the profile's floor" in report.check_expected_clean_acc(0.98, p)
    assert "smoke" in report.check_expected_gaps(table.iloc[:0], dataclasses.replace(p, smoke=True))
    with pytest.raises(ValueError, match="expected_gaps"):
        dataclasses.replace(p, expected_gaps=("Ours beats Vanilla",))


def test_a_verdict_renders_as_markdown_with_its_rule_and_evidence_as_items():
    from robustlib.report import Verdict
    v = Verdict("Ours keeps accuracy", "holds", "Ours - Control: +0.3 [-0.1, +0.7]", "03_methods.csv",
                "natural within 0.5 points")
    assert v.headline == "Ours keeps accuracy: HOLDS" == str(v).splitlines()[0]
    assert v.markdown("one more line").splitlines() == [
        "**Ours keeps accuracy: HOLDS**", "", "- rule: natural within 0.5 points",
        "- Ours - Control: +0.3 [-0.1, +0.7]", "- one more line"]
    assert v.markdown(item=True).splitlines() == [
        "- **Ours keeps accuracy: HOLDS**", "  - rule: natural within 0.5 points", "  - Ours - Control: +0.3 [-0.1, +0.7]"]


def test_the_wall_time_table_says_which_precision_each_notebook_ran_at():
    """`auto` resolves per machine: where a notebook trained or attacked in bf16, the report's table says so;
    an all-fp32 run's table keeps its four columns."""
    from robustlib.report import _software_and_times

    plain = "\n".join(_software_and_times({"02_x": {"seconds": 1.0, "device": "cpu", "smoke": False}}))
    assert "| notebook | seconds | device | smoke |" in plain and "attack iterates" not in plain
    md = "\n".join(_software_and_times({
        "02_x": {"seconds": 1.0, "device": "cpu", "smoke": False, "precision": "bf16"},
        "03_y": {"seconds": 2.0, "device": "cpu", "smoke": False, "precision": "bf16", "attack_precision": "bf16"}}))
    assert "| notebook | seconds | device | smoke | training | attack iterates |" in md
    assert "| 02_x | 1 | cpu | False | bf16 | fp32 |" in md and "| 03_y | 2 | cpu | False | bf16 | bf16 |" in md
    from unittest import mock

    import robustlib
    from robustlib.run import _precisions
    with mock.patch("robustlib.train.native_bf16", lambda device: True):      # what `run` records per notebook
        assert _precisions(robustlib.setup("fashion", device="cpu", create=False)) == {
            "precision": "bf16", "attack_precision": "bf16"}
        assert _precisions(robustlib.setup("quick", device="cpu", create=False)) == {}
