"""From a notebook's parameters to a :class:`RunConfig`: the profile after overrides, the device, the folders.

The profile's own fields are checked by :class:`~robustlib.profiles.Profile`; this module adds what needs
the registries (dataset and model names), turns papermill's strings into the fields' types, and resolves
the device and the run directory, so that a bad input fails here in one line before any work starts.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import DATASETS
from .io import RobustlibError, ensure_dir
from .models import MODELS
from .profiles import PROFILES, Profile

SMOKE_ENV = "ROBUSTLIB_SMOKE"
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
    if name not in PROFILES:
        raise RobustlibError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return check_profile(PROFILES[name])


def _coerce(value, annotation: str):
    """Papermill's ``-p`` passes strings; turn them into the field's type where that is unambiguous."""
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    if "int" in annotation and value.lstrip("-").isdigit():
        return int(value)
    if "float" in annotation:
        try:
            return float(value)
        except ValueError:
            pass
    if "bool" in annotation and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value == "None" and "None" in annotation:
        return None
    return value


def apply_overrides(profile: Profile, overrides: dict | None) -> Profile:
    """``dataclasses.replace(profile, **overrides)`` with a clear error for an unknown field."""
    if not overrides:
        return profile
    if not isinstance(overrides, dict):
        raise RobustlibError(f"overrides must be a dict of profile fields, got {type(overrides).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    unknown = sorted(str(k) for k in set(overrides) - set(fields))
    if unknown:
        raise RobustlibError(f"unknown profile field(s) {', '.join(unknown)} in overrides; valid: {', '.join(fields)}")
    hints = typing.get_type_hints(Profile)
    coerced = {k: _coerce(v, str(hints[k])) for k, v in overrides.items()}
    try:
        return check_profile(dataclasses.replace(profile, **coerced))
    except ValueError as e:
        raise RobustlibError(str(e)) from None


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else is passed to ``torch.device``."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RobustlibError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustlibError(f"device {device!r} asked for but CUDA is not available here; use device='auto' or 'cpu'")
    return dev


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
    return os.environ.get(SMOKE_ENV, "").strip().lower() not in ("", "0", "false", "no")


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

    def __str__(self) -> str:
        p = self.profile
        lines = [
            f"profile    {p.name}{'  (SMOKE: tiny setting for tests)' if p.smoke else ''}: {p.description}",
            f"device     {self.device}",
            f"run_dir    {self.run_dir}",
            f"data_root  {self.data_root}",
            f"overrides  {self.overrides or '{}'}",
        ]
        lines += [f"  {k:<20} {v!r}" for k, v in p.as_dict().items() if k not in ("name", "description")]
        return "\n".join(lines)


def setup(
    profile: str = "quick",
    *,
    device: str = "auto",
    run_dir: str | None = None,
    data_root: str | None = None,
    overrides: dict | None = None,
    smoke: bool | None = None,
) -> RunConfig:
    """Build the run configuration from a notebook's parameters.

    ``run_dir`` defaults to ``runs/<profile>`` (``runs/<profile>-smoke`` in the smoke setting) at the
    repository root, or under ``$ROBUSTLIB_RUNS``; ``data_root`` to ``data/`` or ``$ROBUSTLIB_DATA``.
    ``smoke`` defaults to the environment switch ``ROBUSTLIB_SMOKE=1``.

    Example
    -------
    >>> cfg = setup("quick", device="cpu", overrides={"epochs": 5}, smoke=False)
    >>> cfg.profile.epochs
    5
    """
    prof = apply_overrides(get_profile(profile), overrides)
    smoke = smoke_requested() if smoke is None else smoke
    if smoke:
        prof = prof.shrink_for_smoke()
    if run_dir in (None, ""):
        base = Path(os.environ.get(RUNS_ENV) or repo_root() / "runs")
        run_dir = base / (prof.name + ("-smoke" if smoke else ""))
    if data_root in (None, ""):
        data_root = os.environ.get(DATA_ENV) or repo_root() / "data"
    run_dir = ensure_dir(Path(run_dir).expanduser().resolve())
    torch.manual_seed(prof.seed)
    return RunConfig(prof, resolve_device(device), run_dir, Path(data_root).expanduser(), dict(overrides or {}))
