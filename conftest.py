"""Test-wide setting: every notebook and test runs in the smoke setting, writing under a temporary folder.

The environment is set here, before nbval starts any kernel, so the kernels inherit it.

Under pytest-xdist (``make test`` runs ``pytest -n logical --dist loadgroup tests``) each worker is one
process with its own temporary runs folder and its share of the cores as torch threads (subprocesses inherit
it through OMP_NUM_THREADS): the smoke models are small, so two processes on one thread each finish more
work per minute than one process on two (paper-mnist's smoke sequence, twice: 255 s side by side on one
thread each, 2 x 181 s one after the other on two). The two paper-profile sequences, minutes each, are
collected first: ``--dist loadgroup`` hands out one test at a time in that order, so each starts at once on
a worker of its own. The notebooks run after, in one process, in order (``pytest notebooks``): they share
one run directory, notebook 03 reading the theta_std notebook 02 trained, and xdist would spread a
notebook's cells over its workers, so running them under xdist is refused.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_runs = None


def pytest_configure(config):
    global _runs
    if config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None) \
            and not os.environ.get("PYTEST_XDIST_WORKER"):
        notebooks = Path(__file__).resolve().parent / "notebooks"
        for arg in config.args:
            p = Path(arg.split("::")[0]).resolve()
            if p == notebooks or notebooks in p.parents or p in notebooks.parents:
                raise pytest.UsageError(f"{arg}: the notebooks cannot run under pytest-xdist (it would spread a "
                                        "notebook's cells over its workers): run `pytest -n logical --dist "
                                        "loadgroup tests`, then `pytest notebooks`, as `make test` does")
    _runs = tempfile.mkdtemp(prefix="robustlib-test-runs-")
    os.environ["ROBUSTLIB_SMOKE"] = "1"
    os.environ["ROBUSTLIB_RUNS"] = _runs
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = str(max(1, cores // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch
        torch.set_num_threads(int(threads))


# the tests that take minutes, longest first (the rest keep pytest's order)
_LONG_FIRST = ("test_paper_profiles.py::test_a_paper_profile_runs_the_whole_sequence_in_the_smoke_setting[paper-cifar10",
               "test_paper_profiles.py")


def _rank(item) -> int:
    where = item.nodeid
    return next((i for i, key in enumerate(_LONG_FIRST) if key in where), len(_LONG_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)      # stable: the notebooks' cells keep their order


def pytest_unconfigure(config):
    if _runs:
        shutil.rmtree(_runs, ignore_errors=True)
