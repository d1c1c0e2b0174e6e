"""Clean accuracy, per-class accuracy and the confusion matrix, as numbers and pandas DataFrames."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from .attacks import autoattack
from .models import eval_mode


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels (N,) for images ``x`` (N, C, H, W) in [0, 1], in eval mode, batch by batch."""
    device = _device_of(model)
    with eval_mode(model):
        out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Fraction of ``x`` classified as ``y`` (a float in [0, 1])."""
    return (predict(model, x, batch_size=batch_size) == y.cpu()).float().mean().item()


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
    pred = predict(model, x, batch_size=batch_size)
    classes = list(data.info.classes)
    cm = confusion_matrix(y, pred, classes)
    counts = cm.to_numpy().sum(1)
    per_class = pd.DataFrame({
        "class": classes,
        "n": counts,
        "accuracy": np.divide(np.diag(cm.to_numpy()), counts, out=np.full(len(classes), np.nan), where=counts > 0),
    })
    return {"accuracy": (pred == y).float().mean().item(), "per_class": per_class, "confusion": cm}


# --- robustness -----------------------------------------------------------------------------------------

PROTOCOLS = {
    "paper": "PGD-20, step eps/20, no random start (Section V.A)",
    "strong": "worst case per example of PGD-20 (random start, step 2.5*eps/20) and AutoAttack (standard, Linf)",
}


def parse_eps(value) -> tuple[float, str]:
    """``"8/255"`` -> ``(0.03137..., "8/255")``; ``0.1`` -> ``(0.1, "0.1")``. The label keeps eps exactly as given."""
    from fractions import Fraction

    if isinstance(value, str):
        try:
            v = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read eps {value!r}; write it like 0.1 or 8/255") from None
        return v, value.strip()
    if isinstance(value, Fraction):
        return float(value), str(value)
    try:
        return float(value), f"{float(value):g}"
    except (TypeError, ValueError):
        raise ValueError(f"cannot read eps {value!r}; write it like 0.1 or 8/255") from None


def run_attack(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
               **kwargs) -> torch.Tensor:
    """Apply an attack (a function or a name in ``ATTACKS``) batch by batch on the model's device."""
    from .attacks import ATTACKS

    if isinstance(attack, str) and attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    fn = ATTACKS[attack] if isinstance(attack, str) else attack
    device = _device_of(model)
    seed = kwargs.pop("seed", 0)
    uses_seed = getattr(fn, "__name__", "") == "pgd"
    out = []
    for i, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        extra = {"seed": seed + i} if uses_seed else {}
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


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps, protocol: str = "paper",
                    steps: int = 20, batch_size: int = 256, seed: int = 0, state_dir=None,
                    autoattack_attacks=None) -> tuple[dict, torch.Tensor]:
    """Robust accuracy of ``model`` at L-inf radius ``eps`` under a named protocol.

    Protocols
    ---------
    ``paper``  : PGD with ``steps`` steps of eps/steps from the clean point (Section V.A: 20 steps of eps/20).
    ``strong`` : per example, the worst case of PGD (random start, step 2.5*eps/steps) and AutoAttack
                 (standard, Linf); AutoAttack runs only on the points PGD did not break.
                 ``autoattack_attacks`` (e.g. ``("apgd-ce", "apgd-t")``) narrows AutoAttack to a subset
                 of its attacks; the settings string then names them.

    Returns
    -------
    (a dict with eps, protocol, the exact attack settings, clean and robust accuracy and the attack
    success rate; the worst-case adversarial batch)
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    eps_value, label = parse_eps(eps)
    y = y.cpu()
    clean_ok = predict(model, x) == y
    ok, x_adv = clean_ok.clone(), x.clone()
    if protocol == "paper":
        step = eps_value / steps
        settings = f"PGD-{steps}, eps={label}, step={label}/{steps}, no random start"
        x_adv = run_attack("pgd", model, x, y, batch_size=batch_size, eps=eps_value, steps=steps,
                           step_size=step, random_start=False)
        ok &= predict(model, x_adv) == y
        parts = {}
    else:
        step = 2.5 * eps_value / steps
        aa_name = ("AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square" if autoattack_attacks is None
                   else f"AutoAttack subset ({', '.join(a.upper() for a in autoattack_attacks)}")
        settings = (f"worst of PGD-{steps} (eps={label}, step=2.5*{label}/{steps}, random start, seed {seed}) "
                    f"and {aa_name}; Linf, eps={label})")
        xp = run_attack("pgd", model, x, y, batch_size=batch_size, eps=eps_value, steps=steps, step_size=step,
                        random_start=True, seed=seed)
        broke = ok & (predict(model, xp) != y)
        x_adv[broke], ok = xp[broke], ok & ~broke
        parts = {"pgd_rs_acc": ok.float().mean().item()}
        if ok.any():
            xa = autoattack(model, x[ok], y[ok], eps=eps_value, norm="Linf", batch_size=batch_size, seed=seed,
                            state_dir=state_dir, attacks=autoattack_attacks)
            idx = ok.nonzero().squeeze(1)
            broke_aa = predict(model, xa) != y[ok]
            x_adv[idx[broke_aa]] = xa[broke_aa]
            ok[idx[broke_aa]] = False
        parts["autoattack_acc"] = ok.float().mean().item()
    row = {"eps": label, "eps_value": eps_value, "protocol": protocol, "attack": settings, "n": len(y),
           "clean_acc": clean_ok.float().mean().item(), "robust_acc": ok.float().mean().item(),
           "success_rate": (clean_ok & ~ok).sum().item() / max(1, clean_ok.sum().item()), **parts}
    return row, x_adv


def robustness_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_list, protocol: str = "paper",
                     **kwargs) -> pd.DataFrame:
    """One :func:`robust_accuracy` row per eps, as a DataFrame."""
    return pd.DataFrame([robust_accuracy(model, x, y, eps=e, protocol=protocol, **kwargs)[0] for e in eps_list])


def calibrate_pgd_to_dra(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dra_eps: float, p: float,
                         steps: int, pgd_steps: int = 20, hi: float = 0.5, iters: int = 12,
                         batch_size: int = 256) -> dict:
    """Find the PGD eps (paper protocol) that leaves the same robust accuracy as DRA at ``dra_eps``.

    Section V-C makes DRA and PGD "similar attack strengths" this way before comparing them as training
    adversaries (Table V: DRA eps = 1 against PGD eps = 2.55/255 on a vanilla ResNet-50, both 44.5%).
    Bisection on the PGD radius in [0, ``hi``]; robust accuracy falls as the radius grows.

    Returns
    -------
    dict: dra_eps, dra_p, dra_steps, dra_robust_acc, pgd_eps, pgd_robust_acc, pgd_attack, n, and the
    search bracket (lo, hi) the bisection ended with.
    """
    from .attacks import dra

    xd = run_attack(dra, model, x, y, batch_size=batch_size, eps=dra_eps, p=p, steps=steps)
    target = accuracy(model, xd, y)

    def pgd_acc(e):
        return robust_accuracy(model, x, y, eps=e, protocol="paper", steps=pgd_steps, batch_size=batch_size)[0]["robust_acc"]

    lo, best = 0.0, None
    acc_hi = pgd_acc(hi)
    if acc_hi > target:   # even the largest radius is weaker than DRA: report the bracket honestly
        return dict(dra_eps=dra_eps, dra_p=p, dra_steps=steps, dra_robust_acc=target, pgd_eps=hi,
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
    return dict(dra_eps=dra_eps, dra_p=p, dra_steps=steps, dra_robust_acc=target, pgd_eps=best[0],
                pgd_robust_acc=best[1], pgd_attack=f"PGD-{pgd_steps}, step eps/{pgd_steps}, no random start",
                n=len(y), lo=lo, hi=hi, converged=True)
