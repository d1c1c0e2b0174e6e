"""Compare the tables and per-epoch metrics of two run directories, file by file, to a tolerance.

A behaviour-preserving change is checked this way: run the same profile before and after it into two run
directories, then

    .venv/bin/python scripts/compare_runs.py /tmp/before/quick /tmp/after/quick

Every ``tables/*.csv`` and ``metrics/*.csv`` of the first must exist in the second with the same columns
and rows; numbers must agree within ``--atol`` (0 by default: bit for bit as written), text exactly.
Wall times (the ``seconds`` column) are left out. Exit status 0 when everything agrees, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

IGNORED_COLUMNS = ("seconds",)


def compare_csv(a: Path, b: Path, atol: float) -> str | None:
    """``None`` when the two CSVs agree, else one line saying where they first differ."""
    x, y = pd.read_csv(a), pd.read_csv(b)
    x, y = (d.drop(columns=[c for c in IGNORED_COLUMNS if c in d.columns]) for d in (x, y))
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
                return f"column {col!r} row {i}: {u.iloc[i]!r} vs {v.iloc[i]!r} (|diff| {diff[i]:.3g})"
        elif not u.astype(str).equals(v.astype(str)):
            i = int(np.argmax((u.astype(str) != v.astype(str)).to_numpy()))
            return f"column {col!r} row {i}: {u.iloc[i]!r} vs {v.iloc[i]!r}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers (default 0)")
    args = parser.parse_args(argv)
    files = sorted(p.relative_to(args.before) for sub in ("tables", "metrics")
                   for p in (args.before / sub).glob("*.csv"))
    if not files:
        print(f"error: no tables/*.csv or metrics/*.csv under {args.before}", file=sys.stderr)
        return 2
    problems = []
    for rel in files:
        other = args.after / rel
        why = "missing" if not other.exists() else compare_csv(args.before / rel, other, args.atol)
        if why:
            problems.append(f"{rel}: {why}")
    extra = sorted(p.relative_to(args.after) for sub in ("tables", "metrics") for p in (args.after / sub).glob("*.csv")
                   if not (args.before / p.relative_to(args.after)).exists())
    problems += [f"{rel}: only in {args.after}" for rel in extra]
    print(f"{len(files)} CSV files compared (tables and per-epoch metrics, 'seconds' left out), atol {args.atol:g}: "
          f"{len(files) - len(problems) + len(extra)} agree, {len(problems)} differ")
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
