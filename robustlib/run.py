"""Run the notebook sequence headlessly with papermill, one profile at a time.

Each notebook in ``notebooks/`` (``00_...`` to ``05_...``) is executed in order with its ``parameters``
cell set to the profile, device and folders; the executed copy lands in ``<run_dir>/notebooks/`` and the
wall time of each in ``<run_dir>/timings.json``. Papermill does the executing.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .io import RobustlibError, ensure_dir, read_json, write_json
from .config import SMOKE_ENV, repo_root, setup, smoke_requested
from . import report


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def list_notebooks(only: list[str] | None = None, folder: Path | None = None) -> list[Path]:
    """The sequence's notebooks in order; ``only`` keeps those whose name starts with one of its items."""
    folder = folder or notebooks_dir()
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise RobustlibError(f"no notebooks found in {folder}; run from a checkout of the repository")
    if only:
        unknown = [o for o in only if not any(b.name.startswith(o) for b in books)]
        if unknown:
            raise RobustlibError(f"--only {', '.join(unknown)} matches no notebook; choose from "
                                 f"{', '.join(b.stem for b in books)}")
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
    return books


def _kernel_config():
    """Talk to the kernel over local sockets where the OS has them: ipykernel warns about (and exposes) TCP."""
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
    return config


def run_sequence(profile: str = "quick", *, device: str = "auto", run_dir: str | None = None,
                 data_root: str | None = None, only: list[str] | None = None, overrides: dict | None = None,
                 smoke: bool | None = None, retrain: bool = False, log_output: bool = False) -> Path:
    """Execute the notebooks for ``profile`` and return the run directory.

    Everything is validated before the first notebook starts (profile, overrides, device, a writable run
    directory), so a typo fails in a second with one line instead of after a long notebook.
    """
    import papermill as pm

    smoke = smoke_requested() if smoke is None else smoke
    cfg = setup(profile, device=device, run_dir=run_dir, data_root=data_root, overrides=overrides, smoke=smoke)
    books = list_notebooks(only)
    os.environ[SMOKE_ENV] = "1" if smoke else "0"     # the kernels inherit it; the config cell honours it
    os.environ.setdefault("TQDM_MININTERVAL", "5")   # few progress updates: no IOPub flood under papermill
    out_dir = ensure_dir(cfg.path("notebooks"))
    timings = read_json(cfg.path("timings.json"), default={})
    print(f"{'smoke' if smoke else 'full'} run of profile {profile!r} on {cfg.device}: {len(books)} notebook(s)"
          f" -> {cfg.run_dir}", flush=True)
    for nb in books:
        out = out_dir / nb.name
        partial = out_dir / f".{nb.stem}.partial.ipynb"
        params = dict(profile=profile, device=device, run_dir=str(cfg.run_dir), data_root=str(cfg.data_root),
                      overrides=dict(overrides or {}), retrain=retrain)
        print(f"  {nb.name} ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(partial), parameters=params, kernel_name="python3",
                                cwd=str(nb.parent), progress_bar=False, log_output=log_output, config=_kernel_config())
        except pm.PapermillExecutionError as e:
            os.replace(partial, out)
            print(" failed", flush=True)
            raise RobustlibError(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: "
                                 f"{str(e.evalue).splitlines()[0] if e.evalue else ''}; the executed notebook "
                                 f"is {out}") from None
        os.replace(partial, out)
        seconds = time.perf_counter() - t0
        print(f" done in {seconds:.0f} s", flush=True)
        timings[nb.stem] = {"seconds": round(seconds, 1), "smoke": smoke, "device": str(cfg.device)}
        write_json(cfg.path("timings.json"), timings)
    try:   # the report only reads what the notebooks wrote: its failure must not cost their results
        path = report.build_report(cfg)
        print(f"report: {path} (and {path.with_suffix('.html').name})", flush=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"warning: report not built ({type(e).__name__}: {first[:200]}); the notebooks' results are intact",
              flush=True)
    print(f"results in {cfg.run_dir}:")
    for sub in ("notebooks", "figures", "tables", "metrics", "checkpoints"):
        if cfg.path(sub).is_dir():
            print(f"  {sub + '/':<13} {sum(1 for _ in cfg.path(sub).iterdir())} files")
    for extra in ("report.md", "timings.json"):
        if cfg.path(extra).exists():
            print(f"  {extra}")
    sys.stdout.flush()
    return cfg.run_dir
