"""Training methods by name, each run from a profile: the paper's fine-tune, its baselines, and controls.

``train_method(cfg, "ours")`` fine-tunes theta_std with DRA; ``"trades"``, ``"madry"``, ``"mart"`` are
the baselines (from theta_std or from scratch, ``baseline_init``); ``"control"`` is theta_std trained for
the same number of extra epochs on clean data only, so that a gain is not just more training. Any method
takes any adversary (``adversary="pgd"`` or ``"dra"``), as Table V needs. Every run checkpoints each
epoch, keeps the last and the best (by robust accuracy on the held-out split), and resumes.
"""
from __future__ import annotations

import pandas as pd
import torch

from .data import load_splits, split_validation
from .evaluate import accuracy, parse_eps, robust_accuracy, run_attack
from .io import RobustlibError
from .losses import Adversary, Clean, EpsSchedule, Finetune, Madry, Mart, Trades
from .models import build_model, model_spec
from .train import PRETRAIN_FIELDS, fit, load_checkpoint, make_train_loader, pretrain, run_meta, vanilla_name

METHODS = ("vanilla", "control", "madry", "madry-mix", "trades", "mart", "ours", "ours-constrained")
DEFAULT_ADVERSARY = {"madry": "pgd", "madry-mix": "pgd", "trades": "pgd", "mart": "pgd",
                     "ours": "dra", "ours-constrained": "dra"}


def make_adversary(profile, method: str, name: str, epochs: int) -> Adversary:
    """The training adversary of ``method``: its budget, schedule and steps come from the profile."""
    main = parse_eps(profile.main_eps)[0]
    ours = method.startswith("ours")
    if name == "dra":
        eps = (EpsSchedule(profile.ft_eps_max, profile.ft_eps_min, epochs, profile.ft_decay, profile.ft_clean_tail)
               if ours else profile.ft_eps_max)
        return Adversary("dra", eps=eps, steps=profile.dra_steps, p=profile.dra_p)
    if name == "pgd":
        # ours + PGD keeps the fine-tune's schedule, with the same max/min ratio in L∞ units
        ratio = profile.ft_eps_min / profile.ft_eps_max if profile.ft_eps_max else 1.0
        eps = EpsSchedule(main, main * ratio, epochs, profile.ft_decay, profile.ft_clean_tail) if ours else main
        # Madry et al. start PGD from a random point of the ball; TRADES and MART from x + 0.001 N(0, 1)
        return Adversary("pgd", eps=eps, steps=profile.at_steps, random_start=method.startswith("madry"))
    raise RobustlibError(f"unknown adversary {name!r}; use pgd or dra")


def run_fields(method: str, adversary: str, scratch: bool) -> tuple[str, ...]:
    """The profile fields one run depends on: a checkpoint is refused only when one of them changes.

    Every run depends on theta_std's fields, its epochs and learning rate, the training subset and the
    held-out PGD that picks its best epoch (``main_eps``, ``at_steps``); the fine-tune also on its
    schedule and replay; an adversary on its own settings. So raising ``ft_eps_max`` retrains Ours and
    any DRA-trained run, not the PGD baselines.
    """
    fields = list(PRETRAIN_FIELDS) + ["main_eps", "at_steps"]
    if method in ("madry", "madry-mix", "trades", "mart"):
        fields += ["baseline_init"]              # from scratch or from theta_std: only the baselines
    if not scratch:
        fields += ["ft_epochs", "ft_lr", "ft_lr_schedule", "ft_train_limit"]
    if method.startswith("ours"):
        fields += ["ft_eps_max", "ft_eps_min", "ft_decay", "ft_clean_tail", "ft_replay"]
        fields += ["lam_lr"] if method == "ours-constrained" else ["ft_replay_ratio"]
    if adversary == "dra":
        fields += ["ft_eps_max", "dra_p", "dra_steps"]
    if method == "mart":
        fields += ["mart_beta"]
    return tuple(dict.fromkeys(fields))


def run_name(method: str, seed: int, adversary: str | None = None, beta: float | None = None, tag: str = "") -> str:
    """``trades-b1-s0``, ``madry-dra-s0``, ``ours-p0-s2``: the checkpoint and metrics name of one run."""
    parts = [method]
    if adversary and adversary != DEFAULT_ADVERSARY.get(method):
        parts.append(adversary)
    if beta is not None:
        parts.append(f"b{beta:g}")
    if tag:
        parts.append(tag)
    return "-".join(parts) + f"-s{seed}"


def train_method(cfg, method: str, *, seed: int | None = None, adversary: str | None = None,
                 beta: float | None = None, retrain: bool = False, progress: bool = True, data=None):
    """Train (or load) one method for a profile and seed.

    Parameters
    ----------
    method : one of ``METHODS``.
    adversary : ``"pgd"`` or ``"dra"``; default DRA for ours, PGD for the baselines.
    beta : TRADES' 1/λ (default: the profile's first) or MART's β (default: the profile's).

    Returns
    -------
    dict with ``model`` (last epoch), ``best`` (best held-out robust accuracy), ``history`` (DataFrame),
    ``name`` and ``adversary`` (a description with its settings).
    """
    if method not in METHODS:
        raise RobustlibError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    p = cfg.profile
    seed = p.seed if seed is None else seed
    train, test = data or load_splits(p, cfg.data_root)
    theta_std, vanilla_hist = pretrain(cfg, data=(train, test), seed=seed, progress=progress)
    if method == "vanilla":
        return {"model": theta_std, "best": theta_std, "history": vanilla_hist, "name": vanilla_name(cfg, seed),
                "adversary": "none"}
    train, val = split_validation(train, p.val_size, p.seed)
    scratch = method in ("madry", "madry-mix", "trades", "mart") and p.baseline_init == "scratch"
    epochs = p.epochs if scratch else p.ft_epochs
    if not scratch and p.ft_train_limit:
        train = train.subset(p.ft_train_limit, seed=p.seed)   # a CPU budget: the paper fine-tunes on all of it
    adv_name = adversary or DEFAULT_ADVERSARY.get(method)
    adv = make_adversary(p, method, adv_name, epochs) if adv_name else None
    if method == "trades":
        beta = p.trades_betas[0] if beta is None else beta
    if method == "mart":
        beta = p.mart_beta if beta is None else beta
    objective = {
        "control": lambda: Clean(),
        "madry": lambda: Madry(adv),
        "madry-mix": lambda: Madry(adv, mix=True),
        "trades": lambda: Trades(adv, beta),
        "mart": lambda: Mart(adv, beta),
        "ours": lambda: Finetune(adv, replay=p.ft_replay, ratio=p.ft_replay_ratio),
        "ours-constrained": lambda: Finetune(adv, replay=p.ft_replay, constrained=True, std_model=theta_std,
                                             constraint_data=_constraint_sample(train, seed), lam_lr=p.lam_lr),
    }[method]()
    name = run_name(method, seed, adversary, beta if method in ("trades", "mart") else None, getattr(cfg, "tag", ""))
    fields = run_fields(method, adv_name, scratch)
    meta = {**run_meta(cfg, name), "check_fields": list(fields),
            "theta_std": "scratch" if scratch else fingerprint(theta_std)}
    final = cfg.path("checkpoints", f"{name}.pt")
    if final.exists() and not retrain:
        model, _ = load_checkpoint(final, expect={"kind": name, "model": meta["model"], "theta_std": meta["theta_std"]},
                                   device=cfg.device, profile=p, fields=fields)
        best_path, metrics = cfg.path("checkpoints", f"{name}.best.pt"), cfg.path("metrics", f"{name}.csv")
        best = load_checkpoint(best_path, device=cfg.device)[0] if best_path.exists() else model
        hist = pd.read_csv(metrics) if metrics.exists() else pd.DataFrame()
        return {"model": model, "best": best, "history": hist, "name": name,
                "adversary": adv.describe() if adv else "none"}
    if retrain:
        for suffix in ("pt", "last.pt", "best.pt"):
            cfg.path("checkpoints", f"{name}.{suffix}").unlink(missing_ok=True)
    torch.manual_seed(seed)
    model = build_model(**model_spec(p)).to(cfg.device)
    if not scratch:
        model.load_state_dict(theta_std.state_dict())      # Section IV-A: every layer starts from theta_std
    main = parse_eps(p.main_eps)[0]
    xv, yv = val.float_x(), val.y

    def evaluate(m):
        if len(yv) == 0:
            return {}
        xa = run_attack("pgd", m, xv, yv, eps=main, steps=p.at_steps, step_size=2.5 * main / p.at_steps)
        return {"val_acc": accuracy(m, xv, yv), "val_robust_acc": accuracy(m, xa, yv)}

    history = fit(model, make_train_loader(cfg, train, seed=seed), epochs=epochs,
                  lr=p.lr if scratch else p.ft_lr, momentum=p.momentum, weight_decay=p.weight_decay,
                  lr_schedule=p.lr_schedule if scratch else p.ft_lr_schedule, milestones=p.milestones,
                  objective=objective, evaluate=evaluate, device=cfg.device, run_dir=cfg.run_dir, name=name,
                  meta=meta, seed=seed, progress=progress, best_metric="val_robust_acc" if len(yv) else None)
    if adv is not None:
        history["train_eps"] = [adv.eps_at(e) for e in range(len(history))]
    best_path = cfg.path("checkpoints", f"{name}.best.pt")
    best = load_checkpoint(best_path, device=cfg.device)[0] if best_path.exists() else model
    return {"model": model.eval(), "best": best, "history": history, "name": name,
            "adversary": adv.describe() if adv else "none"}


def fingerprint(model) -> str:
    """A short hash of a model's weights: a fine-tune records the theta_std it started from."""
    from .attacks import _fingerprint

    return _fingerprint(model)


def _constraint_sample(train, seed: int, n: int = 1000):
    """A fixed sample of training images on which both sides of the constraint (7) are measured."""
    sub = train.subset(min(n, len(train)), seed=seed)
    return sub.float_x(), sub.y


def evaluate_table(models: dict, x: torch.Tensor, y: torch.Tensor, *, eps_list, autoattack_eps=None,
                   autoattack_n: int = 0, autoattack_attacks=None, state_dir=None, seed: int = 0,
                   natural_on=None) -> pd.DataFrame:
    """One row per model: natural accuracy and robust accuracy at each eps under both protocols.

    Columns: ``natural`` (on ``x``); ``natural-all`` if ``natural_on=(x_all, y_all)`` is given (clean accuracy
    is cheap, so it can be measured on the whole test split while the attacks run on a subset);
    ``pgd@<eps>`` (paper protocol: PGD-20, step eps/20, from the clean point);
    ``pgd-rs@<eps>`` (PGD-20 with random start, step 2.5*eps/20); and, at ``autoattack_eps`` on the first
    ``autoattack_n`` images, ``strong@<eps>`` (the per-example worst case of PGD-rs and standard Linf
    AutoAttack on those images, or the ``autoattack_attacks`` subset of it). eps labels are kept as written.
    """
    rows = []
    for name, model in models.items():
        row = {"method": name, "natural": accuracy(model, x, y)}
        if natural_on is not None:
            row["natural-all"] = accuracy(model, *natural_on)
        for e in eps_list:
            label = parse_eps(e)[1]
            row[f"pgd@{label}"] = robust_accuracy(model, x, y, eps=e, protocol="paper")[0]["robust_acc"]
            value = parse_eps(e)[0]
            xa = run_attack("pgd", model, x, y, eps=value, steps=20, step_size=2.5 * value / 20,
                            random_start=True, seed=seed)
            row[f"pgd-rs@{label}"] = accuracy(model, xa, y)
        if autoattack_eps is not None and autoattack_n > 0:
            label = parse_eps(autoattack_eps)[1]
            n = min(autoattack_n, len(y))
            strong, _ = robust_accuracy(model, x[:n], y[:n], eps=autoattack_eps, protocol="strong", seed=seed,
                                        state_dir=state_dir, autoattack_attacks=autoattack_attacks)
            row[f"strong@{label}"] = strong["robust_acc"]
        rows.append(row)
    return pd.DataFrame(rows)


def train_grid(rows: list[dict], x: torch.Tensor, y: torch.Tensor, *, seeds, eps_list, data=None,
               retrain: bool = False, progress: bool = False) -> pd.DataFrame:
    """Train (or load) every row for every seed and evaluate it with :func:`evaluate_table`.

    Each row is a dict with ``name`` (the label in the table), ``cfg`` (a :class:`RunConfig`, often a
    ``cfg.variant(...)``), ``method``, optionally ``adversary`` and ``beta``, and any other keys, which are
    copied as descriptive columns (``p``, ``backbone``, ...). ``retrain`` trains the rows of tagged variants
    again, once each; runs of the untagged configuration (notebook 03's) and theta_std are only loaded. Returns one row per (row, seed) with the
    columns ``method`` (= name), ``natural``, ``pgd@<eps>``, ``pgd-rs@<eps>``, ``seed``, ``run`` and the extras.
    """
    out, retrained = [], set()
    for seed in seeds:
        for row in rows:
            extra = dict(row)
            name, cfg, method = extra.pop("name"), extra.pop("cfg"), extra.pop("method")
            adversary, beta = extra.pop("adversary", None), extra.pop("beta", None)
            key = (cfg.tag, method, adversary, beta, seed)
            again = retrain and bool(cfg.tag) and method != "vanilla" and key not in retrained
            retrained.add(key)
            res = train_method(cfg, method, seed=seed, adversary=adversary, beta=beta, data=data, progress=progress,
                               retrain=again)
            table = evaluate_table({name: res["model"]}, x, y, eps_list=eps_list, seed=seed)
            out.append(table.assign(seed=seed, run=res["name"], training_adversary=res["adversary"], **extra))
    return pd.concat(out, ignore_index=True)


def mean_std(per_seed: pd.DataFrame, keys=("method",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and standard deviation over seeds of the accuracy columns (``natural...`` and every ``...@eps``).

    The standard deviation is the sample one (ddof=1), NaN where a group has a single seed (no spread is
    claimed from one run).
    """
    keys = list(keys)
    metrics = [c for c in per_seed.columns if c not in keys and (c.startswith("natural") or "@" in c)]
    grouped = per_seed.groupby(keys, sort=False)[metrics]
    return grouped.mean().reset_index(), grouped.std(ddof=1).where(grouped.count() > 1).reset_index()


def format_mean_std(mean: pd.DataFrame, std: pd.DataFrame, keys=("method",)) -> pd.DataFrame:
    """``"71.0 ± 1.2"`` strings (percent) for display; the CSVs keep the fractions."""
    keys = list(keys)
    m, s = mean.set_index(keys), std.set_index(keys)
    cols = [c for c in m.columns if c.startswith("natural") or "@" in c]
    fmt = lambda a, b: f"{100 * a:.1f}" + (f" ± {100 * b:.1f}" if pd.notna(b) else "")
    return pd.DataFrame({c: [fmt(a, b) for a, b in zip(m[c], s[c])] for c in cols}, index=m.index)
