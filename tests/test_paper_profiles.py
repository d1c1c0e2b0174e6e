"""The paper profiles end to end on the CPU: the whole notebook sequence in the smoke setting, through the
command line, on data written in the official on-disk format at full image size (tests/fakedata.py), with
the profile's own model and attacks. Every code path a GPU user of the profile hits runs here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import robustlib
from robustlib import estimate
from tests.fakedata import write_cifar10, write_mnist

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile, write", [("paper-mnist", write_mnist), ("paper-cifar10", write_cifar10)])
def test_a_paper_profile_runs_the_whole_sequence_in_the_smoke_setting(profile, write, tmp_path):
    data, run_dir = write(tmp_path / "data"), tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "robustlib", "run", "--profile", profile, "--smoke",
                        "--device", "cpu", "--data-root", str(data), "--run-dir", str(run_dir)],
                       capture_output=True, text=True, cwd=ROOT, timeout=2400)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    timings = json.loads((run_dir / "timings.json").read_text())
    books = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(timings) == books and all(t["smoke"] for t in timings.values())
    report = (run_dir / "report.md").read_text()
    assert f"# Run report: {profile}" in report and "## Claims ledger" in report
    assert "## Gradient-masking checks" in report
    methods = (run_dir / "tables" / "03_methods.csv").read_text()
    assert "Ours" in methods and "TRADES" in methods and "nan" not in methods.lower()
    # the cost estimate counts exactly the training runs the sequence made, and none once they are done
    cfg = robustlib.setup(profile, smoke=True, device="cpu", run_dir=str(run_dir), create=False)
    finished = estimate.finished_runs(cfg)
    assert estimate.plan(cfg)[1] == finished, estimate.plan(cfg)[1] ^ finished
    assert estimate.plan(cfg, done=finished)[1] == set()
