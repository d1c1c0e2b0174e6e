"""Committed notebooks are sources: stripped outputs, a python3 kernelspec, a literals-only parameters cell."""
import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED = {"profile", "device", "data_root", "run_dir", "overrides"}


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_clean_source(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"      # papermill refuses a notebook without it
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip the outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(params[0]["source"]))
    names = set()
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign), "the parameters cell holds assignments only"
        ast.literal_eval(stmt.value)                                # literals only, nothing computed
        names |= {t.id for t in stmt.targets}
    assert REQUIRED <= names
    first = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and first.startswith("# ") and "You will learn" in first
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in text


def test_make_labs_git_filter_keeps_a_run_notebooks_outputs_out_of_git(tmp_path):
    """Running a notebook in JupyterLab saves its outputs into the tracked file; with the filter `make lab`
    installs (nbstripout), git stores it stripped while the working copy keeps what was run."""
    import shutil
    import subprocess
    import sys

    nbstripout = Path(sys.executable).parent / "nbstripout"
    if not nbstripout.exists() or not shutil.which("git"):
        pytest.skip("nbstripout (make's environment) or git is not installed")
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([str(nbstripout), "--install"], cwd=repo, check=True)          # as make lab runs it
    nb = json.loads(NOTEBOOKS[0].read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
    code["execution_count"] = 1
    (repo / "nb.ipynb").write_text(json.dumps(nb))
    subprocess.run([*git, "add", "nb.ipynb"], check=True)
    staged = json.loads(subprocess.run([*git, "show", ":nb.ipynb"], capture_output=True, text=True, check=True).stdout)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in staged["cells"] if c["cell_type"] == "code")
    assert "ran" in (repo / "nb.ipynb").read_text()                  # the working copy is untouched


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_compiles(path):
    """A syntax error in a late cell would otherwise show only when a run reaches it (nbval runs the smoke
    setting, where a cell behind a profile branch never runs)."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            try:
                compile(source, f"{path.name} cell {i}", "exec")
            except SyntaxError as e:
                pytest.fail(f"{path.name}, cell {i}: {e}")
