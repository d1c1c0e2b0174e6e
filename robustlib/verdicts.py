"""One rule for every verdict: a difference, its interval over training seeds and test images, and one of
three outcomes.

A claim of the paper ("DRA trains better than PGD", "the fine-tune keeps clean accuracy") is a statement
about a difference of accuracies, ``d = A - B``, and a *margin* it must clear (0 for "better", -0.5 points
for "not lower"). Each run measures ``A_s`` and ``B_s`` per training seed ``s`` on the same ``m`` test
images, so:

- the runs are **paired by seed** (the two runs of a seed share theta_std and the data order where the
  methods allow it): ``d_s = A_s - B_s``, ``d = mean(d_s)`` over the ``n`` seeds both have;
- **seed noise**: ``t(0.975, n-1) * sd(d_s) / sqrt(n)``; with one seed there is no estimate of it;
- **test-sample noise**: ``1.96 * sqrt(sum_k w_k^2 a_k (1 - a_k) / m)`` for the accuracies ``a_k`` in the
  difference, the binomial error of each accuracy on ``m`` images, as if they were independent (they are
  measured on the same images, which makes the true error of a difference smaller: the interval is
  conservative);
- the interval is ``d -/+ sqrt(seed_term^2 + test_term^2)``: each term at 95%, added in quadrature, so an
  approximate and conservative 95% interval, not an exact one. Each comparison is at its own level; a
  notebook that prints many of them makes no correction for their number, so one "holds" among a dozen
  inconclusive ones is weak evidence.

The verdict on "d > margin": **holds** if the whole interval lies above the margin, **does not hold** if
it lies below, **inconclusive** if it contains the margin or if fewer than two seeds were run. A claim made
of several parts holds if every part holds and does not hold if any part does not.

Example
-------
>>> c = compare({0: 0.72, 1: 0.74, 2: 0.71}, {0: 0.51, 1: 0.54, 2: 0.50}, images=360, label="pgd@0.1")
>>> c.verdict, round(100 * c.diff, 1)
('holds', 20.7)
>>> print(c)
pgd@0.1 +20.7 [+13.6, +27.7] points (3 seeds; claim > 0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import pandas as pd
from scipy import stats

from .io import RobustlibError

HOLDS, FAILS, INCONCLUSIVE, UNTESTED = "holds", "does not hold", "inconclusive", "not tested on this profile"
LEVEL = 0.95
NOT_LOWER = -0.005   # "keeps accuracy": not more than half a point lower (the margin of a non-inferiority claim)
RULE = ("paired by training seed: d = mean over seeds of A - B; an approximate 95% interval d -/+ "
        "sqrt((t(n-1) sd/sqrt(n))^2 + (1.96 se_test)^2), se_test the binomial error of the accuracies on the test "
        "images as if independent (conservative: they share the images); holds if the interval lies above the "
        "claim's margin, does not hold if below, inconclusive if it contains it or fewer than 2 seeds were run; "
        "each comparison at its own level, with no correction for the number of comparisons")


@dataclass(frozen=True)
class Comparison:
    """A difference (fractions), its 95% interval, how many seeds it pairs and the verdict on ``d > margin``."""

    label: str
    diff: float
    lo: float
    hi: float
    seeds: int
    margin: float
    verdict: str
    test_noise: bool = True     # False: no image count was given, the interval holds seed noise only

    def __str__(self) -> str:
        pts = points
        side = f"claim > {100 * self.margin:g}" if self.margin else "claim > 0"
        interval = f"[{pts(self.lo)}, {pts(self.hi)}]" if self.seeds > 1 else "[no interval: 1 seed]"
        noise = "" if self.test_noise else "; seed noise only: the table gives no image count"
        return (f"{self.label + ' ' if self.label else ''}{pts(self.diff)} {interval} points "
                f"({self.seeds} seed{'s' * (self.seeds != 1)}; {side}{noise})")


def points(v: float) -> str:
    """A difference of fractions in points with its sign and one decimal; a zero is +0.0, never -0.0."""
    return f"{round(100 * v, 1) + 0.0:+.1f}"


def _series(values) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.astype(float)
    if isinstance(values, Mapping):
        return pd.Series(values, dtype=float)
    return pd.Series(list(values), dtype=float)


def contrast(terms: Iterable[tuple[float, object]], *, images: int | None, margin: float = 0.0,
             label: str = "") -> Comparison:
    """The verdict on ``sum_k w_k X_k > margin`` for per-seed accuracies ``X_k`` given as ``(w_k, X_k)``.

    Each ``X_k`` is a Series indexed by seed (or a dict seed -> value, or a sequence indexed 0, 1, ...);
    only the seeds every term has are used (pairing). ``images`` is the number of test images each accuracy
    was measured on (None: test-sample noise is left out).
    """
    terms = [(float(w), _series(x)) for w, x in terms]
    seeds = sorted(set.intersection(*(set(x.dropna().index) for _, x in terms)))
    if not seeds:
        return Comparison(label, math.nan, math.nan, math.nan, 0, margin, INCONCLUSIVE, bool(images))
    per_seed = sum(w * x.loc[seeds] for w, x in terms)
    n, d = len(seeds), float(per_seed.mean())
    test_var = sum(w * w * float(x.loc[seeds].mean()) * (1 - float(x.loc[seeds].mean())) for w, x in terms) / images \
        if images else 0.0
    if n < 2:
        return Comparison(label, d, math.nan, math.nan, n, margin, INCONCLUSIVE, bool(images))
    seed_half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * float(per_seed.std(ddof=1)) / math.sqrt(n)
    test_half = stats.norm.ppf((1 + LEVEL) / 2) * math.sqrt(max(test_var, 0.0))
    half = math.hypot(seed_half, test_half)
    lo, hi = d - half, d + half
    verdict = HOLDS if lo > margin else FAILS if hi < margin else INCONCLUSIVE
    return Comparison(label, d, lo, hi, n, margin, verdict, bool(images))


def compare(a, b, *, images: int | None, margin: float = 0.0, label: str = "") -> Comparison:
    """The verdict on ``A - B > margin`` for per-seed accuracies ``a`` and ``b`` (paired by seed)."""
    return contrast([(1.0, a), (-1.0, b)], images=images, margin=margin, label=label)


def combine(parts: Iterable[Comparison]) -> str:
    """The verdict on a claim made of several parts: holds if all hold, does not hold if any does not."""
    verdicts = [c.verdict for c in parts]
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return FAILS if FAILS in verdicts else INCONCLUSIVE


def per_seed(df: pd.DataFrame, key: str, row: str, column: str) -> pd.Series:
    """``column`` of the rows whose ``key`` is ``row``, indexed by ``seed`` (seed 0 if the table has none)."""
    rows = df[df[key].astype(str) == row]
    seeds = rows["seed"] if "seed" in rows.columns else pd.Series(0, index=rows.index)
    values = pd.to_numeric(rows[column], errors="coerce")
    return pd.Series(values.to_numpy(), index=seeds.to_numpy()).groupby(level=0).mean().dropna()


def images_for(df: pd.DataFrame, column: str) -> int | None:
    """The test images behind ``column`` of a table from :func:`robustlib.evaluate.evaluate_table`: its
    ``images-all`` (for ``natural-all``), ``images (aa)`` (AutoAttack's columns) or ``images`` column; None if
    the table does not say (test-sample noise is then left out)."""
    which = "images-all" if column == "natural-all" else \
        "images (aa)" if "(aa)" in column or column.startswith("strong") else "images"
    n = pd.to_numeric(df[which], errors="coerce").dropna() if which in df.columns else pd.Series(dtype=float)
    return int(n.min()) if not n.empty else None


def between(df: pd.DataFrame, a: str, b: str, column: str, *, key: str = "method", margin: float = 0.0) -> Comparison:
    """Row ``a`` minus row ``b`` of a per-seed table in ``column``, paired by seed, with its verdict."""
    return compare(per_seed(df, key, a, column), per_seed(df, key, b, column), images=images_for(df, column),
                   margin=margin, label=f"{column} {a} - {b}")


def reading(df: pd.DataFrame, reference: str, columns: Mapping[str, str], *, key: str = "method") -> str:
    """An ablation's reading in Markdown, from the numbers: each other row of a per-seed table against the
    ``reference`` row, paired by seed, in every column of ``columns`` (``{column: words}``), with its 95%
    interval and what it shows (higher, lower, or not distinguishable), then one sentence on what differs
    beyond the noise, with the caveat of many comparisons."""
    names = list(dict.fromkeys(df[key].astype(str)))
    if reference not in names:
        raise RobustlibError(f"no {key} {reference!r} in the table to read the others against; pass one of "
                             f"{', '.join(map(repr, names))}")
    found, lines, comparisons, noise = [], [], 0, "seed noise"
    for row in (r for r in names if r != reference):
        parts = []
        for column, words in columns.items():
            c = between(df, row, reference, column, key=key)
            comparisons += 1
            if c.test_noise:
                noise = "seed and test-sample noise"
            if c.seeds == 0:
                parts.append(f"{words}: no paired seeds")
                continue
            shown = {HOLDS: "higher", FAILS: "lower"}.get(c.verdict, "not distinguishable")
            interval = f" [{points(c.lo)}, {points(c.hi)}]" if c.seeds > 1 else ""
            parts.append(f"{words} {points(c.diff)}{interval}, {shown}")
            if c.verdict != INCONCLUSIVE:
                found.append(f"*{row}*, {words}: {shown} ({points(c.diff)} [{points(c.lo)}, {points(c.hi)}])")
        seeds = {between(df, row, reference, col, key=key).seeds for col in columns}
        lines.append(f"- *{row}* ({'/'.join(map(str, sorted(seeds)))} seed{'s' * (max(seeds) != 1)}): "
                     + "; ".join(parts))
    head = (f"**Reading.** Each variant minus *{reference}*, paired by training seed, in points, with the 95% "
            f"interval of {noise} where there are two seeds or more:")
    if all(between(df, r, reference, col, key=key).seeds < 2 for r in names if r != reference for col in columns):
        tail = "With one seed there is no interval: these differences are not evidence either way."
    elif found:
        tail = (f"Beyond the noise: {'; '.join(found)}. That is {len(found)} of {comparisons} comparisons, each at 95%: "
                f"about {comparisons / 20:.1g} would fall outside by chance alone, so a single one is weak evidence.")
    else:
        tail = ("Every interval contains 0: these seeds cannot tell the variants from the reference apart "
                "(differences as large as the intervals are not ruled out).")
    return "\n".join([head, "", *lines, "", tail])


def against(df: pd.DataFrame, reference: str, column: str, *, key: str = "method", margin: float = 0.0) -> list[Comparison]:
    """Every other row of a per-seed table minus the ``reference`` row (an ablation read against the
    profile's own run), with :func:`between`."""
    return [between(df, row, reference, column, key=key, margin=margin)
            for row in dict.fromkeys(df[key].astype(str)) if row != reference]


def paper_gaps(beside: pd.DataFrame, key: str = "method") -> str:
    """A table beside the paper's, read in Markdown: each measured column minus the paper's (the column
    ``paper <name>`` beside it), in points, over the rows the paper reports, and the largest difference named.
    Orientation, not a verdict: the paper's numbers are one run of its own full setup."""
    cols = [c for c in beside.columns if f"paper {c}" in beside.columns]
    if not cols:
        raise RobustlibError(f"no column has a 'paper <name>' column beside it in {list(beside.columns)}; merge the "
                             "paper's table in with its columns renamed 'paper <name>'")
    diff = pd.DataFrame({c: 100 * (beside[c].astype(float) - beside[f"paper {c}"].astype(float)) for c in cols})
    diff.index = beside[key].astype(str)
    diff = diff.dropna(how="all")
    if diff.empty:
        return "**Reading.** None of these rows has a number in the paper's table."
    stacked = diff.stack()
    (row, col) = stacked.abs().idxmax()
    span = "; ".join(f"{c} {diff[c].min():+.1f}" + (f" to {diff[c].max():+.1f}" if diff[c].nunique() > 1 else "")
                     for c in cols if diff[c].notna().any())
    return (f"**Reading.** Measured minus the paper's, in points, over the {len(diff)} row{'s' * (len(diff) > 1)} the "
            f"paper reports: {span}. The largest difference is in {col} of {row} ({stacked[(row, col)]:+.1f}). The paper's "
            "numbers are one run of its full setup: where a profile is smaller (the smoke setting, fewer epochs, a "
            "narrower model) these differences measure that distance, not whether the paper's claims hold; the "
            "claims ledger decides those.")
