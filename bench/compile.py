"""Does ``torch.compile`` pay on a GPU? One model's training pass and input-gradient pass (an attack step),
eager against compiled, both in bf16 autocast and channels_last, at the batch sizes given; the compile time
is printed apart. A probe for issue 14 ("optional torch.compile"), not a feature: ``fit`` does not compile.

    python3 bench/compile.py --device cuda --batch 128 512

Each contender is warmed up (the compiled one compiles then), then timed in interleaved rounds (bench/_timing).
The compiled model's logits are compared with the eager model's on the same batch (relative error; bf16
arithmetic lands between 1e-3 and 1e-2).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

START = time.strftime("%Y-%m-%dT%H:%M:%S")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import interleaved_medians, save_entry          # noqa: E402
from robustlib.config import resolve_device                    # noqa: E402
from robustlib.models import build_model                       # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=5, help="input-gradient passes back to back (an attack's T)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", default="default", help="torch.compile mode (default, reduce-overhead, max-autotune)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/bench/compile.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    net = build_model(args.model, width=args.width).to(device).to(memory_format=torch.channels_last)
    compiled = torch.compile(net, mode=args.mode)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    print(f"{args.model} width {args.width}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}, "
          f"bf16 autocast + channels_last, compile mode {args.mode!r}, median of {args.rounds} interleaved rounds",
          flush=True)
    for batch in args.batch:
        x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)

        def train(m):
            def f():
                m.train()
                with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                    loss = F.cross_entropy(m(x), y)
                loss.backward()
                net.zero_grad(set_to_none=True)
            return f

        def grad(m):
            def f():           # an attack's passes: gradients to the input only, none to the weights
                m.eval()
                net.requires_grad_(False)
                for _ in range(args.steps):
                    xi = x.detach().requires_grad_(True)
                    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                        loss = F.cross_entropy(m(xi), y, reduction="sum")
                    torch.autograd.grad(loss, xi)
                net.requires_grad_(True)
            return f

        first = {}
        for name, fn in (("train", train(compiled)), ("grad", grad(compiled))):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first[name] = time.perf_counter() - t0
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            net.eval()
            a, b = net(x).float(), compiled(x).float()
        rel = float((a - b).norm() / a.norm())
        t = interleaved_medians({"train eager": train(net), "train compiled": train(compiled),
                                 "grad eager": grad(net), "grad compiled": grad(compiled)}, args.rounds, device)
        row = {"batch": batch, "compile_first_call_s": first, "logits_rel_err": rel,
               **{k.replace(" ", "_") + "_ms": v * 1e3 for k, v in t.items()},
               "train_speedup": t["train eager"] / t["train compiled"],
               "grad_speedup": t["grad eager"] / t["grad compiled"]}
        rows.append(row)
        print(f"batch {batch}: first calls (compiling) train {first['train']:.0f} s, grad {first['grad']:.0f} s; "
              f"logits rel. error {rel:.1e}\n"
              f"  training pass   eager {t['train eager'] * 1e3:7.2f} ms  compiled {t['train compiled'] * 1e3:7.2f} ms"
              f"  speed-up {row['train_speedup']:.2f}x\n"
              f"  {args.steps} input grads  eager {t['grad eager'] * 1e3:7.2f} ms  compiled "
              f"{t['grad compiled'] * 1e3:7.2f} ms  speed-up {row['grad_speedup']:.2f}x", flush=True)
        save(args, device, rows)      # after every batch size: a call stopped later keeps what it measured


def save(args, device, rows) -> None:
    save_entry(args.out, {"model": args.model, "width": args.width, "mode": args.mode, "device": str(device),
                          "torch": torch.__version__, "started": START, "rows": rows})


if __name__ == "__main__":
    main()
