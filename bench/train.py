"""Training speed against its floor, measured in one run: each method's epoch in images per second, with and
without the fast paths, and as a ratio to its floor. Prints a table and appends it to a JSON file.

The floor of a method is the passes its algorithm must make per batch, each pass timed bare (no loop, no
loader, no bookkeeping) on the same model, batch, device and fast paths:

    grad    an attack step: forward + backward to the input only, eval mode (T per batch; timed as T passes
            back to back, as an attack makes them)
    fwd     a forward pass without gradients (TRADES' clean target)
    train   a forward + backward with weight gradients, train mode, on one batch of B images
    cat     the same on the clean batch and its adversarial copy together (2B images: the paper's replay)
    step    one optimiser update

A method's time per batch is the real ``fit`` (the objective, adversary, replay and fast paths its runs use,
as ``robustlib.estimate`` sets them up) over 2n random batches less its time over n (``--batches``): what a
long epoch pays per batch, without ``fit``'s once-per-call costs (shown apart, "per call"). ratio = time
per batch / floor: 1.00 means no overhead. Targets (issue 14): every method within 1.15x of its floor, the DRA fine-tune
within 1.10x. The ``made`` column counts the forward passes the code really makes per batch (a hook), so a
wasted pass shows even where a timing would hide it.

    .venv/bin/python bench/train.py --profile quick
    python3 bench/train.py --profile paper-cifar10 --device cuda --fast both     # fp32 vs the fast paths

Each contender is warmed up once, then all are timed in turn, round after round (interleaved, so a load
that comes and goes hits them alike); the median of the rounds is reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from the tree, installed or not

from _timing import interleaved_medians                                              # noqa: E402
from robustlib.config import resolve_device                                            # noqa: E402
from robustlib.estimate import _fit_kwargs, _random_images                             # noqa: E402
from robustlib.data import TensorLoader                                                # noqa: E402
from robustlib.io import atomic_open, read_json                                        # noqa: E402
from robustlib.models import FoldedBatchNorm, eval_mode, model_spec                                  # noqa: E402
from robustlib.config import get_profile                                             # noqa: E402
from robustlib.train import PRECISIONS, build_fast, fit, make_optimizer, resolve_precision   # noqa: E402

# the passes each method's algorithm must make per batch (T: the profile's attack steps)
MUST = {
    "clean": lambda T: {"train": 1, "step": 1},
    "madry+pgd": lambda T: {"grad": T, "train": 1, "step": 1},
    "trades+pgd": lambda T: {"fwd": 1, "grad": T, "train": 2, "step": 1},   # clean and adversarial passes apart
    "mart+pgd": lambda T: {"grad": T, "train": 2, "step": 1},
    "ours+pgd": lambda T: {"grad": T, "cat": 1, "step": 1},
    "ours+dra": lambda T: {"grad": T, "cat": 1, "step": 1},
    # a clean update, then the DRA one; timed at the batch given here (its runs use twice the profile's batch)
    "ours+dra/alternating": lambda T: {"grad": T, "train": 2, "step": 2},
}
TARGET = {"ours+dra": 1.10}
DEFAULT_TARGET = 1.15


def steps_of(p, kind: str) -> int:
    return p.dra_steps if "+dra" in kind else p.at_steps


class PassCounter:
    """Forward passes of a model per kind (``grad``/``fwd`` in eval mode, ``train`` in train mode), in images."""

    def __init__(self, model):
        self.images = {"grad": 0, "fwd": 0, "train": 0}
        self.on = False
        # the last Linear layer, which a FoldedBatchNorm view shares with the model (its passes count too)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:] or [model]
        self.handle = last[0].register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if self.on:
            kind = "train" if module.training else ("grad" if torch.is_grad_enabled() else "fwd")
            self.images[kind] += len(args[0])


def bench(p, device, fast: bool, kinds, *, batch: int, batches: int, rounds: int) -> list[dict]:
    precision = resolve_precision(p.precision, device) if fast else "fp32"
    plan = {"precision": precision, "channels_last": bool(p.channels_last) and fast, "fold_bn": bool(p.fold_bn) and fast}
    dtype = PRECISIONS[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (lambda: torch.autocast(
        device.type, enabled=False))
    torch.backends.cudnn.benchmark = plan["channels_last"] and device.type == "cuda"
    torch.manual_seed(0)

    # the bare passes, on one model in this format
    net = build_fast(model_spec(p), device, plan)
    view = FoldedBatchNorm(net).refresh() if plan["fold_bn"] else net     # what the attacks run on
    opt, _ = make_optimizer(net, lr=1e-3, momentum=p.momentum, weight_decay=p.weight_decay, epochs=1,
                            lr_schedule="constant")
    data = _random_images(p, 2 * batch)
    x2, y2 = data.float_x().to(device), data.y.to(device)
    x, y = x2[:batch], y2[:batch]

    block = max(p.at_steps, p.dra_steps)

    def grad():     # back to back in one eval-mode switch, as an attack makes its T passes
        with eval_mode(view), autocast(), torch.enable_grad():
            for _ in range(block):
                xi = x.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(view(xi), y, reduction="sum"), xi)

    def fwd():
        with eval_mode(net), autocast(), torch.no_grad():
            net(x)

    def train_pass(xb, yb):
        net.train()
        with autocast():
            loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        net.zero_grad(set_to_none=True)

    def step():
        opt.step()

    bare = {"grad": grad, "fwd": fwd, "train": lambda: train_pass(x, y), "cat": lambda: train_pass(x2, y2),
            "step": step}

    # each method's real epoch
    loaders, kwargs, nets, made = {}, {}, {}, {}
    for kind in kinds:
        q = dataclasses.replace(p, batch_size=batch)
        nets[kind] = build_fast(model_spec(q), device, plan)
        kwargs[kind] = dict(_fit_kwargs(q, kind), lr=1e-3, lr_schedule="constant", device=device, progress=False,
                            precision=precision, fold_bn=plan["fold_bn"] and kind != "clean")
        for n in (batches, 2 * batches):
            loaders[kind, n] = TensorLoader(_random_images(q, batch * n), batch_size=batch, shuffle=True,
                                            augment=q.augment, device=device, in_memory=q.in_memory)
        counter = PassCounter(nets[kind])
        one = TensorLoader(_random_images(q, batch), batch_size=batch, augment=q.augment, device=device,
                           in_memory=q.in_memory)
        counter.on = True
        fit(nets[kind], one, epochs=1, **kwargs[kind])
        counter.handle.remove()            # not in the timed epochs
        made[kind] = {k: v / batch for k, v in counter.images.items() if v}
    # epochs of n and of 2n batches: their difference is n batches' time without fit's once-per-call costs
    # (the optimiser, the first batch's checks), which a real epoch of hundreds of batches hardly feels
    # the bare passes in the same rounds as the epochs, so that a load that comes and goes hits both alike
    epochs = {key: (lambda key=key: fit(nets[key[0]], loaders[key], epochs=1, **kwargs[key[0]])) for key in loaders}
    timed = interleaved_medians({**bare, **epochs}, rounds, device)
    unit, epoch = {k: timed[k] for k in bare}, {k: timed[k] for k in epochs}
    unit["grad"] /= block
    rows = []
    for kind in kinds:
        must = MUST[kind](steps_of(p, kind))
        floor = sum(n * unit[k] for k, n in must.items())                  # seconds per batch
        per_batch = (epoch[kind, 2 * batches] - epoch[kind, batches]) / batches
        rows.append({"method": kind, "fast": fast, "precision": precision, "channels_last": plan["channels_last"],
                     "fold_bn": plan["fold_bn"] and kind != "clean", "call_folds": plan["fold_bn"],
                     "images_per_s": batch / per_batch, "batch_s": per_batch, "floor_s": floor,
                     "per_call_s": epoch[kind, batches] - batches * per_batch,
                     "ratio": per_batch / floor, "target": TARGET.get(kind, DEFAULT_TARGET),
                     "must": must, "made": made[kind]})
    return [{"units_s": unit, "fast": fast, "precision": precision, "fold_bn": plan["fold_bn"]}] + rows


def _passes(d: dict) -> str:
    return " ".join(f"{k}{'x' + format(v, 'g') if v != 1 else ''}" for k, v in d.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", help="another model than the profile's (e.g. resnet18)")
    ap.add_argument("--width", type=int, help="another width than the profile's")
    ap.add_argument("--batch", type=int, help="batch size (default: the profile's)")
    ap.add_argument("--batches", type=int, default=4, help="batches per timed epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fast", choices=["off", "on", "both", "all"],
                    help="the fast paths (default: both on CUDA, off elsewhere); all: off, on without folding the "
                         "BatchNorms for the attacks, and on (with folding where the profile folds)")
    ap.add_argument("--methods", nargs="+", default=list(MUST), choices=list(MUST))
    ap.add_argument("--precision", choices=list(PRECISIONS) + ["auto"],
                    help="the fast paths' precision instead of the profile's (with channels_last)")
    ap.add_argument("--out", default="runs/bench/train.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    p = get_profile(args.profile)
    p = dataclasses.replace(p, **{k: v for k, v in (("model", args.model), ("width", args.width)) if v})
    if args.precision:
        p = dataclasses.replace(p, precision=args.precision, channels_last=True)
    if p.dra_budget == "paper":     # the reading changes a budget, not a step's cost
        p = dataclasses.replace(p, dra_budget="per_image")
    batch = args.batch or p.batch_size
    fast = args.fast or ("both" if device.type == "cuda" else "off")
    results = []
    nofold = dataclasses.replace(p, fold_bn=False)
    for q, f in {"off": [(p, False)], "on": [(p, True)], "both": [(p, False), (p, True)],
                 "all": [(p, False), (nofold, True), (p, True)]}[fast]:
        if q is nofold and not p.fold_bn:
            continue                   # the profile does not fold: "on" is the same
        results += bench(q, device, f, args.methods, batch=batch, batches=args.batches, rounds=args.rounds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{p.name}: {p.model} width {p.width}, batch {batch}, {args.batches} batches per epoch, {device} ({name}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    for r in results:
        if "units_s" in r:
            print(f"\n{r['precision']}{' + channels_last' if r['fast'] and p.channels_last else ''}"
                  f"{' + folded BN (attacks)' if r['fold_bn'] else ''}: bare passes per "
                  "batch " + ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in r["units_s"].items()))
            print(f"  {'method':<22} {'images/s':>9} {'ratio':>6} {'target':>6} {'per call':>9}  "
                  f"{'must (per batch)':<24} made")
            continue
        ok = "" if r["ratio"] <= r["target"] else "  over"
        print(f"  {r['method']:<22} {r['images_per_s']:9.0f} {r['ratio']:6.2f} {r['target']:6.2f} "
              f"{1000 * r['per_call_s']:6.0f} ms  {_passes(r['must']):<24} {_passes(r['made'])}{ok}")
    off = {r["method"]: r for r in results if "method" in r and not r["fast"]}
    for folding in (False, True):
        on = {r["method"]: r for r in results if "method" in r and r["fast"] and r["call_folds"] == folding}
        if off and on and (not folding or any(r["fold_bn"] for r in on.values())):
            print(f"\nfast paths{' with folded BN' if folding else ''}: epoch speed-up over fp32 " + ", ".join(
                f"{m} {off[m]['batch_s'] / on[m]['batch_s']:.2f}x" for m in args.methods if m in on))
    out = Path(args.out)
    history = read_json(out, default=[])
    history.append({"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": str(device), "device_name": name, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "profile": p.name, "model": f"{p.model} width {p.width}",
                    "batch": batch, "batches": args.batches, "rounds": args.rounds, "results": results})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        json.dump(history, f, indent=2)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
