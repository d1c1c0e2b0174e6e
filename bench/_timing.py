"""The benchmarks' one timer: interleaved rounds, medians, and the device synchronised around every call."""
from __future__ import annotations

import statistics
import time

import torch


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
