"""Clean and robust accuracy, as numbers and pandas DataFrames: one registry of evaluation protocols.

Every robust accuracy states its protocol. ``PROTOCOLS`` holds them by name, each with its table column
(``pgd@0.1``), its constants and a description; :func:`robust_accuracy` runs one, :func:`evaluate_table`
makes the methods table, :func:`mean_std` and :func:`format_mean_std` summarise it over seeds.

No accuracy is computed on nothing or from logits that mean nothing: no images, labels that are not class
indices of the model, and NaN/inf logits (whose argmax is class 0) are one-line ``ValueError``s.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .attacks import (ATTACKS, PGD_STEP_FACTOR, autoattack, dra, effective_dimension, l1_budget, label_error,
                      model_logits, nonfinite_logits)
from . import distributed
from .models import eval_mode
from .profiles import parse_eps


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int | None]:
    """Predicted labels and the model's number of logits (``None`` without images). The first batch is
    checked as the model's first pass (:func:`~robustlib.attacks.model_logits`); NaN/inf logits on any
    image are refused once all are counted."""
    device = _device_of(model)
    out, bad, classes = [], 0, None
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            logits = model_logits(model, xb, finite=False) if i == 0 else model(xb)
            bad = bad + (~torch.isfinite(logits)).any(1).sum()
            out.append(logits.argmax(1).cpu())
            classes = logits.shape[1]
    if int(bad):
        raise nonfinite_logits(model, x, int(bad), len(x))
    return (torch.cat(out) if out else torch.empty(0, dtype=torch.long)), classes


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels (N,) for images ``x`` (N, C, H, W) in [0, 1], in eval mode, batch by batch.
    Raises ``ValueError`` where the model's logits are NaN/inf (an argmax of NaN would read as class 0)."""
    return _predict(model, x, batch_size)[0]


def _scored(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, correct mask) for at least one image with a label the model has a logit for."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dim() != 1:
        raise ValueError("y must be a 1-D integer tensor of class labels, e.g. torch.tensor([3, 1, 4])")
    if len(y) != len(x):
        raise ValueError(f"y must hold one label per image: x has {len(x)} images, y has {len(y)} labels")
    if not len(y):
        raise ValueError("no images to score: x is empty, and an accuracy of no images is undefined; check the "
                         "split or subset that made it")
    pred, classes = _predict(model, x, batch_size)
    y = y.cpu()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"y holds label {lo}: labels must be class indices >= 0")
    if hi >= classes:
        raise label_error(hi, classes)
    return pred, pred == y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Fraction of ``x`` classified as ``y`` (a float in [0, 1]). Refuses (``ValueError``) no images, labels
    outside the model's classes and NaN/inf logits."""
    return _scored(model, x, y, batch_size)[1].float().mean().item()


def robust_fraction(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images classified correctly both clean (``x``) and attacked (``x_adv``): robust accuracy
    counted as every protocol of :data:`PROTOCOLS` counts it. Refuses no images, as :func:`accuracy` does."""
    return (_scored(model, x, y)[1] & _scored(model, x_adv, y)[1]).float().mean().item()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, classes) -> pd.DataFrame:
    """Counts, rows = true class, columns = predicted class."""
    k = len(classes)
    cm = torch.bincount(y_true.cpu() * k + y_pred.cpu(), minlength=k * k).reshape(k, k).numpy()
    return pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def clean_report(model: nn.Module, data, *, batch_size: int = 512) -> dict:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` on an :class:`~robustlib.data.ImageData`.

    Returns
    -------
    dict with ``accuracy`` (float), ``per_class`` (DataFrame: class, n, accuracy) and ``confusion``.
    """
    x, y = data.float_x(), data.y
    pred, ok = _scored(model, x, y, batch_size)
    classes = list(data.info.classes)
    cm = confusion_matrix(y, pred, classes)
    counts = cm.to_numpy().sum(1)
    per_class = pd.DataFrame({
        "class": classes,
        "n": counts,
        "accuracy": np.divide(np.diag(cm.to_numpy()), counts, out=np.full(len(classes), np.nan), where=counts > 0),
    })
    return {"accuracy": ok.float().mean().item(), "per_class": per_class, "confusion": cm}


# --- robustness -----------------------------------------------------------------------------------------

def takes_seed(attack: Callable) -> bool:
    """Whether an attack (a function or an ``ATTACKS`` entry) declares a ``seed`` argument: its randomness."""
    fn = getattr(attack, "fn", attack)
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def run_attack(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
               seed: int | None = 0, **kwargs) -> torch.Tensor:
    """Apply an attack (a function or a name in ``ATTACKS``) batch by batch on the model's device.

    An attack that declares a ``seed`` argument (PGD's random start) gets ``seed + i`` for batch ``i``, so
    the result does not depend on which batches ran before; ``seed=None`` draws from torch's generator.
    An empty ``x`` gives an empty batch back.
    """
    if isinstance(attack, str) and attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    if len(x) != len(y):
        raise ValueError(f"y must hold one label per image: x has {len(x)} images, y has {len(y)} labels")
    fn = ATTACKS[attack] if isinstance(attack, str) else attack
    seeded = takes_seed(fn)
    device = _device_of(model)
    out = []
    for i, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        extra = {"seed": None if seed is None else seed + i} if seeded else {}
        out.append(fn(model, xb, yb, **kwargs, **extra).cpu())
    return torch.cat(out) if out else x.clone()


def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Fraction of the initially correctly classified images that the attack makes misclassified."""
    correct = predict(model, x) == y.cpu()
    if not correct.any():
        return float("nan")
    return (predict(model, x_adv[correct]) != y.cpu()[correct]).float().mean().item()


def perturbation_stats(x: torch.Tensor, x_adv: torch.Tensor) -> pd.DataFrame:
    """Per-image L0 (values changed), L1, L2 and L-inf size of ``x_adv - x``: mean, median and max."""
    d = (x_adv - x).flatten(1).cpu()
    per_image = pd.DataFrame({
        "L0": (d != 0).sum(1).numpy(), "L1": d.abs().sum(1).numpy(),
        "L2": d.norm(dim=1).numpy(), "Linf": d.abs().amax(1).numpy(),
    })
    return per_image.agg(["mean", "median", "max"])


# the paper's protocol (Section V.A): PGD-20, step eps/20, from the clean point; the random-start protocol
# uses as many steps with Madry et al.'s step 2.5*eps/steps
PAPER_STEPS = 20
_PROTOCOL_ARGS = ("eps", "label", "steps", "batch_size", "seed", "fast")     # what every protocol's attack receives


@dataclass(frozen=True)
class Protocol:
    """A ``PROTOCOLS`` entry: the table column it fills (``pgd`` -> ``pgd@0.1``), a description, and
    ``attack(model, x, y, ok, *, eps, label, steps, batch_size, seed, fast, **options) -> (ok, x_adv, settings,
    parts)`` (``fast``: its PGD iterates at the process's attack precision, :func:`set_attack_precision`),
    which takes the clean-correct mask ``ok`` and returns the robust one, the worst-case batch, the exact
    settings as words, and extra accuracies to report; it may take more keywords (``strong``: ``state_dir``,
    ``autoattack_attacks``), its :attr:`options`."""

    column: str
    description: str
    attack: Callable

    @property
    def options(self) -> tuple[str, ...]:
        params = inspect.signature(self.attack).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _PROTOCOL_ARGS)


# The fast paths of the evaluation tables' PGD iterates (evaluate_table, and the masking probes beside it): "fp32"
# (none), or "bf16" autocast with the model in the channels-last memory format while it attacks. Every decision
# (clean and attacked predictions) stays in float32, and so do AutoAttack and every attack that chooses a
# setting (calibrations, the budget decision, a choice among a grid's rows, robust_accuracy unless asked with
# ``fast=True``). One more attack follows the profile's attack_precision: each run's per-epoch held-out check
# (methods.heldout_metrics), which picks the run's "best" checkpoint; no table reports that checkpoint except
# notebook 03's comparison of it with the last. robustlib.setup sets the precision from the profile's
# ``attack_precision``; the library's default is fp32. The evidence that it is not a
# weaker attack: README, "Fast paths on a CPU with native bf16".
_ITERATES = {"precision": "fp32"}


def set_attack_precision(precision: str) -> None:
    """The precision of the evaluation tables' PGD iterates (``"fp32"`` or ``"bf16"``), for every later
    :func:`evaluate_table`, :func:`robust_accuracy` with ``fast=True`` and masking probe in this process."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"attack precision {precision!r}: use fp32 or bf16 (auto is resolved by robustlib.setup)")
    _ITERATES["precision"] = precision


def attack_precision() -> str:
    """The precision the evaluation protocols' PGD iterates run at now (:func:`set_attack_precision`)."""
    return _ITERATES["precision"]


# How many processes an evaluation table is sharded among: 1 (here, in this process), or N > 1, in which case
# evaluate_table (and masking.add_probes) hands itself to N processes under torchrun
# (robustlib.launch.evaluate_elsewhere), each attacking its part of the images, and returns the table they computed. robustlib.setup sets it from the
# run's nproc (`run --nproc N`), so that a notebook's attacks are spread over the GPUs its training uses.
_PROCESSES = {"n": 1}


def set_evaluation_processes(n: int) -> None:
    """Shard every later :func:`evaluate_table` (and :func:`robustlib.masking.add_probes`) of this process among
    ``n`` processes under torchrun (1: none)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"evaluation processes {n!r}: use a whole number >= 1")
    _PROCESSES["n"] = n


def evaluation_processes() -> int:
    """The process count :func:`evaluate_table` and the masking probes shard among (:func:`set_evaluation_processes`)."""
    return _PROCESSES["n"]


@contextlib.contextmanager
def fast_iterates(model: nn.Module, fast: bool = True, precision: str | None = None):
    """A context for an attack's iterates at the process's attack precision, or at ``precision`` where given.

    With ``fast`` and bf16 set (:func:`set_attack_precision`, or ``precision`` given): bf16 autocast, the
    model's 4-D weights channels-last; each is handed back as the tensor it came as. Yields the
    settings' note."""
    if not fast or (precision or _ITERATES["precision"]) == "fp32":
        yield ""
        return
    device = _device_of(model)
    # the very tensors the weights (and 4-D buffers, and gradients) came with: converting them back would keep the
    # values but not always the strides (a weight with a dimension of size 1 is both contiguous and channels-last),
    # and a convolution's kernel, so its rounding, follows the strides: a run's training would then depend on its
    # held-out check's precision
    weights = {p: p.data for p in model.parameters() if p.dim() == 4}
    grads = {p: p.grad.data for p in weights if p.grad is not None}
    buffers = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None and b.dim() == 4]
    try:
        model.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield "; iterates in bf16, decisions in fp32"
    finally:
        for p, data in weights.items():
            p.data = data
        for p, data in grads.items():
            p.grad.data = data
        for m, k, b in buffers:
            m._buffers[k] = b


def _pgd_iterates(model, x, y, *, batch_size, fast: bool = True, **kwargs) -> tuple[torch.Tensor, str]:
    """``run_attack("pgd", ...)`` with the iterates at the process's attack precision where ``fast``; returns the
    adversarial images and the note for the attack's settings ("" in fp32)."""
    with fast_iterates(model, fast) as note:
        return run_attack("pgd", model, x, y, batch_size=batch_size, **kwargs), note


def _paper(model, x, y, ok, *, eps, label, steps, batch_size, seed, fast=False, **_):
    x_adv, note = _pgd_iterates(model, x, y, batch_size=batch_size, eps=eps, steps=steps, step_factor=1.0,
                                random_start=False, fast=fast)
    settings = f"PGD-{steps}, eps={label}, step={label}/{steps}, no random start{note}"
    return ok & (predict(model, x_adv) == y), x_adv, settings, {}


def _pgd_rs(model, x, y, ok, *, eps, label, steps, batch_size, seed, fast=False, **_):
    x_adv, note = _pgd_iterates(model, x, y, batch_size=batch_size, eps=eps, steps=steps,
                                step_factor=PGD_STEP_FACTOR, random_start=True, seed=seed, fast=fast)
    settings = f"PGD-{steps} (eps={label}, step={PGD_STEP_FACTOR:g}*{label}/{steps}, random start, seed {seed}{note})"
    return ok & (predict(model, x_adv) == y), x_adv, settings, {}     # robust: correct clean and attacked


def _strong(model, x, y, ok, *, eps, label, steps, batch_size, seed, state_dir=None, autoattack_attacks=None,
            fast=False, **_):
    x_adv, ok = x.clone(), ok.clone()
    xp, note = _pgd_iterates(model, x, y, batch_size=batch_size, eps=eps, steps=steps, step_factor=PGD_STEP_FACTOR,
                             random_start=True, seed=seed, fast=fast)
    broke = ok & (predict(model, xp) != y)
    x_adv[broke], ok = xp[broke], ok & ~broke
    parts = {"pgd_rs_acc": ok.float().mean().item()}
    if ok.any():
        xa = autoattack(model, x[ok], y[ok], eps=eps, norm="Linf", batch_size=batch_size, seed=seed,
                        state_dir=state_dir, attacks=autoattack_attacks)
        idx = ok.nonzero().squeeze(1)
        broke_aa = predict(model, xa) != y[ok]
        x_adv[idx[broke_aa]] = xa[broke_aa]
        ok[idx[broke_aa]] = False
    parts["autoattack_acc"] = ok.float().mean().item()
    aa_name = ("AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square" if autoattack_attacks is None
               else f"AutoAttack subset ({', '.join(a.upper() for a in autoattack_attacks)}")
    settings = (f"worst of PGD-{steps} (eps={label}, step={PGD_STEP_FACTOR:g}*{label}/{steps}, random start, "
                f"seed {seed}{note}) and {aa_name}; Linf, eps={label})")
    return ok, x_adv, settings, parts


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("pgd", f"PGD-{PAPER_STEPS}, step eps/{PAPER_STEPS}, no random start (Section V.A)", _paper),
    "pgd-rs": Protocol("pgd-rs", f"PGD-{PAPER_STEPS} with a random start, step {PGD_STEP_FACTOR:g}*eps/{PAPER_STEPS}",
                       _pgd_rs),
    "strong": Protocol("strong", f"worst case per example of PGD-{PAPER_STEPS} (random start, step "
                                 f"{PGD_STEP_FACTOR:g}*eps/{PAPER_STEPS}) and AutoAttack (standard, Linf)", _strong),
}


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps, protocol: str = "paper",
                    steps: int = PAPER_STEPS, batch_size: int = 256, seed: int = 0, shard: bool = False,
                    fast: bool = False, adversarial: bool = True, **options) -> tuple[dict, torch.Tensor | None]:
    """Robust accuracy of ``model`` at L-inf radius ``eps`` under a named protocol of ``PROTOCOLS``.

    Protocols
    ---------
    ``paper``  : PGD with ``steps`` steps of eps/steps from the clean point (Section V.A: 20 steps of eps/20).
    ``pgd-rs`` : PGD with a random start (seeded) and steps of 2.5*eps/steps.
    ``strong`` : per example, the worst case of PGD (random start, step 2.5*eps/steps) and AutoAttack
                 (standard, Linf); AutoAttack runs only on the points PGD did not break.
                 ``autoattack_attacks`` (e.g. ``("apgd-ce", "apgd-t")``) narrows AutoAttack to a subset
                 of its attacks, and ``state_dir`` makes it resumable; the settings string names them.

    Every protocol counts an image as robust only if it is classified correctly clean and attacked. No
    images (an accuracy that would be NaN) and labels outside the model's classes are ``ValueError``s.

    ``shard`` (under ``torchrun``, every process calling with the same arguments): each process attacks its
    part of the images (:func:`robustlib.distributed.my_part`, with the same ``seed``; AutoAttack's resumable
    state in ``state_dir/rank<r>``) and every process gets the whole result, the per-image outcomes gathered
    in order. The random starts an image gets differ from one process's, so the numbers agree with an
    unsharded run's up to that draw (exactly, for the paper protocol). Without ``torchrun`` it changes nothing.

    ``fast``: the PGD iterates at the process's attack precision (:func:`set_attack_precision`; the decisions
    stay float32, AutoAttack too), as :func:`evaluate_table` runs them. Off by default: an attack that chooses
    a setting (a calibration, the budget decision) stays float32 wherever it runs.

    ``adversarial=False``: the adversarial batch is not returned (``None``), and under ``shard`` not gathered
    from the processes (a table that only counts saves sending every image to every process).

    Returns
    -------
    (a dict with eps, protocol, the exact attack settings, clean and robust accuracy and the attack
    success rate; the worst-case adversarial batch)
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    unknown = sorted(set(options) - set(PROTOCOLS[protocol].options))
    if unknown:
        raise ValueError(f"protocol {protocol!r} takes no {', '.join(unknown)}; its options: "
                         f"{', '.join(PROTOCOLS[protocol].options) or 'none'}")
    eps_value, label = parse_eps(eps)
    if not len(x):
        raise ValueError("no images to attack: x is empty, and a robust accuracy of no images is undefined; "
                         "check the split or subset that made it")
    n = len(y)
    if shard and distributed.active():       # this process's part of the images; the outcomes gathered below
        part = distributed.my_part(n)
        x, y = x[part.to(x.device)], y[part.to(y.device)]
        if options.get("state_dir") is not None:
            options = {**options, "state_dir": Path(options["state_dir"]) / f"rank{distributed.rank()}"}
    clean_ok = _scored(model, x, y)[1] if len(y) else torch.zeros(0, dtype=torch.bool)
    y = y.cpu()
    if len(y):
        ok, x_adv, settings, parts = PROTOCOLS[protocol].attack(
            model, x, y, clean_ok, eps=eps_value, label=label, steps=steps, batch_size=batch_size, seed=seed,
            fast=fast, **options)
    else:                                     # more processes than images: this one has none to attack
        ok, x_adv, settings, parts = torch.zeros(0, dtype=torch.bool), x.detach().cpu(), None, {}
    if shard and distributed.active():
        shards = distributed.gather_objects((len(y), settings, parts))
        clean_ok, ok = (distributed.gather(t.cpu()) for t in (clean_ok, ok))
        x_adv = distributed.gather(x_adv.cpu()) if adversarial else None
        settings = next(s for _, s, _ in shards if s is not None)
        keys = next(p for m, _, p in shards if m)         # each part's fractions, weighted by its images
        parts = {k: sum(m * p[k] for m, _, p in shards if m) / n for k in keys}
    row = {"eps": label, "eps_value": eps_value, "protocol": protocol, "attack": settings, "n": n,
           "clean_acc": clean_ok.float().mean().item(), "robust_acc": ok.float().mean().item(),
           "success_rate": (clean_ok & ~ok).sum().item() / max(1, clean_ok.sum().item()), **parts}
    return row, (x_adv if adversarial else None)


def robustness_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_list, protocol: str = "paper",
                     **kwargs) -> pd.DataFrame:
    """One :func:`robust_accuracy` row per eps, as a DataFrame."""
    kwargs = {"adversarial": False, **kwargs}         # rows only: no adversarial batch kept
    return pd.DataFrame([robust_accuracy(model, x, y, eps=e, protocol=protocol, **kwargs)[0] for e in eps_list])


def calibrate_pgd_to_dra(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dra_eps: float, p: float,
                         steps: int, budget: str = "per_image", pgd_steps: int = PAPER_STEPS, hi: float = 0.5,
                         iters: int = 12, batch_size: int = 256) -> dict:
    """Find the PGD eps (paper protocol) that leaves the same robust accuracy as DRA at ``dra_eps``.

    Section V-C makes DRA and PGD "similar attack strengths" this way before comparing them as training
    adversaries (Table V: DRA eps = 1 against PGD eps = 2.55/255 on a vanilla ResNet-50, both 44.5%).
    Bisection on the PGD radius in [0, ``hi``]; robust accuracy falls as the radius grows. Both sides count
    an image as robust only if it is also correct clean. A calibration chooses a training setting (Table V's
    PGD budget), so ``x, y`` should be held-out images, never the test split (:func:`robustlib.methods.calibrate`).

    Returns
    -------
    dict: dra_eps, dra_p, dra_steps, dra_robust_acc, pgd_eps, pgd_robust_acc, pgd_attack, n, and the
    search bracket (lo, hi) the bisection ended with.
    """
    xd = run_attack(dra, model, x, y, batch_size=batch_size, eps=dra_eps, p=p, steps=steps, budget=budget)
    target = robust_fraction(model, x, xd, y)     # counted like the PGD side: correct clean and attacked

    def pgd_acc(e):
        return robust_accuracy(model, x, y, eps=e, protocol="paper", steps=pgd_steps, batch_size=batch_size)[0]["robust_acc"]

    lo, best = 0.0, None
    acc_hi = pgd_acc(hi)
    if acc_hi > target:   # even the largest radius is weaker than DRA: report the bracket honestly
        return dict(dra_eps=dra_eps, dra_p=p, dra_steps=steps, dra_budget=budget, dra_robust_acc=target, pgd_eps=hi,
                    pgd_robust_acc=acc_hi, pgd_attack=f"PGD-{pgd_steps}, step eps/{pgd_steps}", n=len(y),
                    lo=hi, hi=hi, converged=False)
    best = (hi, acc_hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        acc = pgd_acc(mid)
        if abs(acc - target) <= abs(best[1] - target):
            best = (mid, acc)
        if acc > target:
            lo = mid
        else:
            hi = mid
    return dict(dra_eps=dra_eps, dra_p=p, dra_steps=steps, dra_budget=budget, dra_robust_acc=target, pgd_eps=best[0],
                pgd_robust_acc=best[1], pgd_attack=f"PGD-{pgd_steps}, step eps/{pgd_steps}, no random start",
                n=len(y), lo=lo, hi=hi, converged=True)


def n_eff(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, p: float = 1.0, batch_size: int = 256) -> torch.Tensor:
    """:func:`~robustlib.attacks.effective_dimension` of every image, batch by batch (on CPU)."""
    device = _device_of(model)
    return torch.cat([effective_dimension(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                                          p).cpu() for i in range(0, len(x), batch_size)])


def dra_readings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, p: float, steps: int, dra_eps: float,
                 pgd_eps, batch_size: int = 256) -> dict:
    """Which reading of Algorithm 1's eps makes DRA at ``dra_eps`` as strong as PGD at ``pgd_eps`` on ``model``.

    The paper gives one equal-strength point (Section V-C: DRA eps = 1 and PGD eps = 2.55/255 both leave
    44.5% of a vanilla ResNet-50 robust). For the two readings of that point, a per-image L1 budget in [0, 1]
    units (``per_image``: L1 = 1) and eps per value in pixel levels (``per_value/255``: L1 = N/255):

    - the **measurement**: DRA's robust accuracy at ``dra_eps`` beside PGD's (paper protocol) at ``pgd_eps``;
      the reading with the smaller gap, if the two gaps differ by more than their noise (1.96 times the
      binomial standard error of the two DRA accuracies, as if independent), is ``measured``, else None;
    - the **prediction** from the input gradients alone: to first order the attacks are equally strong when
      DRA's L1 budget over PGD's radius equals ``N_eff = ||g||_1^2 / ||g_k||_2^2`` (median over images; ``g_k``
      the top-p values DRA keeps), so ``predicted`` is the reading whose ratio is closest to it (log scale).

    ``chosen`` is the measurement where it is clear, else the prediction (``decided_by`` says which).
    Returns also ``pgd_robust_acc``, ``n_eff``, ``values`` (N), ``n`` (images) and ``readings``: per reading its
    ``l1_budget``, ``ratio`` (L1 budget / PGD radius), ``dra_robust_acc``, ``se`` and ``gap``.
    """
    eps_value, label = parse_eps(pgd_eps)
    pgd_acc = robust_accuracy(model, x, y, eps=pgd_eps, protocol="paper", batch_size=batch_size)[0]["robust_acc"]
    values = x[0].numel()
    neff = float(n_eff(model, x, y, p=p, batch_size=batch_size).nanmedian())
    readings = []
    for budget in ("per_image", "per_value/255"):        # the two readings of a CIFAR eps written in pixel levels
        xd = run_attack(dra, model, x, y, batch_size=batch_size, eps=dra_eps, p=p, steps=steps, budget=budget)
        acc = robust_fraction(model, x, xd, y)
        l1 = l1_budget(dra_eps, values, budget)
        readings.append({"reading": budget, "l1_budget": l1, "ratio": l1 / eps_value, "dra_robust_acc": acc,
                         "se": float(np.sqrt(acc * (1 - acc) / max(1, len(y)))), "gap": abs(acc - pgd_acc)})
    a, b = sorted(readings, key=lambda r: r["gap"])
    clear = b["gap"] - a["gap"] > 1.96 * float(np.hypot(a["se"], b["se"]))
    predicted = min(readings, key=lambda r: abs(np.log(r["ratio"] / neff)))["reading"] if np.isfinite(neff) else None
    chosen = a["reading"] if clear or predicted is None else predicted
    return {"chosen": chosen, "measured": a["reading"] if clear else None, "predicted": predicted,
            "decided_by": "measurement" if clear else "N_eff prediction (the measured gaps are within their noise)"
            if predicted else "measurement (within its noise; no gradient to predict from)",
            "dra_eps": dra_eps, "dra_p": p, "dra_steps": steps, "pgd_eps": label, "pgd_robust_acc": pgd_acc,
            "n_eff": neff, "values": values, "n": len(y), "readings": readings}


# --- the methods table -------------------------------------------------------------------------------------

def attack_subset(n_images: int, n: int, seed: int = 0) -> torch.Tensor:
    """The sorted indices of ``n`` of ``n_images`` images drawn at random with ``seed``: AutoAttack's images.

    A random draw, not the first ``n``: the first images of a split need not be as hard as the rest (on
    digits, vanilla ``pgd@0.1`` was 36% on the first 100 test images and 47.5% on all 360).
    """
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def evaluate_table(models: dict, x: torch.Tensor, y: torch.Tensor, *, eps_list, protocols=("paper", "pgd-rs"),
                   autoattack_eps=None, autoattack_n: int = 0, autoattack_attacks=None, state_dir=None,
                   seed: int = 0, natural_on=None, shard: bool = False, fast: bool = True) -> pd.DataFrame:
    """One row per model: natural accuracy and robust accuracy at each eps under each protocol.

    ``fast`` (default): the PGD iterates at the process's attack precision (:func:`set_attack_precision`); a
    table that chooses a setting (a held-out selection) passes ``fast=False`` and attacks in float32.

    Columns: ``natural`` (on ``x``); ``natural-all`` if ``natural_on=(x_all, y_all)`` is given (clean accuracy
    is cheap, so it can be measured on the whole test split while the attacks run on a subset); for each eps
    and each of ``protocols``, ``<column>@<eps>`` (``pgd@0.1`` for the paper protocol, ``pgd-rs@0.1``), on all
    of ``x``; and at ``autoattack_eps``, on ``autoattack_n`` images of ``x`` drawn at random
    (:func:`attack_subset`, seeded with ``seed``; the same images for every model), ``strong@<eps>`` (the
    ``strong`` protocol: standard Linf AutoAttack or its ``autoattack_attacks`` subset, after pgd-rs) beside
    ``natural (aa)`` and ``pgd-rs@<eps> (aa)``, clean accuracy and pgd-rs (a run of its own, on those
    images) on the same images, so that they read like for like. Every robust column counts an image
    only if it is also classified correctly clean. eps labels are kept as written. Last, the image counts
    behind the columns: ``images`` (``x``), ``images-all`` and ``images (aa)`` where measured (the verdicts'
    test-sample noise, :mod:`robustlib.verdicts`). ``shard``: the attacks split among the processes of
    ``torchrun`` (:func:`robust_accuracy`; every process calls with the same arguments).

    Outside torchrun, with :func:`set_evaluation_processes` at N > 1 (``run --nproc N``), the table is computed
    by N processes under torchrun, each attacking its part of every attack's images
    (:func:`robustlib.launch.evaluate_elsewhere`), and returned here: the same numbers as one process's for
    the paper protocol, a different draw of random starts for the others.
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(map(str, unknown))}; use some of {', '.join(PROTOCOLS)}")
    if _PROCESSES["n"] > 1 and not distributed.active():
        from .launch import evaluate_elsewhere
        return evaluate_elsewhere(_PROCESSES["n"], models, x, y, dict(
            eps_list=list(eps_list), protocols=tuple(protocols), autoattack_eps=autoattack_eps,
            autoattack_n=autoattack_n, autoattack_attacks=autoattack_attacks, state_dir=state_dir, seed=seed,
            natural_on=natural_on, fast=fast))
    rows = []
    for name, model in models.items():
        row = {"method": name, "natural": accuracy(model, x, y)}
        if natural_on is not None:
            row["natural-all"] = accuracy(model, *natural_on)
        for e in eps_list:
            for protocol in protocols:
                result, _ = robust_accuracy(model, x, y, eps=e, protocol=protocol, seed=seed, shard=shard, fast=fast,
                                            adversarial=False)
                row[f"{PROTOCOLS[protocol].column}@{result['eps']}"] = result["robust_acc"]
        if autoattack_eps is not None and autoattack_n > 0:
            idx = attack_subset(len(y), min(autoattack_n, len(y)), seed)
            strong, _ = robust_accuracy(model, x[idx], y[idx], eps=autoattack_eps, protocol="strong", seed=seed,
                                        state_dir=state_dir, autoattack_attacks=autoattack_attacks, shard=shard,
                                        fast=fast, adversarial=False)
            row["natural (aa)"] = strong["clean_acc"]
            row[f"{PROTOCOLS['pgd-rs'].column}@{strong['eps']} (aa)"] = strong["pgd_rs_acc"]
            row[f"{PROTOCOLS['strong'].column}@{strong['eps']}"] = strong["robust_acc"]
            row["images (aa)"] = len(idx)
        row["images"] = len(y)                      # what the verdicts' test-sample noise is computed from
        if natural_on is not None:
            row["images-all"] = len(natural_on[1])
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(per_seed: pd.DataFrame, keys=("method",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and standard deviation over seeds of the accuracy columns (``natural...`` and every ``...@eps``).

    The standard deviation is the sample one (ddof=1), NaN where a group has a single seed (no spread is
    claimed from one run). The mean table also says what each row rests on: ``seeds`` (runs averaged),
    ``seeds (aa)`` (of them, those with the AutoAttack columns, ``... (aa)`` and ``strong@``, measured) and
    the image counts (``images``, ``images-all``, ``images (aa)``) as :func:`evaluate_table` recorded them.
    """
    keys = list(keys)
    metrics = [c for c in per_seed.columns if c not in keys and (c.startswith("natural") or "@" in c)]
    grouped = per_seed.groupby(keys, sort=False)
    mean = grouped[metrics].mean()
    mean["seeds"] = grouped.size()
    aa = [c for c in metrics if c.endswith("(aa)") or c.startswith("strong@")]
    if aa:
        mean["seeds (aa)"] = grouped[aa[0]].count()
    counts = [c for c in per_seed.columns if c.startswith("images")]
    if counts:
        mean = mean.join(grouped[counts].max())
    return mean.reset_index(), grouped[metrics].std(ddof=1).where(grouped[metrics].count() > 1).reset_index()


ACCURACY_WORDS = ("natural", "@", "acc", "rate", "cut", "mass", "ASR", "share")


def format_percent(df: pd.DataFrame, *, columns=None):
    """A table for display with its accuracies and rates (fractions) as percentages with one decimal; other
    columns as they are, floats to 3 significant digits. ``columns`` (default: every float column whose name
    holds one of ``ACCURACY_WORDS``) chooses which. The CSVs keep the fractions."""
    if columns is None:
        columns = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])
                   and any(w in str(c) for w in ACCURACY_WORDS)]
    rest = {c: "{:.3g}" for c in df.columns if pd.api.types.is_float_dtype(df[c]) and c not in columns}
    return df.style.format({**rest, **{c: "{:.1%}" for c in columns}}, na_rep="-").hide(axis="index")


def format_mean_std(mean: pd.DataFrame, std: pd.DataFrame, keys=("method",)) -> pd.DataFrame:
    """``"71.0 ± 1.2"`` strings (percent) for display; the CSVs keep the fractions."""
    keys = list(keys)
    m, s = mean.set_index(keys), std.set_index(keys)
    cols = [c for c in m.columns if c.startswith("natural") or "@" in c]
    fmt = lambda a, b: f"{100 * a:.1f}" + (f" ± {100 * b:.1f}" if pd.notna(b) else "")
    return pd.DataFrame({c: [fmt(a, b) for a, b in zip(m[c], s[c])] for c in cols}, index=m.index)
