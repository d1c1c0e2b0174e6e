"""Run the notebook sequence headlessly with papermill, one profile at a time.

Each notebook in ``notebooks/`` (``00_...`` to ``06_...``) is executed in order with its ``parameters``
cell set to the profile, device and folders; the executed copy lands in ``<run_dir>/notebooks/`` and the
wall time of each in ``<run_dir>/timings.json``. Papermill does the executing.

Every input (profile, overrides, device, dataset files, writable folders, ``timings.json``) is checked before
the first notebook starts. The run holds :func:`robustlib.io.run_lock` on its directory throughout, so a
second run there fails at once; under it, files left by an interrupted run are removed first. The kernels'
sockets live in a private temporary folder, never in ``notebooks/``. A full run first prints its predicted
wall time (:mod:`robustlib.estimate`, in a child process: the parent keeps no device memory).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .io import LOCK_ENV, RobustlibError, ensure_dir, read_json, remove_stale_temporaries, run_lock, write_json
from .config import NOTEBOOK_ENV, SMOKE_ENV, repo_root, setup, smoke_requested
from .launch import NPROC_ENV
from . import data, report

OUTPUT_DIRS = ("notebooks", "figures", "tables", "metrics", "checkpoints", "attack_state")


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a signal: its ``run_dir`` and the notebooks it ``completed`` (their stems)."""

    def __init__(self, run_dir: Path, completed: list[str]):
        super().__init__(run_dir, completed)
        self.run_dir, self.completed = run_dir, completed


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def list_notebooks(only: list[str] | None = None, folder: Path | None = None) -> list[Path]:
    """The sequence's notebooks in order; ``only`` keeps those whose name starts with one of its items."""
    folder = folder or notebooks_dir()
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise RobustlibError(f"no notebooks found in {folder}; run from a checkout of the repository")
    if only is not None and any(not str(o).strip() for o in only):
        raise RobustlibError(f"--only got an empty item ({' '.join(map(repr, only))}); name notebooks by number, "
                             f"e.g. --only 02 03")
    if only:
        unknown = [o for o in only if not any(b.name.startswith(o) for b in books)]
        if unknown:
            raise RobustlibError(f"--only {', '.join(unknown)} matches no notebook; choose from "
                                 f"{', '.join(b.stem for b in books)}")
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
    return books


def _kernel_config(sockets: str | None, quiet: bool):
    """Talk to the kernel over local sockets where the OS has them (ipykernel warns about, and exposes, TCP).

    ipc sockets are files named ``<ip>-<port>``, relative to the kernel's cwd (``notebooks/``) by default:
    ``ip`` puts them in ``sockets``, a private temporary folder. ``quiet`` keeps the kernel's own log (which a
    stopped run fills with ZMQ tracebacks and "KeyboardInterrupt caught in kernel") to critical messages;
    the notebooks' errors come back as cell outputs and a kernel that dies is reported by nbclient either way.
    """
    from traitlets.config import Config

    config = Config()
    if os.name == "posix" and sockets:
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(sockets, "kernel")
    if quiet:
        config.NotebookClient.extra_arguments = ["--IPKernelApp.log_level=CRITICAL"]
    return config


def check_outputs(cfg) -> None:
    """Create the run directory's output folders (a one-line error where one cannot be written) and check that
    ``timings.json`` reads as a mapping: everything a run writes besides its notebooks, checked first."""
    for sub in OUTPUT_DIRS:
        ensure_dir(cfg.path(sub))
    timings = read_json(cfg.path("timings.json"), default={})
    if not isinstance(timings, dict):
        raise RobustlibError(f"{cfg.path('timings.json')} holds a {type(timings).__name__}, not a mapping of "
                             f"notebook -> timing; delete it (it only records wall times)")


def _record_timing(cfg, stem: str, entry: dict) -> None:
    """Update one notebook's entry of ``timings.json``, read again just before: other entries are kept."""
    timings = read_json(cfg.path("timings.json"), default={})
    timings = timings if isinstance(timings, dict) else {}
    timings[stem] = entry
    write_json(cfg.path("timings.json"), timings)


def _precisions(cfg) -> dict:
    """The training precision and the evaluation attacks' iterates as ``auto`` resolved on this machine, where
    either is not fp32 (the report's wall-time table shows them): a number's precision depends on the CPU."""
    return cfg.resolved_precisions()


@contextlib.contextmanager
def _environment(values: dict):
    """``os.environ`` with ``values`` set inside the block, and as it was after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_sequence(profile: str = "quick", *, device: str = "auto", run_dir: str | None = None,
                 data_root: str | None = None, only: list[str] | None = None, overrides: dict | None = None,
                 smoke: bool | None = None, retrain: bool = False, log_output: bool = False,
                 estimate: bool = True, nproc: int | None = None) -> Path:
    """Execute the notebooks for ``profile`` and return the run directory.

    Everything is validated before the first notebook starts (profile, overrides, device, the dataset's
    files, writable output folders, the run directory free of another run), so a typo fails in a second with
    one line instead of after a long notebook. Ctrl-C (or a signal turned into ``KeyboardInterrupt``) raises
    :class:`Interrupted`, naming the notebooks completed. ``estimate``: print the predicted wall time of a
    full (not smoke) run before it starts. ``nproc`` > 1: each run that must be trained is trained by that many
    processes under torchrun, and each evaluation table's attacks are split among as many (:mod:`robustlib.launch`;
    default ``$ROBUSTLIB_NPROC`` or 1).
    """
    smoke = smoke_requested() if smoke is None else smoke
    cfg = setup(profile, device=device, run_dir=run_dir, data_root=data_root, overrides=overrides, smoke=smoke,
                nproc=nproc)
    books = list_notebooks(only)
    data.check_files(cfg.profile.dataset, cfg.data_root)
    completed: list[str] = []
    sockets = tempfile.mkdtemp(prefix="robustlib-kernel-")
    try:
        with run_lock(cfg.run_dir):
            check_outputs(cfg)
            stale = remove_stale_temporaries(cfg.run_dir, OUTPUT_DIRS)
            if stale:
                print(f"removed {stale} temporary file(s) left in {cfg.run_dir} by an interrupted run", flush=True)
            if estimate and not smoke:
                _print_estimate(cfg, books, profile=profile, device=device, overrides=overrides)
            # the kernels inherit these (the config cell honours them); this process gets its own back after
            # (LOCK_ENV: the kernels are this run's, so their setup may proceed; PYTHONPATH: they import this
            # robustlib, not another checkout's that an editable install points at)
            package_root = str(Path(__file__).resolve().parent.parent)
            with _environment({SMOKE_ENV: "1" if smoke else "0", NPROC_ENV: str(cfg.nproc), LOCK_ENV: str(os.getpid()),
                               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}):
                _run_books(cfg, books, completed, profile=profile, device=device, overrides=overrides, smoke=smoke,
                           retrain=retrain, log_output=log_output, sockets=sockets)
    except KeyboardInterrupt:
        raise Interrupted(cfg.run_dir, completed) from None
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return cfg.run_dir


def _print_estimate(cfg, books: list[Path], *, profile, device, overrides) -> None:
    """``python -m robustlib estimate`` for this run, in a child process; a failure is a warning, not a stop."""
    import yaml

    cmd = [sys.executable, "-m", "robustlib", "estimate", "--profile", profile, "--device", device,
           "--run-dir", str(cfg.run_dir), "--overrides", yaml.safe_dump(dict(overrides or {}), default_flow_style=True),
           "--only", *[b.name[:2] for b in books], "--nproc", str(cfg.nproc)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode:
        print(f"warning: no time estimate ({lines[-1] if lines else f'exit {done.returncode}'}); starting anyway", flush=True)
        return
    print("\n".join(["predicted wall time (python -m robustlib estimate):", *lines[1:]]), flush=True)


def _from_notebooks(path: Path) -> str:
    """``path`` as the notebooks' parameters cell shows it: relative to ``notebooks/`` (the kernel's working
    directory) where it lies inside the checkout (``../runs/quick``: the same on every machine), else absolute."""
    path = Path(path).resolve()
    root = repo_root()
    return os.path.relpath(path, root / "notebooks") if path.is_relative_to(root) else str(path)


def _run_books(cfg, books: list[Path], completed: list[str], *, profile, device, overrides, smoke, retrain,
               log_output, sockets) -> None:
    """Execute ``books`` in order, appending each one's stem to ``completed`` when it is done."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    os.environ.setdefault("TQDM_MININTERVAL", "5")   # few progress updates: no IOPub flood under papermill
    out_dir = cfg.path("notebooks")
    print(f"{'smoke' if smoke else 'full'} run of profile {profile!r} on {cfg.device}"
          f"{f' (training and evaluation tables: {cfg.nproc} processes)' if cfg.nproc > 1 else ''}: {len(books)} notebook(s)"
          f" -> {cfg.run_dir}", flush=True)
    for nb in books:
        out = out_dir / nb.name
        partial = out_dir / f".{nb.stem}.{os.getpid()}.partial.ipynb"
        params = dict(profile=profile, device=device, run_dir=_from_notebooks(cfg.run_dir),
                      data_root=_from_notebooks(cfg.data_root), overrides=dict(overrides or {}), retrain=retrain)
        print(f"  {nb.name} ...", end="", flush=True)
        t0 = time.perf_counter()
        recorded = cfg.path("notebooks", f".{nb.stem}.settings.json")     # the kernel's setup writes it
        recorded.unlink(missing_ok=True)
        try:
            with _environment({NOTEBOOK_ENV: nb.stem}):
                pm.execute_notebook(str(nb), str(partial), parameters=params, kernel_name="python3",
                                    cwd=str(nb.parent), progress_bar=False, log_output=log_output,
                                    config=_kernel_config(sockets, quiet=not log_output))
        except KeyboardInterrupt:
            print(" stopped", flush=True)
            raise
        except (pm.PapermillExecutionError, DeadKernelError) as e:
            os.replace(partial, out)
            print(" failed", flush=True)
            if isinstance(e, DeadKernelError):
                raise RobustlibError(f"the kernel running {nb.name} died (out of memory? see dmesg); the executed "
                                     f"part is {out}; run the same command to resume") from None
            raise RobustlibError(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: "
                                 f"{str(e.evalue).splitlines()[0] if e.evalue else ''}; the executed notebook "
                                 f"is {out}") from None
        os.replace(partial, out)
        seconds = time.perf_counter() - t0
        print(f" done in {seconds:.0f} s", flush=True)
        # what the notebook ran with, as its own kernel's setup recorded it (the report's drift check)
        settings = read_json(recorded, default=None) or cfg.settings()
        _record_timing(cfg, nb.stem, {"seconds": round(seconds, 1), "smoke": smoke, "device": str(cfg.device),
                                      **({"nproc": cfg.nproc} if cfg.nproc > 1 else {}), **_precisions(cfg),
                                      "settings": settings})
        recorded.unlink(missing_ok=True)
        completed.append(nb.stem)
    try:   # the report only reads what the notebooks wrote: its failure must not cost their results
        path = report.build_report(cfg)
        print(f"report: {path} (and {path.with_suffix('.html').name})", flush=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"warning: report not built ({type(e).__name__}: {first[:200]}); the notebooks' results are intact",
              flush=True)
    print(f"results in {cfg.run_dir}:")
    for sub in OUTPUT_DIRS:
        if cfg.path(sub).is_dir():
            print(f"  {sub + '/':<13} {sum(1 for p in cfg.path(sub).iterdir() if not p.name.startswith('.'))} files")
    for extra in ("report.md", "timings.json"):
        if cfg.path(extra).exists():
            print(f"  {extra}")
    sys.stdout.flush()
