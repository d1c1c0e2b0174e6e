"""Know the cost before paying it: the predicted wall time of notebooks 00-06 for a profile on a device.

    python -m robustlib estimate --profile paper-cifar10 --device cuda

:func:`plan` counts the work of each notebook from the profile alone: every training run the notebook
starts (a run an earlier notebook trained is loaded, not counted twice), for how many epochs on how many
images, with its per-epoch held-out check; and every attack and clean pass, on how many images.
:func:`measure` times each kind of work on the device for a few batches of random images of the dataset's
shape: a training step of each method on each model, one input-gradient pass (an attack step) and one
forward pass per image, a corruption. A step's cost does not depend on the pixels or on the weights, so
random images and untrained weights time it. :func:`estimate` multiplies the two.

What it cannot know, it bounds or names: AutoAttack is counted as if no image fell (its attacks stop early on
the images they break, so the real cost is lower, often far lower on a non-robust model); each notebook
adds :data:`OVERHEAD` seconds for its kernel, imports and figures. ``run`` prints the estimate before a
full run starts.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import pandas as pd
import torch

from .config import RunConfig
from . import frontier, launch
from .corruptions import CORRUPTIONS, corrupt
from .data import DATASETS, ImageData, TensorLoader, load_dataset
from .evaluate import PAPER_STEPS, _pgd_iterates, attack_precision, run_attack, set_attack_precision
from .losses import Adversary, EpsSchedule
from .methods import METHODS, _objective, make_adversary, run_name, schedules, table_i_betas
from .models import FoldedBatchNorm, build_model, model_spec
from .profiles import Profile, Recorder, parse_eps
from .train import build_fast, fast_plan, fit, resolve_precision, vanilla_name

LAUNCH = "launch"      # the unit of one torchrun start (launch.startup_seconds), paid only under --nproc > 1
EXCHANGE = "exchange"  # the unit of one all-reduce of a model's gradient (launch.exchange_seconds), once per step
OVERHEAD = 6.0          # seconds per notebook for its kernel, imports, tables and figures (quick, 2-core CPU)
# AutoAttack's attacks as (input-gradient passes, forward passes) per image if no image falls: APGD 100
# iterations, its targeted versions 9 target classes each, FAB ~1 gradient pass per iteration, Square 5,000
# queries (the standard version's settings)
AUTOATTACK_PASSES = {"apgd-ce": (100, 0), "apgd-t": (900, 0), "fab-t": (900, 0), "square": (0, 5000),
                     "apgd-dlr": (100, 0), "fab": (100, 0)}
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
TOY = "toy"             # notebook 00's 2-D problem: three small MLP fits, timed as they are
REPEATS = 3             # each timing is the least of this many (a shared machine only ever adds time)


@dataclass(frozen=True)
class Work:
    """One item of a notebook's work: ``count`` units of kind ``unit``.

    unit : ``("train", model, method, batch)`` (count: training images, epochs x images per epoch),
        ``("grad", model)`` (count: input-gradient passes x images), ``("eval-pgd", model)`` (the same, in an
        evaluation protocol's PGD or a run's per-epoch held-out check, at the profile's ``attack_precision``), ``("forward", model)`` (images),
        ``("corrupt",)`` (corrupted images), ``(TOY,)`` (count 1), ``(LAUNCH,)`` (torchrun starts: none with one
        process), ``(EXCHANGE, model)`` (count: a training run's updates, each one all-reduce of the gradient:
        none with one process).
    shared : an evaluation table's or masking probes' work (:func:`~robustlib.evaluate.evaluate_table`,
        :func:`~robustlib.masking.add_probes`), which ``nproc`` > 1 processes split among themselves
        (:func:`robustlib.launch.evaluate_elsewhere`).
    """

    notebook: str
    what: str
    unit: tuple
    count: float
    shared: bool = False


def _model_key(p) -> tuple:
    spec = model_spec(p)
    return (spec["name"], spec["width"])


def _sizes(p) -> tuple[int, int]:
    """(training images, test images) the profile uses, from the dataset's known sizes or by loading it."""
    info = DATASETS[p.dataset]
    n_train, n_test = info.sizes if info.sizes else (len(load_dataset(p.dataset, s)) for s in ("train", "test"))
    cap = lambda n, limit: n if limit is None else min(n, limit)
    return cap(n_train, p.train_limit), cap(n_test, p.test_limit)


class _Counter:
    """Collects the work of one sequence; each training run is counted once, in the first notebook that
    asks for it (later notebooks load its checkpoint)."""

    def __init__(self, cfg: RunConfig, done=()):
        self.cfg, self.items, self.trained = cfg, [], set(done)
        self.n_train, self.n_test = _sizes(cfg.profile)

    def add(self, nb: str, what: str, unit: tuple, count: float, shared: bool = False) -> None:
        if count > 0:
            self.items.append(Work(nb, what, unit, float(count), shared))

    def attack(self, nb: str, what: str, model: tuple, images: int, grads: float, forwards: float = 1, *,
               protocol: bool = False, shared: bool = False) -> None:
        """``protocol``: a PGD whose iterates run at the profile's attack_precision (an evaluation protocol's, and
        the per-epoch held-out check's). ``shared``: an evaluation table's (:attr:`Work.shared`)."""
        self.add(nb, what, ("eval-pgd" if protocol else "grad", model), grads * images, shared)
        self.add(nb, f"{what} (predictions)", ("forward", model), forwards * images, shared)

    def pretrain(self, nb: str, cfg: RunConfig, seed: int) -> None:
        name, p = vanilla_name(cfg, seed), cfg.profile
        if name in self.trained:
            return
        self.trained.add(name)
        n = self.n_train - p.val_size
        self.add(nb, f"train {name}", ("train", _model_key(p), "clean", p.batch_size), p.epochs * n)
        self.add(nb, f"train {name}: torchrun start", (LAUNCH,), 1)
        self.add(nb, f"train {name}: gradient exchange", (EXCHANGE, _model_key(p)), p.epochs * n / p.batch_size)
        self.add(nb, f"{name}: held-out accuracy per epoch", ("forward", _model_key(p)), p.epochs * p.val_size)

    def method(self, nb: str, cfg: RunConfig, method: str, seed: int, adversary: str | None = None,
               beta: float | None = None, check: bool = True) -> None:
        """A :func:`~robustlib.methods.train_method` call: its theta_std and, unless trained already, the run
        (``check``: with its per-epoch held-out check)."""
        m, p = METHODS[method], cfg.profile
        self.pretrain(nb, cfg, seed)
        if m.objective is None:
            return
        beta = (m.beta(p) if beta is None else beta) if m.beta else None
        name = run_name(method, seed, adversary, beta, cfg.tag)
        if name in self.trained:
            return
        self.trained.add(name)
        self._run(nb, name, p, m, method, adversary or m.adversary, check)

    def _run(self, nb: str, name: str, p: Profile, m, method: str, attack: str | None, check: bool) -> None:
        scratch = m.baseline and p.baseline_init == "scratch"
        epochs = p.epochs if scratch else p.ft_epochs
        n = self.n_train - p.val_size
        if not scratch and p.ft_train_limit:
            n = min(n, p.ft_train_limit)
        adversarial = epochs
        if m.finetune:
            adversarial = EpsSchedule(p.ft_eps_max, p.ft_eps_min, epochs, p.ft_decay, p.ft_clean_tail).adversarial_epochs
        alternating = m.finetune and m.setup is not None and p.ft_replay == "alternating" and method == "ours"
        batch = p.batch_size * (2 if alternating else 1)
        kind = "clean" if attack is None else (f"{method}+{attack}" + ("/alternating" if alternating else ""))
        model = _model_key(p)
        self.add(nb, f"train {name}", ("train", model, kind, batch), adversarial * n)
        self.add(nb, f"train {name}: torchrun start", (LAUNCH,), 1)
        self.add(nb, f"train {name} (clean tail)", ("train", model, "clean", batch), (epochs - adversarial) * n)
        # one all-reduce per update: batch_size images each (the alternating replay's double batch makes two
        # updates, its clean tail two on the halves; train.batch_updates)
        self.add(nb, f"train {name}: gradient exchange", (EXCHANGE, model), epochs * n / p.batch_size)
        # the per-epoch held-out check: PGD-at_steps and three predictions (methods.heldout_metrics)
        if check:
            self.attack(nb, f"{name}: held-out check per epoch", model, epochs * p.val_size, p.at_steps, 3,
                        protocol=True)    # at the attack precision, as the tables' PGD
        if method == "ours-constrained":     # lambda's clean loss on up to 2,000 held-out images per epoch
            self.add(nb, f"{name}: lambda per epoch", ("forward", model), epochs * min(2000, p.val_size))


def _table(c: _Counter, nb: str, what: str, p: Profile, models: int, eps_list, images: int, calls: int = 1) -> None:
    """:func:`~robustlib.evaluate.evaluate_table`: natural, then the paper and pgd-rs protocols (PGD-20) at each eps;
    ``calls``: how many calls the notebook makes for it (under ``--nproc``, one torchrun start each)."""
    per_model = len(eps_list) * 2 * PAPER_STEPS
    c.attack(nb, what, _model_key(p), images, models * per_model, models * (1 + 2 * 2 * len(eps_list)), protocol=True,
             shared=True)
    c.add(nb, f"{what}: torchrun start", (LAUNCH,), calls)


def _autoattack(c: _Counter, nb: str, what: str, model: tuple, images: int, attacks, shared: bool = False) -> None:
    grads, forwards = map(sum, zip(*(AUTOATTACK_PASSES[a] for a in (attacks or STANDARD))))
    c.attack(nb, f"{what} (AutoAttack, as if no image fell)", model, images, grads, forwards + 2, shared=shared)


def _probes(c: _Counter, nb: str, what: str, model: tuple, images: int, models: int, calls: int = 1) -> None:
    """:func:`robustlib.masking.add_probes`: PGD-20 with a random start, PGD-S x R restarts, PGD-S at eps 0.5,
    split among the processes like a table; ``calls``: how many calls the notebook makes for it (under
    ``--nproc``, one torchrun start each)."""
    p = c.cfg.profile
    c.attack(nb, f"{what} (masking probes)", model, images,
             models * (PAPER_STEPS + p.probe_steps * (p.probe_restarts + 1)), models * (p.probe_restarts + 4), protocol=True,
             shared=True)
    c.add(nb, f"{what} (masking probes): torchrun start", (LAUNCH,), calls)


def _notebook_00(c: _Counter) -> None:
    cfg, p = c.cfg, c.cfg.profile
    c.add("00", "the 2-D toy problem (Fig. 1)", (TOY,), 1)
    betas = table_i_betas(p)
    c.method("00", cfg, "vanilla", p.seed)
    for b in betas:
        c.method("00", cfg, "trades", p.seed, beta=b)
    _table(c, "00", "TRADES sweep table", p, 1 + len(betas), [p.main_eps], _eval_images(c))


def _eval_images(c: _Counter) -> int:
    limit = c.cfg.profile.eval_limit
    return c.n_test if limit is None else min(limit, c.n_test)


def _notebook_01(c: _Counter) -> None:
    p, model, n = c.cfg.profile, _model_key(c.cfg.profile), _eval_images(c)
    c.pretrain("01", c.cfg, p.seed)
    steps = sorted({5, p.dra_steps})
    c.attack("01", "Fig. 4: DRA at each eps, T and p", model, n, len(p.dra_eps_grid) * 7 * sum(steps),
             len(p.dra_eps_grid) * 7 * len(steps))
    c.attack("01", "DRA options", model, n, 5 * p.dra_steps, 5 * 2)
    val = p.val_size
    # the budget decision (PGD-20, N_eff, DRA at two readings, T = 5), the no-op check, the calibration's bisection
    c.attack("01", "DRA budget reading (held-out)", model, val, PAPER_STEPS + 1 + 2 * 5, 6)
    c.attack("01", "no-op check (held-out)", model, min(512, val), p.dra_steps, 3)
    c.attack("01", "calibration: DRA vs PGD bisection (held-out)", model, val, p.dra_steps + 13 * PAPER_STEPS + 1, 30)
    aa = min(p.autoattack_limit, n)
    c.attack("01", "DRA beside AutoAttack-L1", model, aa, 2 * p.dra_steps, 4)
    _autoattack(c, "01", "DRA beside AutoAttack-L1", model, aa, None)


def _notebook_02(c: _Counter) -> None:
    p = c.cfg.profile
    c.pretrain("02", c.cfg, p.seed)
    c.add("02", "clean test report", ("forward", _model_key(p)), c.n_test)


ROWS_03 = ("control", "trades", "madry", "mart", "ours", "ours-constrained")


def _notebook_03(c: _Counter) -> None:
    cfg, p, n = c.cfg, c.cfg.profile, _eval_images(c)
    model, k = _model_key(p), 2 + len(p.trades_betas) + 4
    for seed in p.seeds:
        c.method("03", cfg, "vanilla", seed)
        for method in ROWS_03:
            for b in (p.trades_betas if method == "trades" else [None]):
                c.method("03", cfg, method, seed, beta=b)
        _table(c, "03", f"methods table, seed {seed}", p, k, p.eval_eps, n)
        c.add("03", f"natural-all, seed {seed}", ("forward", model), k * c.n_test)
    aa = min(p.autoattack_limit, n)
    c.attack("03", "strong: PGD-20 with a random start on AutoAttack's images", model, aa, k * PAPER_STEPS, k * 2,
             protocol=True, shared=True)
    _autoattack(c, "03", "strong", model, aa * k, p.autoattack_attacks, shared=True)    # both in the methods table
    _probes(c, "03", "methods table", model, aa, k)
    # last and best of Ours, Ours (constrained), Madry, MART and each TRADES
    _table(c, "03", "last vs best", p, 2 * (4 + len(p.trades_betas)), [p.main_eps], n, calls=4 + len(p.trades_betas))


def _ablation_rows(cfg: RunConfig) -> list[tuple[RunConfig, str, str | None, float | None]]:
    """Notebook 04's runs as (configuration, method, adversary, beta), in its order: Table V at the calibrated
    pair, the p sweep, the schedule, the backbones, the replay (the same variants, tags and fields)."""
    p = cfg.profile
    # Table V's pair comes from notebook 01's calibration: any PGD radius other than main_eps names the same runs
    other = f"{parse_eps(p.main_eps)[0] / 2:.4g}"
    ratio = p.ft_eps_min / p.ft_eps_max if p.ft_eps_max else 0.0
    cal = cfg.variant("cal", main_eps=other, ft_eps_max=p.calib_dra_eps, ft_eps_min=p.calib_dra_eps * ratio)
    rows = [(cal, m, a, p.trades_betas[0] if m == "trades" else None)
            for m in ("madry", "trades", "ours") for a in ("pgd", "dra")]
    rows += [(cfg if abs(q - p.dra_p) < 1e-9 else cfg.variant(f"p{q:.3g}", dra_p=q), "ours", None, None)
             for q in (0.0, 1 / 6, 1 / 3, 1 / 2, 1.0)]
    for _, tag, fields in schedules(p):
        rows.append((cfg.variant(tag, **fields), "ours", None, None))
    for b in p.backbones:
        name, _, width = b.partition("/")
        c = cfg.variant(b.replace("/", "w"), model=name, width=int(width) if width else None)
        rows += [(c, "vanilla", None, None), (c, "ours", None, None)]
    for tag, fields in (("r0.333", dict(ft_replay_ratio=1 / 3)), ("r3", dict(ft_replay_ratio=3.0)),
                        ("alt", dict(ft_replay="alternating"))):
        rows.append((cfg.variant(tag, **fields), "ours", None, None))
    return [(cfg, "ours", None, None)] + rows     # the replay table's first row is the profile's own run


def _notebook_04(c: _Counter) -> None:
    cfg, n = c.cfg, _eval_images(c)
    rows = _ablation_rows(cfg)
    grids = 4 + bool(cfg.profile.backbones)       # Table V, p, schedule, [backbones,] replay: a train_grid each
    for seed in cfg.profile.ablation_seeds:
        for rc, method, adversary, beta in rows:
            c.method("04", rc, method, seed, adversary, beta, check=not rc.tag)   # as methods.train_grid
            _table(c, "04", f"ablation rows, seed {seed}", rc.profile, 1, cfg.profile.eval_eps, n, calls=0)
        c.add("04", f"ablation tables, seed {seed}: torchrun start", (LAUNCH,), grids)   # one table per grid and seed
    aa = min(cfg.profile.autoattack_limit, n)
    for rc, *_ in rows:             # the first seed's rows, one add_probes call per grid
        _probes(c, "04", "ablation rows", _model_key(rc.profile), aa, 1, calls=0)
    c.add("04", "ablation rows (masking probes): torchrun start", (LAUNCH,), grids)


def _notebook_05(c: _Counter) -> None:
    cfg, p, n = c.cfg, c.cfg.profile, _eval_images(c)
    grid = len(CORRUPTIONS) * 5
    for seed in p.seeds:
        for method in ("vanilla", "ours", "trades"):
            c.method("05", cfg, method, seed)
        c.add("05", f"corrupted test images, seed {seed}", ("corrupt",), grid * n)
        c.add("05", f"3 models on every corruption and severity, seed {seed}", ("forward", _model_key(p)),
              3 * (grid + 1) * n)


def _notebook_06(c: _Counter) -> None:
    """The frontier: every run of :func:`robustlib.frontier.sweep` per seed (notebook 03's are loaded), each on
    the methods table's radii and on the held-out split (PGD-20 at main_eps and at frontier_goal_eps, the paper
    protocol); the first seed's runs under the gradient-masking probes."""
    cfg, p, n = c.cfg, c.cfg.profile, _eval_images(c)
    rows = frontier.sweep(cfg)
    for seed in p.seeds:
        for r in rows:
            c.method("06", r["cfg"], r["method"], seed, beta=r.get("beta"), check=r["check"])   # as train_grid
        _table(c, "06", f"frontier table, seed {seed}", p, len(rows), p.eval_eps, n)
        radii = len(frontier.choice_eps(p))          # the held-out PGD at each radius a knob may be chosen at
        c.attack("06", f"frontier, held-out columns, seed {seed}", _model_key(p), p.val_size,
                 len(rows) * radii * PAPER_STEPS, len(rows) * (1 + 2 * radii), shared=True)
        c.add("06", f"frontier, held-out columns, seed {seed}: torchrun start", (LAUNCH,), 1)
    _probes(c, "06", "frontier rows", _model_key(p), min(p.autoattack_limit, n), len(rows))   # as train_grid's


NOTEBOOKS = {"00": _notebook_00, "01": _notebook_01, "02": _notebook_02, "03": _notebook_03, "04": _notebook_04,
             "05": _notebook_05, "06": _notebook_06}


def finished_runs(cfg: RunConfig) -> set[str]:
    """The runs whose final checkpoint the run directory holds (``checkpoints/<name>.pt``): loaded, not trained."""
    folder = cfg.path("checkpoints")
    return {f.name[:-3] for f in folder.glob("*.pt") if not f.name.endswith((".last.pt", ".best.pt"))} \
        if folder.is_dir() else set()


def _per_image(cfg: RunConfig) -> RunConfig:
    """A DRA budget read ``"paper"`` counted as ``per_image``: the reading changes a budget, not a step's cost."""
    if cfg.profile.dra_budget != "paper":
        return cfg
    return dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, dra_budget="per_image"))


def plan(cfg: RunConfig, only: list[str] | None = None, done=()) -> tuple[list[Work], set[str]]:
    """The work of the notebooks (all, or ``only`` these, e.g. ``["03"]``), and the names of the training runs
    they start; runs named in ``done`` (:func:`finished_runs`) are loaded, not counted. With nothing done, the
    names are the checkpoints a fresh run directory ends with."""
    c = _Counter(_per_image(cfg), done)
    for nb, count in NOTEBOOKS.items():
        if only is None or nb in only:
            count(c)
    return c.items, c.trained - set(done)


# --- timing each kind of work on the device ----------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(fn, device: torch.device, repeats: int = 1) -> float:
    """Seconds ``fn()`` takes on ``device``: the least of ``repeats`` calls (what else runs only adds time)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _profile_for(p: Profile, model: tuple) -> Profile:
    name, width = model
    return p if (p.model, p.width) == (name, width) else dataclasses.replace(p, model=name, width=width)


def _random_images(p: Profile, n: int) -> ImageData:
    info, g = DATASETS[p.dataset], torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, info.in_channels, info.image_size, info.image_size), dtype=torch.uint8, generator=g)
    return ImageData(p.dataset, "train", x, torch.randint(0, info.num_classes, (n,), generator=g))


def _fit_kwargs(p: Profile, kind: str) -> dict:
    """``fit``'s objective, adversary and replay for a training kind (``"clean"``, ``"trades+pgd"``,
    ``"ours+dra/alternating"``), as :func:`~robustlib.methods.build_run` sets them up (the constrained
    fine-tune and the averaged one are timed as the fine-tune: lambda's update is counted apart)."""
    if kind == "clean":
        return {"objective": "clean"}
    method, _, rest = kind.partition("+")
    attack, _, replay = rest.partition("/")
    # the constrained and the averaged fine-tunes train as the fine-tune does: λ's update is counted apart, and
    # the average costs one copy of the weights per epoch
    m = METHODS["ours" if method in ("ours-constrained", "ours-swa") else method]
    q = dataclasses.replace(p, ft_replay=replay or "concat")
    epochs = q.epochs if m.baseline and q.baseline_init == "scratch" else q.ft_epochs
    beta = m.beta(q) if m.beta else None
    return {**_objective(m, q, {}, beta), "adversary": make_adversary(Recorder(q), m, attack, epochs)}


def _time_training(p: Profile, unit: tuple, device: torch.device, batches: int) -> float:
    """Seconds per training image: one warm-up batch, then ``batches`` batches of the real ``fit``."""
    _, model, kind, batch = unit
    q = _profile_for(p, model)
    net = build_fast(model_spec(q), device, fast_plan(q))          # the fast paths the runs train with
    kwargs = dict(_fit_kwargs(q, kind), lr=1e-3, lr_schedule="constant", device=device, progress=False,
                  precision=resolve_precision(q.precision, device), fold_bn=q.fold_bn and kind != "clean")

    def loader(n_batches):
        return TensorLoader(_random_images(q, batch * n_batches), batch_size=batch, shuffle=True,
                            augment=q.augment, device=device, in_memory=q.in_memory)

    fit(net, loader(1), epochs=1, **kwargs)
    timed = loader(batches)
    seconds = _clock(lambda: fit(net, timed, epochs=1, **kwargs), device, REPEATS)
    if kwargs["fold_bn"]:     # the view is traced once per fit call: once per run, not per few batches as here
        seconds -= min(seconds / 2, _clock(lambda: FoldedBatchNorm(net), device, REPEATS))
    return seconds / (batches * batch)


def _time_passes(p: Profile, model: tuple, device: torch.device, batches: int) -> dict:
    """Seconds per image of one input-gradient pass (a PGD step; in fp32, and at the profile's attack_precision
    as an evaluation protocol and the per-epoch held-out check run it) and of one forward pass, on batches of 256."""
    q = _profile_for(p, model)
    net = build_model(**model_spec(q)).to(device).eval()
    data = _random_images(q, 256)
    x, y = data.float_x().to(device), data.y.to(device)
    steps = 5 * batches
    run_attack("pgd", net, x, y, eps=0.03, steps=1, step_size=0.01)
    grad = _clock(lambda: run_attack("pgd", net, x, y, eps=0.03, steps=steps, step_size=0.01), device, REPEATS)
    fast = resolve_precision(p.attack_precision, device)
    if fast == "fp32":
        protocol = grad
    else:
        kept = attack_precision()
        set_attack_precision(fast)
        try:
            _pgd_iterates(net, x, y, batch_size=256, eps=0.03, steps=1, step_size=0.01)
            protocol = _clock(lambda: _pgd_iterates(net, x, y, batch_size=256, eps=0.03, steps=steps, step_size=0.01),
                              device, REPEATS)
        finally:
            set_attack_precision(kept)

    def forwards():
        with torch.no_grad():
            for _ in range(steps):
                net(x)
    forward = _clock(forwards, device, REPEATS)
    return {("grad", model): grad / (steps * 256), ("eval-pgd", model): protocol / (steps * 256),
            ("forward", model): forward / (steps * 256)}


def _time_corruption(p: Profile) -> float:
    """Seconds per image of one corruption at severity 3, the mean over the suite (on the CPU, as run)."""
    x = _random_images(p, 32).float_x()
    cpu = torch.device("cpu")
    return sum(_clock(lambda n=n: corrupt(x, n, 3, seed=0), cpu, REPEATS) for n in CORRUPTIONS) / (32 * len(CORRUPTIONS))


def _time_toy() -> float:
    """Notebook 00's 2-D problem, its three fits (150, 150 and 75 epochs) timed on 1 and 3 epochs each: a
    call's fixed cost once, and the difference per further epoch."""
    from torch import nn
    x, y = torch.rand(1000, 2), torch.randint(0, 2, (1000,))
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 1000, 100)]
    net = lambda: nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    pgd = Adversary("pgd", eps=0.06, steps=10, step_factor=2.5)
    total = 0.0
    for epochs, kwargs in ((150, {}), (150, dict(objective="madry", adversary=pgd)),
                           (75, dict(objective="finetune", adversary=pgd))):
        one, three = (_clock(lambda e=e: fit(net(), batches, epochs=e, lr=0.1, progress=False, **kwargs),
                             torch.device("cpu"), REPEATS) for e in (1, 3))
        total += one + (epochs - 1) * max(three - one, 0.0) / 2
    return total


def measure(cfg: RunConfig, units, *, batches: int = 3, progress: bool = False) -> dict:
    """Seconds per count of each unit of ``units`` on ``cfg.device`` (``progress``: a line per unit timed)."""
    p, device, out = cfg.profile, cfg.device, {}
    for unit in sorted(set(units), key=str):
        if unit in out:
            continue
        if progress:
            print(f"  timing {' '.join(map(str, unit))}", flush=True)
        if unit[0] == "train":
            out[unit] = _time_training(p, unit, device, batches)
        elif unit[0] in ("grad", "eval-pgd", "forward"):
            out.update(_time_passes(p, unit[1], device, batches))
        elif unit[0] == "corrupt":
            out[unit] = _time_corruption(p)
        elif unit[0] == TOY:
            out[unit] = _time_toy()
    return out


def estimate(cfg: RunConfig, *, only: list[str] | None = None, batches: int = 3, done=(),
             progress: bool = False, nproc: int = 1) -> pd.DataFrame:
    """One row per work item of :func:`plan`: notebook, what, unit, count, seconds (predicted on ``cfg.device``).

    ``nproc`` > 1: training runs under torchrun (:mod:`robustlib.launch`): each process's step is timed at its
    share of the batch (``batch_size / nproc``, where a GPU may be far from full) and the processes are counted
    as working in parallel; each update then exchanges the gradients (a row ``<run>: gradient exchange`` per
    training run: its updates times one all-reduce of the model's whole float32 gradient, timed on the device,
    :func:`robustlib.launch.exchange_seconds`, with as many processes as it has GPUs for, said in the row where
    fewer than ``nproc``; on a single GPU not timed and counted as nothing). An estimate, not a bound:
    DistributedDataParallel overlaps part of the exchange with the backward pass (less time), and sends it
    in buckets and broadcasts the BatchNorm buffers (more, not counted). An evaluation table's and the masking
    probes' attacks (:attr:`Work.shared`) are split among the processes too, with no time for gathering the
    outcomes; the rest of the attacks and evaluation stay in the notebook's one process. Every training run,
    evaluation table and probe call is one torchrun start, timed once here
    (:func:`robustlib.launch.startup_seconds`); with one process, none."""
    items, _ = plan(cfg, only, done)
    cfg = _per_image(cfg)
    def timed(unit):      # what one process does: its share of each training batch
        return (*unit[:3], unit[3] // nproc) if unit[0] == "train" and nproc > 1 else unit

    threads = torch.get_num_threads()
    if nproc > 1 and cfg.device.type == "cpu":    # on a CPU each process gets its share of the threads, as launched
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        with torch.random.fork_rng(devices=[cfg.device] if cfg.device.type == "cuda" else []):
            cost = measure(cfg, [timed(w.unit) for w in items if w.unit[0] not in (LAUNCH, EXCHANGE)],
                           batches=batches, progress=progress)
    finally:
        torch.set_num_threads(threads)
    if progress and nproc > 1:
        print(f"  timing one torchrun start", flush=True)
    cost[(LAUNCH,)] = launch.startup_seconds(nproc, cfg.device.type) if nproc > 1 and any(
        w.unit[0] == LAUNCH for w in items) else 0.0
    note = _exchange_costs(cfg, items, nproc, cost, progress) if nproc > 1 else ""
    rows = [{"notebook": w.notebook, "what": w.what + (note if w.unit[0] == EXCHANGE else ""),
             "unit": " ".join(map(str, timed(w.unit))), "count": w.count,
             "seconds": w.count * cost[timed(w.unit)] / (nproc if w.unit[0] == "train" or w.shared else 1)}
            for w in items if w.unit[0] not in (LAUNCH, EXCHANGE) or nproc > 1]   # one process starts, exchanges nothing
    notebooks = sorted({w.notebook for w in items})
    rows += [{"notebook": nb, "what": "kernel, imports, tables, figures", "unit": "overhead", "count": 1,
              "seconds": OVERHEAD} for nb in notebooks]
    return pd.DataFrame(rows, columns=["notebook", "what", "unit", "count", "seconds"])


def _exchange_costs(cfg: RunConfig, items: list[Work], nproc: int, cost: dict, progress: bool) -> str:
    """Under ``nproc`` processes, the seconds of one all-reduce of each trained model's gradient (float32, every
    trainable parameter) into ``cost`` (timed once per model); returns what the exchange rows add to their
    name: why they count nothing, or how many processes timed them where fewer than ``nproc``."""
    models = sorted({w.unit[1] for w in items if w.unit[0] == EXCHANGE}, key=str)
    if not models:
        return ""
    if progress:
        print("  timing the gradient exchange", flush=True)
    sizes = [sum(t.numel() for t in build_model(**model_spec(_profile_for(cfg.profile, m))).parameters()
                 if t.requires_grad) for m in models]
    seconds = launch.exchange_seconds(nproc, cfg.device.type, sizes)
    cost.update({(EXCHANGE, m): s for m, s in zip(models, seconds or [0.0] * len(models))})
    timed_with = launch.exchange_processes(nproc, cfg.device.type)
    return (" (not timed: one GPU here)" if seconds is None
            else f" (timed with {timed_with} processes)" if timed_with < nproc else "")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def summary(table: pd.DataFrame, *, top: int = 5) -> str:
    """The estimate as text: per notebook (training, attacks, the rest), the total, and the largest items."""
    kind = table["unit"].str.split().str[0].map({"train": "training", "grad": "attacks", "eval-pgd": "attacks",
                                                  LAUNCH: "start-up", EXCHANGE: "exchange"}).fillna("other")
    per = table.assign(kind=kind).pivot_table(index="notebook", columns="kind", values="seconds", aggfunc="sum",
                                              fill_value=0.0)
    lines = [f"{'notebook':<9} {'predicted':>10}   " + "  ".join(f"{k:>9}" for k in per.columns)]
    for nb, row in per.iterrows():
        lines.append(f"{nb:<9} {_duration(row.sum()):>10}   " + "  ".join(f"{_duration(v):>9}" for v in row))
    lines.append(f"{'total':<9} {_duration(per.values.sum()):>10}")
    big = table.groupby("what", sort=False)["seconds"].sum().sort_values(ascending=False).head(top)
    lines.append("largest items: " + "; ".join(f"{w} {_duration(s)}" for w, s in big.items()))
    return "\n".join(lines)
