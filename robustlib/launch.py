"""A notebook's training under ``torchrun``: with ``nproc > 1``, each run that must be trained is trained by
``nproc`` processes, and the notebook then loads the checkpoint they wrote, as it loads any finished run.

    python -m robustlib run --profile paper-cifar10 --nproc 8        # every notebook trains on 8 GPUs

``robustlib.setup(..., nproc=N)`` (or the environment variable ``ROBUSTLIB_NPROC``, which ``run --nproc``
sets for its kernels) asks for it. :func:`robustlib.train.pretrain` and
:func:`robustlib.methods.train_method` then hand the training to :func:`train_elsewhere`: it writes the call
(the configuration, the arguments and the data) to a file in the run directory, starts

    python -m torch.distributed.run --standalone --nproc_per_node N -m robustlib.launch <that file>

and passes the processes' output through. Each process joins the group (:func:`robustlib.distributed.init`:
NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU) and makes the same call, which trains under
DistributedDataParallel (:func:`robustlib.train.fit`): the profile's ``batch_size`` stays the global batch,
each process taking ``batch_size / N`` of it; process 0 writes the checkpoints. Stopped anywhere, the same
command resumes the run with the same number of processes.

The evaluation tables go the same way: :func:`robustlib.evaluate.evaluate_table` (every PGD and AutoAttack
column of notebooks 00, 03, 04 and 06) and :func:`robustlib.masking.add_probes` (the gradient-masking probes
beside it in notebooks 03, 04 and 06) hand themselves to :func:`evaluate_elsewhere`, whose ``nproc`` processes
each attack their part of the images and gather the outcomes (``shard=True``); the table comes back to the
notebook. The rest of the evaluation (clean passes elsewhere, notebook 01's DRA readings and calibrations,
notebook 05's corruptions) stays in the notebook's process, on one device.
Several machines: run the notebooks' code under ``torchrun`` yourself (README).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from . import distributed
from .io import RobustlibError, ensure_dir, save_torch

NPROC_ENV = "ROBUSTLIB_NPROC"
EVAL_SPEC = ".eval.pt"          # the suffix of an evaluation's call file (evaluate_elsewhere)


def parse_nproc(value, where: str = "nproc") -> int:
    """A process count: an integer >= 1 (refused in one line otherwise)."""
    try:
        n = int(value)
        if n != float(value) or n < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise RobustlibError(f"{where}={value!r} is invalid: use a whole number of processes >= 1") from None
    return n


def requested() -> int:
    """The process count the environment asks for (``ROBUSTLIB_NPROC``; 1 when unset)."""
    value = os.environ.get(NPROC_ENV, "").strip()
    return parse_nproc(value, NPROC_ENV) if value else 1


def check(nproc: int, device: torch.device, batch_size: int) -> None:
    """Refuse, before anything trains, what cannot run with ``nproc`` processes on ``device``."""
    if nproc <= 1:
        return
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise RobustlibError(f"nproc={nproc} asks for one GPU per process, but this machine has "
                             f"{torch.cuda.device_count()}; use nproc <= {torch.cuda.device_count()}")
    check_batch(nproc, batch_size)


def check_batch(nproc: int, batch_size: int) -> None:
    """Refuse a process count that does not divide the profile's (global) batch."""
    if batch_size % nproc:
        raise RobustlibError(f"batch_size {batch_size} cannot be split evenly among {nproc} processes (the profile's "
                             f"batch is the global batch); use a process count that divides it")


def wanted(cfg) -> bool:
    """True where a run of ``cfg`` must be trained by :func:`train_elsewhere` (not already inside torchrun)."""
    return getattr(cfg, "nproc", 1) > 1 and not distributed.active()


def train_elsewhere(cfg, call: str, kwargs: dict, *, name: str, data=None, progress: bool = True) -> None:
    """Make ``call`` (``"robustlib.train:pretrain"``, ``"robustlib.methods:train_method"``) with ``cfg`` and
    ``kwargs`` in ``cfg.nproc`` processes under torchrun; return once they have finished the run ``name``.
    Their output is passed through; a failure is one line naming the run and the processes' last error. The
    processes stop by themselves when this process ends (killed with its kernel, say), so that no run goes on
    writing into a run directory that nothing holds any more."""
    spec = ensure_dir(cfg.path("checkpoints")) / f".{name}.launch.pt"
    save_torch({"call": call, "cfg": dataclasses.replace(cfg, device=torch.device(cfg.device.type)),
                "kwargs": kwargs, "data": data, "progress": progress, "owner": os.getpid()}, spec)
    print(f"{name}: training under torchrun with {cfg.nproc} processes", flush=True)
    try:
        _torchrun(cfg.nproc, spec, f"{name}: training")
    finally:
        spec.unlink(missing_ok=True)


# what evaluate_elsewhere computes: the function each process calls with shard=True, and how it is announced
EVALUATIONS = {"table": ("robustlib.evaluate:evaluate_table", "evaluating"),
               "probes": ("robustlib.masking:probe_table", "probing for gradient masking")}


def evaluate_elsewhere(nproc: int, models: dict, x: torch.Tensor, y: torch.Tensor, kwargs: dict,
                       what: str = "table"):
    """:func:`robustlib.evaluate.evaluate_table` (``what="table"``) or :func:`robustlib.masking.probe_table`
    (``"probes"``) of ``models`` on ``x``, ``y`` with ``kwargs``, computed by ``nproc`` processes under
    torchrun, each attacking its part of the images (``shard=True``), at this process's attack precision and
    on the models' device type (one GPU per process on CUDA); returns the table process 0 wrote. The models,
    images and table travel through a temporary directory."""
    from .evaluate import attack_precision
    if what not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {what!r}; use one of {', '.join(EVALUATIONS)}")
    device = next((p.device.type for m in models.values() for p in m.parameters()), "cpu")
    print(f"{EVALUATIONS[what][1]} {', '.join(models)} under torchrun with {nproc} processes", flush=True)
    with tempfile.TemporaryDirectory(prefix="robustlib-eval-") as tmp:
        # the models and images as they are (on a GPU, too): each process reads them onto the CPU (EVAL_SPEC), then
        # moves them to its own device
        spec, out = Path(tmp) / f"spec{EVAL_SPEC}", Path(tmp) / "table.pkl"
        save_torch({"call": "robustlib.launch:_evaluate_here", "device": device, "on_device": x.device.type != "cpu",
                    "what": what, "models": models, "x": x, "y": y, "kwargs": kwargs, "precision": attack_precision(),
                    "cudnn_benchmark": torch.backends.cudnn.benchmark, "out": str(out), "owner": os.getpid()}, spec)
        _torchrun(nproc, spec, "evaluation")
        return pd.read_pickle(out)


def _start_only(spec: dict) -> None:
    """A torchrun job that joins the process group and leaves it, doing nothing else (:func:`startup_seconds`)."""
    distributed.init(spec["device"])
    distributed.barrier()


def startup_seconds(nproc: int, device: str) -> float:
    """The wall time of one torchrun start of ``nproc`` processes on ``device`` (``"cpu"``, ``"cuda"``) that import
    robustlib, join the group and leave it: the least that every :func:`train_elsewhere` and
    :func:`evaluate_elsewhere` pays before its work, which also writes and reads its call file (the training
    data; the models and images) and sets up DistributedDataParallel (counted by
    :func:`robustlib.estimate.estimate`). On CUDA with fewer GPUs than ``nproc`` (an estimate made on a smaller
    machine), it starts one process per GPU there is."""
    n = max(1, min(nproc, torch.cuda.device_count())) if device == "cuda" else nproc
    with tempfile.TemporaryDirectory(prefix="robustlib-start-") as tmp:
        spec = Path(tmp) / f"spec{EVAL_SPEC}"
        save_torch({"call": "robustlib.launch:_start_only", "device": device, "owner": os.getpid()}, spec)
        start = time.perf_counter()
        _torchrun(n, spec, "a torchrun start")
        return time.perf_counter() - start


def _time_exchange(spec: dict) -> None:
    """A torchrun job that times one all-reduce of a float32 gradient of each size of ``spec["sizes"]`` (the least
    of 3, after one to warm up; every process starting together); process 0 writes the seconds."""
    import torch.distributed as dist
    device = distributed.init(spec["device"])
    seconds = []
    for n in spec["sizes"]:
        grad = torch.ones(n, device=device)
        dist.all_reduce(grad)
        best = float("inf")
        for _ in range(3):
            distributed.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            dist.all_reduce(grad)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        seconds.append(max(distributed.gather_objects(best)))       # a step waits for its slowest process
    if distributed.is_main():
        Path(spec["out"]).write_text(" ".join(map(repr, seconds)))
    distributed.barrier()


def exchange_processes(nproc: int, device: str) -> int:
    """How many processes :func:`exchange_seconds` times with: ``nproc``, or on CUDA one per GPU there is."""
    return min(nproc, torch.cuda.device_count()) if device == "cuda" else nproc


def exchange_seconds(nproc: int, device: str, sizes: list[int]) -> list[float] | None:
    """The wall time of one all-reduce of a float32 gradient of each of ``sizes`` elements among ``nproc``
    processes on ``device`` (gloo on the CPU, NCCL on CUDA): what DistributedDataParallel exchanges once per
    training update, in one piece rather than its buckets (:func:`robustlib.estimate.estimate`). On CUDA it
    starts one process per GPU there is (:func:`exchange_processes`), and with a single GPU it measures
    nothing (``None``)."""
    n = exchange_processes(nproc, device)
    if n < 2 or not sizes:
        return None
    with tempfile.TemporaryDirectory(prefix="robustlib-exchange-") as tmp:
        spec, out = Path(tmp) / f"spec{EVAL_SPEC}", Path(tmp) / "seconds.txt"
        save_torch({"call": "robustlib.launch:_time_exchange", "device": device, "sizes": [int(k) for k in sizes],
                    "out": str(out), "owner": os.getpid()}, spec)
        _torchrun(n, spec, "timing the gradient exchange")
        return [float(v) for v in out.read_text().split()]


def _evaluate_here(spec: dict) -> None:
    """One process of :func:`evaluate_elsewhere`: its part of every attack; process 0 writes the table."""
    from .evaluate import set_attack_precision
    device = distributed.init(spec["device"])
    set_attack_precision(spec["precision"])
    torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]     # as robustlib.setup left the notebook's process
    place = lambda t: t.to(device) if spec["on_device"] else t      # the images where the notebook kept them
    models = {k: m.to(device) for k, m in spec["models"].items()}
    kwargs = dict(spec["kwargs"])
    if kwargs.get("natural_on") is not None:
        kwargs["natural_on"] = tuple(place(t) for t in kwargs["natural_on"])
    module, _, fn = EVALUATIONS[spec.get("what", "table")][0].partition(":")
    evaluate = getattr(__import__(module, fromlist=[fn]), fn)
    table = evaluate(models, place(spec["x"]), place(spec["y"]), shard=True, **kwargs)
    if distributed.is_main():
        table.to_pickle(spec["out"])
    distributed.barrier()               # every process leaves the group together (gloo aborts otherwise, now and then)


def _torchrun(nproc: int, spec: Path, what: str) -> None:
    """Run ``python -m robustlib.launch spec`` in ``nproc`` processes under torchrun, passing their output
    through; a failure is one line naming ``what`` and the processes' last error."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "robustlib.launch", str(spec)]
    package_root = str(Path(__file__).resolve().parent.parent)      # the processes import this robustlib
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    tail = ""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            text = chunk.decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            tail = (tail + text)[-4000:]
        code = proc.wait()
    except BaseException:           # interrupted: stop the processes (a training's finished epochs are checkpointed)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if code:
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
        why = next((ln[len("error: "):] for ln in reversed(lines) if ln.startswith("error: ")), None)
        raise RobustlibError(f"{what} under torchrun with {nproc} processes failed (exit {code}): "
                             f"{why or 'see the output above'}")


def finished(loaded, cfg, name: str):
    """``loaded`` (what ``load_run`` found after :func:`train_elsewhere`), refused if torchrun's processes
    left no finished run: a silent second training in this one process is never the answer."""
    if loaded is None:
        raise RobustlibError(f"{name}: torchrun's {cfg.nproc} processes exited without writing "
                             f"{cfg.path('checkpoints', name + '.pt')}; see their output above")
    return loaded


def _stop_with(owner: int) -> None:
    """End this process once ``owner`` (the notebook's process) or this process's parent (torchrun) is gone."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, daemon=True, name="robustlib-owner-watch").start()


def _main(spec_path: str) -> int:
    # an evaluation's models and images onto the CPU first, whatever device they were saved from
    from .config import use_fast_backends
    spec = torch.load(spec_path, weights_only=False, map_location="cpu" if spec_path.endswith(EVAL_SPEC) else None)
    _stop_with(spec["owner"])
    module, _, fn = spec["call"].partition(":")
    call = getattr(__import__(module, fromlist=[fn]), fn)
    try:
        if "cfg" not in spec:           # an evaluation (evaluate_elsewhere): the call takes the spec itself
            call(spec)
            return 0
        device = distributed.init(spec["cfg"].device)
        cfg = dataclasses.replace(spec["cfg"], device=device)
        use_fast_backends(cfg.profile, device)        # as setup chose for the notebook's process
        call(cfg, **spec["kwargs"], data=spec["data"], progress=spec["progress"] and distributed.is_main())
    except RobustlibError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:          # the traceback for the record, then the one line the notebook shows
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {type(e).__name__}: {first[:300]}", file=sys.stderr, flush=True)
        return 1
    finally:
        distributed.finish()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
