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


def torchrun(nproc: int, *args, script: Path = ROOT / "tests" / "ddp_worker.py") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(script), *map(str, args)]
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
    # evaluation sharded between the 2 processes: all 360 images, the same settings; without a random start
    # (the paper protocol) the very numbers of one process on the same model; with one, a different draw
    sharded, one = results[2]["sharded"], results[1]["sharded"]
    assert sharded["paper"]["n"] == 360 and sharded["paper"]["robust_acc"] == results[2]["pgd@0.1"]
    assert sharded["pgd-rs"]["attack"] == one["pgd-rs"]["attack"]                 # seed and settings as named
    assert abs(sharded["pgd-rs"]["robust_acc"] - results[2]["pgd-rs@0.1"]) <= 3 / 100
    assert one["paper"]["robust_acc"] == results[1]["pgd@0.1"]                    # one process: unchanged
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


def test_an_evaluation_table_asked_for_2_processes_is_computed_by_them_and_matches_one_process(theta, tmp_path, capfd):
    """``run --nproc 2`` (``set_evaluation_processes(2)``, as robustlib.setup does): a notebook's evaluation
    table is computed by 2 processes under torchrun, each attacking half of the images, and comes back here:
    without a random start the very numbers of one process, with one a different draw of the starts."""
    from robustlib import evaluate
    model = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.38])
    model.load_state_dict(torch.load(theta, weights_only=True))
    test = load_dataset("digits", "test")
    x, y = test.float_x(), test.y
    kwargs = dict(eps_list=["0.1"], natural_on=(x, y), autoattack_eps="0.1", autoattack_n=20,
                  autoattack_attacks=("apgd-ce",))
    one = evaluate.evaluate_table({"theta": model}, x[:200], y[:200], state_dir=tmp_path / "one", **kwargs)
    assert "torchrun" not in capfd.readouterr().out
    evaluate.set_evaluation_processes(2)
    two = evaluate.evaluate_table({"theta": model}, x[:200], y[:200], state_dir=tmp_path / "two", **kwargs)
    assert "evaluating theta under torchrun with 2 processes" in capfd.readouterr().out
    assert list(two.columns) == list(one.columns) and two["images"].item() == 200 and two["images (aa)"].item() == 20
    for column in ("natural", "natural-all", "pgd@0.1", "natural (aa)"):
        assert two[column].item() == one[column].item(), column
    assert abs(two["pgd-rs@0.1"].item() - one["pgd-rs@0.1"].item()) <= 4 / 200
    assert abs(two["strong@0.1"].item() - one["strong@0.1"].item()) <= 2 / 20
    assert 0.2 < one["pgd@0.1"].item() < one["natural"].item()         # an attack that breaks some, not all
    # each process attacked its own part with AutoAttack, its resumable state in a folder of its own
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["rank0", "rank1"]


def test_the_masking_probes_asked_for_2_processes_are_computed_by_them(theta, tmp_path, capfd):
    """``run --nproc 2``: the gradient-masking probes beside a table are computed by 2 processes under torchrun,
    each attacking half of the AutoAttack images: PGD at eps 0.5 from the clean point gives one process's very
    number, the restarts a different draw of the starts, and the PGD-20 baseline is still the sharded table's own
    ``pgd-rs (aa)`` (like for like in the restarts check)."""
    import pandas as pd
    from robustlib import evaluate, masking
    model = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.38])
    model.load_state_dict(torch.load(theta, weights_only=True))
    test = load_dataset("digits", "test")
    x, y = test.float_x()[:200], test.y[:200]
    kwargs = dict(eps="0.1", n=40, steps=10, restarts=2)
    bare = pd.DataFrame({"method": ["theta"]})
    one = masking.add_probes(bare, {"theta": model}, x, y, **kwargs)
    assert "torchrun" not in capfd.readouterr().out
    evaluate.set_evaluation_processes(2)
    two = masking.add_probes(bare, {"theta": model}, x, y, **kwargs)
    assert "probing for gradient masking theta under torchrun with 2 processes" in capfd.readouterr().out
    table = evaluate.evaluate_table({"theta": model}, x, y, eps_list=["0.1"], autoattack_eps="0.1", autoattack_n=40,
                                    autoattack_attacks=("apgd-ce",), state_dir=tmp_path)
    assert list(two.columns) == list(one.columns) == ["method", "pgd-rs@0.1 (aa)", "pgd-10x2@0.1 (aa)", "pgd-10@0.5 (aa)"]
    assert two["pgd-10@0.5 (aa)"].item() == one["pgd-10@0.5 (aa)"].item()
    assert abs(two["pgd-10x2@0.1 (aa)"].item() - one["pgd-10x2@0.1 (aa)"].item()) <= 4 / 40
    assert two["pgd-rs@0.1 (aa)"].item() == pytest.approx(table["pgd-rs@0.1 (aa)"].item(), abs=1e-6)  # same images fall
    assert 0 < one["pgd-10x2@0.1 (aa)"].item() <= one["pgd-rs@0.1 (aa)"].item()     # an attack that ran (seeded)


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


def test_a_process_that_joined_the_group_leaves_it_before_it_exits(tmp_path):
    # a gloo group still alive at the interpreter's teardown can abort the process (exit -6, now and then):
    # init arranges finish() at exit, which runs before this handler registered ahead of it (last in, first out)
    script = tmp_path / "leave.py"
    script.write_text(
        "import atexit, sys, torch.distributed as dist\n"
        "from robustlib import distributed\n"
        "atexit.register(lambda: open(f'{sys.argv[1]}.{dist.is_initialized()}', 'w').close())\n"
        "distributed.init('cpu')\n"
        "assert distributed.world() == 2\n")
    r = torchrun(2, tmp_path / "left", script=script)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("left.*")) == ["left.False"]


def test_the_estimate_times_a_torchrun_start_that_does_no_work():
    from robustlib import launch
    seconds = launch.startup_seconds(2, "cpu")         # 2 processes import robustlib, join a gloo group and leave
    assert 0 < seconds < 120


def test_the_estimate_times_the_gradient_exchange_among_the_processes():
    from robustlib import launch
    seconds = launch.exchange_seconds(2, "cpu", [1_000, 200_000])    # 2 gloo processes all-reduce each size
    assert len(seconds) == 2 and all(0 < s < 5 for s in seconds)
    assert launch.exchange_seconds(1, "cpu", [1_000]) is None          # one process exchanges nothing
    if not torch.cuda.is_available():
        assert launch.exchange_seconds(8, "cuda", [1_000]) is None     # no second GPU here: not timed


def test_one_process_changes_nothing():
    assert not distributed.active() and distributed.world() == 1 and distributed.is_main()
    assert distributed.init("cpu") == torch.device("cpu")     # no torchrun in the environment: no process group
    loader = TensorLoader(load_dataset("digits", "test"), batch_size=64, seed=0)
    distributed.shard(loader)
    assert loader.sampler is None
    sums, counts = {"a": torch.tensor(3.0)}, {"a": 2}
    assert distributed.reduce_sums(sums, counts) == (sums, counts) and distributed.from_main(7) == 7


def test_a_notebook_run_with_nproc_2_trains_under_torchrun_then_loads(tmp_path, capfd):
    """``setup(nproc=2)``: each run that must be trained is trained by 2 processes (robustlib.launch), with the
    profile's batch as the global batch; the caller gets the finished run, and a second call only loads it."""
    import robustlib
    from robustlib import evaluate, methods, train
    from robustlib.io import load_torch

    # the command line: notebook 02 trains theta_std under torchrun (run --nproc reaches the kernel)
    r = subprocess.run([sys.executable, "-m", "robustlib", "run", "--profile", "quick", "--smoke", "--device", "cpu",
                        "--only", "02", "--nproc", "2", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "(training and evaluation tables: 2 processes)" in r.stdout
    assert load_torch(tmp_path / "run" / "checkpoints" / "vanilla.last.pt")["fit_args"]["processes"] == 2
    # the library: a method's run, trained by 2 processes, then loaded in this one
    cfg = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "run"), smoke=True, nproc=2)
    assert evaluate.evaluation_processes() == 2                        # its evaluation tables: 2 processes too
    train.pretrain(cfg, progress=False)                                # finished: loaded, not trained
    res = methods.train_method(cfg, "ours", adversary="dra", progress=False)
    out = capfd.readouterr().out
    assert "vanilla: training under torchrun" not in out
    assert "ours-s0: training under torchrun with 2 processes" in out
    assert "Grad strides" not in out
    assert len(res["history"]) == cfg.profile.ft_epochs and res["history"]["val_robust_acc"].notna().all()
    state = load_torch(cfg.path("checkpoints", "ours-s0.last.pt"))
    batches = state["fit_args"]["batches"]
    one = robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "one"), smoke=True)
    assert evaluate.evaluation_processes() == 1
    train_images = len(methods.build_run(one, "ours", adversary="dra", progress=False)["train"])
    # 2 processes, half the batch each: as many updates per epoch as one process with the whole batch
    assert state["fit_args"]["processes"] == 2
    shard = -(-train_images // 2)                                      # DistributedSampler pads to equal shards
    assert batches == -(-shard // (cfg.profile.batch_size // 2)) == -(-train_images // cfg.profile.batch_size)
    assert not list(cfg.path("checkpoints").glob(".*launch.pt"))      # the call's file is gone
    again = methods.train_method(cfg, "ours", adversary="dra", progress=False)
    assert "torchrun" not in capfd.readouterr().out
    assert torch.equal(next(iter(again["model"].state_dict().values())), next(iter(res["model"].state_dict().values())))


def test_a_process_count_that_cannot_run_is_refused_before_anything_trains(tmp_path, monkeypatch):
    import robustlib
    from robustlib.io import RobustlibError

    with pytest.raises(RobustlibError, match="nproc=0 is invalid"):
        robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "a"), nproc=0)
    with pytest.raises(RobustlibError, match="batch_size 128 cannot be split evenly among 3 processes"):
        robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "b"), nproc=3, smoke=False)
    monkeypatch.setenv("ROBUSTLIB_NPROC", "two")
    with pytest.raises(RobustlibError, match="ROBUSTLIB_NPROC='two' is invalid"):
        robustlib.setup("quick", device="cpu", run_dir=str(tmp_path / "c"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def _processes_naming(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process list from /proc (Linux)")
def test_torchruns_processes_stop_when_the_notebook_that_started_them_is_killed(tmp_path):
    """A kernel killed mid-run (kill -9: no clean-up runs in it) leaves no training process behind, writing
    into a run directory that nothing holds any more."""
    import time

    script = ("import robustlib\nfrom robustlib import train\n"
              f"cfg = robustlib.setup('quick', device='cpu', run_dir={str(tmp_path / 'run')!r}, smoke=False, nproc=2, "
              "overrides={'epochs': 1000, 'val_size': 16})\ntrain.pretrain(cfg, progress=False)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    spec = str(tmp_path / "run" / "checkpoints" / ".vanilla.launch.pt")
    try:
        deadline = time.time() + 120
        while len(_processes_naming(spec)) < 3 and time.time() < deadline:    # torchrun and its 2 processes
            time.sleep(0.5)
        assert len(_processes_naming(spec)) >= 3, "torchrun's processes never started"
    finally:
        owner.kill()
        owner.wait()
    deadline = time.time() + 30
    while _processes_naming(spec) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_naming(spec) == []


def test_a_run_made_by_another_number_of_processes_resumes_only_with_as_many(tmp_path, capsys):
    from robustlib.__main__ import main
    from robustlib.train import RETRAIN, _differs

    made = {"epochs": 4, "processes": 2}
    refusal = str(_differs(tmp_path / "ft.last.pt", made, {"epochs": 4}, RETRAIN))
    assert "was trained by 2 processes, not 1; resume it with as many (--nproc 2" in refusal
    # the estimate refuses a count that does not divide the global batch, as the run would
    assert main(["estimate", "--profile", "quick", "--device", "cpu", "--nproc", "3"]) != 0
    assert "batch_size 128 cannot be split evenly among 3 processes" in capsys.readouterr().err


def test_the_run_gives_its_kernels_the_process_count_and_takes_it_back(monkeypatch):
    from robustlib.launch import NPROC_ENV
    from robustlib.run import _environment

    monkeypatch.delenv(NPROC_ENV, raising=False)
    monkeypatch.setenv("ROBUSTLIB_SMOKE", "0")
    with _environment({NPROC_ENV: "2", "ROBUSTLIB_SMOKE": "1"}):
        assert os.environ[NPROC_ENV] == "2" and os.environ["ROBUSTLIB_SMOKE"] == "1"
    assert NPROC_ENV not in os.environ and os.environ["ROBUSTLIB_SMOKE"] == "0"
