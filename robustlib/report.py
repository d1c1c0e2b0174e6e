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

from .io import read_json, write_text
from .config import RunConfig, repo_root
from .profiles import Profile

HOLDS, FAILS, PARTLY, UNTESTED = "holds", "does not hold", "partly", "not tested on this profile"
Tables = Mapping[str, pd.DataFrame]   # "03_methods.csv" -> its DataFrame
MAX_ROWS = 60                         # longer tables are cut in the report (the CSV keeps everything)
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pyautoattack", "papermill", "mistune")


# --------------------------------------------------------------------------------------------- the claims
@dataclass(frozen=True)
class Verdict:
    """One line of the claims ledger."""

    claim: str
    verdict: str    # HOLDS, FAILS, PARTLY or UNTESTED
    numbers: str    # the measurements behind the verdict, or what was missing
    source: str     # the table(s) the rule read


class _Missing(Exception):
    """A table, row or column a rule needs is not in the run directory; the message says which."""


def claim(text: str, source: str) -> Callable:
    """Register a rule ``fn(tables, profile) -> (verdict, numbers)`` in :data:`CLAIMS` as a Verdict maker.

    A missing table, row or column makes the verdict "not tested on this profile" with the reason, so a
    partial run directory never crashes the report.
    """
    def wrap(fn):
        @functools.wraps(fn)
        def rule(tables: Tables, profile: Profile) -> Verdict:
            try:
                verdict, numbers = fn(tables, profile)
            except _Missing as e:
                verdict, numbers = UNTESTED, str(e)
            return Verdict(text, verdict, numbers, source)

        rule.text, rule.source = text, source
        CLAIMS.append(rule)
        return rule
    return wrap


CLAIMS: list[Callable[[Tables, Profile], Verdict]] = []


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _need(tables: Tables, name: str) -> pd.DataFrame:
    if name not in tables:
        raise _Missing(f"table {name} not produced")
    return tables[name]


def _col(df: pd.DataFrame, name: str, column: str) -> pd.Series:
    if column not in df.columns:
        raise _Missing(f"{name} has no column {column!r} (it has {', '.join(map(str, df.columns))})")
    return pd.to_numeric(df[column], errors="coerce")


def _value(df: pd.DataFrame, name: str, key: str, row: str, column: str) -> float:
    """The mean of ``column`` over the rows whose ``key`` is ``row`` (several rows: seeds)."""
    if key not in df.columns:
        raise _Missing(f"{name} has no column {key!r}")
    values = _col(df, name, column)[df[key].astype(str) == row].dropna()
    if values.empty:
        raise _Missing(f"{name} has no {row!r} row with a {column} value")
    return float(values.mean())


def _robust(profile: Profile) -> str:
    return f"pgd@{profile.main_eps}"


def _natural(df: pd.DataFrame) -> str:
    """Clean accuracy on the whole test split where the table has it (``natural-all``), else on the subset."""
    return "natural-all" if "natural-all" in df.columns else "natural"


def _verdict(hits: int, total: int) -> str:
    return HOLDS if hits == total else PARTLY if hits else FAILS


@claim("The fine-tune keeps clean accuracy while adding robustness", "03_methods.csv")
def claim_keeps_accuracy(tables: Tables, profile: Profile):
    """Holds if Ours natural >= Vanilla natural - 0.005 (half a point, the tolerance notebook 03 asserts on
    quick) and Ours pgd@main_eps > Vanilla pgd@main_eps;
    partly if only one of the two, does not hold if neither. Control (clean fine-tune) is quoted if present."""
    name, rob = "03_methods.csv", _robust(profile)
    df = _need(tables, name)
    nat = _natural(df)
    o_nat, v_nat = (_value(df, name, "method", m, nat) for m in ("Ours", "Vanilla"))
    o_rob, v_rob = (_value(df, name, "method", m, rob) for m in ("Ours", "Vanilla"))
    numbers = f"Ours {pct(o_nat)} vs Vanilla {pct(v_nat)} {nat}; {rob} {pct(o_rob)} vs {pct(v_rob)}"
    if "method" in df.columns and (df["method"] == "Control").any():
        c_nat, c_rob = (_value(df, name, "method", "Control", c) for c in (nat, rob))
        numbers += f"; Control (clean fine-tune) {pct(c_nat)} {nat}, {pct(c_rob)} {rob}"
    return _verdict((o_nat >= v_nat - 0.005) + (o_rob > v_rob), 2), numbers


@claim("It beats TRADES on harder data (CIFAR-10)", "03_methods.csv")
def claim_beats_trades(tables: Tables, profile: Profile):
    """Against every TRADES row: Ours wins if more robust at pgd@main_eps and natural not lower. Holds if
    Ours wins against all, partly against some, else does not hold. Judged on CIFAR-10 profiles only."""
    name, rob = "03_methods.csv", _robust(profile)
    df = _need(tables, name)
    trades = [m for m in dict.fromkeys(df.get("method", pd.Series(dtype=str)).astype(str)) if m.startswith("TRADES")]
    if not trades:
        raise _Missing(f"{name} has no TRADES row")
    nat = _natural(df)
    o_nat, o_rob = (_value(df, name, "method", "Ours", c) for c in (nat, rob))
    parts, wins = [f"Ours {pct(o_nat)} {nat} / {pct(o_rob)} {rob}"], 0
    for t in trades:
        t_nat, t_rob = (_value(df, name, "method", t, c) for c in (nat, rob))
        wins += o_rob > t_rob and o_nat >= t_nat - 1e-9
        parts.append(f"{t} {pct(t_nat)} / {pct(t_rob)}")
    numbers = "; ".join(parts)
    if profile.dataset != "cifar10":
        return UNTESTED, f"the claim is about CIFAR-10; on {profile.dataset}: {numbers}"
    return _verdict(wins, len(trades)), f"beats {wins} of {len(trades)}: {numbers}"


@claim("DRA is a better training adversary than PGD at equal strength (Table V)", "04_table_v.csv")
def claim_dra_beats_pgd(tables: Tables, profile: Profile):
    """For each training (Madry, TRADES, Ours) with both rows: DRA-trained beats PGD-trained on the mean of
    pgd@eps over the profile's eval eps (Table V's claim is over all its columns; a tie is not "better").
    Holds if in all such trainings, partly if in some, does not hold if in none."""
    name = "04_table_v.csv"
    df = _need(tables, name)
    for key in ("training", "adversary"):
        if key not in df.columns:
            raise _Missing(f"{name} has no column {key!r}")
    cols = [f"pgd@{e}" for e in profile.eval_eps if f"pgd@{e}" in df.columns] or [_robust(profile)]
    for c in cols:
        _col(df, name, c)
    rob = cols[0] if len(cols) == 1 else f"mean of {', '.join(cols)}"
    parts, hits = [], 0
    trainings = [t for t in dict.fromkeys(df["training"].astype(str))
                 if {"PGD", "DRA"} <= set(df.loc[df["training"].astype(str) == t, "adversary"].astype(str))]
    if not trainings:
        raise _Missing(f"{name} has no training with both a PGD and a DRA row")
    for t in trainings:
        sub = df[df["training"].astype(str) == t]
        dra, pgd = (sum(_value(sub, name, "adversary", a, c) for c in cols) / len(cols) for a in ("DRA", "PGD"))
        hits += dra > pgd
        parts.append(f"{t}: DRA {pct(dra)} vs PGD {pct(pgd)}")
    return _verdict(hits, len(trainings)), f"{rob}: " + "; ".join(parts)


def _at_p(df: pd.DataFrame, name: str, p: float, label: str, column: str) -> float:
    if "p" in df.columns:
        rows = df[(pd.to_numeric(df["p"], errors="coerce") - p).abs() < 1e-6]
        if not rows.empty:
            return float(_col(rows, name, column).mean())
    if "label" in df.columns:
        return _value(df, name, "label", label, column)
    raise _Missing(f"{name} has no row for p = {label}")


@claim("Robustness saturates around p = 1/3 (Table VI, Fig. 4)", "04_p_sweep.csv")
def claim_p_saturates(tables: Tables, profile: Profile):
    """With r(p) = pgd@main_eps after fine-tuning with DRA of fraction p: holds if r(1/3) > r(0) and
    r(1) - r(1/3) <= 0.25 (r(1) - r(0)); partly if only r(1/3) > r(0); does not hold otherwise."""
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
        n3, n1 = (_at_p(df, name, p, lab, "natural") for p, lab in ((1 / 3, "1/3"), (1, "1")))
    except _Missing as e:
        raise _Missing(f"{e}{fig4}") from None
    saturated = r1 - r3 <= 0.25 * (r1 - r0)
    verdict = HOLDS if r3 > r0 and saturated else PARTLY if r3 > r0 else FAILS
    numbers = (f"{rob} at p=0/1/3/1: {pct(r0)} / {pct(r3)} / {pct(r1)}; natural at p=1/3 {pct(n3)} vs p=1 "
               f"{pct(n1)} (paper: 91.3% vs 89.6%){fig4}")
    return verdict, numbers


@claim("Larger backbones gain more robustness from the fine-tune (Table IV)", "04_backbones.csv")
def claim_bigger_gains_more(tables: Tables, profile: Profile):
    """Gain = Ours - Vanilla at pgd@main_eps per backbone, in file order (smallest first): holds if the
    gains strictly increase, partly if the largest backbone's gain exceeds the smallest's, else does not
    hold. Needs at least two backbones with both rows."""
    name, rob = "04_backbones.csv", _robust(profile)
    df = _need(tables, name)
    if "backbone" not in df.columns or "method" not in df.columns:
        raise _Missing(f"{name} needs columns 'backbone' and 'method'")
    gains = {}
    for b in dict.fromkeys(df["backbone"].astype(str)):
        sub = df[df["backbone"].astype(str) == b]
        if {"Vanilla", "Ours"} <= set(sub["method"].astype(str)):
            gains[b] = _value(sub, name, "method", "Ours", rob) - _value(sub, name, "method", "Vanilla", rob)
    if len(gains) < 2:
        raise _Missing(f"{name} has {len(gains)} backbone(s) with both Vanilla and Ours rows; need 2")
    g = list(gains.values())
    verdict = HOLDS if all(a < b for a, b in zip(g, g[1:])) else PARTLY if g[-1] > g[0] else FAILS
    return verdict, f"{rob} gain: " + ", ".join(f"{b} {100 * v:+.1f}" for b, v in gains.items()) + " points"


@claim("The fine-tuned model is more robust to natural corruptions (Table VII)", "05_corruptions.csv")
def claim_corruptions(tables: Tables, profile: Profile):
    """Holds if Ours > Vanilla on every corruption (Table VII shows the fine-tune ahead on all it reports);
    partly if Ours is ahead on the ``mean`` row or on more than half of them; does not hold otherwise."""
    name = "05_corruptions.csv"
    df = _need(tables, name)
    for c in ("corruption", "Ours", "Vanilla"):
        if c not in df.columns:
            raise _Missing(f"{name} has no column {c!r}")
    kind = df["corruption"].astype(str)
    each = df[~kind.isin(["clean", "mean"])]
    wins = int((_col(each, name, "Ours") > _col(each, name, "Vanilla")).sum())
    o_mean, v_mean = (_value(df, name, "corruption", "mean", m) for m in ("Ours", "Vanilla"))
    source = ", ".join(dict.fromkeys(df["source"].dropna().astype(str))) if "source" in df.columns else "unknown"
    verdict = HOLDS if wins == len(each) and len(each) else PARTLY if o_mean > v_mean or wins > len(each) / 2 else FAILS
    return verdict, (f"mean Ours {pct(o_mean)} vs Vanilla {pct(v_mean)}; Ours better on {wins} of {len(each)} "
                     f"corruptions (source: {source})")


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


CONFIG_LINE = re.compile(r"^  (\w+) +(.*)$")   # one field of ``print(cfg)`` (RunConfig.__str__)


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
        for k in sorted(set(now) | set(fields)):
            if fields and now.get(k) != fields.get(k):
                rows.setdefault((k, now.get(k, "(no such field)"), fields.get(k, "(no such field)")), []).append(stem[:2])
    return pd.DataFrame([(*key, ", ".join(v)) for key, v in rows.items()],
                        columns=["field", "now", "as run", "notebooks"], dtype=object)


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
    md = _ledger(cfg, timings, tables)
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
    counts = ", ".join(f"{sum(v.verdict == k for v in verdicts)} {k}" for k in (HOLDS, PARTLY, FAILS, UNTESTED))
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
                 f"{counts}. The rules are in `robustlib/report.py`; single-seed ablations carry seed noise (see "
                 f"notebook 04).", "",
                 markdown_table(pd.DataFrame([(v.claim, f"**{v.verdict}**", v.numbers, f"`{v.source}`")
                                              for v in verdicts], columns=["claim", "verdict", "numbers", "source"]),
                                percent=False), ""]


def _notebook_sections(run_dir: Path, timings: dict, tables: Tables) -> tuple[list[str], dict]:
    """One section per executed notebook (its tables and figures), then the outputs no notebook claims;
    also the settings each executed notebook printed."""
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    executed = {p.stem for p in (run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    md: list[str] = []
    used: set[str] = set()
    ran: dict[str, dict[str, str]] = {}
    for stem in sorted(set(timings) | executed):
        title, note, ran[stem] = _notebook_info(run_dir / "notebooks" / f"{stem}.ipynb")
        t = timings.get(stem)
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
        md += ["> **The notebooks ran with other settings** than these (read from the configuration each "
               "executed notebook printed); their numbers belong to the \"as run\" column.", "",
               markdown_table(drift, percent=False), ""]
        names = list(dict.fromkeys(drift["field"]))
        more = f" and {len(names) - 8} more" if len(names) > 8 else ""
        head.append(f"> **Settings changed since the notebooks ran** (fields {', '.join(names[:8])}{more}): "
                    "see *Exact settings*.")
        head.append("")
    calibration = read_json(Path(cfg.run_dir) / "calibration.json", default=None)
    return md + ["Equal-strength calibration (`calibration.json`, notebook 01):", "",
                 _pairs(calibration) if calibration else "*not produced*", ""]


def _software_and_times(timings: dict) -> list[str]:
    md = ["## Software", "", "Of the environment that built this report (the notebooks' own kernel when run "
          "by `make run`).", "", _pairs(software(), ("package", "version")), ""]
    rows = [(s, t.get("seconds"), t.get("device"), t.get("smoke")) for s, t in timings.items()]
    total = sum(float(r[1] or 0) for r in rows)
    return md + ["## Wall time", "", markdown_table(pd.DataFrame(rows + [("**total**", total, "", "")],
                                                                 columns=["notebook", "seconds", "device", "smoke"],
                                                                 dtype=object), percent=False),
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
        else:
            md += [label, ""]
        md += [markdown_table(df), ""]
    for fig in figures:
        if fig.startswith(prefix) and fig not in used:
            used.add(fig)
            md += [f"![{Path(fig).stem}](figures/{fig})", ""]
    return md
