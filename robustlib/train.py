"""One training loop, checkpoints, and phase 1 of the paper: vanilla pretraining of theta_std.

:func:`fit` takes any ``nn.Module`` with [0, 1] inputs and any iterable of ``(x, y)`` batches; the device,
the batch order (a loader with its own sampler) and the precision come from the caller. Every epoch ends
with an atomic checkpoint, so the same call started again resumes from the last complete epoch.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import TensorLoader, load_splits, split_validation
from .evaluate import accuracy
from .io import RobustlibError, load_torch, save_torch, write_csv
from .losses import Clean, Objective
from .models import build_model, eval_mode, model_spec

CHECKPOINT_FORMAT = 1
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float, epochs: int,
                   lr_schedule: str, milestones=(0.5, 0.75)):
    """SGD with momentum and weight decay (Section V.A), and a per-epoch learning-rate schedule."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    elif lr_schedule == "multistep":
        steps = sorted({max(1, round(m * epochs)) for m in milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
    elif lr_schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    else:
        raise RobustlibError(f"unknown lr_schedule {lr_schedule!r}; use cosine, multistep or constant")
    return opt, sched


def checkpoint_payload(model: nn.Module, meta: dict, **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, **meta, **extra,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def fit(
    model: nn.Module,
    train_loader,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 2e-4,
    lr_schedule: str = "cosine",
    milestones=(0.5, 0.75),
    objective: Objective | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    run_dir: str | Path | None = None,
    name: str = "model",
    meta: dict | None = None,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    best_metric: str | None = None,
) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch metrics.

    Parameters
    ----------
    model : any module taking images in [0, 1].
    train_loader : any iterable of ``(x, y)`` batches (a :class:`~robustlib.data.TensorLoader` or a
        ``DataLoader`` with the sampler of your choice); ``set_epoch(e)`` is called if it has one.
    objective : a :class:`~robustlib.losses.Objective` (default: clean cross-entropy); it returns the
        updates for a batch, each giving ``(loss, logits, parts)``; ``parts`` (loss terms) are logged.
    evaluate : called after each epoch with the model (in eval mode); its dict is logged.
    best_metric : a key of ``evaluate``'s dict; the epoch maximising it is also saved as
        ``checkpoints/<name>.best.pt`` (the last and the best can differ by several points).
    device, precision : where and how to compute (``"fp32"`` or ``"bf16"`` autocast).
    run_dir, name : with a run directory, writes ``checkpoints/<name>.last.pt`` after every epoch
        (model, optimiser, schedule, metrics), ``metrics/<name>.csv`` and, at the end,
        ``checkpoints/<name>.pt``. A second call with the same arguments resumes from ``<name>.last.pt``.
    meta : what the checkpoint records about the model and data (see :func:`load_checkpoint`).

    Returns
    -------
    DataFrame, one row per epoch: epoch, lr, train_loss, train_acc, the objective's parts, the evaluation.
    """
    if precision not in PRECISIONS:
        raise RobustlibError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    objective = objective or Clean()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    opt, sched = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay, epochs=epochs,
                                lr_schedule=lr_schedule, milestones=milestones)
    meta = dict(meta or {})
    history: list[dict] = []
    start = 0
    last_path = Path(run_dir) / "checkpoints" / f"{name}.last.pt" if run_dir else None
    if last_path is not None and resume and last_path.exists():
        state = load_torch(last_path)
        _check_meta(state, meta, last_path)
        check_settings(state, meta.get("profile_fields") or {}, meta.get("check_fields", ()), last_path)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        objective.load_state_dict(state.get("objective", {}))
        history, start = list(state["history"]), int(state["epoch"])
        if int(state.get("epochs_total", epochs)) != epochs:
            raise RobustlibError(f"{last_path} belongs to a {state['epochs_total']}-epoch run, not {epochs}; pass "
                                 f"retrain=True (or --retrain) to start again, or use another run_dir")
        print(f"resuming {name} from {last_path} after epoch {start}/{epochs}")
    autocast = (torch.autocast(device.type, dtype=PRECISIONS[precision]) if PRECISIONS[precision]
                else contextlib.nullcontext())
    bar = tqdm(range(start, epochs), desc=name, disable=not progress, mininterval=1.0, dynamic_ncols=True)
    for epoch in bar:
        torch.manual_seed(seed * 1000 + epoch)        # dropout etc.: the same on a resumed run
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for update in objective(model, x, y, epoch):
                with autocast:
                    loss, logits, parts = update()
                if not torch.isfinite(loss):
                    raise RobustlibError(f"{name}: the loss became {loss.item()} in epoch {epoch + 1}; "
                                         f"lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                b = len(y)
                logged = {"train_loss": loss.detach(), "train_acc": (logits.argmax(1) == y).float().mean(),
                          **{k: torch.as_tensor(v).detach().float() for k, v in parts.items()}}
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0) + v * b
                    counts[k] = counts.get(k, 0) + b
        if not counts:
            raise RobustlibError(f"{name}: the training loader yielded no batches; check the dataset and batch size")
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update({k: (v / counts[k]).item() for k, v in sums.items()})
        sched.step()
        row.update(objective.end_epoch(model, row))
        if evaluate is not None:
            with eval_mode(model):
                row.update(evaluate(model))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "train_acc", "test_acc")})
        if run_dir:
            if best_metric is not None and row.get(best_metric, -math.inf) >= max(
                    (h.get(best_metric, -math.inf) for h in history), default=-math.inf):
                save_torch(checkpoint_payload(model, meta, epoch=epoch + 1, metrics=row),
                           Path(run_dir) / "checkpoints" / f"{name}.best.pt")
            save_torch(checkpoint_payload(model, meta, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                          objective=objective.state_dict(), epoch=epoch + 1, epochs_total=epochs,
                                          history=history), last_path)
            write_csv(Path(run_dir) / "metrics" / f"{name}.csv", pd.DataFrame(history))
    if run_dir:
        save_torch(checkpoint_payload(model, meta, epoch=epochs, metrics=history[-1] if history else {}),
                   Path(run_dir) / "checkpoints" / f"{name}.pt")
    return pd.DataFrame(history)


PRETRAIN_FIELDS = ("dataset", "model", "width", "augment", "train_limit", "epochs", "batch_size", "lr", "momentum",
                   "weight_decay", "lr_schedule", "milestones", "val_size", "seed")   # seed: the held-out split
# a fine-tune's own list depends on its method and adversary: methods.run_fields


def check_settings(state: dict, now: dict, fields, path) -> None:
    """Refuse a checkpoint trained with other settings than ``now`` (profile fields) asks for; names the first."""
    made = state.get("profile_fields") or {}
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
    for f in fields:
        if f in made and f in now and norm(made[f]) != norm(now[f]):
            raise RobustlibError(f"{path} was trained with {f}={made[f]!r} but the profile now says {now[f]!r}; "
                                 f"pass retrain=True (or --retrain) to train it again, or use another run_dir")


def _check_meta(state: dict, expected: dict, path: Path) -> None:
    """A checkpoint must have been made for the same model and data as the run that loads it."""
    if state.get("format") != CHECKPOINT_FORMAT or "state_dict" not in state:
        raise RobustlibError(f"{path} is not a robustlib checkpoint (format {state.get('format')!r}); "
                             f"delete it or pass retrain=True")
    for key in ("model", "dataset", "kind", "theta_std"):
        if key in expected and state.get(key) != expected[key]:
            raise RobustlibError(
                f"{path} was made with {key}={str(state.get(key))[:80]!r} but this run needs {str(expected[key])[:80]!r}; "
                f"use another run_dir, or delete the file (retrain=True) to train it again"
            )


def load_checkpoint(path: str | Path, *, expect: dict | None = None, device: str | torch.device = "cpu",
                    profile=None, fields=PRETRAIN_FIELDS):
    """Rebuild a model from a checkpoint (loaded with ``weights_only=True``).

    Parameters
    ----------
    path : a ``.pt`` file written by :func:`fit`.
    expect : keys the checkpoint must match, e.g. ``{"model": model_spec(profile), "dataset": "digits"}``;
        a mismatch raises a one-line :class:`RobustlibError` instead of loading the wrong weights.
    profile, fields : with a profile, the checkpoint's recorded training settings must equal its ``fields``.

    Returns
    -------
    (model in eval mode on ``device``, the checkpoint's metadata without the weights)
    """
    state = load_torch(path)
    _check_meta(state, expect or {}, Path(path))
    spec = dict(state["model"])
    try:
        model = build_model(spec.pop("name"), **spec)
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise RobustlibError(f"{path} does not fit its recorded model ({str(e).splitlines()[0][:120]}); "
                             f"delete it or pass retrain=True") from None
    meta = {k: v for k, v in state.items() if k not in ("state_dict", "optimizer", "scheduler")}
    if profile is not None:
        check_settings(state, profile.as_dict(), fields, path)
    return model.to(device).eval(), meta


def run_meta(cfg, kind: str) -> dict:
    """What a checkpoint of this run records: enough to rebuild and check it without guessing."""
    return {"kind": kind, "model": model_spec(cfg.profile), "dataset": cfg.profile.dataset,
            "profile": cfg.profile.name, "profile_fields": cfg.profile.as_dict(),
            "torch": str(torch.__version__)}


def make_train_loader(cfg, train, *, seed: int | None = None) -> TensorLoader:
    p = cfg.profile
    return TensorLoader(train, batch_size=p.batch_size, shuffle=True, augment=p.augment,
                        seed=p.seed if seed is None else seed, device=cfg.device, in_memory=p.in_memory)


def vanilla_name(cfg, seed: int | None = None) -> str:
    """Checkpoint name of theta_std: ``vanilla`` for the profile's seed, ``vanilla-s<seed>`` for others."""
    tag = getattr(cfg, "pretrain_tag", "")
    base = f"vanilla-{tag}" if tag else "vanilla"
    return base if seed in (None, cfg.profile.seed) else f"{base}-s{seed}"


def pretrain(cfg, *, retrain: bool = False, progress: bool = True, data=None, seed: int | None = None):
    """Phase 1: train theta_std on clean data, or load it if the run directory already holds it.

    The profile's ``val_size`` images are held out of the training split (they pick the best checkpoint
    of the fine-tune later), so every phase and every method trains on the same images.

    Returns
    -------
    (model in eval mode, per-epoch metrics DataFrame)
    """
    p = cfg.profile
    seed = p.seed if seed is None else seed
    name = vanilla_name(cfg, seed)
    ckpt = cfg.path("checkpoints", f"{name}.pt")
    meta = {**run_meta(cfg, "vanilla"), "check_fields": list(PRETRAIN_FIELDS)}
    expect = {k: meta[k] for k in ("kind", "model", "dataset")}
    if ckpt.exists() and not retrain:
        model, _ = load_checkpoint(ckpt, expect=expect, device=cfg.device, profile=p)
        metrics = cfg.path("metrics", f"{name}.csv")
        if progress:
            print(f"loaded theta_std from {ckpt} (pass retrain=True to train it again)")
        return model, (pd.read_csv(metrics) if metrics.exists() else pd.DataFrame())
    if retrain:
        for stale in (ckpt, cfg.path("checkpoints", f"{name}.last.pt")):
            stale.unlink(missing_ok=True)
    train, test = data or load_splits(p, cfg.data_root)
    train, _ = split_validation(train, p.val_size, p.seed)
    torch.manual_seed(seed)
    model = build_model(**model_spec(p)).to(cfg.device)
    x_test, y_test = test.float_x(), test.y

    def evaluate(m):
        return {"test_acc": accuracy(m, x_test, y_test)}

    history = fit(model, make_train_loader(cfg, train, seed=seed), epochs=p.epochs, lr=p.lr, momentum=p.momentum,
                  weight_decay=p.weight_decay, lr_schedule=p.lr_schedule, milestones=p.milestones,
                  evaluate=evaluate, device=cfg.device, run_dir=cfg.run_dir, name=name, meta=meta,
                  seed=seed, progress=progress)
    return model.eval(), history
