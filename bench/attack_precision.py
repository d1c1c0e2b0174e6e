"""Is the evaluation PGD with bf16 iterates (attack_precision: bf16) as strong as the float32 one? Measured on
the trained models of a run directory, paired image by image; prints a table and writes it as CSV and JSON.

For every finished run (``checkpoints/<name>.pt``) whose name matches ``--runs`` and every radius of the
profile's ``eval_eps``, both table protocols (``paper``: PGD-20 from the clean point; ``pgd-rs``: a random
start) attack the profile's evaluation images (notebook 03's: ``eval_limit`` test images, subset seed 1) once
with float32 iterates and once with bf16 iterates + channels-last; every decision is float32. Per row: the
two robust accuracies, the images only one attack broke (where the two attacks differ), and the seconds each
took. A weaker bf16 attack would show as more images that only float32 breaks, model after model.

    .venv/bin/python bench/attack_precision.py --run-dir runs/fashion --profile fashion --runs vanilla '*-s0'

``--check`` compares instead the attack of each run's per-epoch held-out check (which picks its "best"
checkpoint): PGD-``at_steps`` from the clean point, step 2.5 eps / steps, at the profile's ``main_eps``, on the
held-out split (``val_size`` training images), as :func:`robustlib.methods.heldout_metrics` runs it for the
profile's own runs (a variant that changes ``main_eps`` checks at its own), on each run's final model (the check
runs on every epoch's).

Timings here are one pass each, not interleaved rounds: read them as the size of the gain, not a benchmark.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from the tree, installed or not

from robustlib import evaluate as E                                                 # noqa: E402
from robustlib.attacks import PGD_STEP_FACTOR                                       # noqa: E402
from robustlib.methods import heldout                                               # noqa: E402
from robustlib.config import setup                                                  # noqa: E402
from robustlib.data import load_splits                                              # noqa: E402
from robustlib.io import atomic_open, write_csv                                     # noqa: E402
from robustlib.train import load_checkpoint                                         # noqa: E402


def compare(model, x, y, eps: str) -> list[dict]:
    rows = []
    for protocol in ("paper", "pgd-rs"):
        out = {}
        for precision in ("fp32", "bf16"):
            E.set_attack_precision(precision)
            try:
                t = time.perf_counter()
                row, xa = E.robust_accuracy(model, x, y, eps=eps, protocol=protocol, fast=True)
                seconds = time.perf_counter() - t
            finally:
                E.set_attack_precision("fp32")
            robust = (E.predict(model, x) == y) & (E.predict(model, xa) == y)
            assert abs(robust.float().mean().item() - row["robust_acc"]) < 1e-9
            out[precision] = (robust, seconds)
        a, b = out["fp32"][0], out["bf16"][0]
        rows.append({"protocol": protocol, "eps": eps, "fp32": a.float().mean().item(),
                     "bf16": b.float().mean().item(), "only fp32 breaks": int((~a & b).sum()),
                     "only bf16 breaks": int((a & ~b).sum()), "s fp32": round(out["fp32"][1], 2),
                     "s bf16": round(out["bf16"][1], 2)})
    return rows


def compare_check(model, x, y, eps: str, steps: int) -> list[dict]:
    """The held-out check's attack (methods.heldout_metrics) with float32 and with bf16 iterates, paired."""
    out = {}
    for precision in ("fp32", "bf16"):
        t = time.perf_counter()
        with E.fast_iterates(model, precision=precision):
            xa = E.run_attack("pgd", model, x, y, eps=E.parse_eps(eps)[0], steps=steps, step_factor=PGD_STEP_FACTOR)
        seconds = time.perf_counter() - t
        out[precision] = ((E.predict(model, x) == y) & (E.predict(model, xa) == y), seconds)
    a, b = out["fp32"][0], out["bf16"][0]
    return [{"protocol": f"check (PGD-{steps})", "eps": eps, "fp32": a.float().mean().item(),
             "bf16": b.float().mean().item(), "only fp32 breaks": int((~a & b).sum()),
             "only bf16 breaks": int((a & ~b).sum()), "s fp32": round(out["fp32"][1], 2),
             "s bf16": round(out["bf16"][1], 2)}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--runs", nargs="+", default=["*"], help="globs on the run names (e.g. vanilla '*-s0')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/bench/attack_precision", help="writes <out>.csv and <out>.json")
    ap.add_argument("--check", action="store_true", help="the per-epoch held-out check's attack instead (above)")
    args = ap.parse_args()
    cfg = setup(args.profile, device=args.device, run_dir=args.run_dir, create=False)
    P = cfg.profile
    ckpts = sorted(p for p in cfg.path("checkpoints").glob("*.pt")
                   if not p.name.endswith((".last.pt", ".best.pt")) and any(fnmatch.fnmatch(p.stem, g) for g in args.runs))
    if not ckpts:
        raise SystemExit(f"no finished run matching {args.runs!r} in {cfg.path('checkpoints')}: run the notebooks first")
    train_split, test_split = load_splits(P, cfg.data_root)
    images = heldout(cfg, train_split) if args.check else test_split.subset(P.eval_limit, seed=1)   # or notebook 03's
    x, y = images.float_x(), images.y
    radii = [P.main_eps] if args.check else list(P.eval_eps)
    rows = []
    for path in ckpts:
        model = load_checkpoint(path, device=cfg.device)[0].eval()
        for eps in radii:
            for r in (compare_check(model, x, y, eps, P.at_steps) if args.check else compare(model, x, y, eps)):
                rows.append({"run": path.stem, **r})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False))
    diff = 100 * (table["bf16"] - table["fp32"])
    shape = "the held-out check" if args.check else f"{len(radii)} radii x 2 protocols"
    print(f"\n{len(table)} rows ({len(ckpts)} models x {shape}), {len(y)} images each: "
          f"bf16 minus fp32 robust accuracy from {diff.min():+.1f} to {diff.max():+.1f} points (mean {diff.mean():+.2f}); "
          f"images only fp32 broke {table['only fp32 breaks'].sum()}, only bf16 broke {table['only bf16 breaks'].sum()}; "
          f"seconds fp32 {table['s fp32'].sum():.0f}, bf16 {table['s bf16'].sum():.0f} "
          f"({table['s fp32'].sum() / table['s bf16'].sum():.2f}x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), table)
    meta = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "profile": P.name, "run_dir": str(cfg.run_dir), "images": len(y),
            "attack": "held-out check" if args.check else "tables' protocols"}
    with atomic_open(out.with_suffix(".json"), "w") as f:
        f.write(pd.Series(meta).to_json(indent=1) + "\n")


if __name__ == "__main__":
    main()
