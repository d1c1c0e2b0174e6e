"""``python -m robustlib run`` with bad inputs, a busy run directory, a stop signal, a full disk (issue 13).

A bad input is one line (``error: ...``, exit 2) before any notebook starts, and nothing in the run directory
changes; a second run in a directory fails at once; shared files are merged, files are written with the
user's umask, a full disk leaves the old file, and Ctrl-C/SIGTERM say what was kept. Notebooks are faked here
(papermill's ``execute_notebook`` replaced) except in tests/test_cli.py's smoke run.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch

from robustlib import io, report
from robustlib.io import RobustlibError, atomic_open, run_lock, save_torch, write_text
from robustlib.run import Interrupted, run_sequence

ROOT = Path(__file__).parents[1]
TIMINGS = {"00_problem_formulation": {"seconds": 1.0, "smoke": True, "device": "cpu"}}


def cli(*args, timeout=60):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "robustlib", *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=timeout)
    r.seconds = time.perf_counter() - t0
    return r


def snapshot(d: Path) -> dict:
    """Every file under ``d`` and its bytes, but the lock (which a refused run may have created, empty)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def run_dir(tmp_path):
    """A run directory that already holds results: a timing and a checkpoint."""
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "timings.json").write_text(json.dumps(TIMINGS))
    (d / "checkpoints" / "vanilla.pt").write_bytes(b"trained weights")
    return d


def _file(text: str | bytes):
    def make(tmp: Path, run: Path) -> str:
        p = tmp / "overrides.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(p)
    return make


def _in_run(name: str, content: str | None):
    """Put ``name`` in the run directory: a file with ``content``, or for None a file where a folder belongs."""
    def make(tmp: Path, run: Path) -> None:
        (run / name).write_text("not a folder" if content is None else content)
    return make


CASES = [   # args ({x} is filled by x(tmp_path, run_dir) when x is a function), a setup step, the message
    (["--only", ""], None, "--only got an empty item"),
    (["--only", "02", "  "], None, "--only got an empty item"),
    (["--only", "99"], None, "--only 99 matches no notebook"),
    (["--overrides-file", lambda t, r: str(t / "missing.yaml")], None, "cannot read --overrides-file"),
    (["--overrides-file", lambda t, r: str(t)], None, "Is a directory"),
    (["--overrides-file", _file(b"epochs: \xff\xfe")], None, "not UTF-8 text"),
    (["--overrides-file", _file("{epochs: [")], None, "is not valid YAML"),
    (["--overrides-file", _file("[1, 2]")], None, "must be a YAML mapping"),
    (["--profile", "nope"], None, "unknown profile 'nope'"),
    (["--device", "tpu"], None, "unknown device 'tpu'"),
    (["--overrides", "{dataset: mnist}", "--data-root", lambda t, r: str(t / "nodata")], None, "mnist not found"),
    ([], _in_run("figures", None), "figures"),
    ([], _in_run("timings.json", "{not json"), "cannot read"),
    ([], _in_run("timings.json", "[1, 2]"), "not a mapping"),
]


@pytest.mark.parametrize("args,prepare,message", CASES, ids=[c[2] for c in CASES])
def test_bad_input_is_one_line_before_any_notebook(args, prepare, message, tmp_path, run_dir):
    if prepare:
        prepare(tmp_path, run_dir)
    before = snapshot(run_dir)
    args = [a(tmp_path, run_dir) if callable(a) else a for a in args]
    r = cli("run", "--smoke", *args, "--run-dir", str(run_dir))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert ".ipynb" not in r.stdout                                   # no notebook started
    assert not list(run_dir.glob("notebooks/*"))                     # no executed or partial notebook
    assert snapshot(run_dir) == before                               # the timings and the checkpoint are intact
    assert r.seconds < 10


def test_a_busy_run_directory_refuses_a_second_run(run_dir, fake_papermill):
    before = snapshot(run_dir)
    with run_lock(run_dir):
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
        r = cli("run", "--smoke", "--only", "00", "--run-dir", str(run_dir))
        with run_lock(run_dir):                                          # re-entrant in the holding process
            pass
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"run directory {run_dir} is in use by pid {os.getpid()}" in lines[0]
    assert "started" in lines[0] and "pass another --run-dir" in lines[0]
    assert snapshot(run_dir) == before and ".ipynb" not in r.stdout
    assert (run_dir / ".lock").read_text() == ""                         # released: it names no holder
    run_sequence("quick", device="cpu", run_dir=str(run_dir), only=["00"], smoke=True)   # and a run proceeds
    assert (run_dir / "notebooks" / "00_problem_formulation.ipynb").exists()


def hold_lock(run_dir):
    """Another process that holds ``run_dir``'s lock until killed (its pid is the holder's)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from robustlib.io import run_lock
        lock = run_lock(sys.argv[1])
        lock.__enter__()
        print("locked", flush=True)
        time.sleep(60)
        """), str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RobustlibError, match=f"in use by pid {holder.pid} \\(.*-c"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()                      # SIGKILL: no cleanup runs, the .lock file stays
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with run_lock(tmp_path) as lock:       # the OS released the flock with the process
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_notebook_does_not_start_in_a_directory_another_run_holds(tmp_path, monkeypatch):
    import robustlib
    from robustlib.io import LOCK_ENV

    holder = hold_lock(tmp_path)
    try:
        monkeypatch.delenv(LOCK_ENV, raising=False)
        with pytest.raises(RobustlibError, match=f"in use by pid {holder.pid} ") as e:   # a notebook opened by hand
            robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True)
        assert len(str(e.value).splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
        monkeypatch.setenv(LOCK_ENV, str(holder.pid))        # a kernel that the holding run started
        assert robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True).run_dir == tmp_path
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv(LOCK_ENV)
    assert robustlib.setup("quick", device="cpu", run_dir=str(tmp_path), smoke=True).run_dir == tmp_path


@pytest.fixture
def fake_papermill(monkeypatch):
    """Notebooks that "execute" at once, writing their output; ``calls`` records them; ``hooks[stem]`` runs
    inside a notebook's execution. The report is skipped."""
    import papermill

    calls, hooks = [], {}

    def execute_notebook(input_path, output_path, **kw):
        calls.append((Path(input_path), Path(output_path), kw))
        assert Path(output_path).parent.is_dir()
        Path(output_path).write_text('{"cells": []}')
        hooks.get(Path(input_path).stem, lambda: None)()

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(report, "build_report", lambda cfg: (_ for _ in ()).throw(RuntimeError("skipped")))
    monkeypatch.setenv("ROBUSTLIB_SMOKE", "1")               # run_sequence sets these for its kernels
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    return types.SimpleNamespace(calls=calls, hooks=hooks)


def test_timings_are_merged_and_partial_notebooks_are_per_process(run_dir, fake_papermill):
    def other_writer():    # another entry lands in timings.json while notebook 01 runs
        t = json.loads((run_dir / "timings.json").read_text())
        (run_dir / "timings.json").write_text(json.dumps({**t, "02_pretraining": {"seconds": 2.0}}))

    fake_papermill.hooks["01_dra_algorithm"] = other_writer
    seen = []            # the kernels import this checkout's robustlib, whatever an editable install points at
    fake_papermill.hooks["00_problem_formulation"] = lambda: seen.append(os.environ["PYTHONPATH"].split(os.pathsep)[0])
    run_sequence("quick", device="cpu", run_dir=str(run_dir), only=["00", "01"], smoke=True)
    timings = json.loads((run_dir / "timings.json").read_text())
    assert set(timings) == {"00_problem_formulation", "01_dra_algorithm", "02_pretraining"}
    assert timings["02_pretraining"] == {"seconds": 2.0}
    assert [out.name for _, out, _ in fake_papermill.calls] == [
        f".00_problem_formulation.{os.getpid()}.partial.ipynb", f".01_dra_algorithm.{os.getpid()}.partial.ipynb"]
    assert sorted(p.name for p in (run_dir / "notebooks").iterdir()) == ["00_problem_formulation.ipynb",
                                                                        "01_dra_algorithm.ipynb"]
    # the kernels talk over sockets in a private folder, removed after the run, never in notebooks/
    ip = fake_papermill.calls[0][2]["config"].KernelManager.ip
    assert Path(ip).is_absolute() and not Path(ip).parent.exists()
    assert fake_papermill.calls[0][2]["cwd"] == str(ROOT / "notebooks")
    assert seen == [str(ROOT)] and os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(ROOT) or \
        seen == [str(ROOT)]


def test_stale_temporaries_are_removed_under_the_lock(run_dir, fake_papermill, capsys):
    stale = [run_dir / "figures" / ".x.png.k2j4h1ab.tmp", run_dir / "checkpoints" / ".vanilla.pt.a8f3k2l1.tmp",
             run_dir / "notebooks" / ".00_problem_formulation.12345.partial.ipynb",
             run_dir / "notebooks" / ".02_pretraining.partial.ipynb"]
    kept = [run_dir / "figures" / "x.png", run_dir / "notes.tmp", run_dir / "checkpoints" / "vanilla.pt",
            run_dir / "other" / "checkpoints" / ".m.pt.k2j4h1ab.tmp"]      # a run nested inside: not ours to clean
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(p.read_bytes() if p.exists() else b"data")
    run_sequence("quick", device="cpu", run_dir=str(run_dir), only=["01"], smoke=True)
    assert f"removed 4 temporary file(s) left in {run_dir}" in capsys.readouterr().out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert (run_dir / "checkpoints" / "vanilla.pt").read_bytes() == b"trained weights"


def test_a_dead_kernel_is_one_line(run_dir, fake_papermill):
    from nbclient.exceptions import DeadKernelError

    fake_papermill.hooks["00_problem_formulation"] = lambda: (_ for _ in ()).throw(DeadKernelError("Kernel died"))
    with pytest.raises(RobustlibError, match="the kernel running 00_problem_formulation.ipynb died"):
        run_sequence("quick", device="cpu", run_dir=str(run_dir), only=["00"], smoke=True)
    assert json.loads((run_dir / "timings.json").read_text()) == TIMINGS


def test_an_interrupt_names_the_completed_notebooks(run_dir, fake_papermill):
    def ctrl_c():
        raise KeyboardInterrupt
    fake_papermill.hooks["01_dra_algorithm"] = ctrl_c
    with pytest.raises(Interrupted) as e:
        run_sequence("quick", device="cpu", run_dir=str(run_dir), only=["00", "01", "02"], smoke=True)
    assert e.value.run_dir == run_dir and e.value.completed == ["00_problem_formulation"]
    assert (run_dir / ".lock").read_text() == ""                          # released


@pytest.mark.parametrize("sig,code,message", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_a_stop_signal_says_what_was_kept(sig, code, message, run_dir):
    marker = run_dir / "running-01"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import papermill
        from robustlib import report
        from robustlib.__main__ import main

        def execute_notebook(inp, out, **kw):
            Path(out).write_text("{{}}")
            if "01_" in inp:
                Path({str(marker)!r}).touch()
                time.sleep(60)
        papermill.execute_notebook = execute_notebook
        report.build_report = lambda cfg: None
        sys.exit(main(["run", "--smoke", "--device", "cpu", "--only", "00", "01", "--run-dir", {str(run_dir)!r}]))
        """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT)
    try:
        for _ in range(1200):             # up to 60 s: a loaded machine imports slowly
            if marker.exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), "the run never reached notebook 01"
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    lines = err.strip().splitlines()
    assert p.returncode == code and len(lines) == 1, err
    assert lines[0] == (f"{message}; completed notebooks: 00; completed epochs are checkpointed in "
                        f"{run_dir / 'checkpoints'}; run the same command to resume")
    assert "01_dra_algorithm.ipynb ... stopped" in out
    assert set(json.loads((run_dir / "timings.json").read_text())) == {"00_problem_formulation"}
    assert (run_dir / "checkpoints" / "vanilla.pt").read_bytes() == b"trained weights"


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert (write_text(tmp_path / "a.txt", "x").stat().st_mode & 0o777) == 0o644
        assert (save_torch({"w": torch.zeros(2)}, tmp_path / "a.pt").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def _full_disk(monkeypatch, free=0):
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**9, used=10**9 - free,
                                                                                 free=free))


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "metrics.csv", "old,rows\n")
    real_fdopen = os.fdopen

    def fdopen(fd, *a, **kw):              # a file whose write fails as on a full disk
        f = real_fdopen(fd, *a, **kw)
        f.write = lambda s: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(io.os, "fdopen", fdopen)
    with pytest.raises(RobustlibError) as e:
        write_text(path, "new,rows\n")
    msg = str(e.value)
    assert msg.startswith(f"no space left on device writing {path}; free space on {io._mount_point(tmp_path)} ")
    assert "\n" not in msg
    assert "(the previous metrics.csv is intact) and run the same command to resume" in msg
    assert path.read_bytes() == b"old,rows\n" and sorted(tmp_path.iterdir()) == [path]     # no .tmp left


def test_torch_on_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_torch({"w": torch.ones(3)}, tmp_path / "vanilla.pt")
    old = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0; "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    _full_disk(monkeypatch, free=4096)
    with pytest.raises(RobustlibError, match=r"no space left on device writing .*vanilla\.pt; .*previous vanilla\.pt "
                                             r"is intact"):
        save_torch({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == old and sorted(tmp_path.iterdir()) == [path]
    _full_disk(monkeypatch, free=10**9)   # the same error with room to spare is not called a full disk
    with pytest.raises(RuntimeError, match="file write failed"):
        save_torch({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == old and sorted(tmp_path.iterdir()) == [path]


def test_other_write_errors_pass_through_and_clean_up(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(ValueError, match="bad value"):
        with atomic_open(path) as f:
            f.write("new")
            raise ValueError("bad value")
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]
