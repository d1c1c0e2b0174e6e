"""White-box attacks on images in [0, 1]: FGSM, PGD (eq. 1-2) and DRA (the paper's Algorithm 1).

All attacks are batched, run the model in eval mode and restore its mode, compute gradients with respect
to the input only (no ``.grad`` is left on parameters), and are deterministic under a seed. Budgets are in
[0, 1] pixel units: an L-infinity radius for FGSM/PGD, a per-image L1 budget for DRA. The per-image
reading is the one the paper's calibration supports (Section V-C: DRA eps = 1 and PGD eps = 2.55/255 both
leave 44.5% robust accuracy on a vanilla ResNet-50; Section V-B: DRA eps = 2 "corresponds to eps = 4-5 in
PGD").

``ATTACKS`` is the one registry that evaluation and training share: ``ATTACKS["pgd"](model, x, y, eps=...)``
calls the attack; each entry also says how its settings read (``describe``) and how a profile sets its
budget when it trains a model (``budget``). Every attack takes the same keywords where it needs them
(``eps``, ``loss_fn``, ``x_init``); randomness is an explicit ``seed`` argument, never guessed by name.

Bad inputs are one-line ``ValueError``s before any work where they can be: images that are not floats in
[0, 1] or hold NaN/inf (``x`` and ``x_init``), negative labels (cross-entropy would skip -100, its
``ignore_index``, and leave that image unattacked). Labels may be any integer dtype (they are converted to
int64). What only the model knows is checked at the attack's first forward pass, once per call: a batch
the model cannot take (its shape error, in one line), logits that are NaN/inf, a label with no logit. An
empty batch, and a zero budget (``eps=0``: robust accuracy at eps 0 is clean accuracy), return ``x``
unchanged without running the model.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .io import load_torch, save_torch
from .models import eval_mode, first_nonfinite
from .profiles import AUTOATTACK_ATTACKS, DRA_BUDGETS, parse_eps

# Madry et al.'s PGD step, 2.5 * eps / steps: used by the random-start protocol and every PGD training adversary
PGD_STEP_FACTOR = 2.5

RANK_BY = ("last_grad", "final_grad", "perturbation")
BUDGETS = DRA_BUDGETS   # how DRA's eps reads: per_image (L1 = eps), per_value (L1 = eps*N), per_value/255 (eps*N/255)


def _check_images(x, what: str = "x") -> None:
    """Refuse a batch that is not float images in [0, 1]; NaN/inf first (they pass any range comparison)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{what} must be a float tensor of images in [0, 1]; convert with x.float() / 255")
    if x.dtype in (torch.float16, torch.bfloat16):     # just below 1 their steps are 1/2048 and 1/256
        raise ValueError(f"{what} is {str(x.dtype).removeprefix('torch.')}: at half precision an attack's budget "
                         f"cannot hold (8/255 is 8 bfloat16 steps just below 1); pass float32 images ({what}.float()) "
                         f"and run the model under torch.autocast for speed")
    if not x.numel():
        return
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()           # NaN propagates: one sync for all three
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} holds {int((~torch.isfinite(x)).sum())} non-finite values (NaN/inf); "
                         f"clean the images first")
    if lo < 0 or hi > 1:
        fix = ("attack unnormalised images and put normalisation inside the model" if what == "x" else
               "start from a point of the image box, e.g. its .clamp(0, 1)")
        raise ValueError(f"{what} must lie in [0, 1] (got [{lo:.3g}, {hi:.3g}]); {fix}")


def _check(x: torch.Tensor, y: torch.Tensor, eps: float, x_init: torch.Tensor | None = None) -> torch.Tensor:
    """Refuse bad images, labels, budget or start point in one line; return the labels as int64."""
    _check_images(x)
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (N, ...), got shape {tuple(x.shape)}; add a batch dimension")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex():
        raise ValueError("y must be an integer tensor of class labels, e.g. torch.tensor([3, 1, 4])")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"y must hold one label per image: x has {len(x)} images, y has shape {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"y holds label {int(y.min())}: labels must be class indices >= 0 (cross-entropy skips "
                         f"-100, its ignore_index, so that image would go unattacked)")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if x_init is not None:
        _check_images(x_init, "x_init")
        if x_init.shape != x.shape:
            raise ValueError(f"x_init must have x's shape {tuple(x.shape)}, got {tuple(x_init.shape)}")
    return y.long()


_SHAPE_WORDS = ("size", "shape", "channel", "dimension", "mat1")   # torch's words for an input it cannot take


def label_error(label: int, classes: int) -> ValueError:
    """The error for a label the model has no logit for."""
    return ValueError(f"y holds label {label} but the model gives {classes} logits (classes 0-{classes - 1}); "
                      f"check the labels or the model's num_classes")


def nonfinite_logits(model: nn.Module, x: torch.Tensor, bad: int, n: int) -> ValueError:
    """The error for logits that are NaN/inf on ``bad`` of ``n`` images, naming the cause it finds."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        return ValueError(f"x holds {int((~torch.isfinite(x)).sum())} non-finite values (NaN/inf); "
                          f"clean the images first")
    name = first_nonfinite(model.state_dict().items())
    why = (f"its weights are not finite ({name} holds NaN/inf): reload or retrain it" if name else
           "its weights and inputs are finite, so it overflows: check its last layers")
    return ValueError(f"the model's logits are NaN/inf on {bad} of {n} images; {why}")


def model_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 finite: bool = True) -> torch.Tensor:
    """``model(x)`` checked as a first forward pass: a batch the model cannot take (a shape error), an output
    that is not (N, classes) logits, NaN/inf logits (unless ``finite=False``) and labels ``y`` with no logit
    are one-line ``ValueError``s."""
    try:
        logits = model(x)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, torch.OutOfMemoryError) or not any(w in first.lower() for w in _SHAPE_WORDS):
            raise
        raise ValueError(f"the model cannot take x of shape {tuple(x.shape)}: {first[:200]}; check the "
                         f"dataset/model pair") from None
    if logits.dim() != 2 or len(logits) != len(x):
        raise ValueError(f"the model returns shape {tuple(logits.shape)} for {len(x)} images, not (N, classes) "
                         f"logits; wrap it so that it returns one row of logits per image")
    if len(x):
        zero = torch.zeros((), dtype=torch.long, device=logits.device)
        bad, top = torch.stack([(~torch.isfinite(logits)).any(1).sum() if finite else zero,
                                y.max().to(logits.device) if y is not None else zero]).tolist()   # one sync
        if bad:
            raise nonfinite_logits(model, x, bad, len(x))
        if y is not None and top >= logits.shape[1]:
            raise label_error(top, logits.shape[1])
    return logits


def _check_steps(steps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable | None = None, *,
                   check: bool = False) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to ``x`` only (parameters get no ``.grad``).

    Summing, not averaging, keeps each image's gradient independent of the batch size. ``check``: this is
    the attack's first pass, checked by :func:`model_logits`.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model_logits(model, x, y) if check else model(x)
        loss = loss_fn(logits, y) if loss_fn else F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, loss_fn: Callable | None = None,
         x_init: torch.Tensor | None = None) -> torch.Tensor:
    """Fast gradient sign method, eq. (1): ``x + eps * sign(grad)``, clipped to [0, 1].

    Parameters
    ----------
    eps : L-infinity radius in [0, 1] pixel units (8/255 on CIFAR-10, 0.1 or 0.3 on MNIST).
    loss_fn, x_init : as in :func:`pgd`: the loss to ascend, and the point whose gradient is taken (the step
        is projected back onto the eps-ball around ``x``).

    Returns
    -------
    Adversarial images, same shape as ``x`` (``x`` itself for ``eps=0`` or an empty batch).
    """
    y = _check(x, y, eps, x_init)
    x = x.detach()
    if eps == 0 or not len(x):
        return x.clone()
    start = x if x_init is None else x_init.detach()
    with eval_mode(model):
        adv = start + eps * input_gradient(model, start, y, loss_fn, check=True).sign()
        return (x + (adv - x).clamp(-eps, eps)).clamp(0, 1).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
        step_size: float | None = None, step_factor: float | None = None, random_start: bool = False,
        seed: int | None = 0, x_init: torch.Tensor | None = None, loss_fn: Callable | None = None) -> torch.Tensor:
    """Projected gradient descent, eq. (2): signed steps, projected onto the L-inf ball ∩ [0, 1].

    Parameters
    ----------
    eps : L-infinity radius in [0, 1] pixel units.
    steps : number of gradient steps (each one forward and one backward pass).
    step_size : the step alpha, in pixel units (the paper's protocol: eps / 20 with 20 steps).
    step_factor : the step relative to the budget, ``step_factor * eps / steps`` (1 is the paper's
        protocol, :data:`PGD_STEP_FACTOR` Madry et al.'s); used where ``step_size`` is not given. One of
        the two is required.
    random_start : start from a uniform point in the eps-ball (Madry et al.) instead of ``x``; this
        takes precedence over ``x_init``.
    seed : seeds the random start; ``None`` draws from torch's global generator.
    x_init : start from this point instead (TRADES and MART start from ``x + 0.001 * N(0, 1)``).
    loss_fn : ``loss_fn(logits, y) -> scalar`` to maximise, summed over the batch (default: cross-entropy;
        TRADES maximises the KL divergence to the clean prediction).

    Returns
    -------
    Adversarial images with ``|x_adv - x|_inf <= eps`` and values in [0, 1]. ``eps=0`` is a valid zero
    budget: it returns ``x`` unchanged (robust accuracy at eps 0 is clean accuracy), as does an empty batch.

    Example
    -------
    >>> from robustlib.models import build_model
    >>> m = build_model("digits-cnn", in_channels=1, image_size=8)
    >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> xa = pgd(m, x, y, eps=0.1, steps=5, step_size=0.025)
    >>> bool((xa - x).abs().max() <= 0.1 + 1e-6)
    True
    """
    y = _check(x, y, eps, x_init)
    _check_steps(steps)
    if step_size is None and step_factor is None:
        raise ValueError("pass step_size (pixel units) or step_factor (step = step_factor*eps/steps; 1 is the "
                         "paper's protocol, 2.5 Madry et al.'s)")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if step_size is None and not step_factor > 0:
        raise ValueError(f"step_factor must be > 0, got {step_factor!r}")
    x = x.detach()
    if eps == 0 or not len(x):                   # a zero budget: nothing to search
        return x.clone()
    if step_size is None:
        step_size = step_factor * eps / steps
    with eval_mode(model):
        adv = x.clone() if x_init is None else (x + (x_init.detach() - x).clamp(-eps, eps)).clamp(0, 1)
        if random_start:
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            noise = torch.empty(x.shape).uniform_(-eps, eps, generator=g).to(x.device, x.dtype)
            adv = (x + noise).clamp(0, 1)
        for i in range(steps):
            adv = adv + step_size * input_gradient(model, adv, y, loss_fn, check=i == 0).sign()
            adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)   # eq. (2): Π onto the eps-ball ∩ [0, 1]
    return adv.detach()


def l1_budget(eps: float, n: int, budget: str = "per_image") -> float:
    """The per-image L1 budget that DRA's ``eps`` means under a reading of Algorithm 1, for images of ``n``
    values: ``eps`` (per_image), ``eps * n`` (per_value) or ``eps * n / 255`` (per_value/255)."""
    scale = {"per_image": 1.0, "per_value": float(n), "per_value/255": n / 255}
    if budget not in scale:
        raise ValueError(f"budget must be one of {', '.join(scale)}, got {budget!r}")
    return eps * scale[budget]


def effective_dimension(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """``N_eff = ||g||_1^2 / ||g||_2^2`` per image, ``g`` the input gradient of the cross-entropy at ``x``.
    With ``p < 1``, ``||g||_1^2 / ||g_k||_2^2`` for ``g_k`` the ``k = round(p N)`` largest ``|g|``: DRA's top-p
    mask keeps only those, so its step raises the loss by ``e ||g_k||_2^2 / ||g||_1``.

    It is between 1 (all of the gradient on one value) and N / p (every value equal; N for p = 1); NaN where the gradient is
    exactly zero (a saturated softmax), which medians should skip (``nanmedian``). To first order an L1 step
    of size e along ``g / ||g||_1`` raises the loss by ``e ||g||_2^2 / ||g||_1`` and an L-inf step of size r
    along ``sign(g)`` by ``r ||g||_1``, so DRA (p = 1) and PGD are equally strong when ``e / r = N_eff``.
    """
    with eval_mode(model):
        g = input_gradient(model, x.detach(), y.long(), check=True).flatten(1).double()
    k = max(1, round(p * g.shape[1])) if len(g) else 0
    l2 = g.abs().topk(k, dim=1).values.pow(2).sum(1) if k < g.shape[1] else g.pow(2).sum(1)
    return (g.abs().sum(1).pow(2) / l2).where(l2 > 0, torch.nan).float()   # NaN: no gradient (a saturated image)


def _check_dra(steps, p, rank_by: str, budget: str) -> None:
    _check_steps(steps)
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"p must be a fraction in [0, 1], got {p!r}")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")


def dra(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, p: float, steps: int,
        rank_by: str = "last_grad", budget: str = "per_image", loss_fn: Callable | None = None,
        x_init: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamically Regulated Adversary, Algorithm 1 of the paper (literal reading by default).

    1. ``alpha = eps / T``; ``x_0 = x``.
    2. ``T`` times: ``x_{t+1} = clip[0,1](x_t + alpha * g_t / ||g_t||_1)``, with ``g_t`` the input gradient of
       the cross-entropy at ``x_t`` and ``||g_t||_1`` taken per image over all C*H*W values.
    3. Keep the perturbation only on the ``k = round(p * N)`` values with the largest ``|g|`` of the last
       computed gradient (``g_{T-1}``); restore every other value to the clean one.

    Parameters
    ----------
    eps : L1 budget per image in [0, 1] pixel units (``budget="per_image"``: each step moves an image by
        exactly alpha in L1 before clipping; the module docstring says why this reading), or the average per value
        (``budget="per_value"``, an alternative reading: the L1 budget is ``eps * N``), or the average per value
        in 0-255 units (``budget="per_value/255"``: ``eps * N / 255``, the reading of CIFAR code that writes
        eps in pixel levels). :func:`l1_budget` converts.
    p : fraction in [0, 1] of the N = C*H*W values that keep their perturbation. ``p = 0`` returns ``x``
        (as do ``eps = 0`` and an empty batch).
    steps : T, the number of gradient steps (T forward+backward passes; one more with ``"final_grad"``).
    rank_by : what ranks the values in step 3: ``"last_grad"`` (literal: the last computed gradient,
        ``g_{T-1}``), ``"final_grad"`` (the gradient at the final iterate ``x_T``, one more pass), or
        ``"perturbation"`` (the accumulated ``|x_T - x|``).
    budget : ``"per_image"`` (literal), ``"per_value"`` or ``"per_value/255"``, see ``eps``.
    loss_fn : the loss to ascend, as in :func:`pgd` (default: cross-entropy with ``y``).
    x_init : start the iterations here instead of at ``x`` (TRADES' KL has a zero gradient at ``x``, so its
        reference code starts at ``x + 0.001 N(0, 1)``); the mask still restores unkept values to ``x``.

    Returns
    -------
    Adversarial images, same shape as ``x``, in [0, 1], differing from ``x`` in at most k values per image.

    Example
    -------
    >>> from robustlib.models import build_model
    >>> m = build_model("digits-cnn", in_channels=1, image_size=8)
    >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> xa = dra(m, x, y, eps=1.0, p=1/3, steps=5)
    >>> int(((xa - x) != 0).flatten(1).sum(1).max()) <= round(64 / 3)
    True
    """
    y = _check(x, y, eps, x_init)
    _check_dra(steps, p, rank_by, budget)
    x = x.detach()
    n = x[0].numel() if len(x) else 0
    k = round(p * n)
    if k == 0 or eps == 0:
        return x.clone()
    alpha = l1_budget(eps, n, budget) / steps                            # Algorithm 1, line 1
    with eval_mode(model):
        adv = x.clone() if x_init is None else x_init.detach()
        for i in range(steps):                                             # line 3
            grad = input_gradient(model, adv, y, loss_fn, check=i == 0)
            l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
            adv = (adv + alpha * grad / l1).clamp(0, 1)                   # a zero gradient gives no step
        if rank_by == "final_grad":
            grad = input_gradient(model, adv, y, loss_fn)
        score = (adv - x).abs() if rank_by == "perturbation" else grad.abs()
    # lines 4-5: keep the k most significant values of each image, restore the rest
    top = score.flatten(1).topk(k, dim=1).indices
    keep = torch.zeros_like(score.flatten(1), dtype=torch.bool).scatter_(1, top, True).view_as(x)
    return torch.where(keep, adv, x).detach()


@dataclass(frozen=True)
class Attack:
    """An ``ATTACKS`` entry: the attack function, how its settings read, and its budget as a training adversary.

    ``budget(profile, scheduled)`` returns ``(eps_max, eps_min, settings)``: the budget a profile gives this
    attack when it trains a model (``eps_min`` only when ``scheduled``, else ``None``) and the keyword
    arguments besides ``eps``. It reads only the profile fields it needs, so a run's settings hash holds
    exactly those (:mod:`robustlib.methods`). ``defaults`` are the settings a training adversary
    (:class:`~robustlib.losses.Adversary`) starts from, before its own.
    """

    fn: Callable[..., torch.Tensor]
    describe: Callable[..., str]
    budget: Callable | None = None
    defaults: dict = field(default_factory=dict)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(model, x, y, **kwargs)


def _linf_budget(p, scheduled: bool):
    """An L-inf training attack at the profile's ``main_eps``; a fine-tune's schedule keeps its max/min ratio."""
    main = parse_eps(p.main_eps)[0]
    if not scheduled:
        return main, None, {}
    ratio = p.ft_eps_min / p.ft_eps_max if p.ft_eps_max else 1.0
    return main, main * ratio, {}


def _pgd_budget(p, scheduled: bool):
    # seed=None: the random start (where an objective asks for one) draws from the generator fit seeds per epoch
    eps_max, eps_min, _ = _linf_budget(p, scheduled)
    return eps_max, eps_min, {"steps": p.at_steps, "step_factor": PGD_STEP_FACTOR, "seed": None}


def _describe_pgd(e, steps, step_size=None, step_factor=None, **_) -> str:
    step = f"{step_size:g}" if step_size is not None else f"{step_factor:g}*eps/{steps}"
    return f"PGD-{steps} (eps={e}, step={step})"


def _dra_budget(p, scheduled: bool):
    if p.dra_budget not in BUDGETS:
        raise ValueError(f"dra_budget={p.dra_budget!r} must be resolved to one of {', '.join(BUDGETS)} before a "
                         "DRA adversary is built (robustlib.methods.resolve_dra_budget)")
    settings = {"steps": p.dra_steps, "p": p.dra_p}
    if p.dra_budget != "per_image":            # the default reading is left out of the attack's arguments
        settings["budget"] = p.dra_budget
    return p.ft_eps_max, (p.ft_eps_min if scheduled else None), settings


def _describe_dra(e, steps, p, budget="per_image", **_) -> str:
    unit = "L1" if budget == "per_image" else f"{budget}, L1 = eps*N" + ("/255" if budget.endswith("255") else "")
    return f"DRA (eps={e} {unit}, p={p:.3g}, T={steps})"


ATTACKS: dict[str, Attack] = {
    "fgsm": Attack(fgsm, lambda e, **_: f"FGSM (eps={e})", _linf_budget),
    "pgd": Attack(pgd, _describe_pgd, _pgd_budget, {"step_factor": PGD_STEP_FACTOR}),
    "dra": Attack(dra, _describe_dra, _dra_budget),
}


def fingerprint(model: nn.Module, *tensors: torch.Tensor, **settings) -> str:
    """A short hash of the model's weights, the inputs and the settings: names a theta_std or a resumable chunk."""
    h = hashlib.sha1(repr(sorted(settings.items())).encode())
    for t in [*(v for v in model.state_dict().values()), *tensors]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
               version: str = "standard", attacks=None, batch_size: int = 250, seed: int = 0, state_dir=None,
               chunk_size: int = 500) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020), the reference implementation packaged as ``pyautoattack``.

    ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square with the authors' settings, each on the
    points the previous ones did not break, and returns the worst case per example. ``norm`` is
    ``"Linf"``, ``"L2"`` or ``"L1"``; the L1 version is the strongest reference for DRA's L1 budget.
    ``attacks`` (e.g. ``("apgd-ce", "apgd-t")``) runs only those, in that order, each with its settings in
    the standard version (one APGD restart, nine target classes, ...): a cheaper subset for CPU profiles,
    to be named wherever it is used.

    With ``state_dir`` the evaluation runs in chunks of ``chunk_size`` images and each finished chunk's
    adversarial batch is saved (atomically), so a long evaluation killed half-way resumes where it stopped.
    (pyautoattack's own state file keeps only which points are still robust, not their adversarial
    images, so a batch returned after its resume would not reproduce the accuracy it reports.)

    Returns
    -------
    Adversarial images; for points no attack broke, the clean image. Raises ``RuntimeError`` if the
    accuracy recomputed on the returned batch differs from the one AutoAttack reports.
    """
    from pyautoattack import AutoAttack   # imported here: a heavy import that only AutoAttack's users pay for

    y = _check(x, y, eps)
    if norm not in ("Linf", "L2", "L1"):
        raise ValueError(f"norm must be Linf, L2 or L1, got {norm!r}")
    if attacks is not None:
        attacks = list(attacks)
        unknown = sorted(set(attacks) - set(AUTOATTACK_ATTACKS))
        if unknown or not attacks:
            raise ValueError(f"unknown AutoAttack attacks {unknown or attacks}; choose from {', '.join(AUTOATTACK_ATTACKS)}")
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(x), chunk_size):
            xc, yc = x[start:start + chunk_size].detach(), y[start:start + chunk_size]
            path = None
            if state_dir is not None:
                key = fingerprint(model, xc, yc, eps=eps, norm=norm, version=version, seed=seed,
                                   **({"attacks": ",".join(attacks)} if attacks else {}))
                path = Path(state_dir) / f"autoattack-{norm}-{key}.pt"
                if path.exists():
                    out.append(load_torch(path)["x_adv"].to(x.device))
                    continue
            aa = AutoAttack(model, eps=eps, norm=norm, version=version, device=device, seed=seed)
            if attacks:   # the version's settings, a subset of its attacks (version="custom" would reset them)
                aa.attacks_to_run = attacks
            x_adv, y_adv = aa.run_standard_evaluation(xc.to(device), yc.to(device), batch_size=batch_size)
            with torch.no_grad():
                recomputed = torch.cat([model(x_adv[i:i + batch_size]).argmax(1)
                                        for i in range(0, len(x_adv), batch_size)])
            if not torch.equal(recomputed.cpu() == yc.cpu(), y_adv.cpu() == yc.cpu()):
                raise RuntimeError("AutoAttack's adversarial batch does not reproduce the accuracy it reports: "
                                   "the model is randomised or not deterministic; check it in eval mode")
            if path is not None:
                save_torch({"x_adv": x_adv.detach().cpu()}, path)
            out.append(x_adv.detach().to(x.device))
    return torch.cat(out) if out else x.clone()
