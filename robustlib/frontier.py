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
from .profiles import parse_eps

CONTROL = "Control"
VANILLA = "Vanilla"            # drawn as a marker, never selected: theta_std is where every run starts
# the recipe's variants (issue 16, "moving the frontier"): methods.METHODS entries, each swept over the DRA budget
VARIANTS = {"ours-trades": "Ours + TRADES KL", "ours-swa": "Ours + SWA"}   # the keys: profiles.FRONTIER_VARIANTS
NOTEBOOK_03 = ("vanilla", "control", "trades", "madry", "mart", "ours")    # methods notebook 03 trains
HELD_OUT = "heldout "          # prefix of the held-out columns train_grid adds ("heldout natural", ...)


def _budget(eps: float) -> str:
    return f"{eps:.4g}"


def sweep(cfg) -> list[dict]:
    """The frontier's runs as rows for :func:`~robustlib.methods.train_grid`: the vanilla model (theta_std, a
    marker) and the control, then each method at each knob value the profile lists (``frontier_trades_betas``;
    ``frontier_eps_scales`` times ``main_eps`` for Madry and MART; ``frontier_dra_scales`` times both DRA
    budgets for the fine-tune and for each of the profile's ``frontier_variants``, :data:`VARIANTS`). Each row
    carries ``family`` (the method), ``knob`` (what was swept) and ``value``; a value equal to the profile's
    own setting is the profile's own run (notebook 03's), loaded, not trained again; ``reused`` says which."""
    p = cfg.profile
    main = parse_eps(p.main_eps)[0]
    rows = [dict(name=VANILLA, cfg=cfg, method="vanilla", family=VANILLA, knob="", value=math.nan),
            dict(name=CONTROL, cfg=cfg, method="control", family=CONTROL, knob="", value=math.nan)]
    for beta in p.frontier_trades_betas:
        rows.append(dict(name=f"TRADES, 1/λ = {beta:g}", cfg=cfg, method="trades", beta=beta, family="TRADES",
                         knob="1/λ", value=float(beta)))
    for family, method in (("Madry", "madry"), ("MART", "mart")):
        for scale in p.frontier_eps_scales:
            eps = _budget(scale * main)
            c = cfg if scale == 1 else cfg.variant(f"eps{eps}", main_eps=eps)
            rows.append(dict(name=f"{family}, ε = {eps}", cfg=c, method=method, family=family, knob="ε",
                             value=float(eps)))
    for method, family in (("ours", "Ours"), *((v, VARIANTS[v]) for v in p.frontier_variants)):
        for scale in p.frontier_dra_scales:
            c = cfg if scale == 1 else cfg.variant(f"dra{scale:g}x", ft_eps_max=p.ft_eps_max * scale,
                                                   ft_eps_min=p.ft_eps_min * scale)
            rows.append(dict(name=f"{family}, DRA ε_max = {p.ft_eps_max * scale:g}", cfg=c, method=method,
                             family=family, knob="DRA ε_max", value=float(p.ft_eps_max * scale)))
    for r in rows:      # notebook 02's or 03's run (loaded), or one this notebook trains
        r["reused"] = r["cfg"] is cfg and r["method"] in NOTEBOOK_03 and (r["method"] != "trades"
                                                                          or r["beta"] in p.trades_betas)
    return rows


def select(per_seed: pd.DataFrame, robust: str, *, margin: float = -verdicts.NOT_LOWER) -> pd.DataFrame:
    """Each method's knob value per seed, chosen on the held-out columns (``heldout natural`` and
    ``heldout <robust>``): among the method's runs of that seed whose held-out clean accuracy is at least the
    control's (same seed) minus ``margin``, the most robust on the held-out images (ties: the more accurate).
    Returns one row per method and seed: ``method`` (the family), ``seed``, ``value`` (the knob chosen, NaN
    where no run kept the accuracy) and the test columns of that run; the control's own rows first."""
    need = {"family", "value", "seed", "natural", robust, HELD_OUT + "natural", HELD_OUT + robust}
    missing = sorted(need - set(per_seed.columns))
    if missing:
        raise RobustlibError(f"the frontier table lacks {', '.join(missing)}; make it with methods.train_grid("
                             f"..., heldout=(x, y), heldout_eps=main_eps) over frontier.sweep(cfg)")
    control = per_seed[per_seed["family"] == CONTROL].set_index("seed")
    if control.empty:
        raise RobustlibError("the frontier table has no Control rows: the selection needs the control's held-out "
                             "clean accuracy")
    out = [control.reset_index().assign(method=CONTROL)]
    for family in dict.fromkeys(per_seed["family"]):
        if family in (CONTROL, VANILLA):
            continue
        for seed, runs in per_seed[per_seed["family"] == family].groupby("seed", sort=True):
            if seed not in control.index:
                continue
            floor = float(control.loc[seed, HELD_OUT + "natural"]) - margin
            kept = runs[runs[HELD_OUT + "natural"] >= floor - 1e-12]
            if kept.empty:
                out.append(pd.DataFrame([{"method": family, "family": family, "seed": seed, "value": math.nan}]))
                continue
            best = kept.sort_values([HELD_OUT + robust, HELD_OUT + "natural"], ascending=False).iloc[:1]
            out.append(best.assign(method=family))
    return pd.concat(out, ignore_index=True)


def verdict(chosen: pd.DataFrame, robust: str, *, margin: float = verdicts.NOT_LOWER) -> dict:
    """The frontier statement on the runs :func:`select` chose, on the test images: the method most robust
    on average, its difference from every other method (paired by seed; the verdict rule), and each method's
    clean accuracy against the control's (non-inferiority at ``margin``). Returns ``best``, ``against``
    (method -> Comparison, the best minus it on ``robust``), ``kept`` (method -> Comparison, natural minus the
    control's) and ``missing`` (methods with a seed where no run kept the control's held-out accuracy)."""
    lost = sorted(chosen.loc[chosen[robust].isna() & (chosen["method"] != CONTROL), "method"].unique())
    chosen = chosen.dropna(subset=[robust])
    means = chosen[chosen["method"] != CONTROL].groupby("method", sort=False)[robust].mean()
    if means.empty:
        raise RobustlibError("no method has a run that kept the control's held-out accuracy: widen the frontier's "
                             "knob values toward the clean end (smaller 1/λ, ε or DRA budget)")
    best = means.idxmax()
    return {"best": best,
            "against": {m: verdicts.between(chosen, best, m, robust) for m in means.index if m != best},
            "kept": {m: verdicts.between(chosen, m, CONTROL, "natural", margin=margin) for m in means.index},
            "missing": lost}


def said(c) -> str:
    """A comparison in words: its difference and 95% interval in points, then higher, lower or not distinguishable."""
    shown = {verdicts.HOLDS: "higher", verdicts.FAILS: "lower"}.get(c.verdict, "not distinguishable")
    interval = f" [{verdicts.points(c.lo)}, {verdicts.points(c.hi)}]" if c.seeds > 1 else " (1 seed: no interval)"
    return f"{verdicts.points(c.diff)}{interval} points, {shown}"


def reading(chosen: pd.DataFrame, robust: str, *, words: str | None = None, margin: float = verdicts.NOT_LOWER) -> str:
    """The frontier statement of :func:`verdict` in Markdown, from the numbers: the most robust chosen method at
    the control's clean accuracy, its paired difference from each other method with the 95% interval, and
    each method's clean accuracy against the control's."""
    v = verdict(chosen, robust, margin=margin)
    words = words or robust
    best, kept = v["best"], chosen.dropna(subset=[robust])
    mean = 100 * kept[kept["method"] == best][robust].mean()
    lines = [f"**At the control's clean accuracy, the most robust is {best}** ({mean:.1f}% on average, {words}; "
             f"each method's knob chosen per seed on the held-out split, the numbers on the test images).",
             f"- {best} minus each other method, {words}: "
             + ("; ".join(f"{m} {said(c)}" for m, c in v["against"].items()) or "no other method kept the accuracy") + ".",
             "- Clean accuracy minus the control's: " + "; ".join(
                 f"{m} {verdicts.points(c.diff)}" + (f" [{verdicts.points(c.lo)}, {verdicts.points(c.hi)}]" if c.seeds > 1 else "")
                 + {verdicts.HOLDS: " (kept: not more than half a point lower)",
                    verdicts.FAILS: " (lower, beyond the half-point margin)"}.get(c.verdict, " (undecided)")
                 for m, c in v["kept"].items()) + "."]
    if v["missing"]:
        lines.append(f"- No run kept the control's held-out clean accuracy for some seed of: {', '.join(v['missing'])}; "
                     "those methods are compared on the seeds where one did.")
    return "\n".join(lines)


def goal(per_seed: pd.DataFrame, chosen: pd.DataFrame, robust: str, *, reference=("TRADES", 1.0),
         within: float = 0.01, words: str | None = None) -> dict:
    """How close each chosen method comes to issue 16's target: the control's clean accuracy (not more than
    ``within`` below it) with the robustness of the ``reference`` run (family, knob value; TRADES at 1/λ = 1),
    on the test means. A description, not a verdict. Returns ``table`` (one row per method: clean minus the
    control, robust, robust minus the reference, in points, and whether both targets are met), ``reading``
    (Markdown) and ``summary`` (one sentence)."""
    family, value = reference
    ref = per_seed[(per_seed["family"] == family) & (per_seed["value"] == value)]
    knob = str(ref["knob"].iloc[0]) if "knob" in ref and len(ref) else "knob"
    words, named = words or robust, f"{family} at {knob} = {value:g}"
    kept = chosen.dropna(subset=[robust])
    control = kept.loc[kept["method"] == CONTROL, "natural"].mean()
    if ref.empty:
        text = (f"The target needs {family} at {value:g} among the frontier's runs, which this profile does not "
                f"sweep; add it to the profile's knob values to measure it.")
        return {"table": pd.DataFrame(), "reading": text, "summary": text}
    target = ref[robust].mean()
    means = kept[kept["method"] != CONTROL].groupby("method", sort=False)[["natural", robust]].mean()
    gap = f"minus {named} (points)"
    table = pd.DataFrame({"clean minus control (points)": (100 * (means["natural"] - control)).round(1),
                          f"{words} (%)": (100 * means[robust]).round(1),
                          gap: (100 * (means[robust] - target)).round(1)})
    table["target met"] = ((means["natural"] >= control - within - 1e-12) & (means[robust] >= target)).map(
        {True: "yes", False: "no"})
    table = table.reset_index()
    closest = table.sort_values(gap, ascending=False).iloc[0]
    met = table.loc[table["target met"] == "yes", "method"].tolist()
    head = (f"**The target** (test means; a description, not a verdict): clean accuracy at least the control's "
            f"{100 * control:.1f}% minus {100 * within:g} point, and {words} at least that of {named}, "
            f"{100 * target:.1f}% (whose own clean accuracy is {100 * ref['natural'].mean():.1f}%). ")
    if met:
        body = (f"Met on the means by {', '.join(met)}; on these seeds and images a mean is not yet a verdict: the "
                "section 4 reading says which differences are beyond the noise.")
    else:
        body = (f"No chosen run meets it. The closest is {closest['method']}, {closest[gap]:+.1f} points from the "
                f"target robustness at {closest['clean minus control (points)']:+.1f} points of clean accuracy from "
                "the control.")
    ours = table[table["method"].astype(str).str.startswith("Ours")].set_index("method")[gap]
    summary = (f"the target (the control's clean accuracy within {100 * within:g} point, and {named}'s "
               f"{100 * target:.1f}% {words}) is " + (f"met on the means by {', '.join(met)}" if met else "met by no chosen run")
               + ("; the fine-tune and its variants are " + ", ".join(f"{m} {v:+.1f}" for m, v in ours.items())
                  + " points from its robustness." if len(ours) else "."))
    return {"table": table, "reading": head + body, "summary": summary}
