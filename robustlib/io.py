"""Every file robustlib writes goes through :func:`atomic_open`; one run per directory through :func:`run_lock`.

A file is first written to a temporary sibling (``.<name>.XXXXXXXX.tmp``, with the mode the user's umask
gives new files), flushed to disk, then moved over the target with ``os.replace``, which is atomic on POSIX
and Windows. A run killed half-way therefore leaves either the old file or the new one, never a truncated
one, which is what makes run directories resumable; a full disk is a one-line error and the old file stays.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterator

import torch

try:
    import fcntl
except ImportError:      # Windows: no flock, run_lock does not lock
    fcntl = None


class RobustlibError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


def _read_umask() -> int:
    """The process umask without changing it (Linux's /proc); elsewhere the set-and-restore, done once at import."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return _UMASK


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _disk_full(e: BaseException, directory: Path) -> bool:
    """``e`` is a write failing for want of space: ENOSPC/EDQUOT, or torch's zip writer's failed write on a
    (nearly) full file system (its RuntimeError carries no errno)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, RuntimeError) and ("file write failed" in str(e) or "enforce fail" in str(e)):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(directory).free < 16 * 2**20
    return False


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` and move it over ``path`` only on success.

    Parameters
    ----------
    path : the final file. Its parent directory is created if needed.
    mode : ``"w"`` (text) or ``"wb"`` (binary).

    Example
    -------
    >>> with atomic_open("/tmp/robustlib-example.txt") as f:
    ...     _ = f.write("hello")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    ensure_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if hasattr(os, "fchmod"):                  # mkstemp makes 0600; a written file gets the usual mode
            os.fchmod(fd, 0o666 & ~_read_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(e, path.parent)        # asked before the temporary file frees its space
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if full:
            kept = f"the previous {path.name} is intact" if path.exists() else "no earlier file was touched"
            raise RobustlibError(f"no space left on device writing {path}; free space on {_mount_point(path.parent)} "
                                 f"({kept}) and run the same command to resume") from None
        raise


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed; a clear error if it cannot be written to."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RobustlibError(f"cannot create directory {path}: {e.strerror}; pass a writable run_dir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RobustlibError(f"directory {path} is not writable; pass a writable run_dir or fix its permissions")
    return path


# what atomic_open's mkstemp names (".<name>.<8 random characters>.tmp") and run.py's partial notebooks
_STALE = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp|\..+\.partial\.ipynb|\..+\.launch\.pt|\..+\.settings\.json")


def remove_stale_temporaries(directory: str | os.PathLike, subfolders=()) -> int:
    """Delete what interrupted writers left in ``directory`` and in its ``subfolders`` (one level each, never
    deeper: a run directory nested inside is another run's): :func:`atomic_open`'s ``.<name>.XXXXXXXX.tmp``
    files, partly executed notebooks (``.<stem>.<pid>.partial.ipynb``) and the calls handed to torchrun
    (``.<run>.launch.pt``, :mod:`robustlib.launch`); returns how many. Only safe under
    :func:`run_lock`, which proves that no other run is writing there."""
    folders = [Path(directory), *(Path(directory) / s for s in subfolders)]
    stale = [p for f in folders if f.is_dir() for p in f.iterdir() if p.is_file() and _STALE.fullmatch(p.name)]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return len(stale)


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("robustlib", "__main__.py")):
        argv[0:1] = ["python", "-m", "robustlib"]
    return " ".join(argv) or "python"


LOCK_ENV = "ROBUSTLIB_LOCK_HOLDER"   # the pid of the run that holds the lock, for the kernels it starts


def _holder(fd: int) -> dict:
    try:
        h = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        h = {}
    return h if isinstance(h, dict) else {}


def _in_use(run_dir: Path, h: dict) -> RobustlibError:
    host = f" on {h['host']}" if h.get("host") not in (None, socket.gethostname()) else ""
    return RobustlibError(f"run directory {run_dir} is in use by pid {h.get('pid', '?')}{host} "
                          f"({h.get('command', '?')}, started {h.get('started', '?')}); wait for it, "
                          f"or pass another --run-dir (run_dir=)")


def check_not_in_use(run_dir: str | os.PathLike) -> None:
    """Refuse (one line) to work in ``run_dir`` while another process holds its :func:`run_lock`, unless that
    process is the run that started this one (``LOCK_ENV``). Takes nothing: two notebooks opened by hand
    may share a directory, a notebook and ``make run`` may not."""
    path = Path(run_dir).expanduser().resolve() / ".lock"
    if fcntl is None or not path.is_file() or path.parent in _HELD:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)     # a shared probe: fails only under an exclusive holder
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        h = _holder(fd)
        if str(h.get("pid")) != os.environ.get(LOCK_ENV):
            raise _in_use(path.parent, h) from None
    except OSError:
        pass
    finally:
        os.close(fd)


_HELD: dict[Path, int] = {}     # run directories this process holds, and how deep: run_lock is re-entrant


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory for the block: one run at a time, so two never train the same checkpoints or
    overwrite each other's files. ``python -m robustlib run`` holds it for its whole life (its notebooks'
    kernels are its own: ``LOCK_ENV`` names it to them); a script may take it too. A notebook opened by hand
    does not take it, but :func:`robustlib.config.setup` refuses to start while another process holds it
    (:func:`lock_holder`).

    An exclusive ``flock`` on ``<run_dir>/.lock``, which holds the holder's pid, host, command and start time.
    A second holder fails at once with a one-line :class:`RobustlibError` naming the first. The OS releases
    an flock when its process ends, however it ends (``kill -9`` included), so a ``.lock`` file left behind
    never blocks: only a live holder does. Re-entrant within a process; no locking where ``fcntl`` is missing
    (Windows). Not reliable on network file systems without lock support.

    Example
    -------
    >>> with run_lock(tempfile.mkdtemp()) as lock:
    ...     lock.name
    '.lock'
    """
    run_dir = ensure_dir(Path(run_dir).expanduser().resolve())
    path = run_dir / ".lock"
    if run_dir in _HELD or fcntl is None:
        _HELD[run_dir] = _HELD.get(run_dir, 0) + 1
        try:
            yield path
        finally:
            _HELD[run_dir] -= 1
            if not _HELD[run_dir]:
                del _HELD[run_dir]
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RobustlibError(f"cannot open {path}: {e.strerror}; pass a writable run_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        h = _holder(fd)
        os.close(fd)
        raise _in_use(run_dir, h) from None
    except OSError as e:
        os.close(fd)
        raise RobustlibError(f"cannot lock {path} ({e.strerror}); put the run directory on a local file system") from None
    try:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD[run_dir] = 1
        yield path
    finally:
        _HELD.pop(run_dir, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)        # free again: an empty file names no holder
        os.close(fd)                   # releases the flock


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RobustlibError(f"cannot read {path} ({e}); delete it to start that step afresh") from None


def write_csv(path: str | os.PathLike, df) -> Path:
    """Write a pandas DataFrame as CSV, atomically (the whole file each time: metrics files are small)."""
    with atomic_open(path, "w") as f:
        df.to_csv(f, index=False)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_open`."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` with a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise RobustlibError(f"no checkpoint at {path}; train it first (notebook 02) or fix the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and weights-only errors all mean "not a checkpoint we can trust"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RobustlibError(
            f"cannot read checkpoint {path} ({first[:160]}); delete it or pass retrain=True to train it again"
        ) from None


def save_figure(fig, directory: str | os.PathLike, name: str) -> list[Path]:
    """Save a matplotlib figure as ``<directory>/<name>.svg`` and ``.png``, atomically."""
    out = []
    for ext in ("svg", "png"):
        path = Path(directory) / f"{name}.{ext}"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=ext, bbox_inches="tight", dpi=150)
        out.append(path)
    return out
