"""From a notebook's parameters to a :class:`RunConfig`: the profile after overrides, the device, the folders.

The profile's own fields are checked by :class:`~robustlib.profiles.Profile`; this module adds what needs
the registries (dataset and model names), turns papermill's strings into the fields' types, and resolves
the smoke switch, the device and the run directory, so that a bad input fails here in one line before any
work starts (and before the run directory is created).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from .data import DATASETS
from .io import RobustlibError, check_not_in_use, ensure_dir, write_json
from .models import MODELS
from .profiles import FIELD_TYPES, PROFILES, Profile

SMOKE_ENV = "ROBUSTLIB_SMOKE"
NOTEBOOK_ENV = "ROBUSTLIB_NOTEBOOK"   # set by `run` for each notebook's kernel: its setup records its settings
SMOKE_VALUES = {"1": True, "true": True, "yes": True, "on": True, "": False, "0": False, "false": False,
                "no": False, "off": False}
RUNS_ENV = "ROBUSTLIB_RUNS"
DATA_ENV = "ROBUSTLIB_DATA"


def check_profile(profile: Profile) -> Profile:
    """The profile, once its registry names (dataset, model, backbones) are known; a one-line error otherwise."""
    try:
        profile.check_names(DATASETS, MODELS)
    except ValueError as e:
        raise RobustlibError(str(e)) from None
    return profile


def get_profile(name: str) -> Profile:
    """The profile called ``name``; a one-line error listing the valid names otherwise."""
    if not isinstance(name, str) or name not in PROFILES:
        raise RobustlibError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return check_profile(PROFILES[name])


def _coerce_one(value, types: tuple, optional: bool):
    """One value as papermill's ``-p`` may pass it, a string: ``"5"`` -> 5, ``"0.1"`` -> 0.1, ``"true"`` -> True,
    ``"None"`` -> None, where the field's types allow it. A string that reads as none of them is returned
    as it is, and the profile's check refuses it, naming the field."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if optional and text in ("None", "none", "null"):
        return None
    if str in types:                      # a string field (an eps like "8/255" too): kept as written
        return value
    if bool in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    for t in (int, float):
        if t in types:
            try:
                return t(text)
            except ValueError:
                pass
    return value


def _coerce(value, name: str):
    """An override turned into profile field ``name``'s type where that is unambiguous; YAML's lists -> tuples."""
    types, is_tuple, optional = FIELD_TYPES[name]
    if is_tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce_one(v, types, False) for v in value)
    return _coerce_one(value, types, optional)


# fields that say which profile runs, not how: an override would file one profile's runs under another's name
FIXED_FIELDS = {
    "name": "pick the profile itself with profile=... (--profile)",
    "description": "pick the profile itself with profile=... (--profile)",
    "smoke": f"ask for the smoke setting with smoke=True (--smoke) or {SMOKE_ENV}=1",
}


def apply_overrides(profile: Profile, overrides: dict | None) -> Profile:
    """``dataclasses.replace(profile, **overrides)`` with a one-line error for an unknown, fixed or bad field."""
    if not overrides:
        return profile
    if not isinstance(overrides, dict):
        raise RobustlibError(f"overrides must be a dict of profile fields, got {type(overrides).__name__}")
    fields = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(str(k) for k in set(overrides) - set(fields))
    if unknown:
        raise RobustlibError(f"unknown profile field(s) {', '.join(unknown)} in overrides; valid: {', '.join(fields)}")
    fixed = sorted(set(overrides) & set(FIXED_FIELDS))
    if fixed:
        raise RobustlibError(f"profile field {fixed[0]!r} cannot be overridden; {FIXED_FIELDS[fixed[0]]}")
    coerced = {k: _coerce(v, k) for k, v in overrides.items()}
    try:
        return check_profile(dataclasses.replace(profile, **coerced))
    except ValueError as e:
        raise RobustlibError(str(e)) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (N < the number of
    GPUs), and ``"mps"`` where Apple's GPU is available. Any other device is a one-line error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if not isinstance(device, (str, torch.device)):
            raise TypeError                   # torch.device(3) would be cuda:3
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RobustlibError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RobustlibError(f"device {device!r} asked for but CUDA is not available here; "
                                 f"use device='auto' or 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise RobustlibError(f"device {device!r} asked for but this machine has {n} CUDA device(s); "
                                 f"use cuda or cuda:N with N < {n}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RobustlibError(f"device {device!r} asked for but Apple's MPS is not available here; use auto or cpu")
        return dev
    if dev.type == "meta":
        raise RobustlibError(f"device {device!r} cannot run a model's numbers; use auto, cpu or cuda")
    raise RobustlibError(f"device {device!r} is not supported by robustlib; use auto, cpu, cuda or cuda:N")


def use_fast_backends(prof, dev: torch.device) -> None:
    """The fast paths' backend choice for this process (the paper profiles on CUDA): cuDNN picks its fastest
    convolution per shape, at the cost of bitwise repeatability. Every process of a run makes it alike
    (:func:`setup`, and torchrun's training processes in :mod:`robustlib.launch`)."""
    if dev.type == "cuda" and prof.channels_last:
        torch.backends.cudnn.benchmark = True


def shown_path(path) -> Path:
    """``path`` relative to the checkout (:func:`repo_root`) where it is inside it, else as it is."""
    path, root = Path(path), repo_root()
    return path.relative_to(root) if path.is_absolute() and path.is_relative_to(root) else path


def repo_root() -> Path:
    """The checkout this code runs from (the folder holding ``robustlib/`` and ``notebooks/``), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    for p in [Path.cwd(), *Path.cwd().parents]:
        if (p / "notebooks").is_dir() and (p / "robustlib").is_dir():
            return p
    return Path.cwd()


def smoke_requested() -> bool:
    """The environment switch ``ROBUSTLIB_SMOKE``: 1/true/yes/on or unset/''/0/false/no/off (any case);
    anything else is a one-line error rather than a guess."""
    value = os.environ.get(SMOKE_ENV, "")
    try:
        return SMOKE_VALUES[value.strip().lower()]
    except KeyError:
        raise RobustlibError(f"{SMOKE_ENV}={value!r} is invalid: use 1, true, yes or on for the smoke setting, "
                             f"0, false, no, off or unset for the full one") from None


def _short(v: float) -> str:
    """A fraction as written where it is one of a few small ones (1/3, 2/3, 1/6), else as a short decimal."""
    if round(v, 3) == v:
        return f"{v:g}"
    frac = Fraction(v).limit_denominator(12)
    return f"{frac.numerator}/{frac.denominator}" if abs(float(frac) - v) < 1e-9 else f"{v:.3g}"


@dataclass(frozen=True)
class RunConfig:
    """What a notebook or script runs with: the profile after overrides, the device and the folders."""

    profile: Profile
    device: torch.device
    run_dir: Path
    data_root: Path
    overrides: dict = field(default_factory=dict)
    # the variants this configuration was made with, in order: (tag, names of the fields it changed)
    changes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # processes a run that must be trained is trained by, under torchrun (robustlib.launch); 1: in this process
    nproc: int = 1

    @property
    def tag(self) -> str:
        """Names this variant's runs (``"p0"``, ``"a-b"`` for a variant of a variant); ``""`` for the profile."""
        return "-".join(t for t, _ in self.changes)

    def variant(self, tag: str, **fields) -> "RunConfig":
        """The same run with some profile fields changed, for an ablation: ``cfg.variant("p0", dra_p=0.0)``.

        Its runs are checkpointed under names carrying ``tag`` (``ours-p0-s0``), so variants never overwrite
        the profile's own runs; theta_std is shared unless a field it consumes changes (``model``, ...;
        :func:`robustlib.train.vanilla_name`). A variant that changes nothing is the configuration itself.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.+=-]+", tag or ""):
            raise RobustlibError(f"variant tag {tag!r} must be letters, digits or _.+=- (it names checkpoints)")
        prof = apply_overrides(self.profile, fields)
        if prof == self.profile:
            return self               # nothing changes: the profile's own runs, under their own names
        changed = tuple(f for f in sorted(fields) if getattr(prof, f) != getattr(self.profile, f))
        return dataclasses.replace(self, profile=prof, changes=(*self.changes, (tag, changed)))

    @property
    def smoke(self) -> bool:
        return self.profile.smoke

    def path(self, *parts: str) -> Path:
        """A path inside the run directory, e.g. ``cfg.path("checkpoints", "vanilla.pt")``."""
        return self.run_dir.joinpath(*parts)

    def shown(self, *parts: str) -> Path:
        """:meth:`path` as a reader should see it: relative to the checkout when inside it (``runs/quick/...``),
        so that an executed notebook reads the same on every machine; absolute elsewhere."""
        return shown_path(self.path(*parts))

    def __str__(self) -> str:
        """The settings a reader needs, in a few lines (every field: ``cfg.profile``; ``cfg.describe()``)."""
        p, info = self.profile, DATASETS[self.profile.dataset]
        n_train, n_test = info.sizes or (None, None)
        n_train = min(p.train_limit or n_train, n_train) if n_train else p.train_limit
        n_test = min(p.test_limit or n_test, n_test) if n_test else p.test_limit
        n_eval = min(p.eval_limit or n_test, n_test) if n_test else p.eval_limit
        count = lambda n: "all" if n is None else f"{n:,}"
        decay = max(1, round(p.ft_decay * p.ft_epochs))
        tail = p.ft_epochs - decay if p.ft_clean_tail else 0
        budget = {"per_image": "L1 per image", "per_value": "L1, mean per value",
                  "per_value/255": "L1, mean per value in 1/255", "paper": "read as notebook 01 decides"}.get(
                      p.dra_budget, p.dra_budget)
        from .evaluate import PAPER_STEPS
        model = p.model + (f" (width {p.width})" if p.width else "")
        eps = f"{p.ft_eps_max:g}" if p.ft_eps_max == p.ft_eps_min else f"{p.ft_eps_max:g} -> {p.ft_eps_min:g}"
        fine = None if n_train is None else n_train - p.val_size
        fine = min(p.ft_train_limit, fine) if p.ft_train_limit and fine is not None else p.ft_train_limit or fine
        lines = [f"profile    {p.name}: {p.description}"]
        if p.smoke:
            lines.append(f"           SMOKE: {p.epochs} epochs, training attacks of <= {max(p.at_steps, p.dra_steps)} "
                         f"steps; its numbers test the code, not the method")
        lines += [
            f"data       {p.dataset}: {count(n_train)} training images, {p.val_size:,} of them held out to choose "
            f"settings; {count(n_test)} test",
            f"           attacked: {count(n_eval)} test images, AutoAttack {min(p.autoattack_limit, n_eval or p.autoattack_limit):,}",
            f"theta_std  {model}, {p.epochs} epochs, batch {p.batch_size}, SGD lr {p.lr:g} ({p.lr_schedule})",
            f"fine-tune  {p.ft_epochs} epochs at lr {p.ft_lr:g} ({p.ft_lr_schedule}) on {count(fine)} images, "
            + ("clean and DRA 1:1" if p.ft_replay_ratio == 1 else f"clean and DRA weighted {_short(p.ft_replay_ratio)}:1")
            + (", alternating updates" if p.ft_replay == "alternating" else ""),
            f"           DRA eps {eps} ({budget}) "
            + ("for" if p.ft_eps_max == p.ft_eps_min else "over")
            + (f" {decay} epochs, then {tail} clean" if tail else f" all {p.ft_epochs} epochs" if
               p.ft_eps_max == p.ft_eps_min or decay >= p.ft_epochs else f" {decay} epochs, then held")
            + f"; p = {_short(p.dra_p)}, T = {p.dra_steps}",
            f"evaluate   PGD-{PAPER_STEPS} at eps {', '.join(map(str, p.eval_eps))}; the PGD baselines train and "
            f"checkpoints are chosen at {p.main_eps}",
            f"seeds      {', '.join(map(str, p.seeds))}; ablations {', '.join(map(str, p.ablation_seeds))}",
            f"device     {self.device}" + (f" x {self.nproc} processes (torchrun)" if self.nproc > 1 else "")
            + self._precisions(),
            f"run_dir    {shown_path(self.run_dir)} (data: {shown_path(self.data_root)})",
        ]
        if self.overrides:
            lines.append(f"overrides  {self.overrides}")
        return "\n".join(lines)

    def resolved_precisions(self) -> dict[str, str]:
        """``precision`` and ``attack_precision`` as ``auto`` resolves them on this device, where not fp32."""
        from .train import resolve_precision
        p = self.profile
        resolved = {"precision": resolve_precision(p.precision, self.device),
                    "attack_precision": resolve_precision(p.attack_precision, self.device)}
        return {k: v for k, v in resolved.items() if v != "fp32"}

    def _precisions(self) -> str:
        """`` (training in bf16, ...)`` where the profile's precisions resolve to other than fp32 on this device."""
        words = {"precision": "training", "attack_precision": "attack iterates"}
        said = [f"{words[k]} in {v}" for k, v in self.resolved_precisions().items()]
        return f" ({', '.join(said)})" if said else ""

    def settings(self) -> dict[str, str]:
        """Every field of the profile as ``{field: repr(value)}`` (what the report compares across notebooks)."""
        return {k: repr(v) for k, v in self.profile.as_dict().items() if k not in ("name", "description")}

    def describe(self) -> str:
        """Every field of the profile, one per line (what ``print(cfg)`` once printed)."""
        p = self.profile
        lines = [f"profile    {p.name}{'  (SMOKE: tiny setting for tests)' if p.smoke else ''}: {p.description}",
                 f"device     {self.device}", f"run_dir    {self.run_dir}", f"data_root  {self.data_root}",
                 f"overrides  {self.overrides or '{}'}"]
        lines += [f"  {k:<20} {v}" for k, v in self.settings().items()]
        return "\n".join(lines)


def setup(
    profile: str = "quick",
    *,
    device: str = "auto",
    run_dir: str | None = None,
    data_root: str | None = None,
    overrides: dict | None = None,
    smoke: bool | None = None,
    create: bool = True,
    nproc: int | None = None,
) -> RunConfig:
    """Build the run configuration from a notebook's parameters.

    ``run_dir`` defaults to ``runs/<profile>`` (``runs/<profile>-smoke`` in the smoke setting) at the
    repository root, or under ``$ROBUSTLIB_RUNS``; ``data_root`` to ``data/`` or ``$ROBUSTLIB_DATA``.
    ``smoke`` defaults to the environment switch ``ROBUSTLIB_SMOKE=1``. ``create=False`` only resolves the
    paths (a cost estimate reads the run directory, never writes it). ``nproc`` (default ``$ROBUSTLIB_NPROC``
    or 1): the processes each run that must be trained is trained by, under torchrun (:mod:`robustlib.launch`),
    and each evaluation table's (and masking probes') attacks are split among
    (:func:`robustlib.evaluate.set_evaluation_processes`);
    the profile's batch stays the global batch. It sets the precision of the evaluation attacks' PGD iterates
    for this process from the profile's ``attack_precision`` (:func:`robustlib.evaluate.set_attack_precision`).

    Example
    -------
    >>> cfg = setup("quick", device="cpu", overrides={"epochs": 5}, smoke=False)
    >>> cfg.profile.epochs
    5
    """
    # every check first: nothing is created (not even the run directory) for a bad input
    if not isinstance(profile, str):
        raise RobustlibError(f"profile must be a profile's name such as 'quick', got {profile!r}")
    prof = apply_overrides(get_profile(profile), overrides)
    try:
        prof.check_reported()
    except ValueError as e:
        raise RobustlibError(str(e)) from None
    if smoke is not None and not isinstance(smoke, bool):
        raise RobustlibError(f"smoke={smoke!r} is invalid: use True, False or None (the {SMOKE_ENV} switch)")
    smoke = smoke_requested() if smoke is None else smoke
    if smoke:
        prof = prof.shrink_for_smoke()
    dev = resolve_device(device)
    from .launch import check, parse_nproc, requested
    nproc = requested() if nproc is None else parse_nproc(nproc)
    check(nproc, dev, prof.batch_size)
    if run_dir in (None, ""):
        base = Path(os.environ.get(RUNS_ENV) or repo_root() / "runs")
        run_dir = base / (prof.name + ("-smoke" if smoke else ""))
    if data_root in (None, ""):
        data_root = os.environ.get(DATA_ENV) or repo_root() / "data"
    from .evaluate import set_attack_precision, set_evaluation_processes
    from .train import resolve_precision
    if not create:
        set_attack_precision(resolve_precision(prof.attack_precision, dev))   # every evaluation in this process
        return RunConfig(prof, dev, Path(run_dir).expanduser().resolve(), Path(data_root).expanduser(), dict(overrides or {}),
                         nproc=nproc)
    check_not_in_use(run_dir)          # another run holds it (make run): refuse before writing anything
    set_attack_precision(resolve_precision(prof.attack_precision, dev))       # every evaluation in this process
    set_evaluation_processes(nproc)       # nproc > 1: the evaluation tables' attacks sharded under torchrun too
    run_dir = ensure_dir(Path(run_dir).expanduser().resolve())
    torch.manual_seed(prof.seed)
    use_fast_backends(prof, dev)
    cfg = RunConfig(prof, dev, run_dir, Path(data_root).expanduser(), dict(overrides or {}), nproc=nproc)
    stem = os.environ.get(NOTEBOOK_ENV, "")
    if re.fullmatch(r"\d\d_\w+", stem):     # a kernel of `run`: what this notebook runs with, for the report
        write_json(ensure_dir(run_dir / "notebooks") / f".{stem}.settings.json", cfg.settings())
    return cfg
