"""Signs of gradient masking, read off a robustness table: flags, or "none found".

A defence can look robust because its gradients are useless to the attack (shattered, vanishing or
random), not because its predictions are stable (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On
Evaluating Adversarial Robustness", whose checklist these follow). Each check compares numbers measured on
the same images, so that what it flags is the attack's behaviour and not the images':

``rises``     robust accuracy rises as eps grows (``pgd`` or ``pgd-rs`` over the table's eps, all of ``x``)
              by more than ``RISE``: a larger ball holds every point of a smaller one.
``flat``      it does not fall at all: from the smallest to the largest eps it drops by less than ``FLAT``
              while still above ``LARGE`` (a model at 0% everywhere masks nothing).
``restarts``  PGD-100 with 5 random restarts (the worst case per image; the profile's ``probe_steps`` and
              ``probe_restarts``) below PGD-20 (``pgd-rs``, random start) by more than ``STRONGER``, on the
              AutoAttack images: PGD-20 had not converged.
``autoattack`` AutoAttack (``strong``: the worst of pgd-rs and AutoAttack) below pgd-rs by more than
              ``STRONGER``, on the same images: a gradient-free or better-scaled attack finds what PGD missed.
``large_eps`` PGD-100 (``probe_steps``) from the clean point at eps = ``LARGE_EPS`` leaves more than ``LARGE`` of the images
              robust. Within L-inf 0.5 of any image in [0, 1] lies the uniform grey image, so a working attack
              drives accuracy near zero; one that does not is not following useful gradients.

The margins are our choices, stated with every table: a few points separate good attacks on a model
whose gradients are fine (on quick's digits models the restarts and AutoAttack lose 2-6 points against
pgd-rs), tens of points separate them on a masked one (the tests' input-quantised model).

:func:`probe` measures the two extra attacks (``pgd-100x5@eps (aa)``, ``pgd-100@0.5 (aa)``) that the
table lacks; :func:`flags` reads a table's rows (per seed or per model) and returns one row of findings each.
"""
from __future__ import annotations

import re
from typing import Mapping

import pandas as pd
import torch
from torch import nn

from . import distributed
from .attacks import PGD_STEP_FACTOR
from .evaluate import PAPER_STEPS, _pgd_iterates, attack_subset, evaluation_processes, predict
from .profiles import parse_eps

RISE = 0.02        # robust accuracy may not rise by more than this from one eps to the next
FLAT = 0.01        # ... and must fall by at least this over the table's eps range
STRONGER = 0.10    # more steps and restarts, or AutoAttack, may not beat PGD-20 by more than this
LARGE_EPS = 0.5    # an L-inf radius at which a working attack leaves (almost) nothing robust
LARGE = 0.10       # ... "almost nothing": at most this share of the images
RESTARTS, LONG_STEPS = 5, 100    # the probes' defaults (the profiles' probe_restarts, probe_steps)

CHECKS = ("rises", "flat", "restarts", "autoattack", "large_eps")
RULE = (f"gradient-masking checks (Carlini et al. 2019): robust accuracy rises with eps by > {100 * RISE:g} points, "
        f"or falls by < {100 * FLAT:g} point over the eps range while above {100 * LARGE:g}%; PGD-S x R "
        f"restarts (S = {LONG_STEPS}, R = {RESTARTS} unless the profile says otherwise) or AutoAttack below PGD-20 "
        f"(random start) by > {100 * STRONGER:g} points on the same images; PGD-S at eps {LARGE_EPS:g} leaves "
        f"> {100 * LARGE:g}% robust")
RESTARTS_COLUMN = re.compile(r"pgd-(\d+)x(\d+)@(.+) \(aa\)")
LARGE_COLUMN = re.compile(rf"pgd-(\d+)@{LARGE_EPS:g} \(aa\)")


def restarts_column(eps_label: str, steps: int = LONG_STEPS, restarts: int = RESTARTS) -> str:
    return f"pgd-{steps}x{restarts}@{eps_label} (aa)"


def large_column(steps: int = LONG_STEPS) -> str:
    return f"pgd-{steps}@{LARGE_EPS:g} (aa)"


def _columns(row: pd.Series, pattern: re.Pattern, eps_label: str | None = None) -> list:
    """The measured columns of ``row`` named like ``pattern`` (at ``eps_label`` for the restarts' columns)."""
    found = [(c, pattern.fullmatch(str(c))) for c, v in row.items() if pd.notna(v)]
    return [c for c, m in found if m and (eps_label is None or m.group(3) == eps_label)]


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps, n: int | None = None, seed: int = 0,
          batch_size: int = 256, steps: int = LONG_STEPS, restarts: int = RESTARTS, shard: bool = False) -> dict:
    """The two attacks the checks add to a table, on ``n`` images of ``x`` drawn like AutoAttack's
    (:func:`~robustlib.evaluate.attack_subset` with ``seed``; all of ``x`` if ``n`` is None).

    Returns ``{"pgd-rs@<eps> (aa)": ..., "pgd-100x5@<eps> (aa)": ..., "pgd-100@0.5 (aa)": ...}``: robust accuracy
    (correct clean and attacked) of PGD-20 with a random start (the ``pgd-rs`` protocol, the baseline of the
    ``restarts`` check), of PGD-``steps`` (step 2.5*eps/steps) with ``restarts`` seeded random restarts at
    ``eps`` (robust under every restart), and of PGD-``steps`` from the clean point at eps 0.5; the column
    names carry ``steps`` and ``restarts``.

    ``shard`` (under ``torchrun``, every process calling with the same arguments): each process attacks its part
    of those images (:func:`robustlib.distributed.my_part`, as :func:`~robustlib.evaluate.robust_accuracy`
    shards, so that the baseline is still the table's sharded ``pgd-rs (aa)``) and every process gets the
    whole result. The random starts an image gets differ from one process's; PGD at eps 0.5 from the clean
    point is the unsharded number. Without ``torchrun`` it changes nothing.
    """
    eps_value, label = parse_eps(eps)
    y = y.cpu()
    if n is not None:
        idx = attack_subset(len(y), min(n, len(y)), seed)
        x, y = x[idx.to(x.device)], y[idx]
    sharded = shard and distributed.active()
    if sharded:                   # this process's part of the images; the outcomes gathered below
        part = distributed.my_part(len(y))
        x, y = x[part.to(x.device)], y[part]
    short, robust, large = (torch.zeros(0, dtype=torch.bool) for _ in range(3))   # more processes than images
    if len(y):
        ok = predict(model, x) == y
        # every PGD at the precision of the tables' iterates (evaluate.set_attack_precision; decisions in float32),
        # so that the restarts check compares like with like
        xa, _ = _pgd_iterates(model, x, y, eps=eps_value, steps=PAPER_STEPS, step_factor=PGD_STEP_FACTOR,
                              random_start=True, seed=seed, batch_size=batch_size)   # the pgd-rs protocol, on these images
        short = ok & (predict(model, xa) == y)
        long = dict(steps=steps, step_factor=PGD_STEP_FACTOR, batch_size=batch_size)
        robust = ok.clone()
        for r in range(restarts):     # every restart on every image: the worst case per image
            xa, _ = _pgd_iterates(model, x, y, eps=eps_value, random_start=True, seed=seed + r, **long)
            robust &= predict(model, xa) == y
        xa, _ = _pgd_iterates(model, x, y, eps=LARGE_EPS, random_start=False, **long)
        large = ok & (predict(model, xa) == y)
    if sharded:
        short, robust, large = (distributed.gather(t.cpu()) for t in (short, robust, large))
    return {f"pgd-rs@{label} (aa)": short.float().mean().item(),
            restarts_column(label, steps, restarts): robust.float().mean().item(),
            large_column(steps): large.float().mean().item()}


def probe_table(models: dict, x: torch.Tensor, y: torch.Tensor, *, shard: bool = False, **kwargs) -> pd.DataFrame:
    """:func:`probe` of each of ``models`` (name -> model) with ``kwargs``, one row each, in order."""
    return pd.DataFrame([probe(m, x, y, shard=shard, **kwargs) for m in models.values()])


def family(column) -> str | None:
    """``"pgd"`` for ``pgd@0.1``, ``"pgd-rs"`` for ``pgd-rs@8/255``: the attack of a robust-accuracy column over
    all the table's images; None for any other column (``natural``, the ``(aa)`` ones, ``strong@``)."""
    name, at, label = str(column).partition("@")
    if not at or label.endswith(")") or name not in ("pgd", "pgd-rs"):
        return None
    try:
        parse_eps(label)
    except ValueError:
        return None
    return name


def _curve(row: pd.Series, name: str) -> list[tuple[float, str, float]]:
    """``[(eps value, label, accuracy)]`` of the columns ``<name>@<eps>`` over all images, by eps."""
    out = [(parse_eps(str(c).partition("@")[2])[0], str(c).partition("@")[2], float(v))
           for c, v in row.items() if family(c) == name and pd.notna(v)]
    return sorted(out)


def check_row(row: pd.Series) -> dict:
    """The five checks on one table row: per check the measured number (points) and whether it is flagged."""
    found: dict = {}
    for name in ("pgd", "pgd-rs"):
        curve = _curve(row, name)
        for (e0, l0, a0), (e1, l1, a1) in zip(curve, curve[1:]):
            if a1 - a0 > RISE:
                found.setdefault("rises", f"{name}@{l0} {100 * a0:.1f} -> {name}@{l1} {100 * a1:.1f}")
        if len(curve) > 1 and curve[0][2] - curve[-1][2] < FLAT and curve[-1][2] > LARGE:
            found.setdefault("flat", f"{name} {100 * curve[0][2]:.1f} at {curve[0][1]}, "
                                     f"{100 * curve[-1][2]:.1f} at {curve[-1][1]}")
    for col, v in row.items():
        name, at, label = str(col).partition("@")
        if not (at and name == "pgd-rs" and label.endswith(" (aa)")) or pd.isna(v):
            continue
        eps = label[:-len(" (aa)")]
        for check, others in (("restarts", _columns(row, RESTARTS_COLUMN, eps)), ("autoattack", [f"strong@{eps}"])):
            for other in others:
                if other in row and pd.notna(row[other]) and v - row[other] > STRONGER:
                    found[check] = f"{other} {100 * row[other]:.1f} vs pgd-rs {100 * v:.1f}"
    for big in _columns(row, LARGE_COLUMN):
        if row[big] > LARGE:
            found["large_eps"] = f"{100 * row[big]:.1f}% robust at eps {LARGE_EPS:g} ({big})"
    return found


def flags(table: pd.DataFrame, keys=("method",)) -> pd.DataFrame:
    """One row per table row: ``keys``, which checks could be run, and ``masking``: "none found" or the flags.

    A check whose columns the table lacks is listed under ``not checked`` rather than passed.
    """
    keys = [k for k in keys if k in table.columns]
    rows = []
    for _, row in table.iterrows():
        found = check_row(row)
        measured = [str(c) for c, v in row.items() if pd.notna(v)]
        have = {"rises": len(_curve(row, "pgd")) > 1 or len(_curve(row, "pgd-rs")) > 1,
                "restarts": any(RESTARTS_COLUMN.fullmatch(c) and f"pgd-rs@{c.partition('@')[2]}" in measured
                                for c in measured),
                "autoattack": any(c.startswith("strong@") and f"pgd-rs@{c.partition('@')[2]} (aa)" in measured
                                  for c in measured),
                "large_eps": bool(_columns(row, LARGE_COLUMN))}
        have["flat"] = have["rises"]
        rows.append({**{k: row[k] for k in keys},
                     "masking": "; ".join(f"{k}: {v}" for k, v in found.items()) or "none found",
                     "not checked": ", ".join(c for c in CHECKS if not have[c]) or ""})
    return pd.DataFrame(rows)


def add_probes(table: pd.DataFrame, models: dict, x: torch.Tensor, y: torch.Tensor, *, eps, n: int | None,
               seed: int = 0, steps: int = LONG_STEPS, restarts: int = RESTARTS) -> pd.DataFrame:
    """``table`` (one row per model of ``models``, in order, as :func:`~robustlib.evaluate.evaluate_table`
    returns it) with the :func:`probe` columns it lacks added, measured on the same AutoAttack images (a table
    with AutoAttack keeps its own ``pgd-rs@<eps> (aa)``: the same attack, seed and images).

    Outside torchrun, with :func:`~robustlib.evaluate.set_evaluation_processes` at N > 1 (``run --nproc N``),
    the probes are computed by N processes under torchrun, each attacking its part of the images
    (:func:`robustlib.launch.evaluate_elsewhere`), as the table beside them was."""
    kwargs = dict(eps=eps, n=n, seed=seed, steps=steps, restarts=restarts)
    if evaluation_processes() > 1 and not distributed.active():
        from .launch import evaluate_elsewhere
        extra = evaluate_elsewhere(evaluation_processes(), models, x, y, kwargs, what="probes")
    else:
        extra = probe_table(models, x, y, **kwargs)
    extra.index = table.index
    return pd.concat([table, extra[[c for c in extra.columns if c not in table.columns]]], axis=1)


def summary(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per robustness table of ``tables`` (name -> rows): how many rows, which checks could run on at
    least one of them, and the flags ("none found", or each flagged row's keys and findings). Tables with no
    ``pgd@``/``pgd-rs@`` column are left out."""
    out = []
    for name, df in tables.items():
        if not any(family(c) for c in df.columns):
            continue
        keys = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])] + ["seed"]
        found = flags(df, keys=keys)
        ran = [c for c in CHECKS if any(c not in str(v).split(", ") for v in found["not checked"])]
        flagged = found[found["masking"] != "none found"]
        what = ("nothing to check (one eps, no probes)" if not ran else "none found" if flagged.empty else "; ".join(
            f"{' '.join(str(r[k]) for k in keys if k in r)}: {r['masking']}" for _, r in flagged.iterrows()))
        out.append({"table": name, "rows": len(df), "checks run": ", ".join(ran) or "none", "flags": what})
    return pd.DataFrame(out, columns=["table", "rows", "checks run", "flags"])
