"""Training under torchrun on the CPU (gloo, 2 processes): the same fine-tune as one process, within a stated
tolerance, and an interrupted 2-process run that resumes to the very weights of an uninterrupted one."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlib import distributed
from robustlib.data import TensorLoader, load_dataset
from robustlib.models import build_model
from robustlib.train import fit

ROOT = Path(__file__).resolve().parent.parent
# one process against two on the same global batch: different shards of each epoch, so not the same numbers;
# on 360 test images after a 4-epoch fine-tune they agree to within these (points of accuracy)
TOLERANCE = {"natural": 2.0, "pgd@0.1": 6.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "tests" / "ddp_worker.py"), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


@pytest.fixture(scope="module")
def theta(tmp_path_factory) -> Path:
    """A vanilla digits model (3 epochs): what the fine-tunes start from."""
    torch.manual_seed(0)
    model = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.38])
    fit(model, TensorLoader(load_dataset("digits", "train"), batch_size=64, shuffle=True, seed=0), epochs=3,
        lr=0.05, progress=False)
    path = tmp_path_factory.mktemp("theta") / "theta.pt"
    torch.save(model.state_dict(), path)
    return path


def test_two_processes_fine_tune_like_one_and_resume_exactly(theta, tmp_path):
    results = {}
    for n in (1, 2):
        r = torchrun(n, theta, tmp_path / f"run{n}", tmp_path / f"out{n}.json")
        assert r.returncode == 0, r.stderr[-3000:]
        results[n] = json.loads((tmp_path / f"out{n}.json").read_text())
    assert results[2]["processes"] == 2 and results[1]["processes"] == 1
    # one model: gradients averaged across processes leave both with the very same weights (each trained on its
    # own shard alone, they would differ)
    ranks = [json.loads((tmp_path / f"out2.json.rank{r}").read_text())["weights"] for r in (0, 1)]
    assert ranks[0] == ranks[1] == results[2]["weights"] != results[1]["weights"]
    for column, points in TOLERANCE.items():
        assert abs(results[2][column] - results[1][column]) <= points / 100, (column, results)
    assert results[1]["natural"] > 0.9                       # a fine-tune, not a broken model
    # one set of run files (process 0's), a row per epoch
    metrics = (tmp_path / "run2" / "metrics" / "ft.csv").read_text().splitlines()
    assert len(metrics) == 1 + 4 and (tmp_path / "run2" / "checkpoints" / "ft.pt").exists()
    assert sorted(p.name for p in (tmp_path / "run2" / "checkpoints").iterdir()) == ["ft.last.pt", "ft.pt"]

    stopped = torchrun(2, theta, tmp_path / "run2b", tmp_path / "out2b.json", "--stop-at-epoch", 3)
    assert stopped.returncode != 0 and not (tmp_path / "out2b.json").exists()
    last = torch.load(tmp_path / "run2b" / "checkpoints" / "ft.last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["fit_args"]["processes"] == 2
    again = torchrun(2, theta, tmp_path / "run2b", tmp_path / "out2b.json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming ft" in again.stdout + again.stderr
    assert json.loads((tmp_path / "out2b.json").read_text()) == results[2]     # the same weights, bit for bit


def test_the_metrics_of_all_processes_are_reduced(monkeypatch):
    # what every process logs is the mean over all processes' samples: sums and counts added, then divided
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t: t.mul_(2))     # as if a twin process held the same
    sums, counts = distributed.reduce_sums({"loss": torch.tensor(6.0), "acc": torch.tensor(3.0)}, {"loss": 4, "acc": 4})
    assert {k: float(v) for k, v in sums.items()} == {"acc": 6.0, "loss": 12.0} and counts == {"acc": 8, "loss": 8}


def test_a_loader_that_cannot_be_sharded_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(distributed.RobustlibError, match="every process needs its own shard, and a list has none"):
        distributed.shard([(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])


def test_one_process_changes_nothing():
    assert not distributed.active() and distributed.world() == 1 and distributed.is_main()
    assert distributed.init("cpu") == torch.device("cpu")     # no torchrun in the environment: no process group
    loader = TensorLoader(load_dataset("digits", "test"), batch_size=64, seed=0)
    distributed.shard(loader)
    assert loader.sampler is None
    sums, counts = {"a": torch.tensor(3.0)}, {"a": 2}
    assert distributed.reduce_sums(sums, counts) == (sums, counts) and distributed.from_main(7) == 7
