"""Several processes, one model: :mod:`torch.distributed` as ``torchrun`` sets it up.

    torchrun --nproc_per_node 8 your_script.py        # each process calls robustlib.distributed.init()

:func:`init` joins the process group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``): NCCL on CUDA, each process on its own GPU (``cuda:LOCAL_RANK``), gloo on the
CPU. Under it :func:`robustlib.train.fit` trains with DistributedDataParallel: each process sees its own
shard of every epoch's batches (:func:`shard`), gradients are averaged across processes, the logged metrics
are reduced over all of them (:func:`reduce_sums`), and process 0 alone evaluates and writes checkpoints and
metrics (:func:`is_main`). The loader's batch is per process: the global batch is ``world()`` times it.
An evaluation asked to shard (``robust_accuracy(..., shard=True)``, ``evaluate_table(..., shard=True)``,
``masking.probe(..., shard=True)``, called by every process) attacks each process's part of the images (:func:`my_part`) and gathers the outcomes.

With one process, or without ``torchrun``, every function here is a no-op and nothing changes.
"""
from __future__ import annotations

import atexit
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

from .io import RobustlibError


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Process 0, or the only process: the one that evaluates and writes files."""
    return rank() == 0


def init(device: str | torch.device = "auto") -> torch.device:
    """Join ``torchrun``'s process group if the environment names one of more than one process, and return
    this process's device (``cuda:LOCAL_RANK`` on CUDA). Without ``torchrun``: ``device`` unchanged. A process
    that joins leaves the group when it exits (:func:`finish`, registered with ``atexit``)."""
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # a process that exits with the group still alive can abort in gloo's threads during the interpreter's
        # teardown ("terminate called without an active exception", exit -6): leave it while Python still runs
        atexit.register(finish)
    return device


def finish() -> None:
    """Leave the process group (if this process joined one): what every process should do before it exits.
    :func:`init` arranges it at exit; calling it earlier, or twice, is harmless."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (its weights broadcast from process 0), or itself alone."""
    if not active():
        return model
    if any(isinstance(m, nn.Conv2d) and m.in_channels == 1 for m in model.modules()):
        # a convolution over one input channel has a weight whose strides read both as contiguous and
        # channels-last; DDP then warns on every backward pass of a layout mismatch that costs nothing
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(loader) -> None:
    """Give a :class:`~robustlib.data.TensorLoader` (no sampler of its own) this process's shard of every
    epoch: a ``DistributedSampler`` seeded like the loader, so an epoch's order is the same on every rerun.
    A loader of another kind must shard itself (a ``DataLoader`` with a ``DistributedSampler``); any other
    is refused, since every process would train on the same batches."""
    if not active():
        return
    sampler = getattr(loader, "sampler", False)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        return
    if sampler is not None or not hasattr(loader, "y"):
        raise RobustlibError(f"under torchrun every process needs its own shard, and a {type(loader).__name__} has "
                             "none: pass a robustlib.data.TensorLoader (fit shards it) or a DataLoader with a "
                             "DistributedSampler")
    n = len(loader.y)
    if n < world():
        raise RobustlibError(f"{n} training images cannot be shared among {world()} processes; use fewer processes")
    loader.sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world(), rank=rank(),
                                                         shuffle=loader.shuffle, seed=loader.seed)


def reduce_sums(sums: dict[str, torch.Tensor], counts: dict[str, int]) -> tuple[dict, dict]:
    """Per-key sums and counts added over all processes (what every process logs is the global mean)."""
    if not active():
        return sums, counts
    keys = sorted(sums)
    device = next(iter(sums.values())).device if keys else torch.device("cpu")
    packed = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device) for k in keys]
                         + [torch.tensor(float(counts[k]), dtype=torch.float64, device=device) for k in keys])
    dist.all_reduce(packed)
    return ({k: packed[i] for i, k in enumerate(keys)}, {k: int(packed[len(keys) + i]) for i, k in enumerate(keys)})


def my_part(n: int) -> torch.Tensor:
    """This process's indices of ``n`` items for sharded evaluation: contiguous, in rank order (all of them
    with one process), so that :func:`gather` puts the parts back in the original order."""
    return torch.arange(n).tensor_split(world())[rank()]


def gather(part: torch.Tensor) -> torch.Tensor:
    """Every process's ``part`` (a CPU tensor, one per process, first dimensions may differ), concatenated
    in rank order on every process; the tensor itself with one process."""
    return torch.cat(gather_objects(part.cpu())) if active() else part


def gather_objects(value) -> list:
    """Every process's ``value`` (any picklable object), in rank order; ``[value]`` with one process."""
    if not active():
        return [value]
    values = [None] * world()
    dist.all_gather_object(values, value)
    return values


def from_main(value):
    """Process 0's ``value`` on every process (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
