"""Training objectives, one small class each, and the adversaries that feed them.

An objective is called as ``objective(model, x, y, epoch)`` on a training batch and returns a list of
*updates*: zero-argument functions that each compute ``(loss, logits, parts)`` and are applied one after
another (one optimiser step each). Almost every objective is one update; the alternating replay of the
fine-tune is two (a clean step, then an adversarial step made with the updated weights). ``parts`` holds
the loss terms that are logged per epoch. Adversarial examples are made with the model in eval mode
(the attacks see to it).

- ``Clean``       standard training.
- ``Madry``       eq. (3), the adversarial loss; ``mix=True`` is eq. (4), clean + adversarial.
- ``Trades``      eq. (6): CE(f(x), y) + (1/λ) KL(f(x) || f(x')), x' maximising the KL, started from
                  x + 0.001 N(0, 1) as TRADES' reference code does.
- ``Mart``        MART: boosted CE on x' plus KL(f(x) || f(x')) weighted by 1 - f(x)_y.
- ``Finetune``    the paper (Section IV-A): 1:1 replay of clean and adversarial samples, ε on a schedule,
                  clean samples only in the tail; ``constrained=True`` adds the multiplier λ of eq. (8-9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import dra, pgd
from .models import eval_mode


@dataclass
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
    """Makes training adversarial examples with a named attack and a (possibly scheduled) budget.

    ``pgd``: L∞ radius ε, ``steps`` steps of ``step_factor * ε / steps``. ``dra``: per-image L1 budget ε,
    fraction ``p``, ``steps`` iterations (Algorithm 1). ``eps`` is a number or an :class:`EpsSchedule`.
    """

    def __init__(self, name: str, *, eps, steps: int, p: float = 1 / 3, step_factor: float = 2.5,
                 rank_by: str = "last_grad", budget: str = "per_image", random_start: bool = False):
        if name not in ("pgd", "dra"):
            raise ValueError(f"unknown adversary {name!r}; use 'pgd' or 'dra'")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"adversary steps must be an integer >= 1, got {steps!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"adversary p must be a fraction in [0, 1], got {p!r}")
        if not callable(eps) and not eps >= 0:
            raise ValueError(f"adversary eps must be >= 0 or an EpsSchedule, got {eps!r}")
        self.name, self.eps, self.steps, self.p = name, eps, steps, p
        self.step_factor, self.rank_by, self.budget = step_factor, rank_by, budget
        self.random_start = random_start

    def eps_at(self, epoch: int) -> float:
        return float(self.eps(epoch)) if callable(self.eps) else float(self.eps)

    def __call__(self, model, x, y, *, epoch: int, loss_fn=None, x_init=None) -> torch.Tensor:
        eps = self.eps_at(epoch)
        if eps == 0:
            return x
        if self.name == "pgd":
            return pgd(model, x, y, eps=eps, steps=self.steps, step_size=self.step_factor * eps / self.steps,
                       x_init=x_init, loss_fn=loss_fn, random_start=self.random_start, seed=None)
        return dra(model, x, y, eps=eps, p=self.p, steps=self.steps, rank_by=self.rank_by, budget=self.budget,
                   loss_fn=loss_fn, x_init=x_init)

    def describe(self) -> str:
        e = (f"{self.eps.eps_max:g}->{self.eps.eps_min:g}" if isinstance(self.eps, EpsSchedule) else f"{self.eps:g}")
        if self.name == "pgd":
            return f"PGD-{self.steps} (eps={e}, step={self.step_factor:g}*eps/{self.steps})"
        return f"DRA (eps={e} L1, p={self.p:.3g}, T={self.steps})"


class Objective:
    """Base class: ``__call__`` gives the updates; ``end_epoch`` may adapt state; state is checkpointed."""

    def __call__(self, model: nn.Module, x, y, epoch: int):
        raise NotImplementedError

    def end_epoch(self, model: nn.Module, row: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Clean(Objective):
    def __call__(self, model, x, y, epoch):
        def update():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            return loss, logits, {"clean_loss": loss.detach()}
        return [update]


class Madry(Objective):
    """Eq. (3): minimise the loss at the adversarial point; ``mix=True``: eq. (4), clean + adversarial."""

    def __init__(self, adversary: Adversary, mix: bool = False):
        self.adversary, self.mix = adversary, mix

    def __call__(self, model, x, y, epoch):
        def update():
            x_adv = self.adversary(model, x, y, epoch=epoch)
            logits_adv = model(x_adv)
            adv = F.cross_entropy(logits_adv, y)
            if not self.mix:
                return adv, logits_adv, {"adv_loss": adv.detach()}
            logits = model(x)
            clean = F.cross_entropy(logits, y)
            return clean + adv, logits, {"clean_loss": clean.detach(), "adv_loss": adv.detach()}
        return [update]


def _kl_to(p_clean: torch.Tensor):
    """Loss for the inner maximisation of TRADES: KL(f(x) || f(x')) summed over the batch (as its reference)."""
    return lambda logits, _y: F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="sum")


class Trades(Objective):
    """Eq. (6) with β = 1/λ: CE(f(x), y) + β · KL(f(x) || f(x')), as in TRADES' reference ``trades_loss``."""

    def __init__(self, adversary: Adversary, beta: float):
        self.adversary, self.beta = adversary, beta

    def __call__(self, model, x, y, epoch):
        def update():
            with torch.no_grad(), eval_mode(model):
                p_clean = F.softmax(model(x), 1)
            start = x + 0.001 * torch.randn_like(x)     # TRADES' reference start point
            x_adv = self.adversary(model, x, y, epoch=epoch, loss_fn=_kl_to(p_clean), x_init=start.clamp(0, 1))
            logits = model(x)
            clean = F.cross_entropy(logits, y)
            robust = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
            return clean + self.beta * robust, logits, {"clean_loss": clean.detach(), "kl_loss": robust.detach()}
        return [update]


class Mart(Objective):
    """MART (Wang et al. 2020), after its reference ``mart_loss``: BCE on x' + β KL weighted by 1 - p_y(x)."""

    def __init__(self, adversary: Adversary, beta: float = 6.0):
        self.adversary, self.beta = adversary, beta

    def __call__(self, model, x, y, epoch):
        def update():
            start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
            x_adv = self.adversary(model, x, y, epoch=epoch, x_init=start)
            logits, logits_adv = model(x), model(x_adv)
            adv_probs = F.softmax(logits_adv, 1)
            top2 = adv_probs.argsort(1)[:, -2:]
            new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])   # the strongest wrong class
            bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
            nat_probs = F.softmax(logits, 1)
            true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
            kl = (F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
                  * (1.0000001 - true_probs)).mean()
            return bce + self.beta * kl, logits, {"bce_loss": bce.detach(), "kl_loss": kl.detach()}
        return [update]


class Finetune(Objective):
    """The paper's transfer adversarial fine-tune (Section IV-A, Fig. 2).

    Every batch is replayed 1:1, clean and adversarial: ``replay="concat"`` trains on one batch holding
    both (the mean of the two cross-entropies), ``replay="alternating"`` makes a clean update and then an
    adversarial one. While the schedule gives ε = 0 (the tail) only clean samples are used.

    ``constrained=True`` is the Lagrangian of eq. (8-9), which the paper argues for but does not train:
    loss = CE(x') + λ · CE(x), and after each epoch λ ← max(0, λ + η (E[CE(x; θ)] − E[CE(x; θ_std)])), the
    right-hand side measured once on θ_std. Both expectations are the mean clean cross-entropy, in eval
    mode, on the same fixed sample of training images (``constraint_data``). λ is logged and checkpointed.
    """

    def __init__(self, adversary: Adversary, *, replay: str = "concat", ratio: float = 1.0, constrained: bool = False,
                 constraint_data=None, std_model: nn.Module | None = None, lam: float = 1.0, lam_lr: float = 1.0):
        if replay not in ("concat", "alternating"):
            raise ValueError(f"replay must be 'concat' or 'alternating', got {replay!r}")
        if not ratio >= 0:
            raise ValueError(f"ratio is the clean:adversarial weight and must be >= 0, got {ratio!r}")
        if constrained and ratio != 1.0:
            raise ValueError("the constrained fine-tune sets the clean weight by dual ascent; leave ratio=1")
        if constrained and replay == "alternating":
            raise ValueError("the constrained fine-tune weighs both losses in one update; use replay='concat'")
        if constrained and (constraint_data is None or std_model is None):
            raise ValueError("the constrained fine-tune needs constraint_data=(x, y) and std_model=theta_std")
        self.adversary, self.replay, self.constrained = adversary, replay, constrained
        # weights with mean 1: ratio 1 is the paper's 1:1 replay, the plain mean of the two losses
        self.w_clean, self.w_adv = 2 * ratio / (1 + ratio), 2 / (1 + ratio)
        self.constraint_data, self.lam, self.lam_lr = constraint_data, lam, lam_lr
        self.std_loss = self.clean_loss(std_model) if constrained else None

    @torch.no_grad()
    def clean_loss(self, model: nn.Module) -> float:
        """Mean clean cross-entropy on the fixed constraint sample, in eval mode."""
        x, y = self.constraint_data
        device = next(model.parameters()).device
        with eval_mode(model):
            return F.cross_entropy(model(x.to(device)), y.to(device)).item()

    def __call__(self, model, x, y, epoch):
        clean_only = self.adversary.eps_at(epoch) == 0

        def clean_update(weight=1.0):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            return weight * loss, logits, {"clean_loss": loss.detach()}

        def adv_update():
            x_adv = self.adversary(model, x, y, epoch=epoch)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            return self.w_adv * loss, logits, {"adv_loss": loss.detach()}

        def joint_update():
            x_adv = self.adversary(model, x, y, epoch=epoch)
            logits = model(torch.cat([x, x_adv]))
            clean = F.cross_entropy(logits[:len(x)], y)
            adv = F.cross_entropy(logits[len(x):], y)
            weight = self.lam if self.constrained else 1.0
            loss = (adv + weight * clean) if self.constrained else (self.w_clean * clean + self.w_adv * adv) / 2
            return loss, logits[:len(x)], {"clean_loss": clean.detach(), "adv_loss": adv.detach()}

        if clean_only:
            return [clean_update]
        if self.replay == "alternating":
            return [lambda: clean_update(self.w_clean), adv_update]
        return [joint_update]

    def end_epoch(self, model: nn.Module, row: dict) -> dict:
        if not self.constrained:
            return {}
        gap = self.clean_loss(model) - self.std_loss          # > 0: the constraint of eq. (7) is violated
        lam_used = self.lam
        self.lam = max(0.0, self.lam + self.lam_lr * gap)      # dual ascent on eq. (9)
        return {"lambda": lam_used, "constraint_gap": gap}

    def state_dict(self) -> dict:
        return {"lam": self.lam}

    def load_state_dict(self, state: dict) -> None:
        self.lam = float(state.get("lam", self.lam))
