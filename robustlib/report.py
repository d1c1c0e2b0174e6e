"""The run report: one Markdown (and HTML) page that gathers what the notebooks left in the run directory.

:func:`build_report` reads only files already in ``runs/<profile>/`` (``timings.json``, ``calibration.json``,
``tables/*.csv``, ``figures/*.png`` and the executed ``notebooks/*.ipynb``); it never trains or attacks
anything. The page opens with a claims ledger: each of the paper's claims (abstract, Sections V.B-V.E)
checked by a small rule in :data:`CLAIMS` against the tables this profile produced.

Example
-------
>>> from robustlib import setup
>>> from robustlib.report import build_report
>>> build_report(setup("quick"))            # doctest: +SKIP
PosixPath('.../runs/quick/report.md')
"""
from __future__ import annotations

import datetime
import functools
import html
import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from . import masking
from .io import RobustlibError, read_json, write_text
from .config import RunConfig, repo_root
from .profiles import GAP, Profile
from .verdicts import (FAILS, HOLDS, INCONCLUSIVE, NOT_LOWER, RULE, UNTESTED, Comparison, combine,
                       compare, contrast, images_for, per_seed)

Tables = Mapping[str, pd.DataFrame]   # "03_methods.csv" -> its DataFrame
MAX_ROWS = 60                         # longer tables are cut in the report (the CSV keeps everything)
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pyautoattack", "papermill", "mistune")


# --------------------------------------------------------------------------------------------- the claims
@dataclass(frozen=True)
class Verdict:
    """One line of the claims ledger."""

    claim: str
    verdict: str    # HOLDS, FAILS, INCONCLUSIVE or UNTESTED
    numbers: str    # each difference with its interval, or what was missing
    source: str     # the table(s) the rule read
    rule: str = ""  # what must clear which margin (the statistics are verdicts.RULE)

    def __str__(self) -> str:
        return f"{self.claim}: {self.verdict.upper()}\n  rule: {self.rule or '-'}\n  {self.numbers}"

    @property
    def headline(self) -> str:
        """``claim: VERDICT``, the first line of :meth:`__str__`."""
        return f"{self.claim}: {self.verdict.upper()}"

    def markdown(self, *more: str, item: bool = False) -> str:
        """The verdict as Markdown for a notebook: the headline in bold, its rule, its evidence and the lines
        ``more`` as items under it; ``item=True`` makes the headline itself an item of a list (a ledger)."""
        lines = [f"rule: {self.rule or '-'}", self.numbers, *more]
        if item:
            return "\n".join([f"- **{self.headline}**", *(f"  - {line}" for line in lines)])
        return "\n".join([f"**{self.headline}**", "", *(f"- {line}" for line in lines)])


class _Missing(Exception):
    """A table, row or column a rule needs is not in the run directory; the message says which."""


def claim(text: str, source: str) -> Callable:
    """Register a rule ``fn(tables, profile) -> (verdict, numbers, rule)`` in :data:`CLAIMS` as a Verdict maker.

    A missing table, row or column makes the verdict "not tested on this profile" with the reason, so a
    partial run directory never crashes the report.
    """
    def wrap(fn):
        @functools.wraps(fn)
        def rule(tables: Tables, profile: Profile) -> Verdict:
            try:
                verdict, numbers, how = fn(tables, profile)
            except _Missing as e:
                verdict, numbers, how = UNTESTED, str(e), ""
            return Verdict(text, verdict, numbers, source, how)

        rule.text, rule.source = text, source
        CLAIMS.append(rule)
        return rule
    return wrap


CLAIMS: list[Callable[[Tables, Profile], Verdict]] = []


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _need(tables: Tables, name: str) -> pd.DataFrame:
    """The per-seed table of ``name`` (``<stem>_per_seed.csv``) if the run wrote one, else ``name`` (one seed)."""
    seeded = name.replace(".csv", "_per_seed.csv")
    if seeded in tables:
        return tables[seeded]
    if name not in tables:
        raise _Missing(f"table {name} not produced")
    return tables[name]


def _col(df: pd.DataFrame, name: str, column: str) -> pd.Series:
    if column not in df.columns:
        raise _Missing(f"{name} has no column {column!r} (it has {', '.join(map(str, df.columns))})")
    return pd.to_numeric(df[column], errors="coerce")


def _seeds(df: pd.DataFrame, name: str, key: str, row: str, column: str) -> pd.Series:
    """``column`` of the ``row`` rows (``key`` == ``row``), one value per training seed."""
    if key not in df.columns:
        raise _Missing(f"{name} has no column {key!r}")
    _col(df, name, column)
    values = per_seed(df, key, row, column)
    if values.empty:
        raise _Missing(f"{name} has no {row!r} row with a {column} value")
    return values


def _robust(profile: Profile) -> str:
    return f"pgd@{profile.main_eps}"


def _natural(df: pd.DataFrame) -> str:
    """Clean accuracy on the whole test split where the table has it (``natural-all``), else on the subset."""
    return "natural-all" if "natural-all" in df.columns else "natural"


def _diff(df, name, key, a, b, column, *, margin=0.0, label=None) -> Comparison:
    """``a`` minus ``b`` in ``column``, paired by seed, with its interval and verdict (:mod:`.verdicts`)."""
    return compare(_seeds(df, name, key, a, column), _seeds(df, name, key, b, column), images=images_for(df, column),
                   margin=margin, label=label or f"{column} {a} - {b}")


def _numbers(parts: list[Comparison]) -> str:
    return "; ".join(map(str, parts))


@claim("The fine-tune keeps clean accuracy while adding robustness", "03_methods.csv")
def claim_keeps_accuracy(tables: Tables, profile: Profile):
    """Ours - Vanilla: natural (whole test split) not more than half a point lower (a non-inferiority margin)
    and pgd@main_eps higher; both must hold. Ours - Control is quoted (the control trains as long, clean only)."""
    name, rob = "03_methods.csv", _robust(profile)
    df = _need(tables, name)
    nat = _natural(df)
    parts = [_diff(df, name, "method", "Ours", "Vanilla", nat, margin=NOT_LOWER),
             _diff(df, name, "method", "Ours", "Vanilla", rob)]
    numbers = _numbers(parts)
    if "method" in df.columns and (df["method"].astype(str) == "Control").any():
        numbers += "; not in the verdict: " + str(_diff(df, name, "method", "Ours", "Control", rob))
    return combine(parts), numbers, f"Ours - Vanilla: {nat} > -0.5 and {rob} > 0 points"


@claim("It beats TRADES on harder data (CIFAR-10)", "03_methods.csv")
def claim_beats_trades(tables: Tables, profile: Profile):
    """Against every TRADES row: Ours more robust at pgd@main_eps and natural not more than half a point
    lower; every part must hold. Judged on CIFAR-10 profiles only."""
    name, rob = "03_methods.csv", _robust(profile)
    df = _need(tables, name)
    trades = [m for m in dict.fromkeys(df.get("method", pd.Series(dtype=str)).astype(str)) if m.startswith("TRADES")]
    if not trades:
        raise _Missing(f"{name} has no TRADES row")
    nat = _natural(df)
    parts = [c for t in trades for c in (_diff(df, name, "method", "Ours", t, rob),
                                         _diff(df, name, "method", "Ours", t, nat, margin=NOT_LOWER))]
    how = f"Ours - each TRADES: {rob} > 0 and {nat} > -0.5 points"
    if profile.dataset != "cifar10":
        return UNTESTED, f"the claim is about CIFAR-10; on {profile.dataset}: {_numbers(parts)}", how
    return combine(parts), _numbers(parts), how


def _mean_over(df, name, key, row, cols) -> pd.Series:
    return sum(_seeds(df, name, key, row, c) for c in cols) / len(cols)


@claim("DRA is a better training adversary than PGD at equal strength (Table V)", "04_table_v.csv")
def claim_dra_beats_pgd(tables: Tables, profile: Profile):
    """For each training (Madry, TRADES, Ours) with both rows: DRA-trained minus PGD-trained on the mean of
    pgd@eps over the profile's eval eps (Table V's claim is over all its columns) must be > 0 in every one."""
    name = "04_table_v.csv"
    df = _need(tables, name)
    for key in ("training", "adversary"):
        if key not in df.columns:
            raise _Missing(f"{name} has no column {key!r}")
    cols = [f"pgd@{e}" for e in profile.eval_eps if f"pgd@{e}" in df.columns] or [_robust(profile)]
    trainings = [t for t in dict.fromkeys(df["training"].astype(str))
                 if {"PGD", "DRA"} <= set(df.loc[df["training"].astype(str) == t, "adversary"].astype(str))]
    if not trainings:
        raise _Missing(f"{name} has no training with both a PGD and a DRA row")
    parts = []
    for t in trainings:
        sub = df[df["training"].astype(str) == t]
        parts.append(compare(_mean_over(sub, name, "adversary", "DRA", cols),
                             _mean_over(sub, name, "adversary", "PGD", cols), images=images_for(df, cols[0]),
                             label=f"{t}: DRA - PGD"))
    rob = cols[0] if len(cols) == 1 else f"mean of {', '.join(cols)}"
    return combine(parts), _numbers(parts), f"DRA - PGD on the {rob} > 0 points in every training"


def _at_p(df: pd.DataFrame, name: str, p: float, label: str, column: str) -> pd.Series:
    if "p" in df.columns:
        rows = df[(pd.to_numeric(df["p"], errors="coerce") - p).abs() < 1e-6]
        if not rows.empty:
            return _seeds(rows.assign(_p="x"), name, "_p", "x", column)
    if "label" in df.columns:
        return _seeds(df, name, "label", label, column)
    raise _Missing(f"{name} has no row for p = {label}")


@claim("Robustness saturates around p = 1/3 (Table VI, Fig. 4)", "04_p_sweep.csv")
def claim_p_saturates(tables: Tables, profile: Profile):
    """With r(p) = pgd@main_eps after fine-tuning with DRA of fraction p: r(1/3) - r(0) > 0, and p = 1/3 reaches
    at least three quarters of p = 1's gain, r(1/3) - r(0) - 0.75 (r(1) - r(0)) > 0; both must hold."""
    name, rob = "04_p_sweep.csv", _robust(profile)
    fig4 = ""
    if "01_fig4_saturation.csv" in tables:
        share = pd.to_numeric(tables["01_fig4_saturation.csv"].get("share of p=1 reached at p=1/3",
                                                                  pd.Series(dtype=float)), errors="coerce").dropna()
        if not share.empty:
            fig4 = f"; Fig. 4: DRA's success rate at p=1/3 is {pct(share.min())}-{pct(share.max())} of p=1's"
    try:
        df = _need(tables, name)
        r0, r3, r1 = (_at_p(df, name, p, lab, rob) for p, lab in ((0, "0"), (1 / 3, "1/3"), (1, "1")))
        n3, n1 = (_at_p(df, name, p, lab, "natural").mean() for p, lab in ((1 / 3, "1/3"), (1, "1")))
    except _Missing as e:
        raise _Missing(f"{e}{fig4}") from None
    m = images_for(df, rob)
    parts = [compare(r3, r0, images=m, label=f"{rob} p=1/3 - p=0"),
             contrast([(1, r3), (-0.25, r0), (-0.75, r1)], images=m,
                      label="r(1/3) - r(0) - 3/4 (r(1) - r(0))")]
    numbers = (f"{_numbers(parts)}; {rob} at p = 0, 1/3 and 1: {pct(r0.mean())}, {pct(r3.mean())} and {pct(r1.mean())}; "
               f"natural at p=1/3 {pct(n3)} vs p=1 {pct(n1)} (paper: 91.3% vs 89.6%){fig4}")
    return combine(parts), numbers, f"{rob}: p=1/3 - p=0 > 0 and p=1/3 reaches 3/4 of p=1's gain"


@claim("Larger backbones gain more robustness from the fine-tune (Table IV)", "04_backbones.csv")
def claim_bigger_gains_more(tables: Tables, profile: Profile):
    """Gain = Ours - Vanilla at pgd@main_eps per backbone (paired by seed: the two share a theta_std), in file
    order (smallest first): each backbone's gain minus the next smaller one's must be > 0. The backbones do not
    share a theta_std, so seed s of one is matched to seed s of the other only by its number. Needs at least
    two backbones with both rows."""
    name, rob = "04_backbones.csv", _robust(profile)
    df = _need(tables, name)
    if "backbone" not in df.columns or "method" not in df.columns:
        raise _Missing(f"{name} needs columns 'backbone' and 'method'")
    gains = {}
    for b in dict.fromkeys(df["backbone"].astype(str)):
        sub = df[df["backbone"].astype(str) == b]
        if {"Vanilla", "Ours"} <= set(sub["method"].astype(str)):
            gains[b] = (_seeds(sub, name, "method", "Ours", rob), _seeds(sub, name, "method", "Vanilla", rob))
    if len(gains) < 2:
        raise _Missing(f"{name} has {len(gains)} backbone(s) with both Vanilla and Ours rows; need 2")
    names, m = list(gains), images_for(df, rob)
    parts = [contrast([(1, gains[big][0]), (-1, gains[big][1]), (-1, gains[small][0]), (1, gains[small][1])],
                      images=m, label=f"gain {big} - gain {small}") for small, big in zip(names, names[1:])]
    each = ", ".join(f"{b} {100 * (o - v).mean():+.1f}" for b, (o, v) in gains.items())
    return combine(parts), f"{_numbers(parts)}; {rob} gain: {each} points", \
        f"{rob} gain (Ours - Vanilla) of each backbone - the next smaller one's > 0"


@claim("The fine-tuned model is more robust to natural corruptions (Table VII)", "05_corruptions.csv")
def claim_corruptions(tables: Tables, profile: Profile):
    """Ours - Vanilla on the mean accuracy over the corruptions (clean excluded) > 0, paired by seed; how many
    single corruptions are ahead or behind beyond the interval is quoted (Table VII shows all six ahead)."""
    name = "05_corruptions.csv"
    df = _need(tables, name)
    for c in ("corruption", "Ours", "Vanilla"):
        if c not in df.columns:
            raise _Missing(f"{name} has no column {c!r}")
    kind = df["corruption"].astype(str)
    long = df.assign(_row=kind)
    per = {c: compare(_seeds(long, name, "_row", c, "Ours"), _seeds(long, name, "_row", c, "Vanilla"),
                      images=images_for(df, "Ours")) for c in dict.fromkeys(kind) if c not in ("clean", "mean")}
    overall = compare(_seeds(long, name, "_row", "mean", "Ours"), _seeds(long, name, "_row", "mean", "Vanilla"),
                      images=images_for(df, "Ours"), label="mean over corruptions Ours - Vanilla")
    ahead, behind = (sum(c.verdict == v for c in per.values()) for v in (HOLDS, FAILS))
    source = ", ".join(dict.fromkeys(df["source"].dropna().astype(str))) if "source" in df.columns else "unknown"
    return overall.verdict, (f"{overall}; of the {len(per)} corruptions, Ours is ahead beyond the interval on "
                             f"{ahead} and behind beyond it on {behind} (source: {source})"), \
        "Ours - Vanilla, mean over corruptions > 0"


@claim("At the control's clean accuracy, the fine-tune is the most robust method (the trade-off, as a frontier)",
       "06_frontier_chosen.csv")
def claim_frontier(tables: Tables, profile: Profile):
    """The paper's trade-off claim, read on the frontier (notebook 06): each method's knob chosen per seed on the
    held-out split (the most robust run within half a point of the control's held-out clean accuracy), then on
    the test images Ours minus each baseline (TRADES, Madry, MART) at pgd@main_eps > 0, and Ours' clean accuracy
    not more than half a point below the control's; every part must hold. The recipe's variants are not
    baselines: the notebook reads them."""
    name, rob = "06_frontier_chosen.csv", _robust(profile)
    df = _need(tables, name)
    _seeds(df, name, "method", "Control", "natural")
    _col(df, name, rob)
    if not (df["method"].astype(str) == "Ours").any():
        raise _Missing(f"{name} has no Ours row")
    if per_seed(df, "method", "Ours", rob).empty:
        return FAILS, ("Ours kept the control's held-out clean accuracy (within half a point) at none of its DRA "
                       "budgets, for any seed"), "Ours has a run at the control's held-out clean accuracy"
    named = [m for m in dict.fromkeys(df["method"].astype(str)) if m not in ("Control", "Vanilla")
             and not m.startswith("Ours")]
    baselines = [m for m in named if not per_seed(df, "method", m, rob).empty]
    if not baselines:
        raise _Missing(f"{name} has no baseline with a run at the control's held-out clean accuracy")
    parts = [_diff(df, name, "method", "Ours", m, rob) for m in baselines]
    parts.append(_diff(df, name, "method", "Ours", "Control", "natural", margin=NOT_LOWER))
    numbers = _numbers(parts) + "".join(f"; {m}: no run at the control's held-out clean accuracy"
                                        for m in named if m not in baselines)
    how = f"knobs chosen on the held-out split; Ours - each baseline: {rob} > 0, Ours - Control: natural > -0.5 points"
    return combine(parts), numbers, how


def check_claims(tables: Tables, profile: Profile) -> list[Verdict]:
    """Every rule in :data:`CLAIMS` applied to the run's tables."""
    return [rule(tables, profile) for rule in CLAIMS]


# ------------------------------------------------------------------------------------------ rendering
ACCURACY = re.compile(r"natural|accura|acc\b|acc$|robust|success|asr|@|share|clean|paper|measured|"
                      r"vanilla|ours|trades|madry|mart|control", re.I)
NOT_ACCURACY = re.compile(r"^(p|t|n|beta|seed|epoch|eps.*|.* eps|mean l.*)$", re.I)


def _is_percent(name: str, values: pd.Series) -> bool:
    """A float column of fractions whose name says it is an accuracy or a rate (not an eps, p or count)."""
    if not pd.api.types.is_float_dtype(values) or values.dropna().empty:
        return False
    v = values.dropna()
    return bool(((v >= 0) & (v <= 1)).all()) and bool(ACCURACY.search(name)) and not NOT_ACCURACY.match(name)


def _cell(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if percent:
        return pct(float(value))
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e12:
            return str(int(value))
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, *, max_rows: int = MAX_ROWS, percent: bool = True) -> str:
    """``df`` as a GitHub-flavoured Markdown table (accuracy columns in percent, numbers right-aligned)."""
    cols = [str(c) for c in df.columns]
    as_pct = [percent and _is_percent(c, df[c0]) for c, c0 in zip(cols, df.columns)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in df.head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, p) for v, p in zip(row, as_pct)) + " |")
    if len(df) > max_rows:
        lines.append(f"\n*... {len(df) - max_rows} more rows in the CSV.*")
    return "\n".join(lines)


def _pairs(mapping: Mapping, head=("field", "value")) -> str:
    rows = [(k, ", ".join(map(str, v)) if isinstance(v, (tuple, list)) else v) for k, v in mapping.items()]
    return markdown_table(pd.DataFrame(rows, columns=list(head), dtype=object), percent=False)


def to_html(markdown: str, title: str) -> str:
    """A standalone HTML page of ``markdown`` (mistune with tables), with a little CSS."""
    import mistune

    body = mistune.create_markdown(plugins=["table"])(markdown)
    css = ("body{font:15px/1.5 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;"
           "padding:3px 8px}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}"
           "img{max-width:100%;border:1px solid #eee}code{background:#f3f3f3;padding:0 3px}"
           "blockquote{border-left:4px solid #7aa7d6;margin:1em 0;padding:.2em 1em;background:#f4f8fc}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head>\n<body>\n{body}</body></html>\n")


# ------------------------------------------------------------------------------------ the run's facts
def load_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every ``tables/*.csv`` of the run, by file name; an unreadable CSV is skipped (and named in the report)."""
    out = {}
    for path in sorted((run_dir / "tables").glob("*.csv")):
        try:
            out[path.name] = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            out[path.name] = pd.DataFrame({"unreadable CSV": [str(path.name)]})
    return out


def git_state(root: Path | None = None) -> str:
    """``abc1234``, ``abc1234 (dirty tree)`` or ``unknown``: the code the report was built from."""
    root = root or repo_root()
    try:
        run = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=10, check=True)
        commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} (dirty tree: uncommitted changes)" if dirty else commit or "unknown"


def software() -> dict[str, str]:
    """Versions of the interpreter and the packages the results depend on, and the hardware seen."""
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["CUDA available"] = f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no"
    info["CPU count"] = str(os.cpu_count())
    return info


# one field of the full configuration (RunConfig.describe()), as the notebooks printed it before they printed a
# summary: read from the executed notebooks of a run whose timings.json records no settings
CONFIG_LINE = re.compile(r"^  (\w+) +(.*)$")


def _notebook_info(path: Path) -> tuple[str | None, str, dict[str, str]]:
    """The executed notebook's H1 title, a line on when it ran (and whether papermill saw an error), and
    the profile fields its config cell printed (``{field: repr(value)}``; empty if none was printed)."""
    try:
        nb = read_json(path, default=None)
    except Exception:   # a half-written or foreign file: report it, do not fail on it
        nb = {"cells": [], "metadata": {"papermill": {"end_time": "? (unreadable notebook)"}}}
    if not nb:
        return None, "no executed notebook", {}
    cells = nb.get("cells", [])
    title = next((line[2:].strip() for c in cells if c.get("cell_type") == "markdown"
                  for line in "".join(c.get("source", "")).splitlines() if line.startswith("# ")), None)
    pm = nb.get("metadata", {}).get("papermill", {})
    errors = [c.get("execution_count") for c in cells
              if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    note = f"finished {str(pm.get('end_time', '?'))[:19].replace('T', ' ')} UTC"
    if errors or pm.get("exception"):
        note += f"; **failed** (error in cell {errors[0] if errors else '?'}): its tables may be partial"
    printed = next(("".join(o.get("text", "")) for c in cells for o in c.get("outputs", [])
                    if o.get("output_type") == "stream" and "".join(o.get("text", "")).startswith("profile ")), "")
    fields = {m[1]: m[2].strip() for m in map(CONFIG_LINE.match, printed.split("\n\n")[0].splitlines()) if m}
    return title, note, fields


def _settings_drift(profile: Profile, ran: Mapping[str, dict[str, str]]) -> pd.DataFrame:
    """Fields whose value printed by an executed notebook differs from the profile at report time."""
    now = {k: repr(v) for k, v in profile.as_dict().items() if k not in ("name", "description")}
    rows: dict[tuple, list[str]] = {}
    for stem, fields in ran.items():
        # a field the run did not have yet (added to the profiles since) is no drift: it could not be set then
        for k in sorted(set(now) & set(fields) | (set(fields) - set(now))):
            if fields and now.get(k) != fields.get(k):
                rows.setdefault((k, now.get(k, "(no such field)"), fields.get(k, "(no such field)")), []).append(stem[:2])
    return pd.DataFrame([(*key, ", ".join(v)) for key, v in rows.items()],
                        columns=["field", "now", "as run", "notebooks"], dtype=object)


def check_expected_gaps(table: pd.DataFrame, profile: Profile) -> str:
    """The profile's ``expected_gaps`` on a full run's methods table (rows by method): one line, or a one-line
    :class:`RobustlibError` naming every gap below its floor, in points. An entry whose column this run did not
    evaluate (another ``eval_eps``) is said to be unchecked. Nothing is checked in the smoke setting."""
    if profile.smoke or not profile.expected_gaps:
        return f"expected gaps: none {'in the smoke setting' if profile.smoke else 'set for this profile'}"
    shown, failed, unchecked = [], [], []
    for entry in profile.expected_gaps:
        g = GAP.fullmatch(entry)
        a, b, column, floor = g["a"], g["b"], g["column"], float(g["floor"])
        missing = [n for n in (a, b) if n not in table.index]
        if missing:
            raise RobustlibError(f"expected gap {entry!r}: no row {', '.join(missing)} in the table; fix the "
                                 f"profile's expected_gaps")
        if column not in table.columns:
            unchecked.append(column)
            continue
        gap = float(table.loc[a, column] - table.loc[b, column])
        shown.append(f"{a} - {b} {column} {100 * gap:+.1f} points (floor {100 * floor:+.1f})")
        if not gap >= floor:
            failed.append(shown[-1])
    if failed:
        raise RobustlibError(f"this run is far off the profile's record: {'; '.join(failed)} (profile "
                             f"{profile.name!r}, expected_gaps); check what changed before trusting its tables")
    note = f"; not evaluated here, so unchecked: {', '.join(unchecked)}" if unchecked else ""
    return "expected gaps hold: " + "; ".join(shown) + note


def check_expected_clean_acc(accuracy: float, profile: Profile) -> str:
    """theta_std's clean accuracy against the profile's ``expected_clean_acc`` (full runs): one line, or a
    one-line :class:`RobustlibError` when it is below that floor."""
    floor = profile.expected_clean_acc
    if floor is None:
        return "no floor for theta_std's clean accuracy on this profile" + (" (smoke setting)" if profile.smoke else "")
    if not accuracy >= floor:
        raise RobustlibError(f"theta_std's clean accuracy {100 * accuracy:.1f}% is below the floor of profile "
                             f"{profile.name!r}, {100 * floor:.1f}% (expected_clean_acc); check what changed before going on")
    return f"theta_std's clean accuracy {100 * accuracy:.1f}% is above the profile's floor of {100 * floor:.1f}%"


# ------------------------------------------------------------------------------------------ the report
def build_report(cfg: RunConfig) -> Path:
    """Write ``report.md`` and ``report.html`` in ``cfg.run_dir`` from the files there; return the .md path.

    Nothing is recomputed: the claims ledger, the per-notebook tables and figures, the settings, the
    software versions and the wall times are all read from the run directory.
    """
    run_dir, prof = Path(cfg.run_dir), cfg.profile
    timings = read_json(run_dir / "timings.json", default={}) or {}
    tables = load_tables(run_dir)
    head: list[str] = []   # warnings found while reading, shown under the title
    md = _ledger(cfg, timings, tables) + _masking(tables)
    sections, ran = _notebook_sections(run_dir, timings, tables)
    md += sections + _settings(cfg, ran, head) + _software_and_times(timings)
    at = md.index("## Claims ledger")
    text = "\n".join(md[:at] + head + md[at:])
    write_text(run_dir / "report.html", to_html(text, f"Run report: {prof.name}"))
    return write_text(run_dir / "report.md", text)


def _ledger(cfg: RunConfig, timings: dict, tables: Tables) -> list[str]:
    """The title, where and how the run was made, and the claims ledger."""
    run_dir, prof = Path(cfg.run_dir), cfg.profile
    devices = sorted({str(t.get("device")) for t in timings.values()}) or [str(cfg.device)]
    smokes = {bool(t.get("smoke")) for t in timings.values()} or {cfg.smoke}
    verdicts = check_claims(tables, prof)
    counts = ", ".join(f"{sum(v.verdict == k for v in verdicts)} {k}" for k in (HOLDS, INCONCLUSIVE, FAILS, UNTESTED))
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    md = [f"# Run report: {prof.name}", "", f"*{prof.description}*", "",
          f"- built {now} from `{run_dir}` (nothing recomputed: every number is read from the files there)",
          f"- device: {', '.join(devices)}; smoke: {' and '.join(map(str, sorted(smokes)))}"
          + (" (mixed smoke and full notebooks: do not compare their numbers)" if len(smokes) > 1 else ""),
          f"- code: git {git_state()} (at report time)", ""]
    if True in smokes:
        md += ["> **Smoke run**: a tiny setting for tests; its numbers say nothing about the paper's claims.", ""]
    return md + ["## Claims ledger", "",
                 f"Each claim of the paper checked on this profile ({prof.dataset}, {prof.model}; robust accuracy "
                 f"`pgd@{prof.main_eps}` = PGD-20, step eps/20, no random start, the paper's protocol and the "
                 f"weakest of the three in the tables; Table V on the mean over eps {', '.join(prof.eval_eps)}): "
                 f"{counts}.", "",
                 f"**The rule** (`robustlib/verdicts.py`), for every claim: {RULE}. Each difference below is in "
                 "points, followed by its interval and the number of seeds; the rule column says what must clear "
                 "which margin (a claim of several parts holds if every part holds, and does not hold if any "
                 "part does not).", "",
                 markdown_table(pd.DataFrame([(v.claim, f"**{v.verdict}**", v.rule, v.numbers, f"`{v.source}`")
                                              for v in verdicts],
                                             columns=["claim", "verdict", "rule", "numbers", "source"]),
                                percent=False), ""]


def _masking(tables: Tables) -> list[str]:
    """Gradient-masking checks (:func:`robustlib.masking.summary`) on every robustness table of the run."""
    found = masking.summary({n: df for n, df in tables.items()
                             if not n.endswith(("_std.csv", "_vs_paper.csv"))
                             and n.replace(".csv", "_per_seed.csv") not in tables})
    if found.empty:
        return []
    return ["## Gradient-masking checks", "",
            f"On every robustness table of the run (`robustlib/masking.py`), per seed where the run wrote per-seed "
            f"rows: {masking.RULE}. A check a table holds no numbers for is not run on it (and not counted as "
            "passed); AutoAttack and the probes run on the first seed's models only.", "",
            markdown_table(found.assign(table=[f"`{t}`" for t in found["table"]]), percent=False), ""]


def _notebook_sections(run_dir: Path, timings: dict, tables: Tables) -> tuple[list[str], dict]:
    """One section per executed notebook (its tables and figures), then the outputs no notebook claims;
    also the settings each notebook ran with."""
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    executed = {p.stem for p in (run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    md: list[str] = []
    used: set[str] = set()
    ran: dict[str, dict[str, str]] = {}
    for stem in sorted(set(timings) | executed):
        title, note, printed = _notebook_info(run_dir / "notebooks" / f"{stem}.ipynb")
        t = timings.get(stem)
        ran[stem] = (t or {}).get("settings") or printed      # what `run` recorded it ran with, else what it printed
        secs = t.get("seconds") if t else None
        wall = (f"{secs:.1f} s" if isinstance(secs, (int, float)) else "? s") + f" on {t.get('device', '?')}" \
            if t else "no timing recorded"
        md += [f"## {title or stem}", "", f"`notebooks/{stem}.ipynb`: {wall}; {note}.", ""]
        md += _outputs(tables, figures, stem[:3], used)
    rest = [n for n in tables if n not in used]
    if rest or [f for f in figures if f not in used]:
        md += ["## Other outputs", "", "Tables and figures whose number matches no executed notebook.", ""]
        md += _outputs({n: tables[n] for n in rest}, [f for f in figures if f not in used], "", used)
    return md, ran


def _settings(cfg: RunConfig, ran: dict, head: list[str]) -> list[str]:
    """The profile's settings, any drift from what the notebooks ran with (also warned in ``head``), calibration."""
    prof = cfg.profile
    drift = _settings_drift(prof, ran)
    md = ["## Exact settings", "", f"Profile `{prof.name}` after overrides {cfg.overrides or '{}'}, as defined "
          "when this report was built:", "", _pairs(prof.as_dict()), ""]
    if not drift.empty:
        md += ["> **The notebooks ran with other settings** than these (as `timings.json` recorded them, or as an "
               "older run's notebooks printed them); their numbers belong to the \"as run\" column.", "",
               markdown_table(drift, percent=False), ""]
        names = list(dict.fromkeys(drift["field"]))
        more = f" and {len(names) - 8} more" if len(names) > 8 else ""
        head.append(f"> **Settings changed since the notebooks ran** (fields {', '.join(names[:8])}{more}): "
                    "see *Exact settings*.")
        head.append("")
    calibration = read_json(Path(cfg.run_dir) / "calibration.json", default=None)
    md += ["Equal-strength calibration (`calibration.json`, notebook 01):", "",
           _pairs(calibration) if calibration else "*not produced*", ""]
    decision = read_json(Path(cfg.run_dir) / "dra_budget.json", default=None)
    if decision:    # dra_budget = "paper": how Section V-C's point decided the reading of DRA's eps
        shown = {k: v for k, v in decision.items() if k != "readings"}
        md += ["The reading of DRA's eps decided by Section V-C's calibration point (`dra_budget.json`, notebook 01):",
               "", _pairs(shown), "", markdown_table(pd.DataFrame(decision.get("readings", []))), ""]
    return md


def _software_and_times(timings: dict) -> list[str]:
    md = ["## Software", "", "Of the environment that built this report (the notebooks' own kernel when run "
          "by `make run`).", "", _pairs(software(), ("package", "version")), ""]
    rows = [(s, t.get("seconds"), t.get("device"), t.get("smoke")) for s, t in timings.items()]
    total = sum(float(r[1] or 0) for r in rows)
    table = pd.DataFrame(rows + [("**total**", total, "", "")], columns=["notebook", "seconds", "device", "smoke"],
                         dtype=object)
    if any(t.get(k, "fp32") != "fp32" for t in timings.values() for k in ("precision", "attack_precision")):
        # `auto` resolved on the machine that ran it (bf16 where native): say what each notebook's numbers came from
        for col, key in (("training", "precision"), ("attack iterates", "attack_precision")):
            table[col] = [t.get(key, "fp32") for t in timings.values()] + [""]
    return md + ["## Wall time", "", markdown_table(table, percent=False),
                 "", f"Total: {total:.1f} s ({total / 60:.1f} min).", ""]


def _outputs(tables: Tables, figures: list[str], prefix: str, used: set[str]) -> list[str]:
    """The Markdown of one notebook's tables (``<prefix>*.csv``) and figures (``<prefix>*.png``)."""
    md = []
    for name, df in tables.items():
        if not name.startswith(prefix) or name in used:
            continue
        used.add(name)
        label = f"[`tables/{name}`](tables/{name})"
        if name.endswith("_vs_paper.csv"):
            md += [f"> **Measured beside the paper**: {label}", ""]
        elif name.endswith("_per_seed.csv"):   # the verdicts' input, one row per seed: linked, not shown
            md += [f"{label}: {len(df)} rows, one per run and seed (what the claims ledger's intervals are from)", ""]
            continue
        else:
            md += [label, ""]
        md += [markdown_table(df), ""]
    for fig in figures:
        if fig.startswith(prefix) and fig not in used:
            used.add(fig)
            md += [f"![{Path(fig).stem}](figures/{fig})", ""]
    return md
