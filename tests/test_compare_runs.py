"""scripts/compare_runs.py: two run directories agree on every column of the first, or it says where not."""
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_runs.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_an_added_column_fails_unless_allowed_and_a_changed_number_always_fails(tmp_path):
    before, after = tmp_path / "a", tmp_path / "b"
    for d in (before, after):
        (d / "tables").mkdir(parents=True)
    pd.DataFrame({"method": ["x"], "pgd@0.1": [0.5], "seconds": [1.0]}).to_csv(before / "tables" / "t.csv", index=False)
    pd.DataFrame({"method": ["x"], "pgd@0.1": [0.5], "seconds": [9.0], "new@0.1": [0.4]}).to_csv(
        after / "tables" / "t.csv", index=False)
    assert run(before, after).returncode == 1
    r = run(before, after, "--added-columns")
    assert r.returncode == 0 and "1 agree, 0 differ" in r.stdout and "added in tables/t.csv: new@0.1" in r.stdout
    pd.DataFrame({"method": ["x"], "pgd@0.1": [0.6], "new@0.1": [0.4]}).to_csv(after / "tables" / "t.csv", index=False)
    r = run(before, after, "--added-columns")
    assert r.returncode == 1 and "column 'pgd@0.1' row 0: 0.5 vs 0.6" in r.stdout
