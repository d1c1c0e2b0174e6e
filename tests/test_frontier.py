"""The frontier (issue 16): the sweep's runs, the knob chosen on the held-out split only, the verdict on the test
images paired by seed."""
import math

import pandas as pd
import pytest

import robustlib
from robustlib import frontier, verdicts
from robustlib.io import RobustlibError

ROB = "pgd@0.1"


def table(rows):
    """A frontier table as train_grid returns it: (family, value, seed, test natural, test robust, held-out
    natural, held-out robust), 360 test images."""
    df = pd.DataFrame(rows, columns=["family", "value", "seed", "natural", ROB, "heldout natural", "heldout " + ROB])
    return df.assign(method=df["family"] + " " + df["value"].astype(str), images=360)


CONTROL = [("Control", math.nan, s, 0.95, 0.10, 0.94, 0.12) for s in (0, 1, 2)]


def test_the_knob_is_chosen_on_the_held_out_columns_never_the_test_ones():
    rows = CONTROL + [
        # TRADES 1/λ = 1 is the most robust on the test images but loses held-out accuracy: not eligible
        *[("TRADES", 1.0, s, 0.90, 0.70, 0.90, 0.60) for s in (0, 1, 2)],
        # 1/λ = 0.1 keeps the held-out accuracy (0.936 >= 0.94 - 0.005) and is chosen
        *[("TRADES", 0.1, s, 0.95, 0.40 + 0.01 * s, 0.936, 0.45) for s in (0, 1, 2)],
        # Ours: two eligible values; the more robust on the held-out split wins even if worse on the test
        *[("Ours", 4.0, s, 0.95, 0.30, 0.94, 0.50) for s in (0, 1, 2)],
        *[("Ours", 8.0, s, 0.95, 0.20, 0.95, 0.55) for s in (0, 1, 2)],
    ]
    chosen = frontier.select(table(rows), ROB)
    picked = chosen.set_index(["method", "seed"])["value"]
    assert (picked.loc["TRADES"] == 0.1).all() and (picked.loc["Ours"] == 8.0).all()
    assert (chosen[chosen.method == "Control"]["natural"] == 0.95).all()
    edge = chosen.set_index(["method", "seed"])["at edge"]
    assert edge.loc["Ours"].all() and not edge.loc["TRADES"].any()       # 8 is Ours' largest budget; 1/λ = 1 > 0.1
    # the lead is read on the held-out split too (Ours 0.55 > TRADES 0.45), then tested on the test images
    v = frontier.verdict(chosen, ROB)
    assert v["best"] == "Ours" and v["missing"] == []
    c = v["against"]["TRADES"]
    assert c.diff == pytest.approx(-0.21) and c.verdict == verdicts.FAILS    # 0.20 - 0.41, paired by seed
    assert v["kept"]["Ours"].diff == pytest.approx(0.0) and v["kept"]["Ours"].margin == verdicts.NOT_LOWER
    text = frontier.reading(chosen, ROB)
    assert text.startswith("**Ours leads**") and "less robust than TRADES beyond the noise" in text
    assert "largest value its sweep has, for some seed: Ours" in text


def test_a_method_that_never_keeps_the_accuracy_is_missing_not_extrapolated():
    rows = CONTROL + [*[("Madry", 0.1, s, 0.80, 0.60, 0.80, 0.60) for s in (0, 1, 2)],
                      *[("Ours", 4.0, s, 0.95, 0.30, 0.94, 0.50) for s in (0, 1, 2)]]
    chosen = frontier.select(table(rows), ROB)
    assert chosen[chosen.method == "Madry"]["value"].isna().all()
    v = frontier.verdict(chosen, ROB)
    assert v["best"] == "Ours" and v["missing"] == ["Madry"] and v["against"] == {}


def test_bad_tables_are_one_line_errors():
    with pytest.raises(RobustlibError, match="lacks heldout natural"):
        frontier.select(table(CONTROL).drop(columns="heldout natural"), ROB)
    with pytest.raises(RobustlibError, match="no Control rows"):
        frontier.select(table([("Ours", 4.0, 0, 0.95, 0.3, 0.94, 0.5)]), ROB)
    lost = frontier.select(table(CONTROL + [("Ours", 4.0, 0, 0.5, 0.3, 0.5, 0.5)]), ROB)    # a finding, not an error
    assert frontier.verdict(lost, ROB) == {"best": None, "against": {}, "kept": {}, "missing": ["Ours"],
                                           "lead": "heldout " + ROB}
    assert frontier.reading(lost, ROB).startswith("**No method kept the control's clean accuracy**")
    g = frontier.goal(table(CONTROL + [("TRADES", 1.0, 0, 0.5, 0.7, 0.5, 0.7)]), ROB)
    assert "Neither the fine-tune nor a variant has a knob value within that point" in g["reading"]


def test_the_sweep_lists_each_methods_knob_and_reuses_the_profiles_own_runs(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False)
    rows = frontier.sweep(cfg)
    by = pd.DataFrame([{k: v for k, v in r.items() if k != "cfg"} for r in rows])
    assert by["family"].tolist().count("TRADES") == len(cfg.profile.frontier_trades_betas)
    assert sorted(by.loc[by.family == "Madry", "value"]) == pytest.approx([0.025, 0.05, 0.1, 0.2])
    assert sorted(by.loc[by.family == "Ours", "value"]) == pytest.approx([3.0, 6.0, 12.0])
    for variant in ("Ours + TRADES KL", "Ours + SWA"):                      # the recipe's variants, same budgets
        assert sorted(by.loc[by.family == variant, "value"]) == pytest.approx([3.0, 6.0, 12.0])
    assert set(by.loc[by.family.str.startswith("Ours +"), "method"]) == {"ours-trades", "ours-swa"}
    own = {(r["family"], r["value"]) for r in rows
           if r["cfg"] is cfg and r["family"] in ("Madry", "MART", "Ours")}
    assert own == {("Madry", 0.1), ("MART", 0.1), ("Ours", 6.0)}          # the profile's settings: nb03's runs
    assert by["family"].iloc[:2].tolist() == ["Vanilla", "Control"]
    assert by.loc[by.family == "TRADES", "retrain"].tolist() == [False, True, False, False, True]  # nb03 0.1, 1; nb00 3
    assert not by["retrain"].iloc[:2].any() and by.loc[by.family.str.startswith("Ours +"), "retrain"].all()
    # a profile whose baselines train from scratch: the frontier fine-tunes them from theta_std, as variants
    paper = frontier.sweep(robustlib.setup("paper-mnist", device="cpu", run_dir=str(tmp_path / "p"), smoke=False))
    madry = [r for r in paper if r["family"] == "Madry"]
    assert all(r["cfg"].profile.baseline_init == "pretrained" and "fromstd" in r["cfg"].tag for r in madry)
    assert not any(r["reused"] for r in madry)
    none = frontier.sweep(robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False,
                                          overrides={"frontier_variants": []}))
    assert not any(r["family"].startswith("Ours +") for r in none)
    variant = next(r for r in rows if r["family"] == "Madry" and r["value"] == 0.025)["cfg"]
    assert variant.profile.main_eps == "0.025" and variant.tag


def test_the_frontier_figure_draws_a_curve_per_method_and_the_controls_floor(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from robustlib import plots
    rows = CONTROL + [(f, v, s, nat, rob, nat, rob) for s in (0, 1, 2)
                      for f, v, nat, rob in (("TRADES", 0.1, 0.95, 0.4), ("TRADES", 1.0, 0.9, 0.7),
                                             ("Ours", 4.0, 0.95, 0.3), ("Ours", 8.0, 0.94, 0.5))]
    df = table(rows).assign(knob=lambda d: d["family"].map({"TRADES": "1/λ", "Ours": "DRA ε_max", "Control": ""}))
    fig = plots.frontier(df, robust=ROB, title="t", run_dir=tmp_path, name="frontier")
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines() if line.get_label() in ("TRADES", "Ours")}
    assert list(curves["TRADES"].get_xdata()) == pytest.approx([40.0, 70.0])       # knob order, in percent
    assert list(curves["Ours"].get_ydata()) == pytest.approx([95.0, 94.0])
    floor = [line for line in ax.get_lines() if line.get_label().startswith("Control −")]
    assert floor and floor[0].get_ydata()[0] == pytest.approx(94.5)
    assert (tmp_path / "figures" / "frontier.png").exists()


def test_a_variant_is_read_against_ours_at_the_same_budget():
    rows = [("Ours", v, s, 0.95, 0.30 + 0.1 * v, 0.95, 0.3) for s in (0, 1, 2) for v in (1.0, 2.0)]
    rows += [("Ours + SWA", v, s, 0.95, 0.40 + 0.1 * v + 0.001 * s, 0.95, 0.3) for s in (0, 1, 2) for v in (1.0, 2.0)]
    text = frontier.budget_reading(table(rows), ROB)
    assert "a move of the frontier there" in text and "Ours + SWA at 1, Ours + SWA at 2" in text
    assert "at 1: pgd@0.1 +10.1" in text
    same = [r[:4] + (0.30 + 0.1 * r[1],) + r[5:] if r[0] == "Ours + SWA" else r for r in rows]
    assert "No budget where a variant is more robust" in frontier.budget_reading(table(same), ROB)


def test_the_target_takes_each_methods_best_value_within_a_point_of_the_control():
    rows = CONTROL + [(f, v, s, nat, rob, nat, rob) for s in (0, 1, 2)
                      for f, v, nat, rob in (("TRADES", 1.0, 0.90, 0.70), ("Ours", 4.0, 0.945, 0.50),
                                             ("Ours", 8.0, 0.90, 0.75), ("Ours + SWA", 4.0, 0.95, 0.72))]
    g = frontier.goal(table(rows), ROB)
    t = g["table"].set_index("method")
    assert t.loc["Ours", "value"] == 4.0                     # 8 is more robust but 5 points below the control
    assert t.loc["Ours", "minus TRADES at knob = 1 (points)"] == pytest.approx(-20.0)
    assert t.loc["Ours + SWA", "target met"] == "yes" and t.loc["TRADES", "target met"] == "(a baseline)"
    assert "Met by Ours + SWA." in g["reading"]


def test_points_far_below_the_control_are_named_not_drawn(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from robustlib import plots
    rows = CONTROL + [(f, v, s, nat, rob, nat, rob) for s in (0, 1, 2)
                      for f, v, nat, rob in (("MART", 0.1, 0.94, 0.7), ("MART", 0.2, 0.26, 0.2))]
    df = table(rows).assign(knob=lambda d: d["family"].map({"MART": "ε", "Control": ""}))
    fig = plots.frontier(df, robust=[ROB], title="t", run_dir=tmp_path, name="frontier")
    assert fig.axes[0].get_ylim()[0] == pytest.approx(93.7)       # zoomed on the points within 5 of the control's 95%
    assert any("MART ε = 0.2 (26.0% clean)" in t.get_text() for t in fig.texts)


def test_a_long_note_of_points_not_drawn_stays_clear_of_the_axis_labels(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from robustlib import plots
    rows = CONTROL + [(f, v, s, nat, rob, nat, rob) for s in (0, 1, 2) for f in ("MART", "Madry", "TRADES")
                      for v, nat, rob in ((0.1, 0.94, 0.7), *((e, 0.5 - e, 0.2) for e in (0.2, 0.3, 0.4, 0.45)))]
    df = table(rows).assign(knob=lambda d: d["family"].map({"MART": "ε", "Madry": "ε", "TRADES": "1/λ", "Control": ""}),
                            **{"pgd@0.03": lambda d: d[ROB]})
    fig = plots.frontier(df, robust=[ROB, "pgd@0.03"], title="t", run_dir=tmp_path, name="frontier")
    renderer = fig.canvas.get_renderer()
    note = next(t for t in fig.texts if t.get_text().startswith("below the axis"))
    assert note.get_text().count("\n") >= 1                       # twelve points: more than one line
    top_of_note = note.get_window_extent(renderer).y1
    for ax in fig.axes[:2]:
        assert ax.xaxis.label.get_window_extent(renderer).y0 > top_of_note
        assert ax.get_tightbbox(renderer).y0 > top_of_note
    assert note.get_window_extent(renderer).x1 <= fig.bbox.x1                      # and within the figure's width
    assert all("(" in line and line.rstrip(";").endswith("clean)") for line in note.get_text().splitlines())


def test_the_choice_at_another_radius_is_its_own_selection_and_its_changes_are_named():
    goal = "pgd@0.03"
    rows = [(*r, 0.5, 0.5) for r in CONTROL] + [
        # at 0.1 the larger budget wins on the held-out split, at 0.03 the smaller one
        *[("Ours", 4.0, s, 0.95, 0.30, 0.94, 0.50, 0.95, 0.80) for s in (0, 1, 2)],
        *[("Ours", 8.0, s, 0.95, 0.35, 0.95, 0.55, 0.95, 0.70) for s in (0, 1, 2)],
        *[("TRADES", 0.1, s, 0.95, 0.20, 0.94, 0.20, 0.94, 0.60) for s in (0, 1, 2)]]
    cols = ["family", "value", "seed", "natural", ROB, "heldout natural", "heldout " + ROB, goal, "heldout " + goal]
    df = pd.DataFrame(rows, columns=cols).assign(method=lambda d: d["family"], images=360)
    at_main, at_goal = frontier.select(df, ROB), frontier.select(df, goal)
    assert (at_main.loc[at_main.method == "Ours", "value"] == 8.0).all()
    assert (at_goal.loc[at_goal.method == "Ours", "value"] == 4.0).all()
    assert frontier.verdict(at_goal, goal)["lead"] == "heldout " + goal
    assert frontier.choices(at_main, at_goal) == "Ours seed 0: 8 → 4; Ours seed 1: 8 → 4; Ours seed 2: 8 → 4"
    assert frontier.choices(at_main, at_main) == "none"
    line = frontier.headline(frontier.verdict(at_goal, goal), "0.03")
    assert line == "**Ours** leads at ε = 0.03; on the test images Ours − TRADES +1.0 [-2.3, +4.3] points, not distinguishable."
    assert frontier.headline({"best": None}, "0.03") == "no method kept the accuracy."


def test_the_constant_budget_variant_is_notebook_04s_schedule_run_at_each_budget(tmp_path):
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False,
                          overrides={"frontier_variants": ["ours-const"]})
    p = cfg.profile
    rows = [r for r in frontier.sweep(cfg) if r["family"] == "Ours + constant ε_max"]
    assert [r["value"] for r in rows] == pytest.approx([p.ft_eps_max * s for s in p.frontier_dra_scales])
    assert {r["method"] for r in rows} == {"ours"}
    for r in rows:       # DRA at eps_max in every epoch, no decay and no clean tail, at the row's budget
        q = r["cfg"].profile
        assert not q.ft_clean_tail and q.ft_eps_min == q.ft_eps_max == pytest.approx(r["value"])
    at_profile = next(r for r in rows if r["value"] == p.ft_eps_max)
    # notebook 04's schedule ablation "constant eps_max, no tail" (the configuration notebook 04 and the estimate
    # train): the same run, loaded, never retrained here, without the per-epoch check as notebook 04 trains it
    from robustlib import estimate
    assert at_profile["cfg"].tag == "const-notail" and at_profile["cfg"] in [c for c, *_ in estimate._ablation_rows(cfg)]
    assert at_profile["reused"] and not at_profile["retrain"] and not at_profile["check"]
    assert all(r["retrain"] and not r["reused"] for r in rows if r is not at_profile)
    # every variant the profiles accept is a methods entry or a schedule, and each has a name
    from robustlib.methods import METHODS
    from robustlib.profiles import FRONTIER_VARIANTS
    assert set(FRONTIER_VARIANTS) == set(frontier.VARIANTS)
    assert all((v in METHODS) != (v in frontier.SCHEDULES) for v in FRONTIER_VARIANTS)
    # where the profile's own schedule is already constant without a tail, the variant would be Ours again
    with pytest.raises(RobustlibError, match="'ours-const'.*is the profile's own schedule"):
        frontier.sweep(robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=False, overrides={
            "frontier_variants": ["ours-const"], "ft_eps_min": p.ft_eps_max, "ft_clean_tail": False}))


def test_the_lead_is_read_where_the_knobs_were_chosen_even_at_another_radius():
    goal = "pgd@0.03"
    rows = [(*r, 0.5, 0.5) for r in CONTROL] + [
        *[("Ours", 4.0, s, 0.95, 0.30, 0.94, 0.50, 0.95, 0.60) for s in (0, 1, 2)],
        *[("TRADES", 0.1, s, 0.95, 0.20, 0.94, 0.40, 0.94, 0.90) for s in (0, 1, 2)]]
    cols = ["family", "value", "seed", "natural", ROB, "heldout natural", "heldout " + ROB, goal, "heldout " + goal]
    df = pd.DataFrame(rows, columns=cols).assign(method=lambda d: d["family"], images=360)
    at_main = frontier.select(df, ROB)
    # read at 0.03, the lead stays the one chosen at 0.1 (Ours, 0.50 > 0.40), not TRADES' held-out 0.90 at 0.03
    assert frontier.lead_column(at_main, goal) == "heldout " + ROB and frontier.verdict(at_main, goal)["best"] == "Ours"
    assert "the lead is read on the held-out split at ε = 0.1, where each knob was chosen" in frontier.reading(at_main, goal)
    assert frontier.lead_column(frontier.select(df, goal), goal) == "heldout " + goal
    assert frontier.choice_eps(robustlib.get_profile("fashion")) == ["0.1", "0.03"]
    assert frontier.choice_eps(robustlib.get_profile("quick")) == [robustlib.get_profile("quick").main_eps]
