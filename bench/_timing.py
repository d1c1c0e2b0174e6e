"""The benchmarks' one timer (interleaved rounds, medians, the device synchronised around every call) and
their one way to keep a call's results (one entry per call in a JSON list, rewritten atomically)."""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustlib.io import atomic_open, read_json          # noqa: E402


def interleaved_medians(fns: dict, rounds: int, device: torch.device | None = None) -> dict:
    """Median seconds per call of each function, each warmed up once, then timed in rotating order over
    ``rounds`` rounds (a load that comes and goes hits them alike). On CUDA the device is synchronised before
    and after each call, so a call's queued work is counted in its own time, not in the next one's."""
    sync = (lambda: torch.cuda.synchronize(device)) if device is not None and device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for r in range(rounds):
        names = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
        for k in names:
            sync()
            t0 = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def save_entry(out, entry: dict) -> None:
    """Add ``entry`` to the JSON list at ``out``, replacing the entry of the same ``started`` (a call that saves
    after each step keeps one entry, and a call stopped later keeps what it measured)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = read_json(out) if out.exists() else []
    runs = [r for r in runs if r.get("started") != entry["started"]] + [entry]
    with atomic_open(out) as f:
        json.dump(runs, f, indent=1)
