"""Attack speed, measured in one run: prints two ratios and appends them to a JSON file.

1. DRA with T steps against T bare forward+backward passes of the same batch (the floor any T-step
   gradient attack pays). Target: at most 1.1x.
2. robustlib's PGD against torchattacks' PGD with the same settings (no random start). Target: <= 1x.

    .venv/bin/python bench/attacks.py [--model resnet18 --width 16 --batch 128 --steps 10 --device auto]

Each contender is warmed up once, then all are timed in turn, round after round (interleaved, so a
load that comes and goes on the machine hits them alike); the median of the rounds is reported.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
from _timing import interleaved_medians          # bench/, on the path when run as a script
from robustlib.attacks import dra, input_gradient, pgd
from robustlib.io import atomic_open, read_json
from robustlib.models import build_model
from robustlib.config import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/bench/attacks.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=3, image_size=32, width=args.width).to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    T = args.steps

    def bare_passes():
        for _ in range(T):
            input_gradient(model, x, y)

    fns = {"bare": bare_passes,
           "dra": lambda: dra(model, x, y, eps=1.0, p=1 / 3, steps=T),
           "pgd": lambda: pgd(model, x, y, eps=8 / 255, steps=T, step_size=2 / 255)}
    try:
        import torchattacks

        atk = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=T, random_start=False)
        fns["torchattacks_pgd"] = lambda: atk(x, y)
    except ImportError:
        pass
    t = interleaved_medians(fns, args.rounds, device)
    result = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.machine(), "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "model": f"{args.model} width {args.width}",
              "batch": args.batch, "steps": T, "rounds": args.rounds, "seconds": t,
              "dra_over_bare": t["dra"] / t["bare"]}
    print(f"{args.model} (width {args.width}), batch {args.batch}, T = {T}, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"  T bare forward+backward passes   {1000 * t['bare']:9.1f} ms")
    print(f"  DRA (p = 1/3)                    {1000 * t['dra']:9.1f} ms   ratio {t['dra'] / t['bare']:.3f}  (target <= 1.1)")
    print(f"  PGD (robustlib)                  {1000 * t['pgd']:9.1f} ms")
    if "torchattacks_pgd" in t:
        result["pgd_over_torchattacks"] = t["pgd"] / t["torchattacks_pgd"]
        print(f"  PGD (torchattacks 3.5.1)         {1000 * t['torchattacks_pgd']:9.1f} ms   "
              f"ratio {t['pgd'] / t['torchattacks_pgd']:.3f}  (target <= 1.0)")
    else:
        print("  torchattacks is not installed (make test installs it): PGD ratio not measured")
    out = Path(args.out)
    history = read_json(out, default=[])
    history.append(result)
    with atomic_open(out) as f:
        json.dump(history, f, indent=2)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
