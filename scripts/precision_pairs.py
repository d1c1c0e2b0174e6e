"""Does training in bf16 move a profile's results? Paired seeds: the same recipe in float32 and in the profile's
precision, end to end (theta_std, then Ours and the control fine-tuned from it), for each seed.

Every model is measured on notebook 03's images (natural accuracy on the whole test split; PGD-20 paper protocol
and with a random start at each ``--eps`` on ``eval_limit`` of them), attacked in float32 so that the yardstick is
the same for both arms. The table (one row per precision, seed and method) goes to
``<run_dir>/tables/precision_pairs.csv``; the printout gives each seed's Ours - control gap in both arms and
their paired difference, with the mean and the spread over seeds.

    .venv/bin/python scripts/precision_pairs.py --profile fashion --eps 0.03 --run-dir runs/fashion

The float32 arm is a variant (``fp32`` in its checkpoints' names), so it never overwrites the profile's runs,
and the profile's own arm loads the checkpoints of a run directory that already holds them.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="fashion")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--eps", nargs="+", default=None, help="PGD radii (default: the profile's eval_eps)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's seeds")
    parser.add_argument("--overrides", default=None, help="YAML: profile fields, e.g. '{precision: bf16}'")
    args = parser.parse_args(argv)

    import robustlib
    from robustlib import evaluate, io, methods
    from robustlib.__main__ import _overrides
    from robustlib.data import load_splits
    from robustlib.train import resolve_precision

    try:
        cfg = robustlib.setup(args.profile, device=args.device, run_dir=args.run_dir, data_root=args.data_root,
                              overrides=_overrides(args.overrides, None))
        p = cfg.profile
        arms = {"profile": cfg, "fp32": cfg.variant("fp32", precision="fp32", channels_last=False)}
        if arms["fp32"] is cfg:
            raise robustlib.RobustlibError(f"profile {p.name!r} already trains in float32: there is nothing to pair; "
                                           f"set --overrides '{{precision: bf16}}' to pair bf16 with it")
        seeds = args.seeds or list(p.seeds)
        eps_list = args.eps or list(p.eval_eps)
        train, test_split = load_splits(p, cfg.data_root)
        test = test_split.subset(p.eval_limit, seed=1)            # notebook 03's images
        rows = []
        for seed in seeds:
            for arm, c in arms.items():
                models = {m: methods.train_method(c, m, seed=seed, data=(train, test_split), progress=False)["model"]
                          for m in ("vanilla", "control", "ours")}
                t = evaluate.evaluate_table(models, test.float_x(), test.y, eps_list=eps_list, fast=False,
                                            natural_on=(test_split.float_x(), test_split.y))
                rows.append(t.assign(arm=arm, precision=resolve_precision(c.profile.precision, c.device), seed=seed))
                print(f"seed {seed}, {arm}: done", flush=True)
    except robustlib.RobustlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = pd.concat(rows, ignore_index=True)
    io.write_csv(cfg.path("tables", "precision_pairs.csv"), table)
    cols = [c for c in table.columns if c.startswith(("natural", "pgd"))]
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print((table.set_index(["seed", "arm", "method"])[cols] * 100).round(1).to_string())
        wide = table.pivot_table(index=["seed", "arm"], columns="method", values=cols)
        gap = (wide.xs("ours", axis=1, level=1) - wide.xs("control", axis=1, level=1)) * 100
        print("\nOurs - control, points:")
        print(gap.round(1).to_string())
        paired = gap.xs("profile", level="arm") - gap.xs("fp32", level="arm")
        print(f"\n{resolve_precision(p.precision, cfg.device)} - fp32, paired by seed, points:")
        print(paired.round(1).to_string())
        print("mean / std over seeds:")
        print(pd.DataFrame({"mean": paired.mean(), "std": paired.std()}).round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
