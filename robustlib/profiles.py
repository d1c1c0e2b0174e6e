"""Named profiles: every hyperparameter of a run in one frozen dataclass.

One notebook serves every profile: its papermill ``parameters`` cell names a profile and a dict of
overrides, and :func:`robustlib.config.setup` turns them into a :class:`~robustlib.config.RunConfig`.

This module sits at the bottom of the data flow and imports nothing from the rest of the package: a field
is checked here for its type and range (a ``ValueError`` naming it). Names that refer to a registry
(datasets, models) are checked against ``REGISTRIES``, which :mod:`robustlib.data` and
:mod:`robustlib.models` fill when they are imported (``import robustlib`` imports both), and again by
:func:`robustlib.config.get_profile` for the profiles defined here before the registries existed.

Where Section V.A of the paper is silent (the pretraining schedule, the number of pretraining epochs) the
value is our choice and says so in the field's comment.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

SCHEDULES = ("cosine", "multistep", "constant")
REPLAYS = ("concat", "alternating")
INITS = ("pretrained", "scratch")
# readings of DRA's eps (Algorithm 1 does not say): an L1 budget per image, or eps per value (L1 = eps*N), or
# eps/255 per value (L1 = eps*N/255); "paper" decides among them by Section V-C's calibration point
DRA_BUDGETS = ("per_image", "per_value", "per_value/255")
# the attacks of standard AutoAttack (and its extras), as pyautoattack names them
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
# "datasets" -> robustlib.data.DATASETS, "models" -> robustlib.models.MODELS, filled by those modules
REGISTRIES: dict = {}


def parse_eps(value) -> tuple[float, str]:
    """``"8/255"`` -> ``(0.03137..., "8/255")``; ``0.1`` -> ``(0.1, "0.1")``. The label keeps eps exactly as given."""
    if isinstance(value, str):
        try:
            num, slash, den = value.strip().partition("/")      # "8/255", "2.55/255", "0.1"
            v = float(Fraction(num)) / float(Fraction(den)) if slash else float(Fraction(num))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read eps {value!r}; write it like 0.1 or 8/255") from None
        return v, value.strip()
    if isinstance(value, Fraction):
        return float(value), str(value)
    try:
        return float(value), f"{float(value):g}"
    except (TypeError, ValueError):
        raise ValueError(f"cannot read eps {value!r}; write it like 0.1 or 8/255") from None


@dataclass(frozen=True)
class Profile:
    """All hyperparameters of one run. Build with :func:`get_profile`; change with ``dataclasses.replace``."""

    name: str
    description: str
    dataset: str
    model: str
    width: int | None = None          # base channel width for the ResNets (64 = the paper's)
    augment: bool = False             # Section V.A: random crop (+ flip on CIFAR-10)
    in_memory: bool = True            # keep the whole dataset as one tensor on the device
    train_limit: int | None = None    # use only the first n training images (smoke runs)
    test_limit: int | None = None
    # phase 1, vanilla pretraining: SGD, momentum 0.9, weight decay 2e-4, batch 128 (Section V.A)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)   # fractions of the epochs, for "multistep" (x0.1 each)
    seed: int = 0
    expected_clean_acc: float | None = None       # a floor the notebooks assert on full (non-smoke) runs
    # attacks and evaluation: eps in [0, 1] pixel units, written as given ("8/255" stays 8/255)
    eval_eps: tuple[str, ...] = ("0.05", "0.1", "0.2")
    eval_limit: int | None = None     # test images for robust evaluation (None: the whole test split)
    autoattack_limit: int = 100       # images for AutoAttack, minutes per hundred on a CPU
    autoattack_attacks: tuple[str, ...] | None = None   # None: standard AutoAttack; or a subset, e.g. APGD-CE + APGD-T
    dra_p: float = 1 / 3              # DRA: fraction of values that keep their perturbation
    dra_steps: int = 10               # DRA: T
    dra_eps_grid: tuple[float, ...] = (1.0, 2.0, 4.0)   # per-image L1 budgets for Fig. 4
    calib_dra_eps: float = 2.0        # the DRA eps whose equal-strength PGD eps notebook 01 searches (Table V)
    # how DRA's eps reads (DRA_BUDGETS), or "paper": per image or per value, as Section V-C's calibration point
    # decides on theta_std (DRA eps = 1 as strong as PGD eps = 2.55/255; notebook 01, dra_budget.json)
    dra_budget: str = "per_image"
    # the unit the paper writes this dataset's radii in, which a per-value DRA eps is read in: "1" ([0, 1],
    # MNIST: eps 0.1, 0.3) or "1/255" (pixel levels, CIFAR-10: eps 2, 5, 8). An assumption, not a measurement:
    # the paper's one calibration point is on CIFAR-10
    paper_unit: str = "1"
    # a DRA fine-tune is refused if DRA at ft_eps_max changes fewer than this share of theta_std's correct
    # held-out predictions: it would train against a no-op
    dra_min_effect: float = 0.05
    # phase 2, the transfer adversarial fine-tune (Section V.A), and the baselines
    val_size: int = 180               # images held out of the training split to pick the best checkpoint
    seeds: tuple[int, ...] = (0,)     # notebook 03 trains every method once per seed
    main_eps: str = "0.1"             # L∞ radius of the PGD training adversary and of checkpoint selection
    ft_epochs: int = 12
    ft_train_limit: int | None = None  # fine-tune (and control, baselines from theta_std) on a seeded subset
    ft_lr: float = 0.01               # the paper does not give the fine-tune learning rate: our choice
    # the paper gives no fine-tune schedule. Constant: every phase (the decaying adversarial phase, the clean
    # tail) trains at the same rate; under cosine the tail's epochs ran at 1-10% of it, so by construction they
    # could hardly act (quick, one seed, cb5e99d: 99.17% natural with and without the tail)
    ft_lr_schedule: str = "constant"
    ft_eps_max: float = 6.0           # DRA per-image L1 budget, decaying linearly to ft_eps_min ...
    ft_eps_min: float = 1.5
    ft_decay: float = 5 / 6           # ... over this fraction of the epochs; then clean samples only
    ft_clean_tail: bool = True
    ft_replay: str = "concat"         # 1:1 clean/adversarial in one batch, or "alternating" updates
    ft_replay_ratio: float = 1.0      # clean : adversarial weight of the replay (1 = the paper's 1:1)
    at_steps: int = 10                # PGD steps of every PGD training adversary, step 2.5*eps/steps
    trades_betas: tuple[float, ...] = (1.0, 0.1)   # TRADES 1/λ values in the table
    mart_beta: float = 6.0
    baseline_init: str = "pretrained"  # Madry/TRADES/MART start from theta_std, or "scratch"
    lam_lr: float = 1.0               # dual-ascent step of the constrained fine-tune (eq. 9)
    # notebook 04, the ablations
    backbones: tuple[str, ...] = ()   # Table IV: "model" or "model/width", smallest first ("resnet18/8")
    ablation_seeds: tuple[int, ...] = (0,)
    smoke: bool = False

    def __post_init__(self):
        def bad(name, value, allowed):
            raise ValueError(f"profile field {name}={value!r} is invalid: expected {allowed}")

        for name in ("epochs", "batch_size", "ft_epochs", "at_steps", "dra_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, getattr(self, name), "an integer >= 1")
        for name in ("train_limit", "test_limit", "width", "eval_limit", "ft_train_limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                bad(name, v, "None or an integer >= 1")
        for name in ("lr", "ft_lr"):
            if not getattr(self, name) > 0:
                bad(name, getattr(self, name), "a float > 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", self.momentum, "a float in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, "a float >= 0")
        for name in ("lr_schedule", "ft_lr_schedule"):
            if getattr(self, name) not in SCHEDULES:
                bad(name, getattr(self, name), f"one of {', '.join(SCHEDULES)}")
        if not 0 <= self.ft_eps_min <= self.ft_eps_max:
            bad("ft_eps_min/ft_eps_max", (self.ft_eps_min, self.ft_eps_max), "0 <= ft_eps_min <= ft_eps_max")
        if not 0 < self.ft_decay <= 1:
            bad("ft_decay", self.ft_decay, "a fraction in (0, 1]")
        if not self.ft_replay_ratio >= 0:
            bad("ft_replay_ratio", self.ft_replay_ratio, "a clean:adversarial weight ratio >= 0")
        if not self.ablation_seeds or any(not isinstance(v, int) for v in self.ablation_seeds):
            bad("ablation_seeds", self.ablation_seeds, "a non-empty tuple of integers")
        if self.ft_replay not in REPLAYS:
            bad("ft_replay", self.ft_replay, " or ".join(REPLAYS))
        if self.baseline_init not in INITS:
            bad("baseline_init", self.baseline_init, " or ".join(INITS))
        if not self.seeds or any(not isinstance(v, int) for v in self.seeds):
            bad("seeds", self.seeds, "a non-empty tuple of integers")
        if not isinstance(self.val_size, int) or self.val_size < 0:
            bad("val_size", self.val_size, "an integer >= 0")
        if any(not 0 < m < 1 for m in self.milestones):
            bad("milestones", self.milestones, "fractions of the epochs in (0, 1)")
        if not 0 <= self.dra_p <= 1:
            bad("dra_p", self.dra_p, "a fraction in [0, 1]")
        if self.dra_budget not in (*DRA_BUDGETS, "paper"):
            bad("dra_budget", self.dra_budget, f"one of {', '.join(DRA_BUDGETS)} or 'paper'")
        if self.paper_unit not in ("1", "1/255"):
            bad("paper_unit", self.paper_unit, "'1' or '1/255'")
        if not 0 <= self.dra_min_effect < 1:
            bad("dra_min_effect", self.dra_min_effect, "a fraction in [0, 1)")
        if any(e <= 0 for e in (*self.dra_eps_grid, self.calib_dra_eps)):
            bad("dra_eps_grid/calib_dra_eps", (self.dra_eps_grid, self.calib_dra_eps), "budgets > 0")
        for e in (*self.eval_eps, self.main_eps):
            try:
                if not 0 < parse_eps(e)[0] <= 1:
                    raise ValueError
            except ValueError:
                bad("eval_eps", self.eval_eps, "values in (0, 1] such as '0.1' or '8/255'")
        if self.autoattack_attacks is not None and (not self.autoattack_attacks
                                                    or set(self.autoattack_attacks) - set(AUTOATTACK_ATTACKS)):
            bad("autoattack_attacks", self.autoattack_attacks, f"None or a subset of {', '.join(AUTOATTACK_ATTACKS)}")
        if self.expected_clean_acc is not None and not 0 <= self.expected_clean_acc <= 1:
            bad("expected_clean_acc", self.expected_clean_acc, "None or a fraction in [0, 1]")
        for b in self.backbones:
            if not str(b).partition("/")[2].isdigit() and "/" in str(b):
                bad("backbones", self.backbones, "entries like 'resnet18/8': a model, optionally /width")
        if "datasets" in REGISTRIES and "models" in REGISTRIES:
            self.check_names(REGISTRIES["datasets"], REGISTRIES["models"])

    def check_names(self, datasets, models) -> None:
        """The fields that name registry entries: ``dataset`` in ``datasets``, ``model``/``backbones`` in ``models``.

        Called by :mod:`robustlib.config` with the live registries, so an entry registered from outside counts.
        """
        if self.dataset not in datasets:
            raise ValueError(f"profile field dataset={self.dataset!r} is invalid: expected one of "
                             f"{', '.join(datasets)}")
        if self.model not in models:
            raise ValueError(f"profile field model={self.model!r} is invalid: expected one of {', '.join(models)}")
        for b in self.backbones:
            if str(b).partition("/")[0] not in models:
                raise ValueError(f"profile field backbones={self.backbones!r} is invalid: expected entries like "
                                 f"'resnet18/8': a model of {', '.join(models)}, optionally /width")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def shrink_for_smoke(self) -> "Profile":
        """The tiny setting used under test: same code path, a few hundred images, two epochs."""
        return dataclasses.replace(
            self,
            epochs=2,
            train_limit=min(self.train_limit or 512, 512),
            test_limit=min(self.test_limit or 256, 256),
            eval_limit=min(self.eval_limit or 64, 64),
            val_size=min(self.val_size, 64),
            ft_epochs=2,
            seeds=self.seeds[:1],
            ablation_seeds=self.ablation_seeds[:1],
            backbones=tuple(_narrow(b) for b in self.backbones[:2]),
            autoattack_limit=min(self.autoattack_limit, 8),
            width=min(self.width, 8) if self.width else self.width,
            expected_clean_acc=None,
            dra_min_effect=0.0,   # two epochs on 512 images: no evidence either way about a budget's effect
            smoke=True,
        )


def _narrow(backbone: str) -> str:
    """A backbone entry at a smoke-test width: ``resnet50/64`` -> ``resnet50/4``, ``resnet18/8`` -> ``resnet18/4``."""
    name, _, width = backbone.partition("/")
    return f"{name}/{max(2, min(int(width), 8) // 2)}" if width else name


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="quick",
            description="scikit-learn's 8x8 digits, a small CNN, CPU: the whole sequence in minutes",
            dataset="digits",
            model="digits-cnn",
            augment=True,         # a 1-pixel random crop: 97.5% -> 99.4% clean accuracy on seed 0
            epochs=30,
            lr=0.05,
            expected_clean_acc=0.97,
            eval_eps=("0.05", "0.1", "0.2"),
            autoattack_limit=100,
            ft_epochs=10,         # 8 adversarial + 2 clean epochs: keeps notebooks 00-05 under 15 min on 2 cores
            # On Ours (seed 0, 120 images) FAB-T and Square broke no point that APGD-CE + APGD-T had left,
            # and took 35 of standard AutoAttack's 51 s; the paper profiles run all four.
            autoattack_attacks=("apgd-ce", "apgd-t"),
            # T = 5 (the paper's CIFAR-10 setting) instead of 10: on seed 0, pgd@0.1 of Ours 70.8% vs 71.7%,
            # Madry 79.4% vs 78.9%, at ~35% less training time
            dra_steps=5, at_steps=5,
            seeds=(0, 1, 2),
            ablation_seeds=(0, 1, 2),                 # every verdict rests on >= 3 paired seeds
            backbones=("resnet18/4", "resnet18/8"),   # Table IV as a width ladder of narrow ResNet-18s
        ),
        Profile(
            name="fashion",
            description="Fashion-MNIST with the TRADES SmallCNN on CPU: tens of minutes",
            dataset="fashion-mnist",
            model="smallcnn",
            augment=False,        # crop + flip underfits in 10 epochs: 90.0% with it (lr 0.02), 92.6% without (lr 0.05)
            epochs=10,
            lr=0.05,
            expected_clean_acc=0.90,
            eval_eps=("0.03", "0.05", "0.1"),
            eval_limit=1000,
            autoattack_limit=200,
            autoattack_attacks=("apgd-ce", "apgd-t"),   # as on quick: the full four take too long on a CPU
            val_size=2000,
            main_eps="0.1",                   # TRADES' Fashion-MNIST radius
            dra_steps=5, at_steps=5,          # the paper's CIFAR-10 T; a DRA epoch costs ~T+2 clean epochs
            # a CPU budget: every fine-tune (and the control and baselines from theta_std) sees a fixed
            # 10,000-image subset of the training split for 6 epochs; theta_std was trained on all of it
            ft_train_limit=10_000,
            ft_epochs=6,
            # chosen on the held-out split with scripts/select_finetune.py (README, "fashion"): the largest
            # budget that kept held-out clean accuracy within half a point of the control; 8 -> 2 lost 1.0
            # (selected under the cosine fine-tune schedule, before ft_lr_schedule became constant)
            ft_eps_max=4.0, ft_eps_min=1.0,
            seeds=(0, 1, 2), ablation_seeds=(0, 1, 2),   # every verdict rests on >= 3 paired seeds
        ),
        Profile(
            name="paper-mnist",
            description="Section V.A on MNIST (GPU): the 2-conv + 2-FC CNN of TRADES",
            dataset="mnist",
            model="mnist-cnn",
            augment=True,
            epochs=50,            # the paper does not state the pretraining length: our choice
            lr=0.01,              # TRADES' MNIST learning rate
            expected_clean_acc=0.99,
            eval_eps=("0.1", "0.3"),          # Section V.A
            autoattack_limit=1000,
            dra_p=2 / 3, dra_steps=20,        # Section V.A: p = 2/3, 20 iterations (eps = 0.1)
            dra_budget="paper",               # per image, eps = 0.1 would change almost nothing: decided by evidence
            dra_eps_grid=(0.03, 0.1, 0.3),    # per value ([0, 1] units) if the "paper" decision says so
            calib_dra_eps=0.1,                # Table V at the fine-tune's own budget
            val_size=5000,
            main_eps="0.3",
            ft_epochs=50, ft_eps_max=0.1, ft_eps_min=0.1,   # Section V.A: eps = 0.1 for 50 epochs,
            ft_clean_tail=False,                            # no clean tail is mentioned for MNIST
            at_steps=40,                                   # TRADES' MNIST setting
            trades_betas=(1.0, 0.5, 0.1),                  # Table II
            baseline_init="scratch",
        ),
        Profile(
            name="paper-cifar10",
            description="Section V.A on CIFAR-10 (GPU): ResNet-50, crop + flip",
            dataset="cifar10",
            model="resnet50",
            width=64,
            augment=True,
            epochs=200,           # the paper does not state the pretraining schedule: the common recipe
            lr=0.1,
            lr_schedule="multistep",
            milestones=(0.5, 0.75),
            expected_clean_acc=0.93,
            eval_eps=("2/255", "5/255", "8/255"),   # Section V.A
            autoattack_limit=1000,
            dra_p=1 / 3, dra_steps=5,         # Section V.A: 5 iterations; p = 1/3 is Table V's "ours + DRA" row
            dra_eps_grid=(1.0, 2.0),          # Fig. 4
            calib_dra_eps=1.0,                # Section V-C: DRA eps = 1 ~ PGD eps = 2.55/255
            dra_budget="paper", paper_unit="1/255",   # the reading that reproduces that point on theta_std
            val_size=1000,
            main_eps="8/255",
            ft_epochs=60, ft_eps_max=2.0, ft_eps_min=0.5,   # Section V.A: 2 -> 0.5 over 50 epochs, 10 clean
            trades_betas=(0.05, 0.01),                      # Table III
            mart_beta=5.0,                                  # MART's CIFAR-10 setting
            baseline_init="scratch",
            backbones=("resnet18/64", "resnet34/64", "resnet50/64", "resnet101/64"),   # Table IV
        ),
    ]
}


class Recorder:
    """A read-only view of a profile that records every field read: the settings a run consumes.

    A run is built from ``Recorder(profile)``; ``recorder.read`` then holds exactly the fields that built
    it, which is what its checkpoint is checked against (no hand-kept list of fields to forget).
    """

    def __init__(self, profile: Profile):
        object.__setattr__(self, "_profile", profile)
        object.__setattr__(self, "read", {})

    def __getattr__(self, name: str):
        value = getattr(self._profile, name)
        self.read[name] = value
        return value

    def __setattr__(self, name, value):
        raise AttributeError("a profile is read-only; use dataclasses.replace or a variant")
