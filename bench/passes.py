"""Why does the DRA fine-tune gain less from bf16 + channels_last than clean training (1.61x against 2.12x on an
H100 at batch 512)? Its floor is mostly input-gradient passes (an attack's T steps, model in eval mode), so this
probe times one model's passes apart, in fp32 and in bf16 + channels_last:

    train        a training pass (train mode, gradients to the weights), as clean training makes;
    grad         an input-gradient pass (eval mode) with the weights still requiring grad, as bench/train.py times it;
    grad frozen  the same with the weights frozen (requires_grad False; robustlib's attacks leave them as they are);
    grad fused   the same on a copy whose eval-mode BatchNorms are folded into the convolutions before them
                 (robustlib.models.FoldedBatchNorm, as the fine-tune's attacks run with fold_bn): the same function up to rounding, fewer kernels;
    fwd          an eval-mode forward without gradients (the clean evaluation).

On CUDA it also prints the profiler's top kernels of one train and one grad pass in bf16. A probe for issue 14,
not a feature:

    python3 bench/passes.py --device cuda --batch 512 128
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
from robustlib.models import FoldedBatchNorm, build_model      # noqa: E402


def contenders(net, fused, x, y, dtype, device):
    cast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (
        lambda: torch.autocast(device.type, enabled=False))

    def train():
        net.train()
        with cast():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        net.zero_grad(set_to_none=True)

    def grad(m, frozen):
        def f():
            m.eval()
            if frozen:
                m.requires_grad_(False)
            xi = x.detach().requires_grad_(True)
            with cast():
                loss = F.cross_entropy(m(xi), y, reduction="sum")
            torch.autograd.grad(loss, xi)
            m.requires_grad_(True)
        return f

    def fwd():
        net.eval()
        with cast(), torch.inference_mode():
            net(x)

    fns = {"train": train, "grad": grad(net, False), "grad frozen": grad(net, True)}
    if fused is not None:
        fns["grad fused"] = grad(fused, False)      # its folded weights are frozen already
    fns["fwd"] = fwd
    return fns


def top_kernels(fn, device, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    avg = prof.key_averages()
    for key in ("self_cuda_time_total", "self_device_time_total", "cuda_time_total"):
        try:
            return avg.table(sort_by=key, row_limit=rows, max_name_column_width=60)
        except Exception:           # the sort key's name changed across torch versions
            continue
    return avg.table(row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[512])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--kernels", type=int, default=12, help="profiler rows per pass on CUDA (0: none)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/bench/passes.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} width {args.width}, {device} ({name}), torch {torch.__version__}, median ms of "
          f"{args.rounds} interleaved rounds", flush=True)
    rows = []
    for fast in (False, True):
        dtype = torch.bfloat16 if fast else None
        torch.backends.cudnn.benchmark = fast and device.type == "cuda"
        torch.manual_seed(0)
        net = build_model(args.model, width=args.width, image_size=args.image_size).to(device)
        if fast:
            net = net.to(memory_format=torch.channels_last)
        folder = FoldedBatchNorm(net)          # robustlib's view with the BatchNorms folded (None: nothing to fold)
        fused = folder.view if folder.pairs else None
        if fused is not None and not fast:     # the same function: input gradients agree up to rounding
            torch.backends.cudnn.allow_tf32 = False        # (TF32 convolutions on CUDA would round at 1e-3)
            with torch.no_grad():                          # BatchNorms far from identity, so the check means something
                for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                    bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
            folder.refresh()
            xc = torch.rand(8, 3, args.image_size, args.image_size, device=device)
            yc = torch.randint(0, 10, (8,), device=device)
            g = [torch.autograd.grad(F.cross_entropy(m.eval()(xi), yc), xi)[0]
                 for m in (net, fused) for xi in [xc.clone().requires_grad_(True)]]
            print(f"  fused copy: input-gradient rel. error {float((g[0] - g[1]).norm() / g[0].norm()):.1e} (fp32)",
                  flush=True)
            torch.backends.cudnn.allow_tf32 = True
        label = "bf16 + channels_last" if fast else "fp32"
        for batch in args.batch:
            x = torch.rand(batch, 3, args.image_size, args.image_size, device=device)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,), device=device)
            fns = contenders(net, fused, x, y, dtype, device)
            t = interleaved_medians(fns, args.rounds, device)
            row = {"batch": batch, "precision": "bf16" if fast else "fp32", "channels_last": fast,
                   **{k.replace(" ", "_") + "_ms": v * 1e3 for k, v in t.items()}}
            rows.append(row)
            print(f"{label:>22} batch {batch:4d}: " + "  ".join(f"{k} {v * 1e3:7.2f}" for k, v in t.items())
                  + f"   grad/train {t['grad'] / t['train']:.2f}", flush=True)
            save(args, device, name, rows)
            if fast and device.type == "cuda" and args.kernels and batch == args.batch[0]:
                for k in ("train", "grad frozen"):
                    print(f"--- top kernels of one '{k}' pass, {label}, batch {batch}\n"
                          + top_kernels(fns[k], device, args.kernels), flush=True)
    by = {(r["precision"], r["batch"]): r for r in rows}
    for batch in args.batch:
        a, b = by["fp32", batch], by["bf16", batch]
        print(f"batch {batch}: bf16 + channels_last speed-up  " + "  ".join(
            f"{k[:-3].replace('_', ' ')} {a[k] / b[k]:.2f}x" for k in a if k.endswith("_ms") and k in b), flush=True)


def save(args, device, name, rows) -> None:
    save_entry(args.out, {"model": args.model, "width": args.width, "device": str(device), "device_name": name,
                          "torch": torch.__version__, "started": START, "rows": rows})


if __name__ == "__main__":
    main()
