"""Test-wide setting: every notebook and test runs in the smoke setting, writing under a temporary folder.

The environment is set here, before nbval starts any kernel, so the kernels inherit it.
"""
import os
import shutil
import tempfile

_runs = None


def pytest_configure(config):
    global _runs
    _runs = tempfile.mkdtemp(prefix="robustlib-test-runs-")
    os.environ["ROBUSTLIB_SMOKE"] = "1"
    os.environ["ROBUSTLIB_RUNS"] = _runs
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_unconfigure(config):
    if _runs:
        shutil.rmtree(_runs, ignore_errors=True)
