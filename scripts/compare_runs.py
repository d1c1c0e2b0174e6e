"""Compare the tables and per-epoch metrics of two run directories, file by file, to a tolerance.

A behaviour-preserving change is checked this way: run the same profile before and after it into two run
directories, then

    .venv/bin/python scripts/compare_runs.py /tmp/before/quick /tmp/after/quick

Every ``tables/*.csv`` and ``metrics/*.csv`` of the first must exist in the second with the same columns
and rows; numbers must agree within ``--atol`` (0 by default: bit for bit as written), text exactly.
Wall times (the ``seconds`` column) are left out. With ``--added-columns``, columns and files that only
the second has (a change that adds measurements) are listed instead of failing; every column of the first
must still agree. Exit status 0 when everything agrees, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

IGNORED_COLUMNS = ("seconds",)


def _shown(value) -> str:
    """A cell as Python writes it (``0.5``, not numpy 2's ``np.float64(0.5)``)."""
    return repr(value.item() if hasattr(value, "item") else value)


def compare_csv(a: Path, b: Path, atol: float, added: list | None = None) -> str | None:
    """``None`` when the two CSVs agree, else one line saying where they first differ. With ``added`` (a list),
    columns only ``b`` has are appended to it and left out of the comparison."""
    x, y = pd.read_csv(a), pd.read_csv(b)
    x, y = (d.drop(columns=[c for c in IGNORED_COLUMNS if c in d.columns]) for d in (x, y))
    if added is not None:
        new = [c for c in y.columns if c not in x.columns]
        added += new
        y = y.drop(columns=new)
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return f"shape or columns differ: {list(x.columns)} x {len(x)} vs {list(y.columns)} x {len(y)}"
    for col in x.columns:
        u, v = x[col], y[col]
        if pd.api.types.is_numeric_dtype(u) and pd.api.types.is_numeric_dtype(v):
            diff = np.abs(u.to_numpy(float) - v.to_numpy(float))
            same_nan = u.isna().to_numpy() & v.isna().to_numpy()
            bad = ~same_nan & ~(diff <= atol)
            if bad.any():
                i = int(np.argmax(bad))
                return f"column {col!r} row {i}: {_shown(u.iloc[i])} vs {_shown(v.iloc[i])} (|diff| {diff[i]:.3g})"
        elif not u.astype(str).equals(v.astype(str)):
            i = int(np.argmax((u.astype(str) != v.astype(str)).to_numpy()))
            return f"column {col!r} row {i}: {_shown(u.iloc[i])} vs {_shown(v.iloc[i])}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers (default 0)")
    parser.add_argument("--added-columns", action="store_true",
                        help="list columns and files only AFTER has instead of failing on them")
    args = parser.parse_args(argv)
    files = sorted(p.relative_to(args.before) for sub in ("tables", "metrics")
                   for p in (args.before / sub).glob("*.csv"))
    if not files:
        print(f"error: no tables/*.csv or metrics/*.csv under {args.before}", file=sys.stderr)
        return 2
    problems, added = [], {}
    for rel in files:
        other, new = args.after / rel, [] if args.added_columns else None
        why = "missing" if not other.exists() else compare_csv(args.before / rel, other, args.atol, new)
        if why:
            problems.append(f"{rel}: {why}")
        if new:
            added[str(rel)] = new
    extra = sorted(p.relative_to(args.after) for sub in ("tables", "metrics") for p in (args.after / sub).glob("*.csv")
                   if not (args.before / p.relative_to(args.after)).exists())
    if args.added_columns:
        added.update({str(rel): ["(new file)"] for rel in extra})
        extra = []
    problems += [f"{rel}: only in {args.after}" for rel in extra]
    print(f"{len(files)} CSV files compared (tables and per-epoch metrics, 'seconds' left out), atol {args.atol:g}: "
          f"{len(files) - len(problems) + len(extra)} agree, {len(problems)} differ")
    for p in problems:
        print("  " + p)
    for rel, cols in added.items():
        print(f"  added in {rel}: {', '.join(cols)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
