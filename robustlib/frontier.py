"""The accuracy–robustness frontier of each method (issue 16): one curve per method, not one point.

Each method has a knob that slides it along its own trade-off: TRADES' 1/λ, the training radius ε of Madry
and MART, the fine-tune's DRA budget. One point per method (the paper's tables) cannot say whether a method's
*curve* lies above another's. Here every method's knob is swept, every run starting from the same θ_std with
the same epochs and data, for every training seed, and the question the paper asks ("robustness without
losing accuracy") is answered as a frontier statement:

    at the control's clean accuracy (not more than ``margin`` below it), which method is the most robust?

The answer must not be chosen on the test images. For each method and seed, the knob value is *selected on
the held-out split*: among the method's runs whose held-out clean accuracy is at least the control's minus
``margin``, the one most robust on the held-out images (PGD at the profile's main ε for every run, whatever
ε it trained at). The chosen runs are then compared on the test images with the repository's verdict rule
(:mod:`robustlib.verdicts`), paired by seed.

- :func:`sweep` lists the runs (rows for :func:`robustlib.methods.train_grid`) from the profile's
  ``frontier_*`` fields;
- :func:`select` picks each method's knob per seed on the held-out columns;
- :func:`verdict` says which chosen method is the most robust on the test images, by how much, and whether
  the difference is outside the noise, and whether each kept the control's clean accuracy.
"""
from __future__ import annotations

import math

import pandas as pd

from . import verdicts
from .io import RobustlibError
from .profiles import Recorder, parse_eps

CONTROL = "Control"
VANILLA = "Vanilla"            # drawn as a marker, never selected: theta_std is where every run starts
# the recipe's variants (issue 16, "moving the frontier"): methods.METHODS entries, each swept over the DRA budget
VARIANTS = {"ours-trades": "Ours + TRADES KL", "ours-swa": "Ours + SWA",       # the keys: profiles.FRONTIER_VARIANTS
            "ours-const": "Ours + constant ε_max"}
# a variant of the recipe's budget schedule, not of its objective, so not a methods.METHODS entry: the method "ours"
# on the profile fields of one of notebook 04's schedules (methods.schedules), named by its tag. At the profile's own
# budget it is notebook 04's run itself, loaded, not trained again; at the other budgets it is trained here.
SCHEDULES = {"ours-const": "const-notail"}      # DRA at eps_max in every epoch, no decay and no clean tail


def choice_eps(p) -> list[str]:
    """The radii a knob may be chosen at on the held-out split: ``main_eps`` (the ledger's rule) and the target
    radius ``frontier_goal_eps`` where it is another radius (notebook 06 shows that choice as an alternative)."""
    radii = {parse_eps(p.main_eps)[0]: p.main_eps}
    if p.frontier_goal_eps is not None:
        radii.setdefault(parse_eps(p.frontier_goal_eps)[0], p.frontier_goal_eps)
    return list(radii.values())
NOTEBOOK_03 = ("vanilla", "control", "trades", "madry", "mart", "ours")    # methods notebook 03 trains
HELD_OUT = "heldout "          # prefix of the held-out columns train_grid adds ("heldout natural", ...)


def _budget(eps: float) -> str:
    return f"{eps:.4g}"


def sweep(cfg) -> list[dict]:
    """The frontier's runs as rows for :func:`~robustlib.methods.train_grid`: the vanilla model (theta_std, a
    marker) and the control, then each method at each knob value the profile lists (``frontier_trades_betas``;
    ``frontier_eps_scales`` times ``main_eps`` for Madry and MART; ``frontier_dra_scales`` times both DRA
    budgets for the fine-tune and for each of the profile's ``frontier_variants``, :data:`VARIANTS`: a methods
    entry, or for a schedule variant (:data:`SCHEDULES`) the fine-tune on changed profile fields). Each row
    carries ``family`` (the method), ``knob`` (what was swept) and ``value``; a value equal to the profile's
    own setting is the profile's own run (notebook 03's, or notebook 00's for its TRADES values; notebook 04's
    for a schedule variant), loaded, not trained again; ``reused`` says which, ``check`` whether the run keeps
    its per-epoch held-out check (as where it is trained first), and
    ``retrain`` marks the others, which ``train_grid(retrain=True)`` trains again. Every run starts from the
    same theta_std: where the profile trains its baselines from scratch (``baseline_init``), the frontier's
    TRADES, Madry and MART rows are fine-tuned from theta_std instead, under the tag ``fromstd``."""
    p = cfg.profile
    main = parse_eps(p.main_eps)[0]
    rows = [dict(name=VANILLA, cfg=cfg, method="vanilla", family=VANILLA, knob="", value=math.nan),
            dict(name=CONTROL, cfg=cfg, method="control", family=CONTROL, knob="", value=math.nan)]
    # every run starts from theta_std: a profile whose baselines train from scratch (the paper's, for its tables)
    # fine-tunes them here, as variants of their own, for the fine-tune's epochs
    base = cfg if p.baseline_init == "pretrained" else cfg.variant("fromstd", baseline_init="pretrained")
    for beta in p.frontier_trades_betas:
        rows.append(dict(name=f"TRADES, 1/λ = {beta:g}", cfg=base, method="trades", beta=beta, family="TRADES",
                         knob="1/λ", value=float(beta)))
    for family, method in (("Madry", "madry"), ("MART", "mart")):
        for scale in p.frontier_eps_scales:
            eps = _budget(scale * main)
            c = base if scale == 1 else base.variant(f"eps{eps}", main_eps=eps)
            rows.append(dict(name=f"{family}, ε = {eps}", cfg=c, method=method, family=family, knob="ε",
                             value=float(eps)))
    from .methods import METHODS, schedules, table_i_betas     # here: methods imports much that frontier does not need
    for variant, family in (("ours", "Ours"), *((v, VARIANTS[v]) for v in p.frontier_variants)):
        method, own = "ours" if variant in SCHEDULES else variant, cfg
        if variant in SCHEDULES:            # notebook 04's schedule, under notebook 04's tag
            own = cfg.variant(SCHEDULES[variant], **{t: f for _, t, f in schedules(p)}[SCHEDULES[variant]])
            if own is cfg:
                raise RobustlibError(f"frontier variant {variant!r} ({VARIANTS[variant]}) is the profile's own schedule "
                                     f"on {p.name!r}: it would be Ours again; remove it from frontier_variants")
        q = own.profile
        for scale in p.frontier_dra_scales:
            c = own if scale == 1 else own.variant(f"dra{scale:g}x", ft_eps_max=q.ft_eps_max * scale,
                                                   ft_eps_min=q.ft_eps_min * scale)
            rows.append(dict(name=f"{family}, DRA ε_max = {p.ft_eps_max * scale:g}", cfg=c, method=method,
                             family=family, knob="DRA ε_max", value=float(p.ft_eps_max * scale),
                             **({"borrowed": "04"} if variant in SCHEDULES and scale == 1 else {})))
    for v in p.frontier_variants:           # refuse a variant the profile cannot train before anything trains
        if v in METHODS and METHODS[v].check:
            METHODS[v].check(Recorder(p))
    for r in rows:      # an earlier notebook's run (loaded), or one this notebook trains (and retrains, if asked)
        r["reused"] = bool(r.pop("borrowed", None)) or (
            r["cfg"] is cfg and r["method"] in NOTEBOOK_03 and (r["method"] != "trades" or r["beta"] in table_i_betas(p)))
        r["retrain"] = not r["reused"]
        # the per-epoch held-out check where the run's own notebook trains it: 03 and 00 keep it, 04's grid does not
        r["check"] = r["reused"] and r["cfg"] is cfg
    return rows


def select(per_seed: pd.DataFrame, robust: str, *, margin: float = verdicts.NOT_LOWER) -> pd.DataFrame:
    """Each method's knob value per seed, chosen on the held-out columns (``heldout natural`` and
    ``heldout <robust>``): among the method's runs of that seed whose held-out clean accuracy is at least the
    control's (same seed) plus ``margin`` (-0.005: half a point below it), the most robust on the held-out
    images (ties: the more accurate). Returns one row per method and seed: ``method`` (the family), ``seed``,
    ``value`` (the knob chosen, NaN where no run kept the accuracy), ``at edge`` (the chosen value is the
    largest the sweep has for that method and seed: its curve may reach further) and the test columns of that
    run; the control's own rows first; ``chosen at`` names ``robust``, the radius of the choice."""
    need = {"family", "value", "seed", "natural", robust, HELD_OUT + "natural", HELD_OUT + robust}
    missing = sorted(need - set(per_seed.columns))
    if missing:
        raise RobustlibError(f"the frontier table lacks {', '.join(missing)}; make it with methods.train_grid("
                             f"..., heldout=(x, y), heldout_eps=main_eps) over frontier.sweep(cfg)")
    control = per_seed[per_seed["family"] == CONTROL]
    if control.empty:
        raise RobustlibError("the frontier table has no Control rows: the selection needs the control's held-out "
                             "clean accuracy")
    if control["seed"].duplicated().any():
        raise RobustlibError("the frontier table has several Control rows for one seed: make it with one row per "
                             "run and seed (methods.train_grid over frontier.sweep(cfg))")
    floors = control.set_index("seed")[HELD_OUT + "natural"].astype(float) + margin
    if floors.isna().any():
        raise RobustlibError(f"the control has no held-out clean accuracy for seed(s) "
                             f"{', '.join(map(str, floors.index[floors.isna()]))}: evaluate it with train_grid(heldout=...)")
    absent = sorted(set(per_seed["seed"]) - set(floors.index))
    if absent:
        raise RobustlibError(f"the frontier table has no Control row for seed(s) {', '.join(map(str, absent))}: each "
                             "seed's choice needs its own control")
    out = [control.assign(method=CONTROL)]
    for family in dict.fromkeys(per_seed["family"]):
        if family in (CONTROL, VANILLA):
            continue
        for seed, runs in per_seed[per_seed["family"] == family].groupby("seed", sort=True):
            if seed not in floors.index:
                continue
            kept = runs[runs[HELD_OUT + "natural"] >= floors[seed] - 1e-12]
            if kept.empty:
                out.append(pd.DataFrame([{"method": family, "family": family, "seed": seed, "value": math.nan,
                                          "at edge": False}]))
                continue
            best = kept.sort_values([HELD_OUT + robust, HELD_OUT + "natural"], ascending=False).iloc[:1]
            out.append(best.assign(method=family, **{"at edge": bool(best["value"].iloc[0] >= runs["value"].max())}))
    return pd.concat(out, ignore_index=True).assign(**{"chosen at": robust})


def choices(first: pd.DataFrame, second: pd.DataFrame) -> str:
    """Where two selections (:func:`select` at two radii) chose differently, in words: ``"TRADES seed 0: 0.1 →
    0.3; ..."``, ``"none"`` where they agree ("none kept" where a method had no run at the control's accuracy)."""
    def picks(chosen):
        runs = chosen[chosen["method"] != CONTROL]
        return {(m, s): v for m, s, v in zip(runs["method"], runs["seed"], runs["value"])}
    a, b = picks(first), picks(second)
    shown = lambda v: "none kept" if v is None or v != v else f"{v:g}"
    moved = [f"{m} seed {s}: {shown(a.get((m, s)))} → {shown(b.get((m, s)))}" for m, s in dict.fromkeys([*a, *b])
             if shown(a.get((m, s))) != shown(b.get((m, s)))]
    return "; ".join(moved) or "none"


def lead_column(chosen: pd.DataFrame, robust: str) -> str:
    """The column the lead is read on: the held-out column the knobs were chosen on (``chosen at``, which
    :func:`select` writes), else ``heldout <robust>``, else the one held-out robust column there is, else
    ``robust`` itself (on the test images: then the lead is not a choice made before the test)."""
    if "chosen at" in chosen.columns and chosen["chosen at"].notna().any():
        at = HELD_OUT + str(chosen["chosen at"].dropna().iloc[0])
        if at in chosen.columns:
            return at
    if HELD_OUT + robust in chosen.columns:
        return HELD_OUT + robust
    held = [c for c in chosen.columns if c.startswith(HELD_OUT + "pgd")]
    return held[0] if len(held) == 1 else robust


def verdict(chosen: pd.DataFrame, robust: str, *, margin: float = verdicts.NOT_LOWER) -> dict:
    """The frontier statement on the runs :func:`select` chose: the leading method, the one most robust on
    average *on the held-out split* (:func:`lead_column`; among the methods with a chosen run on the most
    seeds), then on the test images
    its difference from every other method (paired by seed; the verdict rule), and each method's clean
    accuracy against the control's (non-inferiority at ``margin``). Returns ``best``, ``against``
    (method -> Comparison, the best minus it on ``robust``), ``kept`` (method -> Comparison, natural minus the
    control's), ``missing`` (methods with a seed where no run kept the control's held-out accuracy) and ``lead``
    (the column the lead was read on). Where no method has such a run at all, ``best`` is None and the
    comparisons are empty."""
    lost = sorted(chosen.loc[chosen[robust].isna() & (chosen["method"] != CONTROL), "method"].unique())
    chosen = chosen.dropna(subset=[robust])
    lead = lead_column(chosen, robust)
    runs = chosen[chosen["method"] != CONTROL]
    means = runs.groupby("method", sort=False)[lead].mean()
    if means.empty:          # a finding, not an error: every method bought its robustness with accuracy
        return {"best": None, "against": {}, "kept": {}, "missing": lost, "lead": lead}
    seeds = runs.groupby("method", sort=False)["seed"].nunique()
    best = means[seeds == seeds.max()].idxmax()      # a method that kept the accuracy on fewer seeds cannot lead
    return {"best": best, "lead": lead,
            "against": {m: verdicts.between(chosen, best, m, robust) for m in means.index if m != best},
            "kept": {m: verdicts.between(chosen, m, CONTROL, "natural", margin=margin) for m in means.index},
            "missing": lost}


def headline(v: dict, eps) -> str:
    """A :func:`verdict` in one sentence: the leader at ``eps`` and its difference from each other method on the
    test images, each beyond the noise or within it."""
    if v["best"] is None:
        return "no method kept the accuracy."
    return (f"**{v['best']}** leads at ε = {eps}; on the test images "
            + ("; ".join(f"{v['best']} − {m} {said(c)}" for m, c in v["against"].items())
               or "no other method kept the accuracy") + ".")


def said(c) -> str:
    """A comparison in words: its difference and 95% interval in points, then higher, lower or not distinguishable."""
    if c.seeds == 0:
        return "no seed where both kept the control's accuracy"
    shown = {verdicts.HOLDS: "higher", verdicts.FAILS: "lower"}.get(c.verdict, "not distinguishable")
    interval = f" [{verdicts.points(c.lo)}, {verdicts.points(c.hi)}]" if c.seeds > 1 else " (1 seed: no interval)"
    return f"{verdicts.points(c.diff)}{interval} points, {shown}"


def reading(chosen: pd.DataFrame, robust: str, *, words: str | None = None, margin: float = verdicts.NOT_LOWER) -> str:
    """The frontier statement of :func:`verdict` in Markdown, from the numbers: the leading method at the
    control's clean accuracy (led on the held-out split), then on the test images its paired difference from
    each other method with the 95% interval, each method's clean accuracy against the control's, and the
    methods chosen at the edge of their sweep."""
    v = verdict(chosen, robust, margin=margin)
    words = words or robust
    if v["best"] is None:
        return ("**No method kept the control's clean accuracy**: for every method and seed, each of its runs lost "
                "more than half a point of held-out clean accuracy, so the question has no answer on these knob "
                "values. Values nearer the clean end (a smaller 1/λ, ε or DRA budget) would trace the curves to it.")
    best, kept = v["best"], chosen.dropna(subset=[robust])
    mean = 100 * kept[kept["method"] == best][robust].mean()
    ahead = [m for m, c in v["against"].items() if c.verdict == verdicts.HOLDS]
    tied = [m for m, c in v["against"].items() if c.verdict == verdicts.INCONCLUSIVE and c.seeds > 0]
    behind = [m for m, c in v["against"].items() if c.verdict == verdicts.FAILS]
    lost = v["kept"][best].verdict == verdicts.FAILS
    where = ("the lead is read on the held-out split, where each method's knob was chosen"
             if v["lead"] == HELD_OUT + robust else
             f"the lead is read on the held-out split at ε = {v['lead'].split('@', 1)[-1]}, where each knob was chosen"
             if v["lead"].startswith(HELD_OUT) else
             "the lead is read on these same test images, so it is not a choice made before the test")
    head = (f"**{best} leads** ({mean:.1f}% {words} on the test images; {where})"
            + (", although on the test images its clean accuracy is below the control's beyond the half-point margin"
               if lost else "") + ". On the test images it is "
            + "; ".join(part for part in (f"more robust than {', '.join(ahead)} beyond the noise" if ahead else "",
                                          f"not distinguishable from {', '.join(tied)}" if tied else "",
                                          f"less robust than {', '.join(behind)} beyond the noise" if behind else "")
                        if part) + ".")
    lines = [head,
             f"- {best} minus each other method, {words}: "
             + ("; ".join(f"{m} {said(c)}" for m, c in v["against"].items()) or "no other method kept the accuracy") + ".",
             "- Clean accuracy minus the control's: " + "; ".join(
                 f"{m} {verdicts.points(c.diff)}" + (f" [{verdicts.points(c.lo)}, {verdicts.points(c.hi)}]" if c.seeds > 1 else "")
                 + {verdicts.HOLDS: " (kept: not more than half a point lower)",
                    verdicts.FAILS: " (lower, beyond the half-point margin)"}.get(c.verdict, " (undecided)")
                 for m, c in v["kept"].items()) + "."]
    if "at edge" in chosen.columns:
        edge = list(dict.fromkeys(chosen.loc[chosen["at edge"].fillna(False).astype(bool), "method"]))
        if edge:
            lines.append(f"- Chosen at the largest value its sweep has, for some seed: {', '.join(edge)}. Its curve may "
                         "reach further right at the control's accuracy, so its robustness here is a lower bound.")
    if v["missing"]:
        lines.append(f"- No run kept the control's held-out clean accuracy for some seed of: {', '.join(v['missing'])}; "
                     "those methods are compared on the seeds where one did.")
    lines.append(f"- Each line is one comparison of {len(v['against']) + len(v['kept'])} at 95% each, with no "
                 "correction for their number: one result beyond the noise among many is weak evidence alone.")
    return "\n".join(lines)


def goal(per_seed: pd.DataFrame, robust: str, *, reference=("TRADES", 1.0), within: float = 0.01,
         words: str | None = None) -> dict:
    """How close the fine-tune and its variants (families named ``Ours…``) come to issue 16's target: one model
    with the control's clean accuracy (not more than ``within`` below it) and at least the robustness at
    ``robust`` of the ``reference`` run (family, knob value; TRADES at 1/λ = 1). A description on the test means
    over seeds, not a verdict: for each method, the knob value whose mean clean accuracy is within ``within`` of
    the control's and whose mean ``robust`` is highest, chosen on the test images, so it flatters every method
    alike. Returns ``table`` (one row per method, the baselines for comparison: the value, clean minus the
    control, robust, robust minus the reference, and for the fine-tunes whether both targets are met),
    ``reading`` (Markdown) and ``summary`` (one sentence)."""
    family, value = reference
    ref = per_seed[(per_seed["family"] == family) & (per_seed["value"] == value)]
    knob = str(ref["knob"].iloc[0]) if "knob" in ref and len(ref) else "knob"
    words, named = words or robust, f"{family} at {knob} = {value:g}"
    if ref.empty or robust not in ref:
        text = (f"The target needs {family} at {value:g} among the frontier's runs, evaluated at {words}, which this "
                "profile does not sweep; add it to the profile's knob values to measure it.")
        return {"table": pd.DataFrame(), "reading": text, "summary": text}
    means = per_seed.groupby(["family", "value"], sort=False, dropna=False)[["natural", robust]].mean().reset_index()
    control = means.loc[means["family"] == CONTROL, "natural"].mean()
    target, ref_clean = ref[robust].mean(), ref["natural"].mean()
    rows = []
    for fam in (f for f in dict.fromkeys(means["family"]) if f not in (CONTROL, VANILLA)):
        near = means[(means["family"] == fam) & (means["natural"] >= control - within - 1e-12)]
        if near.empty:
            rows.append({"method": fam, "value": math.nan})
            continue
        best = near.sort_values([robust, "natural"], ascending=False).iloc[0]
        rows.append({"method": fam, "value": best["value"], "natural": best["natural"], robust: best[robust]})
    table = pd.DataFrame(rows, columns=["method", "value", "natural", robust])
    gap = f"minus {named} (points)"
    out = pd.DataFrame({"method": table["method"], "value": table["value"],
                        "clean minus control (points)": (100 * (table["natural"] - control)).round(1),
                        f"{words} (%)": (100 * table[robust]).round(1),
                        gap: (100 * (table[robust] - target)).round(1)})
    ours = out["method"].astype(str).str.startswith("Ours")
    met = out[gap].ge(0) & out["clean minus control (points)"].notna()
    out["target met"] = [("yes" if m else "no") if o else "(a baseline)" for m, o in zip(met, ours)]
    fine = out[ours & out[gap].notna()]
    head = (f"**The target** (a description on the test means, not a verdict): one fine-tuned model with clean "
            f"accuracy at least the control's {100 * control:.1f}% minus {100 * within:g} point, and {words} at least "
            f"that of {named}, {100 * target:.1f}% (whose own clean accuracy is {100 * ref_clean:.1f}%"
            + (", itself within the target's point of the control: on this profile the baseline already has both"
               if ref_clean >= control - within else "") + "). For each method the table takes, among its knob "
            f"values within {100 * within:g} point of the control's clean accuracy, the most robust on these test "
            "images: a choice on the test images, which flatters every method alike. ")
    if fine.empty:
        body = "Neither the fine-tune nor a variant has a knob value within that point of the control's accuracy."
        summary = f"the target (TRADES-level robustness at the control's accuracy): no fine-tune within {100 * within:g} point."
        return {"table": out, "reading": head + body, "summary": summary}
    hit = fine.loc[fine["target met"] == "yes", "method"].tolist()
    closest = fine.sort_values(gap, ascending=False).iloc[0]
    body = (f"Met by {', '.join(hit)}." if hit else
            f"Neither the fine-tune nor a variant meets it. The closest is {closest['method']} (at {closest['value']:g}), "
            f"{closest[gap]:+.1f} points from the target robustness at {closest['clean minus control (points)']:+.1f} "
            "points of clean accuracy from the control.")
    summary = (f"the target (the control's clean accuracy within {100 * within:g} point, and {named}'s "
               f"{100 * target:.1f}% {words}) is " + (f"met by {', '.join(hit)}" if hit else
                                                      "met by neither the fine-tune nor a variant")
               + " on the test means; " + ", ".join(f"{r['method']} {r[gap]:+.1f}" for _, r in fine.iterrows())
               + " points from its robustness.")
    return {"table": out, "reading": head + body, "summary": summary}


def budget_reading(family: pd.DataFrame, robust: str, *, words: str | None = None, reference: str = "Ours") -> str:
    """Does a variant move the frontier or only slide along it? Each variant (a ``family`` other than
    ``reference``) minus ``reference`` at the same knob ``value``, paired by seed, in clean accuracy and in
    ``robust``, with the verdict rule; in Markdown, a line per variant, then what it shows: a move needs a
    budget where the variant is more robust beyond the noise and not less accurate beyond it."""
    words = words or robust
    lines, moved, comparisons = [], [], 0
    for variant in (f for f in dict.fromkeys(family["family"]) if f != reference):
        parts = []
        for value in sorted(family.loc[family["family"] == variant, "value"].unique()):
            at = family[family["value"] == value]
            rob = verdicts.between(at, variant, reference, robust, key="family")
            nat = verdicts.between(at, variant, reference, "natural", key="family")
            comparisons += 2
            parts.append(f"at {value:g}: {words} {said(rob)}; clean {said(nat)}")
            if rob.verdict == verdicts.HOLDS and nat.verdict != verdicts.FAILS:
                moved.append(f"{variant} at {value:g}")
        lines.append(f"- **{variant} − {reference}**, {'; '.join(parts)}.")
    if not lines:
        return f"No variant beside {reference} in the table."
    verdict_line = (f"**More robust at the same budget, beyond the noise, without losing clean accuracy beyond it:** "
                    f"{', '.join(moved)}: a move of the frontier there if its clean accuracy is truly kept, which these "
                    "images show only as not lower beyond the noise (not as within half a point); the frontier verdict, "
                    f"at the control's accuracy, is the test of that. Each is one of {comparisons} comparisons at 95% "
                    "each: weak evidence alone." if moved else
                    "**No budget where a variant is more robust than Ours beyond the noise** without losing clean "
                    f"accuracy beyond it ({comparisons} comparisons): no evidence here that any moves the frontier; "
                    "differences within the noise are not evidence that they do not.")
    return "\n".join([verdict_line, *lines])
