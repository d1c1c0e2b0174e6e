"""Training objectives as plain losses, and the training adversary: a budget schedule around an attack.

An objective is a function ``loss(model, x, y, *, attack, **hyperparameters) -> (loss, logits, parts)``
on one training batch, in the manner of TRADES' reference ``trades_loss``: ``attack(model, x, y)`` makes the
adversarial batch (it may take ``loss_fn`` and ``x_init``), ``logits`` are the predictions whose accuracy
is logged as ``train_acc``, and ``parts`` are the loss terms logged per epoch. They are registered by name
in ``OBJECTIVES``; :func:`robustlib.train.fit` runs them, and owns the loop, the replay of clean and
adversarial updates and the clean-only tail.

- ``clean``        standard training.
- ``madry``        eq. (3), the loss at the adversarial point.
- ``madry-mix``    eq. (4), clean + adversarial.
- ``trades``       eq. (6): CE(f(x), y) + (1/λ) KL(f(x) || f(x')), x' maximising the KL, started from
                   x + 0.001 N(0, 1) as TRADES' reference code does.
- ``mart``         MART: boosted CE on x' plus KL(f(x) || f(x')) weighted by 1 - f(x)_y.
- ``finetune``     the paper (Section IV-A): one batch holding the clean samples and their adversarial
                   copies, 1:1 (``clean_weight`` sets another ratio).
- ``constrained``  the Lagrangian of eq. (8-9): :class:`Constrained`, which carries its multiplier λ.
- ``averaged``     the fine-tune's objective with stochastic weight averaging over its last epochs
                   (:class:`Averaged`; Izmailov et al. 2018): a variant of the recipe (issue 16's frontier).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import ATTACKS
from .models import eval_mode


@dataclass(frozen=True)
class EpsSchedule:
    """Section V.A: ε decays linearly from ``eps_max`` to ``eps_min`` over the first ``decay`` fraction of the
    epochs; after that, training sees clean samples only (``clean_tail=True``) or stays at ``eps_min``.
    ``kind="constant"`` keeps eps_max throughout the adversarial epochs."""

    eps_max: float
    eps_min: float
    epochs: int
    decay: float = 5 / 6
    clean_tail: bool = True
    kind: str = "linear"

    def __post_init__(self):
        if not 0 <= self.eps_min <= self.eps_max:
            raise ValueError(f"eps schedule needs 0 <= eps_min <= eps_max, got {self.eps_min!r} and {self.eps_max!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"eps schedule epochs must be an integer >= 1, got {self.epochs!r}")
        if self.kind not in ("linear", "constant"):
            raise ValueError(f"eps schedule kind must be 'linear' or 'constant', got {self.kind!r}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"eps schedule decay must be a fraction in (0, 1], got {self.decay!r}")

    @property
    def decay_epochs(self) -> int:
        return max(1, round(self.decay * self.epochs))

    @property
    def adversarial_epochs(self) -> int:
        return self.decay_epochs if self.clean_tail else self.epochs

    def __call__(self, epoch: int) -> float:
        """ε for the 0-based ``epoch``; 0 means clean samples only."""
        n = self.decay_epochs
        if epoch >= n:
            return 0.0 if self.clean_tail else (self.eps_max if self.kind == "constant" else self.eps_min)
        if self.kind == "constant" or n == 1:
            return self.eps_max
        return self.eps_max + (self.eps_min - self.eps_max) * epoch / (n - 1)


class Adversary:
    """A training adversary: the attack ``ATTACKS[attack]`` with a budget that may follow an :class:`EpsSchedule`.

    ``Adversary("dra", eps=EpsSchedule(2.0, 0.5, 12), steps=5, p=1/3)``; every keyword besides ``eps`` is
    passed to the attack as it is (``steps``, ``p``, ``step_factor``, ``random_start``, ...), and checked
    against the attack's signature here. An attack that takes a ``seed`` gets ``seed=None`` unless one is
    given: a training adversary draws from torch's generator, which :func:`~robustlib.train.fit` seeds
    every epoch. ``adversary.at(epoch)`` is the attack of that epoch, ``None`` where the budget is 0.
    """

    def __init__(self, attack: str, *, eps: float | EpsSchedule, **settings):
        if attack not in ATTACKS:
            raise ValueError(f"unknown adversary {attack!r}; choose one of {', '.join(ATTACKS)}")
        steps = settings.get("steps", 1)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"adversary steps must be an integer >= 1, got {steps!r}")
        if not 0 <= settings.get("p", 0) <= 1:
            raise ValueError(f"adversary p must be a fraction in [0, 1], got {settings['p']!r}")
        if not isinstance(eps, EpsSchedule) and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"adversary eps must be a finite number >= 0 or an EpsSchedule, got {eps!r}")
        settings = {**ATTACKS[attack].defaults, **settings}
        try:
            signature = inspect.signature(ATTACKS[attack].fn)
            signature.bind(None, None, None, eps=0.0, **settings)
        except TypeError as e:
            takes = ", ".join(list(signature.parameters)[3:])
            raise ValueError(f"adversary {attack!r}: {e}; it takes {takes}") from None
        except ValueError:                  # a callable whose signature cannot be read: checked when it runs
            signature = None
        if signature is not None and "seed" in signature.parameters:
            settings.setdefault("seed", None)
        self.attack, self.eps, self.settings = attack, eps, dict(settings)

    def eps_at(self, epoch: int) -> float:
        return float(self.eps(epoch)) if isinstance(self.eps, EpsSchedule) else float(self.eps)

    def at(self, epoch: int) -> Callable | None:
        """``attack(model, x, y, **kwargs)`` with this epoch's budget, or ``None`` when the budget is 0."""
        eps = self.eps_at(epoch)
        if eps == 0:
            return None
        fn = ATTACKS[self.attack]
        return lambda model, x, y, **kwargs: fn(model, x, y, eps=eps, **self.settings, **kwargs)

    def describe(self) -> str:
        e = (f"{self.eps.eps_max:g}->{self.eps.eps_min:g}" if isinstance(self.eps, EpsSchedule) else f"{self.eps:g}")
        return ATTACKS[self.attack].describe(e, **self.settings)


# --- objectives -------------------------------------------------------------------------------------------
# Under autocast the model's logits may be bf16; every loss beyond a plain cross-entropy (which autocast runs
# in float32) casts them to float32 first (tests/test_losses.py: the same losses under bf16 autocast on a CPU).

def clean(model: nn.Module, x, y, *, attack=None):
    """Standard training: the cross-entropy on the clean batch."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, logits, {"clean_loss": loss.detach()}


def madry(model: nn.Module, x, y, *, attack):
    """Eq. (3): minimise the loss at the adversarial point."""
    logits_adv = model(attack(model, x, y))
    adv = F.cross_entropy(logits_adv, y)
    return adv, logits_adv, {"adv_loss": adv.detach()}


def madry_mix(model: nn.Module, x, y, *, attack):
    """Eq. (4): clean + adversarial cross-entropy."""
    logits_adv = model(attack(model, x, y))
    adv = F.cross_entropy(logits_adv, y)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss + adv, logits, {"clean_loss": loss.detach(), "adv_loss": adv.detach()}


def _kl_to(p_clean: torch.Tensor):
    """Loss for the inner maximisation of TRADES: KL(f(x) || f(x')) summed over the batch (as its reference)."""
    return lambda logits, _y: F.kl_div(F.log_softmax(logits.float(), 1), p_clean, reduction="sum")


def _near(x: torch.Tensor) -> torch.Tensor:
    """TRADES' and MART's reference start point: x + 0.001 N(0, 1), in [0, 1]."""
    return (x + 0.001 * torch.randn_like(x)).clamp(0, 1)


def trades(model: nn.Module, x, y, *, attack, beta: float):
    """Eq. (6) with β = 1/λ: CE(f(x), y) + β · KL(f(x) || f(x')), as in TRADES' reference ``trades_loss``."""
    target = attack.target(model) if hasattr(attack, "target") else model   # the module the attack runs on
    with torch.no_grad(), eval_mode(target):
        p_clean = F.softmax(target(x).float(), 1)   # (the KL starts at 0 on the very function the attack ascends)
    x_adv = attack(model, x, y, loss_fn=_kl_to(p_clean), x_init=_near(x))
    logits = model(x).float()
    loss = F.cross_entropy(logits, y)
    robust = F.kl_div(F.log_softmax(model(x_adv).float(), 1), F.softmax(logits, 1), reduction="batchmean")
    return loss + beta * robust, logits, {"clean_loss": loss.detach(), "kl_loss": robust.detach()}


def mart(model: nn.Module, x, y, *, attack, beta: float = 6.0):
    """MART (Wang et al. 2020), after its reference ``mart_loss``: BCE on x' + β KL weighted by 1 - p_y(x)."""
    x_adv = attack(model, x, y, x_init=_near(x))
    # float32 from here: under bf16 autocast on a CPU (where softmax keeps bf16) 1.0001 rounds to 1, and the
    # log of 1 - p for a confidently wrong class became log(1e-12): gradients of 1e12, a diverged run
    logits, logits_adv = model(x).float(), model(x_adv).float()
    adv_probs = F.softmax(logits_adv, 1)
    top2 = adv_probs.argsort(1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])   # the strongest wrong class
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, 1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
          * (1.0000001 - true_probs)).mean()
    return bce + beta * kl, logits, {"bce_loss": bce.detach(), "kl_loss": kl.detach()}


def replay_weights(ratio: float) -> tuple[float, float]:
    """Clean and adversarial weights with mean 1: ratio 1 is the paper's 1:1 replay, the plain mean."""
    if not ratio >= 0:
        raise ValueError(f"ratio is the clean:adversarial weight and must be >= 0, got {ratio!r}")
    return 2 * ratio / (1 + ratio), 2 / (1 + ratio)


def _both(model: nn.Module, x, y, attack):
    """One forward pass over the clean batch and its adversarial copy: (clean CE, adversarial CE, clean logits)."""
    x_adv = attack(model, x, y)
    logits = model(torch.cat([x, x_adv]))
    return F.cross_entropy(logits[:len(x)], y), F.cross_entropy(logits[len(x):], y), logits[:len(x)]


def finetune(model: nn.Module, x, y, *, attack, clean_weight: float = 1.0):
    """The paper's transfer fine-tune (Section IV-A, Fig. 2): one batch holding the clean samples and their
    adversarial copies, the mean of the two cross-entropies (``clean_weight`` : 1 for another ratio)."""
    w_clean, w_adv = replay_weights(clean_weight)
    loss, adv, logits = _both(model, x, y, attack)
    return (w_clean * loss + w_adv * adv) / 2, logits, {"clean_loss": loss.detach(), "adv_loss": adv.detach()}


@dataclass
class Constrained:
    """The Lagrangian of eq. (8-9), which the paper argues for but does not train: CE(x') + λ · CE(x),
    stepped on as ``(CE(x') + λ CE(x)) / (1 + λ)``.

    The division keeps the step's size that of the recipe's 1:1 mean (the two are the same update at λ = 1),
    so that comparing the two compares the constraint, not the learning rate; the minimiser over θ for a given
    λ is unchanged. After each epoch λ ← max(0, λ + η (E[CE(x; θ)] − E[CE(x; θ_std)])), both the mean clean
    cross-entropy in eval mode on the same fixed images (``data``: the held-out split, where θ_std's loss is
    not its training loss); ``std_loss`` is the right-hand side, measured once on θ_std
    (:meth:`for_theta_std`). λ is logged and checkpointed. Its two losses share one update, so it needs the
    concatenated replay.
    """

    data: tuple
    std_loss: float
    lam: float = 1.0
    lam_lr: float = 1.0
    concat_only = True
    derived = ("std_loss",)      # measured on θ_std at run time: not part of what identifies a run (train.objective_id)

    @classmethod
    def for_theta_std(cls, theta_std: nn.Module, data: tuple, **kwargs) -> "Constrained":
        return cls(data, mean_clean_loss(theta_std, data), **kwargs)

    def __call__(self, model: nn.Module, x, y, *, attack):
        loss, adv, logits = _both(model, x, y, attack)
        return (adv + self.lam * loss) / (1 + self.lam), logits, {"clean_loss": loss.detach(), "adv_loss": adv.detach()}

    def end_epoch(self, model: nn.Module) -> dict:
        gap = mean_clean_loss(model, self.data) - self.std_loss    # > 0: the constraint of eq. (7) is violated
        lam_used = self.lam
        self.lam = max(0.0, self.lam + self.lam_lr * gap)          # dual ascent on eq. (9)
        return {"lambda": lam_used, "constraint_gap": gap}

    def state_dict(self) -> dict:
        return {"lam": self.lam}

    def load_state_dict(self, state: dict) -> None:
        self.lam = float(state.get("lam", self.lam))


@dataclass
class Averaged:
    """The paper's fine-tune objective (:func:`finetune`) with stochastic weight averaging (SWA; Izmailov et al.,
    "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018): from epoch ``start`` on, the
    weights after each epoch join an equal-weight running mean, and after the last epoch the model *is* that
    mean. SWA needs a constant or cyclic rate, which the fine-tune has (``ft_lr_schedule: constant``).

    Why it might move the frontier: the fine-tune passes from DRA epochs of decaying budget to clean-only
    epochs; the average of the weights along that path is one model between the robust and the accurate
    ends, and averaged weights tend to sit in flatter regions, which generalise better (and, reported for
    adversarial training, overfit less: Gowal et al. 2020 and Rebuffi et al. 2021 keep such an average).

    Buffers (BatchNorm's running statistics) are averaged like the weights, as
    ``torch.optim.swa_utils.AveragedModel(use_buffers=True)`` does, not recomputed on the training data
    (``update_bn``, as the SWA paper does): exact for models without BatchNorm (``quick``'s and ``fashion``'s),
    an approximation for the ResNets. Integer buffers keep their last value. The running mean and its count are
    the objective's state, checkpointed after every epoch, so a resumed run averages the same epochs. ``epochs``
    must be the number ``fit`` trains (a longer fit is refused at the epoch past it); the per-epoch held-out
    metrics and the best checkpoint are of the running weights, except the last epoch's, which are the
    average's.
    """

    epochs: int
    start: int
    clean_weight: float = 1.0

    def __post_init__(self):
        if not 0 <= self.start < self.epochs:
            raise ValueError(f"Averaged(start={self.start}, epochs={self.epochs}): the average must start at an "
                             f"epoch from 0 to epochs - 1")
        self._mean, self._n, self._done = None, 0, 0

    def __call__(self, model: nn.Module, x, y, *, attack):
        return finetune(model, x, y, attack=attack, clean_weight=self.clean_weight)

    @torch.no_grad()
    def end_epoch(self, model: nn.Module) -> dict:
        self._done += 1
        if self._done > self.epochs:
            raise ValueError(f"Averaged(epochs={self.epochs}) was asked to end epoch {self._done}: the model already "
                             f"became the average; give Averaged the number of epochs fit trains")
        if self._done > self.start:
            now = {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}
            if self._mean is None:
                self._mean = {k: v.clone() for k, v in now.items()}
            else:
                for k, v in now.items():
                    self._mean[k] += (v.to(self._mean[k].device) - self._mean[k]) / (self._n + 1)
            self._n += 1
            if self._done == self.epochs:       # the model leaves fit() as the average
                model.load_state_dict({**model.state_dict(), **self._mean})
        return {"averaged_epochs": self._n}

    def state_dict(self) -> dict:
        return {"mean": self._mean, "n": self._n, "done": self._done}

    def load_state_dict(self, state: dict) -> None:
        self._mean, self._n, self._done = state.get("mean"), int(state.get("n", 0)), int(state.get("done", 0))


@torch.no_grad()
def mean_clean_loss(model: nn.Module, data: tuple) -> float:
    """Mean clean cross-entropy of ``model`` on ``data = (x, y)``, in eval mode."""
    x, y = data
    device = next(model.parameters()).device
    with eval_mode(model):
        return F.cross_entropy(model(x.to(device)), y.to(device)).item()


OBJECTIVES: dict[str, Callable] = {
    "clean": clean, "madry": madry, "madry-mix": madry_mix, "trades": trades, "mart": mart,
    "finetune": finetune, "constrained": Constrained, "averaged": Averaged,
}
