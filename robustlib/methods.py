"""Training methods by name, each run from a profile: the paper's fine-tune, its baselines, and controls.

``train_method(cfg, "ours")`` fine-tunes theta_std with DRA; ``"trades"``, ``"madry"``, ``"mart"`` are
the baselines (from theta_std or from scratch, ``baseline_init``); ``"control"`` is theta_std trained for
the same number of extra epochs on clean data only, so that a gain is not just more training. Any method
takes any training attack of :data:`~robustlib.attacks.ATTACKS` (``adversary="pgd"`` or ``"dra"``), as
Table V needs.

A run is three steps: :func:`build_run` reads the profile (through a
:class:`~robustlib.profiles.Recorder`, so the run's settings are exactly the fields it read) and makes the
objective, the adversary and the data; :func:`train_method` loads its checkpoint if those settings match,
else trains it with :func:`~robustlib.train.fit`; the caller evaluates (:func:`~robustlib.evaluate.evaluate_table`).
Every run checkpoints each epoch, keeps the last and the best (by robust accuracy on the held-out split),
and resumes.

Adding a method is one :class:`Method` entry in ``METHODS``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import pandas as pd
import torch
from torch import nn

from .attacks import ATTACKS, PGD_STEP_FACTOR, fingerprint
from .config import RunConfig, apply_overrides, get_profile
from .data import ImageData, load_splits, split_validation
from .evaluate import (accuracy, calibrate_pgd_to_dra, dra_readings, evaluate_table, fast_iterates, predict,
                       robust_fraction, run_attack)
from . import launch, masking
from .io import RobustlibError, read_json, write_json
from .losses import OBJECTIVES, Adversary, Averaged, Constrained, EpsSchedule
from .models import model_spec
from .paper import CALIBRATION
from .profiles import DRA_BUDGETS, Recorder, parse_eps
from .train import (RECIPE, build_fast, fast_plan, fit, load_best, load_run, loader_plan, make_train_loader, pretrain,
                    read_data_settings, resolve_precision, run_meta, vanilla_name)


@dataclass(frozen=True)
class Method:
    """A ``METHODS`` entry: the objective a method trains and how a profile sets it up.

    objective : a key of :data:`~robustlib.losses.OBJECTIVES` or a loss function; ``None`` is theta_std
        itself (vanilla).
    adversary : its default training attack, a key of :data:`~robustlib.attacks.ATTACKS` (``None``: clean).
    baseline : trained from theta_std or from scratch, as the profile's ``baseline_init`` says; otherwise
        always from theta_std for the fine-tune's epochs.
    finetune : the paper's budget schedule (``ft_eps_max`` -> ``ft_eps_min``, then clean-only epochs).
    beta : the profile's default for the objective's ``beta`` (TRADES' 1/λ, MART's β); the run's name
        carries its value (``trades-b1-s0``).
    setup : ``setup(p, run) -> dict`` of :func:`~robustlib.train.fit`'s ``objective``, ``replay`` and
        ``clean_weight`` where they come from the profile ``p`` (``run`` has ``theta_std``, ``train``, ``seed``).
    attack_options : extra settings per training attack (Madry et al. start PGD at a random point).
    check : ``check(p)`` refuses a profile this method cannot train, before theta_std is trained or loaded.
    """

    objective: str | Callable | None
    adversary: str | None = None
    baseline: bool = False
    finetune: bool = False
    beta: Callable | None = None
    setup: Callable | None = None
    attack_options: dict = field(default_factory=dict)
    check: Callable | None = None


def _ours(p, run) -> dict:
    """Section IV-A: the 1:1 replay of clean and DRA samples, concatenated in one batch or alternating."""
    if p.ft_replay == "alternating":
        return {"objective": OBJECTIVES["madry"], "replay": "alternating", "clean_weight": p.ft_replay_ratio}
    return {"objective": partial(OBJECTIVES["finetune"], clean_weight=p.ft_replay_ratio)}


def _concat_only(p) -> None:
    if p.ft_replay != "concat":
        raise RobustlibError("the constrained fine-tune weighs both losses in one update; use ft_replay='concat'")


def _ours_constrained(p, run) -> dict:
    """Eq. (8-9): λ by dual ascent on the clean loss of (up to 2,000 of) the held-out images, which neither
    θ_std nor the fine-tune trains on; without held-out images, on 1,000 training images."""
    sub = run["val"] if len(run["val"]) else run["train"]
    sub = sub.subset(min(2000 if len(run["val"]) else 1000, len(sub)), seed=run["seed"])
    return {"objective": Constrained.for_theta_std(run["theta_std"], (sub.float_x(), sub.y), lam_lr=p.lam_lr)}


def _constant_rate(p) -> None:
    _concat_only(p)
    if p.ft_lr_schedule != "constant":
        raise RobustlibError(f"ours-swa averages the weights along the fine-tune, which SWA does at a constant rate; "
                             f"ft_lr_schedule={p.ft_lr_schedule!r}: set it to 'constant'")


def _ours_averaged(p, run) -> dict:
    """The recipe with SWA (:class:`~robustlib.losses.Averaged`) over the second half of the fine-tune's epochs."""
    return {"objective": Averaged(p.ft_epochs, p.ft_epochs // 2, clean_weight=p.ft_replay_ratio)}


def schedules(p) -> list[tuple[str, str, dict]]:
    """The fine-tune's budget schedules notebook 04 compares (Section IV-A: the linear decay and the clean tail,
    each on or off), as ``(label, variant tag, profile fields)``: the decay runs from ``ft_eps_max`` to
    ``ft_eps_min`` (to a quarter of it where the profile has no decay); "constant" keeps ``ft_eps_max``. The
    frontier's variant ``ours-const`` is the last of them (:data:`robustlib.frontier.SCHEDULES`)."""
    lo = p.ft_eps_min if p.ft_eps_min < p.ft_eps_max else p.ft_eps_max / 4    # a decay even where the profile has none
    return [("linear decay + clean tail", "lin-tail", dict(ft_eps_min=lo, ft_clean_tail=True)),
            ("linear decay, no tail", "lin-notail", dict(ft_eps_min=lo, ft_clean_tail=False)),
            ("constant eps_max + clean tail", "const-tail", dict(ft_eps_min=p.ft_eps_max, ft_clean_tail=True)),
            ("constant eps_max, no tail", "const-notail", dict(ft_eps_min=p.ft_eps_max, ft_clean_tail=False))]


TABLE_I_BETAS = (3.0,)   # notebook 00's TRADES sweep (Table I) adds these 1/λ to the profile's, outside smoke


def table_i_betas(p) -> list[float]:
    """Notebook 00's TRADES 1/λ values: the profile's ``trades_betas`` and, outside smoke, :data:`TABLE_I_BETAS`."""
    return sorted(set(p.trades_betas) | (set() if p.smoke else set(TABLE_I_BETAS)))


RANDOM_START = {"pgd": {"random_start": True}}    # Madry et al.; TRADES and MART start at x + 0.001 N(0, 1)

METHODS: dict[str, Method] = {
    "vanilla": Method(None),
    "control": Method("clean"),
    "madry": Method("madry", "pgd", baseline=True, attack_options=RANDOM_START),
    "madry-mix": Method("madry-mix", "pgd", baseline=True, attack_options=RANDOM_START),
    "trades": Method("trades", "pgd", baseline=True, beta=lambda p: p.trades_betas[0]),
    "mart": Method("mart", "pgd", baseline=True, beta=lambda p: p.mart_beta),
    "ours": Method("finetune", "dra", finetune=True, setup=_ours),
    "ours-constrained": Method("constrained", "dra", finetune=True, setup=_ours_constrained, check=_concat_only),
    # issue 16's variants of the recipe, judged on the frontier (notebook 06): the fine-tune's schedule and start,
    # with TRADES' objective (CE(x) + 1/λ KL(f(x) || f(x')), x' = DRA maximising the KL: Table V's TRADES + DRA,
    # inside the paper's recipe) at the profile's first TRADES 1/λ, its own objective in place of the replay (it
    # reads neither ft_replay nor ft_replay_ratio); and with weight averaging (SWA, losses.Averaged)
    "ours-trades": Method("trades", "dra", finetune=True, beta=lambda p: p.trades_betas[0]),
    "ours-swa": Method("averaged", "dra", finetune=True, setup=_ours_averaged, check=_constant_rate),
}


def _check_attack(attack: str) -> None:
    if attack not in ATTACKS or ATTACKS[attack].budget is None:
        usable = [k for k, a in ATTACKS.items() if a.budget is not None]
        raise RobustlibError(f"unknown training adversary {attack!r}; choose one of {', '.join(usable)}")


def make_adversary(p, method: Method, attack: str, epochs: int) -> Adversary:
    """The training adversary: the attack's budget from the profile (:attr:`Attack.budget`), on the
    fine-tune's schedule for a fine-tune (same max/min ratio in the attack's own units), constant otherwise."""
    _check_attack(attack)
    eps_max, eps_min, settings = ATTACKS[attack].budget(p, method.finetune)
    eps = EpsSchedule(eps_max, eps_min, epochs, p.ft_decay, p.ft_clean_tail) if method.finetune else eps_max
    return Adversary(attack, eps=eps, **settings, **method.attack_options.get(attack, {}))


def run_name(method: str, seed: int, adversary: str | None = None, beta: float | None = None, tag: str = "") -> str:
    """``trades-b1-s0``, ``madry-dra-s0``, ``ours-p0-s2``: the checkpoint and metrics name of one run."""
    parts = [method]
    if adversary and adversary != METHODS[method].adversary:
        parts.append(adversary)
    if beta is not None:
        parts.append(f"b{beta:g}")
    if tag:
        parts.append(tag)
    return "-".join(parts) + f"-s{seed}"


def _objective(m: Method, p, run: dict, beta) -> dict:
    if m.setup is not None:
        return m.setup(p, run)
    fn = OBJECTIVES[m.objective] if isinstance(m.objective, str) else m.objective
    return {"objective": partial(fn, beta=beta) if beta is not None else fn}


def heldout_metrics(model: nn.Module, x, y, *, eps: float, steps: int, precision: str = "fp32") -> dict:
    """What picks a run's best epoch: clean and PGD accuracy on the held-out split (PGD-``steps``, step
    2.5*eps/steps, from the clean point; an image counts as robust only if it is also correct clean).
    ``precision="bf16"``: the PGD iterates in bf16, as the tables' (the decisions stay float32)."""
    if len(y) == 0:
        return {}
    with fast_iterates(model, precision=precision):
        xa = run_attack("pgd", model, x, y, eps=eps, steps=steps, step_factor=PGD_STEP_FACTOR)
    return {"val_acc": accuracy(model, x, y), "val_robust_acc": robust_fraction(model, x, xa, y)}


def build_run(cfg: RunConfig, method: str, *, seed: int | None = None, adversary: str | None = None,
              beta: float | None = None, data=None, progress: bool = True, check: bool = True) -> dict:
    """Everything one run needs, read from the profile, before anything is trained or loaded.

    ``check``: after each epoch, the held-out check (:func:`heldout_metrics`), which draws the learning curve's
    held-out columns and picks the best checkpoint. ``check=False`` skips it where neither is read (a grid of
    variants judged by their last model). Its settings are part of the run either way: it never changes the
    weights, so a run trained without it is the run trained with it.

    Returns a dict with ``name``, ``meta`` (what its checkpoint must match: the settings read, their hash,
    theta_std's fingerprint), ``fit`` (the keyword arguments of :func:`~robustlib.train.fit`), ``train``
    (its training images), ``adversary``, ``spec`` (its model), ``theta_std`` and ``scratch``.
    """
    if method not in METHODS:
        raise RobustlibError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    m = METHODS[method]
    attack = adversary or m.adversary
    if attack:
        _check_attack(attack)               # before theta_std is trained or loaded
    if m.check:
        m.check(Recorder(cfg.profile))
    seed = cfg.profile.seed if seed is None else seed
    train, test = data or load_splits(cfg.profile, cfg.data_root)
    if attack == "dra":
        cfg = resolve_dra_budget(cfg, (train, test), progress=progress)
    p = Recorder(cfg.profile)
    if m.check:
        m.check(p)
    theta_std, _ = pretrain(cfg, data=(train, test), seed=seed, progress=progress)
    read_data_settings(p)
    train, val = split_validation(train, p.val_size, p.seed)
    scratch = m.baseline and p.baseline_init == "scratch"
    epochs = p.epochs if scratch else p.ft_epochs
    if not scratch and p.ft_train_limit:
        train = train.subset(p.ft_train_limit, seed=p.seed)   # a CPU budget: the paper fine-tunes on all of it
    adv = make_adversary(p, m, attack, epochs) if attack else None
    theta_fp = fingerprint(theta_std)       # hashed once: the no-op check's cache key and the checkpoint's identity
    if attack == "dra":
        check_dra_effect(cfg, theta_std, val, adv, theta_fp=theta_fp)
    # the default comes from the profile, but the run is named by its value: the name is what is checked
    beta = (m.beta(cfg.profile) if beta is None else beta) if m.beta else None
    run = {"theta_std": theta_std, "train": train, "val": val, "seed": seed}
    fit_kwargs = dict(_objective(m, p, run, beta), adversary=adv, epochs=epochs,
                      lr=p.lr if scratch else p.ft_lr, momentum=p.momentum, weight_decay=p.weight_decay,
                      lr_schedule=p.lr_schedule if scratch else p.ft_lr_schedule, milestones=p.milestones)
    main = parse_eps(p.main_eps)[0]
    xv, yv = val.float_x(), val.y
    # its PGD iterates at the attack precision of the tables (fashion: bf16 on a CPU that has it);
    # read only where the profile does not say float32, so its runs keep the settings they had (recorded as the
    # profile says it, "auto" included, like the training precision: the same settings on every machine)
    iterates = "fp32"
    if cfg.profile.attack_precision != "fp32":
        iterates = resolve_precision(p.attack_precision, cfg.device)
    fit_kwargs["evaluate"] = partial(heldout_metrics, x=xv, y=yv, eps=main, steps=p.at_steps, precision=iterates)
    fit_kwargs["best_metric"] = "val_robust_acc" if len(yv) else None
    if not check:
        fit_kwargs.update(evaluate=None, best_metric=None)
    loader = loader_plan(p)                 # _train makes the loader, only when it trains
    if fit_kwargs.get("replay") == "alternating":
        # two updates per batch (clean, then adversarial): twice the batch makes as many updates, on as many
        # samples, as the concatenated replay's one update on clean + adversarial copies
        loader["batch_size"] *= 2
    spec, fast = model_spec(p), fast_plan(p)   # the model it builds (its checkpoint records the same spec)
    fit_kwargs["precision"] = resolve_precision(fast["precision"], cfg.device)
    if adv is not None and p.fold_bn:      # read only where it acts: the runs that attack
        fit_kwargs["fold_bn"] = True
    name = run_name(method, seed, adversary, beta, cfg.tag)
    meta = run_meta(cfg, name, p.read, theta_std="scratch" if scratch else theta_fp, recipe=RECIPE,
                    **({"beta": beta} if beta is not None else {}))
    return {"name": name, "meta": meta, "fit": fit_kwargs, "train": train, "loader": loader, "adversary": adv,
            "spec": spec, "fast": fast,
            "theta_std": theta_std, "scratch": scratch, "seed": seed}


def _train(cfg: RunConfig, run: dict, progress: bool):
    torch.manual_seed(run["seed"])
    model = build_fast(run["spec"], cfg.device, run["fast"])
    if not run["scratch"]:
        model.load_state_dict(run["theta_std"].state_dict())   # Section IV-A: every layer starts from theta_std
    loader = make_train_loader(cfg, run["train"], seed=run["seed"], plan=run["loader"])
    history = fit(model, loader, **run["fit"], device=cfg.device, run_dir=cfg.run_dir, name=run["name"],
                  meta=run["meta"], seed=run["seed"], progress=progress)
    adv = run["adversary"]
    if adv is not None:
        history["train_eps"] = [adv.eps_at(e) for e in range(len(history))]
    return model.to(memory_format=torch.contiguous_format).eval(), history   # evaluated as a loaded one


def train_method(cfg: RunConfig, method: str, *, seed: int | None = None, adversary: str | None = None,
                 beta: float | None = None, retrain: bool = False, progress: bool = True, data=None,
                 check: bool = True) -> dict:
    """Train (or load) one method for a profile and seed: build the run, then load it or train it.

    Parameters
    ----------
    method : one of ``METHODS``.
    adversary : a training attack of ``ATTACKS`` (``"pgd"``, ``"dra"``); default the method's own.
    beta : TRADES' 1/λ (default: the profile's first) or MART's β (default: the profile's).
    check : the per-epoch held-out check (:func:`build_run`); without it, ``best`` is the last model.

    Returns
    -------
    dict with ``model`` (last epoch), ``best`` (best held-out robust accuracy), ``history`` (DataFrame),
    ``name`` and ``adversary`` (a description with its settings).
    """
    if method in METHODS and METHODS[method].objective is None:      # vanilla: theta_std itself
        train, test = data or load_splits(cfg.profile, cfg.data_root)
        theta_std, hist = pretrain(cfg, data=(train, test), seed=seed, progress=progress)
        return {"model": theta_std, "best": theta_std, "history": hist, "name": vanilla_name(cfg, seed),
                "adversary": "none"}
    run = build_run(cfg, method, seed=seed, adversary=adversary, beta=beta, data=data, progress=progress,
                    check=check)
    described = run["adversary"].describe() if run["adversary"] else "none"
    loaded = load_run(cfg, run["name"], run["meta"], retrain=retrain)
    if loaded is None and launch.wanted(cfg):      # nproc > 1: torchrun's processes train it, then it is loaded
        launch.train_elsewhere(cfg, "robustlib.methods:train_method", {"method": method, "seed": seed,
                               "adversary": adversary, "beta": beta, "check": check}, name=run["name"], data=data,
                               progress=progress)
        loaded = launch.finished(load_run(cfg, run["name"], run["meta"]), cfg, run["name"])
    if loaded is None:
        model, history = _train(cfg, run, progress)
        best = load_best(cfg, run["name"], run["meta"])
    else:
        model, history, best = loaded
    return {"model": model, "best": model if best is None else best, "history": history, "name": run["name"],
            "adversary": described}


def train_grid(rows: list[dict], x: torch.Tensor, y: torch.Tensor, *, seeds, eps_list, data=None,
               retrain: bool = False, progress: bool = False, probe_eps=None, probe_n: int = 0,
               probe_steps: int = masking.LONG_STEPS, probe_restarts: int = masking.RESTARTS,
               heldout: tuple | None = None, heldout_eps=None) -> pd.DataFrame:
    """Train (or load) every row for every seed and evaluate it with :func:`~robustlib.evaluate.evaluate_table`:
    one table per seed for all its rows (each model attacked exactly as alone; under ``run --nproc`` one torchrun
    start per table), and one more on the held-out split.

    Each row is a dict with ``name`` (the label in the table), ``cfg`` (a :class:`RunConfig`, often a
    ``cfg.variant(...)``), ``method``, optionally ``adversary`` and ``beta``, and any other keys, which are
    copied as descriptive columns (``p``, ``backbone``, ...). ``retrain`` trains the rows of tagged variants
    again, once each; runs of the untagged configuration (notebook 03's) and theta_std are only loaded. A row's
    own ``retrain`` key (True or False) overrides that choice for it (:func:`robustlib.frontier.sweep` marks the
    untagged runs notebook 03 does not make), and its ``check`` key whether the run keeps the per-epoch held-out
    check. The grid's own rows train without the per-epoch held-out check
    (:func:`build_run`): a grid reads neither their learning curves nor their best checkpoints. The runs it
    borrows (a row whose ``retrain`` is False, or an untagged one: notebook 03's and 00's) keep it wherever they
    are trained first, since notebook 03 reads both.
    Returns one row per (row, seed) with the columns ``method`` (= name), ``natural``, ``pgd@<eps>``,
    ``pgd-rs@<eps>``, ``seed``, ``run`` and the extras; with ``probe_n``, the first seed's rows also carry the
    gradient-masking probes at ``probe_eps`` on ``probe_n`` images, PGD-``probe_steps`` with ``probe_restarts``
    restarts (:func:`robustlib.masking.add_probes`). With ``heldout=(x, y)`` every row also carries
    ``heldout natural`` and ``heldout pgd@<eps>`` for each radius of ``heldout_eps`` (one radius or a list; the
    paper protocol on those images): what a choice among the rows is made on (:func:`robustlib.frontier.select`),
    never the test images.
    """
    if heldout is not None and heldout_eps is None:
        raise RobustlibError("train_grid(heldout=...) needs heldout_eps, the radius (or radii) of the held-out PGD "
                             "columns, e.g. heldout_eps='0.1'")
    heldout_radii = [heldout_eps] if isinstance(heldout_eps, (str, float, int)) else list(heldout_eps or [])
    if heldout is not None and not heldout_radii:
        raise RobustlibError("train_grid(heldout=...) got no radius in heldout_eps: name at least one, e.g. "
                             "heldout_eps=['0.1']")
    if not rows:
        raise RobustlibError("train_grid got no rows: pass at least one dict(name=..., cfg=..., method=...)")
    out, retrained = [], set()
    for seed in seeds:
        runs = []                                          # (name, train_method's result, extra columns) per row
        for row in rows:
            extra = dict(row)
            name, cfg, method = extra.pop("name"), extra.pop("cfg"), extra.pop("method")
            adversary, beta = extra.pop("adversary", None), extra.pop("beta", None)
            key = (cfg.tag, method, adversary, beta, seed)
            own = extra.pop("retrain", bool(cfg.tag))      # a row may say whether it is this grid's own run
            check = extra.pop("check", not own)            # and whether it keeps the per-epoch held-out check
            again = retrain and own and method != "vanilla" and key not in retrained
            retrained.add(key)
            res = train_method(cfg, method, seed=seed, adversary=adversary, beta=beta, data=data, progress=progress,
                               retrain=again, check=check)
            runs.append((name, {k: res[k] for k in ("model", "name", "adversary")}, extra))   # not its best model
        # the seed's runs in one table (and one on the held-out split): each model is attacked with its own seed
        # exactly as alone, and under `run --nproc N` that is one torchrun start per table, not one per run
        names = [name for name, _, _ in runs]
        keys = names if len(set(names)) == len(names) else [f"{i}: {n}" for i, n in enumerate(names)]   # may repeat
        models = {k: res["model"] for k, (_, res, _) in zip(keys, runs)}
        table = evaluate_table(models, x, y, eps_list=eps_list, seed=seed)
        if probe_n and seed == seeds[0]:
            table = masking.add_probes(table, models, x, y, eps=probe_eps, n=probe_n, steps=probe_steps,
                                       restarts=probe_restarts)
        if heldout is not None:
            h = evaluate_table(models, *heldout, eps_list=heldout_radii, protocols=("paper",), seed=seed,
                               fast=False)          # a choice is made on it: float32 on every CPU
            table = table.assign(**{f"heldout {c}": h[c].to_numpy() for c in h.columns
                                    if c == "natural" or c.startswith("pgd@")})
        for i, (name, res, extra) in enumerate(runs):
            out.append(table.iloc[[i]].reset_index(drop=True).assign(
                method=name, seed=seed, run=res["name"], training_adversary=res["adversary"], **extra))
    return pd.concat(out, ignore_index=True)


def heldout(cfg: RunConfig, train: ImageData) -> ImageData:
    """The profile's held-out images: ``val_size`` of the training split (seeded), never trained on. Every
    choice of a training setting (best checkpoint, calibration, budget selection) is made on them."""
    images = split_validation(train, cfg.profile.val_size, cfg.profile.seed)[1]
    if len(images) == 0:
        raise RobustlibError(f"profile {cfg.profile.name!r} holds out no images (val_size=0): a calibration or a "
                             "selection needs them; set val_size in the overrides")
    return images


CALIBRATION_GAP = 0.03   # an equal-strength pair: PGD's robust accuracy within 3 points of DRA's (notebooks 01, 04)


def calibrate(cfg: RunConfig, model: nn.Module, train, *, dra_eps: float | None = None) -> dict:
    """Section V-C's equal-strength pair for this profile, on the held-out split (not the test split): the PGD
    radius (paper protocol) that leaves ``model`` as robust as DRA at ``dra_eps`` (default ``calib_dra_eps``)
    with the profile's p and T. The result of :func:`~robustlib.evaluate.calibrate_pgd_to_dra`, plus
    ``images``: which images it was measured on."""
    p, val = cfg.profile, heldout(cfg, train)
    if p.dra_budget not in DRA_BUDGETS:
        raise RobustlibError(f"dra_budget={p.dra_budget!r} is not resolved: call resolve_dra_budget(cfg, data) first")
    calib = calibrate_pgd_to_dra(model, val.float_x(), val.y, dra_eps=p.calib_dra_eps if dra_eps is None else dra_eps,
                                 p=p.dra_p, steps=p.dra_steps, budget=p.dra_budget)
    return {**calib, "theta_std": fingerprint(model),
            "images": f"held-out split: {len(val)} images of the training split (val_size, seed {p.seed})"}


def budget_decision(cfg: RunConfig, data=None, *, progress: bool = False) -> dict:
    """Section V-C's calibration point on this profile's theta_std (of its seed), on the held-out split:
    :func:`~robustlib.evaluate.dra_readings` at the point's own DRA settings (p = 1/3, T = 5), plus
    ``reading``: the profile's DRA reading it implies.

    The point is a CIFAR-10 statement, eps in pixel levels: it decides *per image or per value*. A per-value
    eps is then read in the unit the paper writes this dataset's radii in, the profile's ``paper_unit``
    (``1/255`` -> ``per_value/255`` on CIFAR-10; ``1`` -> ``per_value`` on MNIST, where the paper writes
    eps = 0.1, 0.3): that unit is an assumption, guarded by ``dra_min_effect``, not a measurement. The
    decision is kept in ``dra_budget.json``, one per run directory, and measured again only when this
    theta_std or the point's settings change.
    """
    p = cfg.profile
    train, test = data or load_splits(p, cfg.data_root)
    theta_std, _ = pretrain(cfg, data=(train, test), progress=progress)
    key = {"theta_std": fingerprint(theta_std), "theta_std_name": vanilla_name(cfg), "paper_unit": p.paper_unit,
           **CALIBRATION}
    path = cfg.path("dra_budget.json")
    entry = read_json(path, default=None)
    if not entry or any(entry.get(k) != v for k, v in key.items()):
        val = heldout(cfg, train)
        found = dra_readings(theta_std, val.float_x(), val.y, p=CALIBRATION["dra_p"], steps=CALIBRATION["dra_steps"],
                             dra_eps=CALIBRATION["dra_eps"], pgd_eps=CALIBRATION["pgd_eps"])
        per_value = "per_value/255" if p.paper_unit == "1/255" else "per_value"
        entry = {**found, **key, "paper_robust_acc": CALIBRATION["robust_acc"],
                 "reading": per_value if found["chosen"] == "per_value/255" else "per_image",
                 "images": f"held-out split: {len(val)} images of the training split"}
        write_json(path, entry)
    return entry


def _unvaried(cfg: RunConfig) -> RunConfig:
    """The profile's own configuration behind a variant (its overrides, none of its variants' changes)."""
    if not cfg.changes:
        return cfg
    try:
        prof = apply_overrides(get_profile(cfg.profile.name), cfg.overrides)
    except (KeyError, ValueError, RobustlibError):
        raise RobustlibError(f"variant {cfg.tag!r} of a profile that cannot be rebuilt by name: resolve the reading on "
                             "the unvaried configuration first (methods.resolve_dra_budget(cfg)), then make variants "
                             "of the result") from None
    return dataclasses.replace(cfg, profile=prof.shrink_for_smoke() if cfg.smoke else prof, changes=())


def resolve_dra_budget(cfg: RunConfig, data=None, *, progress: bool = False) -> RunConfig:
    """``cfg`` with ``dra_budget`` read one way: the profile's own reading, or for ``"paper"`` the reading of
    :func:`budget_decision` on the *unvaried* configuration's theta_std, whichever variant asks: one decision
    per run directory, so that every row of a table (Table IV's backbones, Table V's calibrated budgets,
    Table VI's p) reads eps the same way."""
    if cfg.profile.dra_budget != "paper":
        return cfg
    reading = budget_decision(_unvaried(cfg), data, progress=progress)["reading"]
    return dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, dra_budget=reading))


_EFFECT: dict = {}    # (theta_std, adversary) -> share of predictions DRA changes: measured once per session


def check_dra_effect(cfg: RunConfig, theta_std: nn.Module, val, adversary: Adversary, *, images: int = 512,
                     theta_fp: str | None = None) -> float:
    """Refuse a DRA fine-tune whose attack at its largest budget changes fewer than ``dra_min_effect`` of
    theta_std's correct held-out predictions: it would train against a no-op (a budget read in the wrong
    unit). Returns the share changed; NaN where it is not checked (smoke, no held-out images, ``p = 0``)."""
    floor = cfg.profile.dra_min_effect
    attack = adversary.at(0)
    if not floor or len(val) == 0 or adversary.settings.get("p") == 0:
        return float("nan")     # p = 0 perturbs nothing on purpose: Table VI's ablation row, not a budget slip
    if attack is None:
        raise RobustlibError(f"{adversary.describe()} has a budget of 0 at the first epoch: the fine-tune would train "
                             f"against no attack (that is the control method); raise ft_eps_max")
    key = (theta_fp or fingerprint(theta_std), adversary.describe(), repr(sorted(adversary.settings.items())))
    if key not in _EFFECT:
        x, y = val.float_x()[:images], val.y[:images]
        right = predict(theta_std, x) == y
        x, y = x[right], y[right]
        xa = run_attack(attack, theta_std, x, y)
        _EFFECT[key] = (predict(theta_std, xa) != y).float().mean().item() if len(y) else float("nan")
    share = _EFFECT[key]
    if share != share:      # NaN: no correct prediction to change, so nothing shows the attack does anything
        raise RobustlibError(f"theta_std classifies none of the first {min(images, len(val))} held-out images "
                             f"correctly, so whether {adversary.describe()} changes its predictions cannot be "
                             f"checked; train theta_std again (notebook 02, retrain=True) or set dra_min_effect=0 "
                             f"to skip the check")
    if share < floor:
        p = cfg.profile
        raise RobustlibError(
            f"{adversary.describe()} changes {100 * share:.1f}% of theta_std's correct held-out predictions "
            f"(dra_min_effect={floor:g}): the fine-tune would train against a no-op; read DRA's eps another way "
            f"(dra_budget={p.dra_budget!r}; 'paper' decides it by Section V-C's calibration point) or raise "
            f"ft_eps_max={p.ft_eps_max:g}")
    return share
