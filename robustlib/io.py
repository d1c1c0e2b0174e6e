"""Every file robustlib writes goes through :func:`atomic_open`.

A file is first written to a temporary sibling, flushed to disk, then moved over the target with
``os.replace``, which is atomic on POSIX and Windows. A run killed half-way therefore leaves either the
old file or the new one, never a truncated one, which is what makes run directories resumable.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch


class RobustlibError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
