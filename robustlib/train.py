"""One training loop, checkpoints, and phase 1 of the paper: vanilla pretraining of theta_std.

:func:`fit` takes any ``nn.Module`` with [0, 1] inputs and any iterable of ``(x, y)`` batches; the device,
the batch order (a loader with its own sampler) and the precision come from the caller. It owns the loop:
the objective's updates, the replay of clean and adversarial updates, the clean-only tail of a schedule,
logging and checkpoints. Every epoch ends with an atomic checkpoint, so the same call started again
resumes from the last complete epoch.

A checkpoint records the settings its run consumed (``settings``: the profile fields read while building
it, and their hash); loading it for a run whose settings differ is refused with the name of the field.
Every checkpoint :func:`fit` writes also records the call that made it (``fit_args``: the optimiser, the
schedule, the objective, the adversary, the model's class, ...); a call that would resume a run made by
another call is refused, naming what differs, before the caller's model is touched.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn
from tqdm.std import tqdm

from . import distributed, launch
from .data import TensorLoader, load_splits, split_validation
from .evaluate import accuracy
from .io import RobustlibError, load_torch, save_torch, write_csv
from .losses import OBJECTIVES, Adversary, EpsSchedule, clean, replay_weights
from .models import FoldedBatchNorm, build_model, eval_mode, first_nonfinite, model_spec
from .profiles import Recorder

CHECKPOINT_FORMAT = 1
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IDENTITY = ("model", "dataset", "kind", "theta_std", "beta", "recipe")   # what a checkpoint must be made for
# the fine-tune recipe's version, where it changed without a profile field to record it (2: the constrained
# step normalised by 1 + lambda on the held-out split, best epoch by robust_fraction, the alternating replay
# at twice the batch): a checkpoint of an older recipe is refused, not silently reused
RECIPE = 2
OPTIONAL = ("beta",)                      # compared where recorded (older checkpoints carry it in their name only)
RETRAIN = "pass retrain=True (or --retrain) to train it again, or use another run_dir"
RESTART = "pass resume=False to train from scratch (it overwrites that run), or another name/run_dir"   # fit's own
LR_SCHEDULES = ("cosine", "multistep", "constant")
# what a run depends on, in the order a refusal names them (fit_args also holds "model", checked on its own)
FIT_ARGS = ("epochs", "lr", "momentum", "weight_decay", "lr_schedule", "milestones", "objective", "adversary",
            "replay", "clean_weight", "precision", "seed")


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float, epochs: int,
                   lr_schedule: str, milestones=(0.5, 0.75)):
    """SGD with momentum and weight decay (Section V.A), and a per-epoch learning-rate schedule."""
    params = list(model.parameters())
    on_cuda = bool(params) and all(p.is_cuda for p in params)   # one fused kernel per step on a GPU
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **({"fused": True} if on_cuda else {}))
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


# --- checkpoints and their validity ----------------------------------------------------------------------

def _plain(value):
    """Settings as JSON values (tuples become lists), so a checkpoint's copy compares equal to today's."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# profile fields added after checkpoints were written, at the value that does what the code before them did:
# a checkpoint whose run did not read one is accepted at that value (the fast paths, off)
ADDED_SINCE = {"precision": "fp32", "channels_last": False, "fold_bn": False}


def settings_hash(settings: dict) -> str:
    """One hash of exactly the settings a run consumed."""
    return hashlib.sha1(json.dumps(_plain(settings), sort_keys=True).encode()).hexdigest()[:16]


def check_checkpoint(state: dict, path, *, expect: dict | None = None, settings: dict | None = None,
                     fix: str | None = None) -> None:
    """Refuse a checkpoint made for another run: another format, model, data, θ_std or settings.

    ``expect`` holds identity keys (``kind``, ``model``, ``dataset``, ``theta_std``); ``settings`` the
    profile fields the run consumes. Their hash equal to the checkpoint's accepts it at once; otherwise
    each field this run reads is compared with the fields the checkpoint's run read, and the first that
    differs, or that its run did not read, is named (a field only the old run read is no reason to
    refuse, nor is a field of ``ADDED_SINCE`` at the value that does what the code before it did). A checkpoint written before settings were recorded holds the whole profile
    (``profile_fields``) instead, and is accepted when every field this run reads agrees with it. ``fix``
    replaces the way out the messages name (``retrain=True``) for a caller that has another.
    """
    if state.get("format") != CHECKPOINT_FORMAT or "state_dict" not in state:
        raise RobustlibError(f"{path} is not a robustlib checkpoint (format {state.get('format')!r}); "
                             f"{fix or 'delete it or pass retrain=True'}")
    if "recipe" in (expect or {}) and state.get("recipe") != expect["recipe"]:
        raise RobustlibError(f"{path} was trained by fine-tune recipe {state.get('recipe') or 'before 2'}; this code is "
                             f"recipe {expect['recipe']} (robustlib.train.RECIPE): delete the file, or train it again "
                             f"(retrain=True in the notebook that trains it: 03 for the profile's own runs)")
    for key in IDENTITY:
        if key in (expect or {}) and (key in state or key not in OPTIONAL) and state.get(key) != expect[key]:
            way = fix or "use another run_dir, or delete the file (retrain=True) to train it again"
            raise RobustlibError(f"{path} was made with {key}={str(state.get(key))[:80]!r} but this run needs "
                                 f"{str(expect[key])[:80]!r}; {way}")
    if settings is None or state.get("settings_hash") == settings_hash(settings):
        return
    legacy = "settings" not in state              # written before settings were recorded: the whole profile
    made = _plain(state.get("profile_fields") if legacy else state["settings"]) or {}
    now = _plain(settings)
    for f in now:
        if f not in made and f in ADDED_SINCE and now[f] == ADDED_SINCE[f]:
            continue     # a field added later, at the value that does what the code before it did
        if f not in made:
            why = "records no" if legacy else "was trained by a run that did not read"
            raise RobustlibError(f"{path} {why} {f}, which this run reads ({f}={now[f]!r}); {fix or RETRAIN}")
        if made[f] != now[f]:
            raise RobustlibError(f"{path} was trained with {f}={made[f]!r} but the profile now says {now[f]!r}; "
                                 f"{fix or RETRAIN}")


def load_checkpoint(path: str | Path, *, expect: dict | None = None, settings: dict | None = None,
                    device: str | torch.device = "cpu"):
    """Rebuild a model from a checkpoint (loaded with ``weights_only=True``).

    Parameters
    ----------
    path : a ``.pt`` file written by :func:`fit`.
    expect : keys the checkpoint must match, e.g. ``{"model": model_spec(profile), "dataset": "digits"}``;
        a mismatch raises a one-line :class:`RobustlibError` instead of loading the wrong weights.
    settings : the profile fields the run consumes; a checkpoint trained with other values is refused.

    A checkpoint whose weights hold NaN/inf is refused too (its accuracy would be class 0's share).

    Returns
    -------
    (model in eval mode on ``device``, the checkpoint's metadata without the weights)
    """
    state = load_torch(path)
    check_checkpoint(state, Path(path), expect=expect, settings=settings)
    bad = first_nonfinite(state["state_dict"].items())
    if bad:
        raise RobustlibError(f"{path} holds non-finite weights (NaN/inf) in {bad}; delete it (retrain=True) to "
                             f"train it again")
    spec = dict(state["model"])
    try:
        model = build_model(spec.pop("name"), **spec)
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise RobustlibError(f"{path} does not fit its recorded model ({str(e).splitlines()[0][:120]}); "
                             f"delete it or pass retrain=True") from None
    meta = {k: v for k, v in state.items() if k not in ("state_dict", "optimizer", "scheduler")}
    return model.to(device).eval(), meta


def checkpoint_payload(model: nn.Module, meta: dict, **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, **meta, **extra,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


# --- the loop ----------------------------------------------------------------------------------------------

def batch_updates(objective: Callable, attack: Callable | None, model: nn.Module, x, y, *, replay: str | None = None,
                  clean_weight: float = 1.0, clean_tail: bool = False):
    """The updates one batch makes, in order, each ``(loss, logits, parts)``.

    A generator: each update's loss is computed only after the previous one was applied, so the
    alternating replay's adversarial update sees the weights its clean update made.

    - ``clean_tail`` (the adversary's schedule gives ε = 0 this epoch): clean samples only (Section V.A);
      with ``replay="alternating"``, two clean updates on the two halves of the batch, so that the tail makes
      as many updates as the epochs before it.
    - ``replay="alternating"``: a clean update, then the objective's update, weighted like the concatenated
      batch (``clean_weight`` : 1, mean weight 1).
    - otherwise: the objective's update (the paper's concatenated replay is the ``finetune`` objective).
    """
    if clean_tail and replay == "alternating" and len(y) >= 4:     # (a 1-image half would break BatchNorm)
        half = len(y) // 2
        for xs, ys in ((x[:half], y[:half]), (x[half:], y[half:])):
            loss, logits, parts = clean(model, xs, ys)
            yield loss, logits, {**parts, "targets": ys}           # the labels this update's logits are for
    elif clean_tail:
        yield clean(model, x, y)
    elif replay == "alternating":
        w_clean, w_adv = replay_weights(clean_weight)
        loss, logits, parts = clean(model, x, y)
        yield w_clean * loss, logits, parts
        loss, logits, parts = objective(model, x, y, attack=attack)
        yield w_adv * loss, logits, parts
    else:
        yield objective(model, x, y, attack=attack)


def _needs_attack(objective: Callable) -> bool:
    try:
        param = inspect.signature(objective).parameters.get("attack")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def _check_fit_args(objective, adversary, replay, clean_weight, precision, lr_schedule) -> Callable:
    if precision not in PRECISIONS:
        raise RobustlibError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if lr_schedule not in LR_SCHEDULES:
        raise RobustlibError(f"unknown lr_schedule {lr_schedule!r}; use {', '.join(LR_SCHEDULES)}")
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise RobustlibError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        objective = OBJECTIVES[objective]
    objective = objective or clean
    if isinstance(objective, type):
        raise RobustlibError(f"objective {objective.__name__} carries state: pass an instance, e.g. "
                             f"losses.Constrained.for_theta_std(theta_std, (x, y))")
    if replay == "concat":
        raise ValueError("the concatenated 1:1 replay is the objective's own batch (objective='finetune', or "
                         "partial(losses.finetune, clean_weight=r)): drop replay='concat'")
    if replay not in (None, "alternating"):
        raise ValueError(f"replay must be None or 'alternating', got {replay!r}")
    if replay == "alternating" and getattr(objective, "concat_only", False):
        raise ValueError("the constrained fine-tune weighs both losses in one update; leave replay=None (its "
                         "batch concatenates the clean and adversarial samples)")
    if replay is None and clean_weight != 1.0:
        raise ValueError("clean_weight weighs the alternating replay's clean update; with replay=None pass "
                         "partial(losses.finetune, clean_weight=...) as the objective")
    replay_weights(clean_weight)                  # a weight ratio >= 0, checked before the first epoch
    if adversary is None and _needs_attack(objective):
        raise RobustlibError(f"objective {getattr(objective, '__name__', objective)!r} needs an adversary; pass "
                             f"adversary=losses.Adversary('pgd', eps=..., steps=...)")
    return objective


def _check_name(name) -> None:
    """A run's name names files inside ``run_dir/checkpoints`` and ``run_dir/metrics``, never a path."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+=-]+", name) or ".." in name:
        raise RobustlibError(f"name {name!r} must be letters, digits or _.+=- without '..' (it names files in "
                             f"run_dir/checkpoints, never a path); pass a plain name like 'madry-s0'")


SCALARS = (bool, int, float, str, type(None))


def _scalar(value):
    return value if isinstance(value, SCALARS) else type(value).__qualname__


def objective_id(objective) -> str | dict:
    """What names an objective in a checkpoint: its ``OBJECTIVES`` name (else ``module.qualname``) for a
    function; for a ``partial``, that and its arguments; for an instance, its class and its public scalar
    settings, less the state it checkpoints itself (``Constrained``'s λ) and the values it lists as ``derived``
    (measured at run time, like ``Constrained.std_loss`` from θ_std, which a run's ``meta`` identifies).

    Functions are told apart by name only: two lambdas, or two functions of one name, read alike."""
    if isinstance(objective, functools.partial):
        return {"fn": objective_id(objective.func), **({"args": [_scalar(a) for a in objective.args]}
                                                       if objective.args else {}),
                **{k: _scalar(v) for k, v in sorted(objective.keywords.items())}}
    registered = next((k for k, fn in OBJECTIVES.items() if fn is objective), None)
    if registered:
        return registered
    if inspect.isroutine(objective):
        return f"{objective.__module__}.{objective.__qualname__}"
    skip = {*(objective.state_dict() if hasattr(objective, "state_dict") else {}), *getattr(objective, "derived", ())}
    return {"class": type(objective).__qualname__,
            **{k: v for k, v in sorted(getattr(objective, "__dict__", {}).items())
               if not k.startswith("_") and k not in skip and isinstance(v, SCALARS)}}


def _adversary_id(adversary) -> dict | None:
    if adversary is None:
        return None
    if not isinstance(adversary, Adversary):
        return {"describe": adversary.describe()} if hasattr(adversary, "describe") else {
            "class": type(adversary).__qualname__}
    eps = dataclasses.asdict(adversary.eps) if isinstance(adversary.eps, EpsSchedule) else float(adversary.eps)
    return {"describe": adversary.describe(), "attack": adversary.attack, "eps": eps,
            "settings": {k: _scalar(v) for k, v in sorted(adversary.settings.items())}}


def _architecture(model: nn.Module) -> str:
    return f"{type(model).__qualname__}({', '.join(type(m).__qualname__ for m in model.children())})"


def fit_record(model: nn.Module, objective, adversary, *, epochs, lr, momentum, weight_decay, lr_schedule,
               milestones, replay, clean_weight, precision, seed, batches: int | None = None,
               processes: int = 1, fold_bn: bool = False) -> dict:
    """What a run of :func:`fit` depends on, as JSON values: its arguments (the milestones only where the
    schedule reads them), the model's class, the loader's number of batches (where it has a length) and,
    under torchrun, the number of processes; its checkpoint's state_dict holds the parameters' shapes. The
    data themselves are not fingerprinted: another dataset of as many batches reads alike (a profile's runs
    record the fields that choose their images)."""
    return _plain({"model": _architecture(model), "batches": batches, "epochs": epochs, "lr": lr, "momentum": momentum,
                   "weight_decay": weight_decay, "lr_schedule": lr_schedule,
                   "milestones": list(milestones) if lr_schedule == "multistep" else None,
                   "objective": objective_id(objective), "adversary": _adversary_id(adversary), "replay": replay,
                   "clean_weight": clean_weight, "precision": precision, "seed": seed,
                   **({"processes": processes} if processes > 1 else {}),
                   **({"fold_bn": True} if fold_bn else {})})


def _shown(value) -> str:
    if isinstance(value, dict) and "describe" in value:
        return value["describe"]
    if isinstance(value, dict):
        head = value.get("fn", value.get("class"))
        return f"{head}({', '.join(f'{k}={v!r}' for k, v in value.items() if k not in ('fn', 'class'))})"
    return repr(value)


def _differs(path, made: dict, now: dict, fix: str) -> RobustlibError | None:
    """The refusal of a resume whose call differs from the one that made the checkpoint, naming every
    argument that differs (as JSON where the short forms read alike)."""
    keys = [k for k in (*FIT_ARGS, *sorted((set(made) | set(now)) - {"model", *FIT_ARGS}))
            if made.get(k) != now.get(k)]
    if not keys:
        return None
    if keys == ["processes"]:      # the same run, trained by another number of processes: resume it with as many
        n = made.get("processes", 1)
        return RobustlibError(f"{path} was trained by {n} process{'es' * (n != 1)}, not {now.get('processes', 1)}; "
                              f"resume it with as many (--nproc {n}, or setup(..., nproc={n})), or {fix}")

    def call(args, other):
        shown = [(k, _shown(args.get(k)), _shown(other.get(k))) for k in keys]
        return "fit(" + ", ".join(f"{k}={(a if a != b else json.dumps(args.get(k), sort_keys=True))[:100]}"
                                  for k, a, b in shown) + ", ...)"
    return RobustlibError(f"{path} was made by {call(made, now)}, not {call(now, made)}; {fix}")


def _model_differs(state: dict, model: nn.Module) -> str | None:
    """How the checkpoint's model differs from ``model``: its class, a parameter's name or shape."""
    made_arch, now_arch = (state.get("fit_args") or {}).get("model"), _architecture(model)
    if made_arch and made_arch != now_arch:
        return f"model differs ({made_arch} in the checkpoint, {now_arch} here)"
    made = {k: tuple(v.shape) for k, v in state["state_dict"].items()}
    now = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k in made:
        if k not in now:
            return f"model architecture differs ({k} is in the checkpoint, not in this model)"
        if made[k] != now[k]:
            return f"model architecture differs ({k} is {made[k]} in the checkpoint, {now[k]} here)"
    extra = next((k for k in now if k not in made), None)
    return f"model architecture differs ({extra} is in this model, not in the checkpoint)" if extra else None


def _why_not_finite(model: nn.Module, x: torch.Tensor, name: str, epoch: int) -> str | None:
    """Why a loss is not finite, before this step: the batch or the weights (``None``: neither)."""
    bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    if bad:
        return f"{name}: the batch holds {bad} non-finite pixels (NaN/inf) in epoch {epoch + 1}; clean the data"
    weight = first_nonfinite(model.state_dict().items())
    if weight:
        return (f"{name}: the model's weights became non-finite during training ({weight} holds NaN/inf before a "
                f"step of epoch {epoch + 1}); lower the learning rate")
    return None


class _Amp:
    """Mixed precision for :func:`fit`: autocast at ``precision`` (``fp32``: none), and for ``fp16`` a gradient
    scaler, whose state a resumed run restores (``state_dict``) like the optimiser's."""

    def __init__(self, device: torch.device, precision: str):
        dtype = PRECISIONS[precision]
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(self, loss: torch.Tensor, opt) -> None:
        if self.scaler is None:
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _train_epoch(model, loader, opt, updates: Callable, *, device, amp: _Amp, name: str, epoch: int) -> dict:
    """One pass over the loader; returns the per-sample means of the loss, the accuracy and the loss parts."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        steps = updates(model, x, y)
        while True:
            try:
                with amp.autocast:
                    out = next(steps, None)
            except ValueError:            # an attack refusing the batch or the logits: name the cause in fit's words
                why = _why_not_finite(model, x, name, epoch)
                if why:
                    raise RobustlibError(why) from None
                raise
            if out is None:
                break
            loss, logits, parts = out
            if not torch.isfinite(loss):
                raise RobustlibError(_why_not_finite(model, x, name, epoch) or
                                     f"{name}: the loss became {loss.item()} in epoch {epoch + 1} (the batch and "
                                     f"the weights are finite); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            amp.step(loss, opt)
            parts = dict(parts)
            targets = parts.pop("targets", y)      # an update on part of the batch names its labels
            b = len(targets)
            logged = {"train_loss": loss.detach(), "train_acc": (logits.argmax(1) == targets).float().mean(),
                      **{k: torch.as_tensor(v).detach().float() for k, v in parts.items()}}
            for k, v in logged.items():
                sums[k] = sums.get(k, 0) + v * b
                counts[k] = counts.get(k, 0) + b
    if not counts:
        raise RobustlibError(f"{name}: the training loader yielded no batches; check the dataset and batch size")
    sums, counts = distributed.reduce_sums(sums, counts)       # every process's batches (one process: as is)
    return {k: (v / counts[k]).item() for k, v in sums.items()}


def _resumable(last_path: Path, model: nn.Module, meta: dict, epochs: int, fix: str) -> dict:
    """The last complete epoch of an interrupted run, once it is known to continue this call; touches nothing.

    Refused, naming ``fix``: a file that is not a checkpoint of this run (format, identity, profile
    settings), non-finite weights, another model (class, parameter names and shapes), other fit arguments.
    A checkpoint written before fit arguments were recorded resumes only for a profile's run (``meta``
    with ``settings``, which then cover what it trained with); for a plain call nothing could be checked.
    """
    try:
        state = load_torch(last_path)
    except RobustlibError as e:
        raise RobustlibError(f"{str(e).rsplit('; ', 1)[0]}; {fix}") from None       # fit's way out, not io's
    check_checkpoint(state, last_path, expect=meta, settings=meta.get("settings"), fix=None if fix == RETRAIN else fix)
    bad = first_nonfinite(state["state_dict"].items())
    if bad:
        raise RobustlibError(f"{last_path} holds non-finite weights (NaN/inf) in {bad}; {fix}")
    differs = _model_differs(state, model)
    if differs:
        raise RobustlibError(f"{last_path} was made for another model: {differs}; {fix}")
    if "fit_args" in state:
        refusal = _differs(last_path, _plain(state["fit_args"]), meta["fit_args"], fix)
        if refusal:
            raise refusal
    elif "settings" not in meta:
        raise RobustlibError(f"{last_path} records no fit arguments (it predates them), so this call cannot be "
                             f"checked against it; {fix}")
    if int(state.get("epochs_total", epochs)) != epochs:
        raise RobustlibError(f"{last_path} belongs to a {state['epochs_total']}-epoch run, not {epochs}; {fix}")
    return state


def _resume(state: dict, last_path: Path, model, opt, sched, objective, epochs: int, name: str, amp: _Amp):
    """Continue from a checked checkpoint (:func:`_resumable`): (history, first epoch to train)."""
    model.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    amp.load_state_dict(state.get("grad_scaler", {}))
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(state.get("objective", {}))
    history, start = list(state["history"]), int(state["epoch"])
    print(f"resuming {name} from {last_path} after epoch {start}/{epochs}")
    return history, start


def _save_epoch(run_dir: Path, name: str, model, opt, sched, objective, meta, history, epochs, best_metric,
                amp: _Amp):
    """After an epoch: the best checkpoint (if this epoch is the best so far), the last one, the metrics CSV."""
    row, ckpt = history[-1], Path(run_dir) / "checkpoints"
    if best_metric is not None and row.get(best_metric, -math.inf) >= max(
            (h.get(best_metric, -math.inf) for h in history), default=-math.inf):
        save_torch(checkpoint_payload(model, meta, epoch=row["epoch"], metrics=row), ckpt / f"{name}.best.pt")
    state = objective.state_dict() if hasattr(objective, "state_dict") else {}
    save_torch(checkpoint_payload(model, meta, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                  objective=state, grad_scaler=amp.state_dict(), epoch=row["epoch"],
                                  epochs_total=epochs, history=history),
               ckpt / f"{name}.last.pt")
    write_csv(Path(run_dir) / "metrics" / f"{name}.csv", pd.DataFrame(history))


def _epoch(model, loader, opt, sched, objective, adversary, *, replay, clean_weight, evaluate, amp: _Amp, device,
           name: str, seed: int, epoch: int, trained: nn.Module | None = None,
           folded: FoldedBatchNorm | None = None) -> dict:
    """Train one epoch, step the schedule, let the objective update its state, evaluate: the epoch's row.
    ``trained``: the module the updates go through (``model`` in DistributedDataParallel under torchrun);
    attacks, the objective's state and the evaluation see ``model`` itself, and process 0 alone evaluates.
    ``folded``: the attacks run on this view of ``model`` instead, refreshed before each."""
    torch.manual_seed(seed * 1000 + epoch)        # dropout, random starts: the same on a resumed run
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    attack = adversary.at(epoch) if adversary is not None else None
    if attack is not None and (folded is not None or trained is not None and trained is not model):
        target = folded or model
        attack = functools.partial(_on, target, attack)     # no gradient sync inside an attack
        # the module the attack runs on, for an objective whose attack needs the clean prediction (TRADES)
        attack.target = lambda _wrapped: target.refresh() if isinstance(target, FoldedBatchNorm) else target

    def updates(m, x, y):
        return batch_updates(objective, attack, m, x, y, replay=replay, clean_weight=clean_weight,
                             clean_tail=adversary is not None and attack is None)

    t0 = time.perf_counter()
    row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
           **_train_epoch(model if trained is None else trained, loader, opt, updates, device=device, amp=amp,
                          name=name, epoch=epoch)}
    sched.step()
    if hasattr(objective, "end_epoch"):
        row.update(objective.end_epoch(model))
    if evaluate is not None:
        if distributed.is_main():
            with eval_mode(model):
                row.update(evaluate(model))
        row = distributed.from_main(row)
    row["seconds"] = time.perf_counter() - t0
    return row


def _on(model: nn.Module | FoldedBatchNorm, attack: Callable, _wrapped, x, y, **kwargs):
    """``attack`` on ``model`` itself, not on the DistributedDataParallel wrapper the objective holds, or on the
    model's :class:`~robustlib.models.FoldedBatchNorm` view, refreshed from its current weights."""
    return attack(model.refresh() if isinstance(model, FoldedBatchNorm) else model, x, y, **kwargs)


def fit(model: nn.Module, train_loader, *, epochs: int, lr: float, momentum: float = 0.9, weight_decay: float = 2e-4,
        lr_schedule: str = "cosine", milestones=(0.5, 0.75), objective: Callable | str | None = None,
        adversary: Adversary | None = None, replay: str | None = None, clean_weight: float = 1.0,
        evaluate: Callable[[nn.Module], dict] | None = None, device: torch.device | str | None = None,
        precision: str = "fp32", run_dir: str | Path | None = None, name: str = "model", meta: dict | None = None,
        seed: int = 0, resume: bool = True, progress: bool = True, best_metric: str | None = None,
        fold_bn: bool = False) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch metrics.

    Parameters
    ----------
    model : any module taking images in [0, 1].
    train_loader : any iterable of ``(x, y)`` batches (a :class:`~robustlib.data.TensorLoader` or a
        ``DataLoader`` with the sampler of your choice); ``set_epoch(e)`` is called if it has one.
    lr, momentum, weight_decay, lr_schedule, milestones : SGD and its schedule (:func:`make_optimizer`).
    objective : a loss ``(model, x, y, *, attack) -> (loss, logits, parts)`` or a name in
        :data:`~robustlib.losses.OBJECTIVES` (default: clean cross-entropy); ``parts`` are logged. One with
        ``end_epoch(model)`` (the constrained form) updates its state after each epoch.
    adversary : an :class:`~robustlib.losses.Adversary`, the objective's ``attack`` at each epoch's budget;
        where its schedule gives ε = 0 the batch is trained clean (the tail).
    replay, clean_weight : ``"alternating"``: a clean update before each of the objective's, weighted
        ``clean_weight`` : 1 (:func:`batch_updates`).
    evaluate : called after each epoch with the model (in eval mode); its dict is logged.
    best_metric : a key of ``evaluate``'s dict; the epoch maximising it is also saved as
        ``checkpoints/<name>.best.pt`` (the last and the best can differ by several points).
    device, precision : where and how to compute: ``"fp32"``, or autocast at ``"bf16"`` or ``"fp16"`` (with a
        gradient scaler, saved with the optimiser for resuming); the weights stay float32 either way.
    fold_bn : the attacks run on a :class:`~robustlib.models.FoldedBatchNorm` view of the model (its eval-mode
        BatchNorms folded into the convolutions; the same function up to float rounding, faster input gradients);
        the updates still go through ``model``.
    run_dir, name, meta : with a run directory, writes ``checkpoints/<name>.last.pt`` after every epoch
        (model, optimiser, schedule, metrics), ``metrics/<name>.csv`` and, at the end,
        ``checkpoints/<name>.pt``, each recording ``meta`` (see :func:`check_checkpoint`) and the call
        (``fit_args``, :func:`fit_record`). ``name`` is a file name (letters, digits, ``_.+=-``), never a path.
    resume : a second call with the same arguments (and as many processes) resumes from ``<name>.last.pt``
        (a finished run returns its history). A call with other arguments (lr, objective, adversary, epochs, ...), another number of
        batches per epoch or another model architecture is refused, naming what differs, before the model is touched; ``resume=False`` trains
        from scratch and overwrites the run.

    A model whose weights are not finite is refused before training; a loss that is not finite names its
    cause (the batch, the weights, else the learning rate).

    Under ``torchrun`` (:func:`robustlib.distributed.init` called first) the updates run through
    DistributedDataParallel on each process's shard of a :class:`~robustlib.data.TensorLoader` (its batch
    is per process), the metrics are reduced over all processes, and process 0 alone evaluates and writes.

    Returns
    -------
    DataFrame, one row per epoch: epoch, lr, train_loss, train_acc, the objective's parts, the evaluation.
    """
    objective = _check_fit_args(objective, adversary, replay, clean_weight, precision, lr_schedule)
    if run_dir:
        _check_name(name)
    distributed.shard(train_loader)          # under torchrun: this process's share of each epoch
    meta = dict(meta or {})
    fix = RETRAIN if "settings" in meta else RESTART       # a profile's run is retrained by its notebook
    meta["fit_args"] = fit_record(model, objective, adversary, epochs=epochs, lr=lr, momentum=momentum,
                                  weight_decay=weight_decay, lr_schedule=lr_schedule, milestones=milestones,
                                  replay=replay, clean_weight=clean_weight, precision=precision, seed=seed,
                                  batches=len(train_loader) if hasattr(train_loader, "__len__") else None,
                                  processes=distributed.world(), fold_bn=fold_bn and adversary is not None)
    last_path = Path(run_dir) / "checkpoints" / f"{name}.last.pt" if run_dir else None
    state = _resumable(last_path, model, meta, epochs, fix) if last_path and resume and last_path.exists() else None
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    opt, sched = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay, epochs=epochs,
                                lr_schedule=lr_schedule, milestones=milestones)
    amp = _Amp(device, precision)
    history, start = _resume(state, last_path, model, opt, sched, objective, epochs, name, amp) if state else ([], 0)
    weight = first_nonfinite(model.state_dict().items())
    if weight:
        raise RobustlibError(f"{name}: the model's weights were already non-finite before epoch {start + 1} "
                             f"({weight} holds NaN/inf); start from finite weights (rebuild the model or reload "
                             f"the checkpoint it came from)")
    trained, main = distributed.wrap(model, device), distributed.is_main()
    if run_dir and main and best_metric is None:
        # no best checkpoint this time: one an earlier attempt of this run left (with a held-out check) would be
        # read as this run's best
        (Path(run_dir) / "checkpoints" / f"{name}.best.pt").unlink(missing_ok=True)
    folded = FoldedBatchNorm(model) if fold_bn and adversary is not None else None
    # a text bar on stdout: in a notebook saved and reopened it reads as its last line (a widget would not load)
    bar = tqdm(range(start, epochs), desc=name, disable=not progress or not main, dynamic_ncols=True, file=sys.stdout,
               mininterval=float(os.environ.get("TQDM_MININTERVAL", 1.0)))     # (run sets 5: few updates under papermill)
    for epoch in bar:
        history.append(_epoch(model, train_loader, opt, sched, objective, adversary, replay=replay,
                              clean_weight=clean_weight, evaluate=evaluate, amp=amp, device=device,
                              name=name, seed=seed, epoch=epoch, trained=trained, folded=folded))
        bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items() if k in ("train_loss", "train_acc", "val_acc")})
        if run_dir and main:
            _save_epoch(run_dir, name, model, opt, sched, objective, meta, history, epochs, best_metric, amp)
    if run_dir and main:
        save_torch(checkpoint_payload(model, meta, epoch=epochs, metrics=history[-1] if history else {}),
                   Path(run_dir) / "checkpoints" / f"{name}.pt")
    distributed.barrier()                    # every process returns once process 0 has written
    return pd.DataFrame(history)


# --- a run: build its settings, load its checkpoint if they match, else train ------------------------------

def run_meta(cfg, kind: str, settings: dict, **extra) -> dict:
    """What a checkpoint of this run records: enough to rebuild and check it without guessing."""
    return {"kind": kind, "model": model_spec(cfg.profile), "dataset": cfg.profile.dataset,
            "profile": cfg.profile.name, "settings": _plain(settings), "settings_hash": settings_hash(settings),
            "profile_fields": _plain(cfg.profile.as_dict()), "torch": str(torch.__version__), **extra}


def load_run(cfg, name: str, meta: dict, *, retrain: bool = False):
    """The run's checkpoint if it was made with ``meta``'s settings (refused, naming the changed field, if not).

    Returns ``(model, history, best model or None)``, or ``None`` when the run must be trained: no
    checkpoint yet, or ``retrain`` (which first removes its stale files). The history is the run's metrics
    CSV; where that is missing or unreadable (a 0-byte file), the copy its finished ``.last.pt`` keeps,
    written back to the CSV with a one-line warning; unreadable with no such copy, a one-line error.
    """
    final = cfg.path("checkpoints", f"{name}.pt")
    if retrain:
        for suffix in ("pt", "last.pt", "best.pt"):
            cfg.path("checkpoints", f"{name}.{suffix}").unlink(missing_ok=True)
    if not final.exists():
        return None
    model, made = load_checkpoint(final, expect=_identity(meta), settings=meta["settings"], device=cfg.device)
    return model, _history(cfg, name, meta, made.get("metrics")), load_best(cfg, name, meta)


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)   # NaN == NaN


def _history(cfg, name: str, meta: dict, last_row) -> pd.DataFrame:
    """The run's per-epoch metrics (see :func:`load_run`); ``last_row`` is the final checkpoint's record of
    its last epoch, which the recovered history must end with."""
    path, reason = cfg.path("metrics", f"{name}.csv"), None
    if path.exists():
        try:
            history = pd.read_csv(path)
            if "epoch" in history and len(history):
                return history
            reason = "it holds no epochs"
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
    last, kept = cfg.path("checkpoints", f"{name}.last.pt"), None
    if last.exists():
        with contextlib.suppress(RobustlibError):
            state = load_torch(last)
            check_checkpoint(state, last, expect=_identity(meta), settings=meta["settings"])
            rows = state.get("history") or []
            if rows and state.get("epoch") == state.get("epochs_total") and _same(rows[-1], last_row):
                kept = rows
    if kept is None:
        if reason is None:
            return pd.DataFrame()            # no CSV and no copy of it: a checkpoint that keeps no history
        raise RobustlibError(f"cannot read {path} ({reason}) and no finished {last.name} keeps a copy; delete it "
                             f"and pass retrain=True to train {name} again (its .pt keeps only the last epoch)")
    write_csv(path, pd.DataFrame(kept))
    print(f"warning: {path} was {'missing' if reason is None else f'unreadable ({reason})'}; "
          f"rebuilt it from the history in {last}")
    return pd.read_csv(path)                 # as it reads from now on


def _identity(meta: dict) -> dict:
    return {k: meta[k] for k in IDENTITY if k in meta}


def load_best(cfg, name: str, meta: dict):
    """The run's best checkpoint (by its held-out metric), checked like the run's own; ``None`` if it keeps none."""
    path = cfg.path("checkpoints", f"{name}.best.pt")
    if not path.exists():
        return None
    return load_checkpoint(path, expect=_identity(meta), settings=meta["settings"], device=cfg.device)[0]


def read_data_settings(p) -> None:
    """Record the fields that choose a run's training images (also when the caller passes the data in)."""
    _ = (p.dataset, p.train_limit, p.seed, p.val_size)


def loader_plan(p) -> dict:
    """What a run's batches depend on, read from ``p`` (a profile or a :class:`~robustlib.profiles.Recorder`)."""
    return {"batch_size": p.batch_size, "augment": p.augment}


def make_train_loader(cfg, train, *, seed: int | None = None, plan: dict | None = None) -> TensorLoader:
    """The profile's seeded training batches, shuffled; ``plan`` from :func:`loader_plan` (default: the profile's).
    Where the data sits (``in_memory``) changes no number, so no run records it."""
    p, plan = cfg.profile, dict(plan or loader_plan(cfg.profile))
    if distributed.active():        # under torchrun the profile's batch is the global one: each process takes its part
        if plan["batch_size"] % distributed.world():
            raise RobustlibError(f"batch_size {plan['batch_size']} cannot be split evenly among {distributed.world()} "
                                 f"processes; use a process count that divides it")
        plan["batch_size"] //= distributed.world()
    return TensorLoader(train, shuffle=True, **plan, seed=p.seed if seed is None else seed,
                        device=cfg.device, in_memory=p.in_memory)


def _pretrain_plan(p) -> dict:
    """Phase 1's model, data and optimiser settings, read from ``p``: theta_std's settings are these reads."""
    read_data_settings(p)
    return dict(spec=model_spec(p), epochs=p.epochs, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                lr_schedule=p.lr_schedule, milestones=p.milestones, loader=loader_plan(p), fast=fast_plan(p))


def fast_plan(p) -> dict:
    """The fast paths a run trains with, read from ``p``: autocast ``precision`` (``"auto"`` kept as written;
    :func:`resolve_precision` reads it on the device) and the ``channels_last`` memory format."""
    return {"precision": p.precision, "channels_last": p.channels_last}


def native_bf16(device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA, or a CPU with AVX512-BF16 or AMX. On such a CPU (an
    AMD EPYC with AVX512-BF16) bf16 autocast with channels_last made every method's `fashion` epoch 1.8-2.3x
    faster than fp32 (bench/train.py); on a CPU without them bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    cpu = getattr(torch, "cpu", None)
    return device.type == "cpu" and any(getattr(cpu, f, lambda: False)() for f in
                                        ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device) -> str:
    """``"auto"``: bf16 autocast where the device computes bf16 natively (:func:`native_bf16`), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def build_fast(spec: dict, device, fast: dict) -> nn.Module:
    """The model of ``spec`` on ``device``, in the channels-last memory format if ``fast`` says so (the numbers
    are the same up to float rounding; convolutions run faster on tensor cores). Training only: a trained
    model is handed back in the default format, so it is evaluated exactly as its checkpoint loaded later."""
    model = build_model(**spec).to(device)
    return model.to(memory_format=torch.channels_last) if fast["channels_last"] else model


def pretrain_fields(profile) -> set[str]:
    """The profile fields theta_std consumes (a variant that changes one of them trains its own)."""
    rec = Recorder(profile)
    _pretrain_plan(rec)
    return set(rec.read)


def vanilla_name(cfg, seed: int | None = None) -> str:
    """Checkpoint name of theta_std: ``vanilla`` for the profile's seed, ``vanilla-s<seed>`` for others;
    a variant that changes theta_std's settings adds its tag (``vanilla-resnet18w4``)."""
    fields = pretrain_fields(cfg.profile)
    tag = "-".join(t for t, changed in cfg.changes if fields & set(changed))
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
    p, rec = cfg.profile, Recorder(cfg.profile)
    seed = p.seed if seed is None else seed
    name, plan = vanilla_name(cfg, seed), _pretrain_plan(rec)
    meta = run_meta(cfg, "vanilla", rec.read)

    def train():   # phase 1 on the training split less the held-out images; the test split is not read
        tr, _ = data or load_splits(p, cfg.data_root)
        tr, val = split_validation(tr, p.val_size, p.seed)
        torch.manual_seed(seed)
        model = build_fast(plan["spec"], cfg.device, plan["fast"])
        x_val, y_val = val.float_x(), val.y
        history = fit(model, make_train_loader(cfg, tr, seed=seed, plan=plan["loader"]), epochs=plan["epochs"],
                      lr=plan["lr"], precision=resolve_precision(plan["fast"]["precision"], cfg.device),
                      momentum=plan["momentum"], weight_decay=plan["weight_decay"],
                      lr_schedule=plan["lr_schedule"], milestones=plan["milestones"],
                      evaluate=lambda m: {"val_acc": accuracy(m, x_val, y_val)} if len(y_val) else {},
                      device=cfg.device,
                      run_dir=cfg.run_dir, name=name, meta=meta, seed=seed, progress=progress)
        return model.to(memory_format=torch.contiguous_format).eval(), history   # evaluated as a loaded one

    loaded = load_run(cfg, name, meta, retrain=retrain)
    if loaded is None and launch.wanted(cfg):      # nproc > 1: torchrun's processes train it, then it is loaded
        launch.train_elsewhere(cfg, "robustlib.train:pretrain", {"seed": seed}, name=name, data=data,
                               progress=progress)
        loaded = launch.finished(load_run(cfg, name, meta), cfg, name)
    if loaded is None:
        return train()
    if progress:
        print(f"loaded theta_std from {cfg.shown('checkpoints', name + '.pt')} (pass retrain=True to train it again)")
    return loaded[:2]
