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
HELD_OUT = "heldout "          # prefix of the held-out columns train_grid adds ("heldout natural", ...)


def _budget(eps: float) -> str:
    return f"{eps:.4g}"


def sweep(cfg) -> list[dict]:
    """The frontier's runs as rows for :func:`~robustlib.methods.train_grid`: the control, then each method at
    each knob value the profile lists (``frontier_trades_betas``; ``frontier_eps_scales`` times ``main_eps``
    for Madry and MART; ``frontier_dra_scales`` times both DRA budgets for the fine-tune). Each row carries
    ``family`` (the method), ``knob`` (what was swept) and ``value``; a value equal to the profile's own
    setting is the profile's own run (notebook 03's), loaded, not trained again."""
    p = cfg.profile
    main = parse_eps(p.main_eps)[0]
    rows = [dict(name=CONTROL, cfg=cfg, method="control", family=CONTROL, knob="", value=math.nan)]
    for beta in p.frontier_trades_betas:
        rows.append(dict(name=f"TRADES, 1/λ = {beta:g}", cfg=cfg, method="trades", beta=beta, family="TRADES",
                         knob="1/λ", value=float(beta)))
    for family, method in (("Madry", "madry"), ("MART", "mart")):
        for scale in p.frontier_eps_scales:
            eps = _budget(scale * main)
            c = cfg if scale == 1 else cfg.variant(f"eps{eps}", main_eps=eps)
            rows.append(dict(name=f"{family}, ε = {eps}", cfg=c, method=method, family=family, knob="ε",
                             value=float(eps)))
    for scale in p.frontier_dra_scales:
        c = cfg if scale == 1 else cfg.variant(f"dra{scale:g}x", ft_eps_max=p.ft_eps_max * scale,
                                               ft_eps_min=p.ft_eps_min * scale)
        rows.append(dict(name=f"Ours, DRA ε_max = {p.ft_eps_max * scale:g}", cfg=c, method="ours", family="Ours",
                         knob="DRA ε_max", value=float(p.ft_eps_max * scale)))
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
        if family == CONTROL:
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
