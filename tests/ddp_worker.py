"""One process of a short DRA fine-tune under torchrun (tests/test_distributed.py launches it).

    torchrun --nproc_per_node N tests/ddp_worker.py THETA RUN_DIR OUT.json [--stop-at-epoch E] [--device cuda]

Fine-tunes THETA (a digits-cnn state_dict) on scikit-learn's digits with the paper's objective and DRA, a
global batch of 64 split among the processes, then process 0 writes clean and PGD accuracy on the test split
(each PGD also sharded among the processes, as every process computed it) and a hash of the weights to OUT.json; every process writes its own weights' hash to OUT.json.rank<r>. ``--stop-at-epoch E`` makes process 0 fail in epoch E's evaluation,
after epoch E-1 was checkpointed (an interrupted run).
"""
import argparse
import hashlib
import json

import torch

from robustlib import distributed
from robustlib.data import TensorLoader, load_dataset
from robustlib.evaluate import accuracy, robust_accuracy
from robustlib.losses import Adversary, EpsSchedule
from robustlib.models import build_model
from robustlib.train import fit

GLOBAL_BATCH, EPOCHS = 64, 4


def main():
    parser = argparse.ArgumentParser()
    for arg in ("theta", "run_dir", "out"):
        parser.add_argument(arg)
    parser.add_argument("--stop-at-epoch", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cuda: NCCL, each process on its own GPU")
    args = parser.parse_args()
    device = distributed.init(args.device)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.38])
    model.load_state_dict(torch.load(args.theta, weights_only=True))
    loader = TensorLoader(train, batch_size=GLOBAL_BATCH // distributed.world(), shuffle=True, augment=True, seed=0)
    calls = []

    def evaluate(m):
        calls.append(1)
        if len(calls) == args.stop_at_epoch:
            raise SystemExit(f"stopped in epoch {args.stop_at_epoch}")
        return {"val_acc": accuracy(m, test.float_x()[:64], test.y[:64])}

    adversary = Adversary("dra", eps=EpsSchedule(6.0, 1.5, EPOCHS), p=1 / 3, steps=3)
    fit(model, loader, epochs=EPOCHS, lr=0.01, lr_schedule="constant", objective="finetune", adversary=adversary,
        evaluate=evaluate, device=device, run_dir=args.run_dir, name="ft", progress=False)
    weights = hashlib.sha1(b"".join(v.detach().cpu().contiguous().numpy().tobytes() for v in model.state_dict().values()))
    with open(f"{args.out}.rank{distributed.rank()}", "w") as f:     # every process: its own copy of the weights
        json.dump({"weights": weights.hexdigest()}, f)
    x, y = test.float_x(), test.y
    sharded = {p: robust_accuracy(model, x, y, eps=0.1, protocol=p, shard=True)[0] for p in ("paper", "pgd-rs")}
    if distributed.is_main():
        result = {"processes": distributed.world(), "natural": accuracy(model, x, y),
                  "pgd@0.1": robust_accuracy(model, x, y, eps=0.1)[0]["robust_acc"], "weights": weights.hexdigest(),
                  "pgd-rs@0.1": robust_accuracy(model, x, y, eps=0.1, protocol="pgd-rs")[0]["robust_acc"],
                  "sharded": {p: {k: r[k] for k in ("robust_acc", "clean_acc", "n", "attack")} for p, r in sharded.items()}}
        with open(args.out, "w") as f:
            json.dump(result, f)
    if distributed.active():
        # every process leaves together: one that left its gloo group while process 0 still evaluated alone
        # aborted now and then ("terminate called without an active exception", exit -6) even when it left
        torch.distributed.barrier()
        distributed.finish()


if __name__ == "__main__":
    main()
