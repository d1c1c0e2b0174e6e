"""Choose a fine-tune setting (the DRA budget, the learning rate, ...) on the held-out split, never the test split.

Each variant is a YAML mapping of profile fields. For each, Ours is fine-tuned from theta_std (or loaded from the
run directory) and so is the control, which is shared by every variant that changes none of the settings its
run reads (``methods.build_run(...)["meta"]["settings"]``). Both are measured on the profile's held-out split
(``val_size`` training images): clean accuracy and PGD-20 (paper protocol) at each ``--eps``. The table goes to ``<run_dir>/tables/select_finetune.csv``.

    .venv/bin/python scripts/select_finetune.py --profile fashion --eps 0.03 0.1 \\
        --variants '{e8: {}, e6: {ft_eps_max: 6, ft_eps_min: 1.5}, e4: {ft_eps_max: 4, ft_eps_min: 1}}'

This is how the ``fashion`` profile's budget was chosen (see its comment in ``robustlib/profiles.py``).
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

# what every variant must share: the same training images and the same held-out split
DATA_FIELDS = ("dataset", "train_limit", "test_limit", "val_size", "seed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run-dir", default=None, help="default: runs/<profile>; theta_std is trained there if absent")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--variants", required=True, help="YAML: {tag: {field: value, ...}, ...}; {} is the profile")
    parser.add_argument("--eps", nargs="+", default=None, help="PGD radii (default: the profile's eval_eps)")
    args = parser.parse_args(argv)

    import robustlib
    from robustlib import io, methods
    from robustlib.__main__ import _overrides
    from robustlib.data import load_splits
    from robustlib.evaluate import accuracy, parse_eps, robust_accuracy

    try:
        variants = _overrides(args.variants, None)
        cfg = robustlib.setup(args.profile, device=args.device, run_dir=args.run_dir, data_root=args.data_root)
        p = cfg.profile
        eps_list = args.eps or list(p.eval_eps)
        for e in eps_list:
            try:
                if not 0 < parse_eps(e)[0] <= 1:
                    raise ValueError
            except ValueError:
                raise robustlib.RobustlibError(f"--eps {e!r} is not a radius in (0, 1]; write 0.03 or 8/255") from None
        # every variant is built (and checked) before anything trains
        configs = {}
        for tag, fields in variants.items():
            if not isinstance(fields, dict):
                raise robustlib.RobustlibError(f"variant {tag!r} must map profile fields to values, got {fields!r}")
            c = cfg.variant(str(tag), **{str(k): v for k, v in fields.items()})
            moved = [f for f in DATA_FIELDS if getattr(c.profile, f) != getattr(p, f)]
            if moved:
                raise robustlib.RobustlibError(f"variant {tag!r} changes {', '.join(moved)}: the data or the held-out "
                                               f"split would differ between variants; change it in --profile instead")
            configs[tag] = (c, fields)
        data = load_splits(p, cfg.data_root)
        val = methods.heldout(cfg, data[0])      # refuses a profile that holds out no images
        xv, yv = val.float_x(), val.y
        control_fields = methods.build_run(cfg, "control", data=data, progress=False)["meta"]["settings"]
        rows, measured = [], {}      # run name -> its held-out numbers: a shared control is attacked once
        for tag, (c, fields) in configs.items():
            control_cfg = c if any(getattr(c.profile, f) != getattr(p, f) for f in control_fields) else cfg
            for method, run_cfg in (("control", control_cfg), ("ours", c)):
                res = methods.train_method(run_cfg, method, data=data, progress=False)
                if res["name"] not in measured:
                    numbers = {"val_natural": accuracy(res["model"], xv, yv)}
                    for e in eps_list:
                        r, _ = robust_accuracy(res["model"], xv, yv, eps=e, protocol="paper")
                        numbers[f"val_pgd@{r['eps']}"] = r["robust_acc"]
                    measured[res["name"]] = numbers
                row = {"variant": tag, "method": method, "run": res["name"],
                       "fields": ", ".join(f"{k}={v}" for k, v in fields.items()) or "(profile)",
                       **measured[res["name"]]}
                rows.append(row)
                print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
        table = pd.DataFrame(rows)
        out = io.write_csv(cfg.path("tables", "select_finetune.csv"), table)
        print(f"{len(yv)} held-out images; PGD-20, step eps/20, no random start; written to {out}")
        print(table.round(4).to_string(index=False))
        return 0
    except robustlib.RobustlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
