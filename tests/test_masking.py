"""Gradient-masking flags: each check fires on the numbers it is for, and a deliberately masked model (a
non-differentiable input quantiser in front of a trained CNN) raises them while the same CNN raises none."""
import pandas as pd
import pytest
import torch
from torch import nn

from robustlib import evaluate, masking, report
from robustlib.data import load_dataset
from robustlib.models import build_model
from robustlib.train import fit

HEALTHY = {"method": "m", "natural": 0.99, "pgd@0.05": 0.90, "pgd@0.1": 0.70, "pgd@0.2": 0.20,
           "pgd-rs@0.05": 0.89, "pgd-rs@0.1": 0.68, "pgd-rs@0.2": 0.15, "natural (aa)": 0.99,
           "pgd-rs@0.1 (aa)": 0.70, "strong@0.1": 0.66, "pgd-100x5@0.1 (aa)": 0.67, "pgd-100@0.5 (aa)": 0.0}


@pytest.mark.parametrize("change,check", [
    ({"pgd@0.2": 0.75}, "rises"),                                    # a larger ball cannot hold more robust points
    ({"pgd-rs@0.1": 0.90, "pgd-rs@0.2": 0.895}, "flat"),             # does not fall at all over the range
    ({"pgd@0.05": 0.70, "pgd@0.1": 0.70, "pgd@0.2": 0.695}, "flat"),
    ({"strong@0.1": 0.55}, "autoattack"),                            # AutoAttack 15 points below pgd-rs
    ({"pgd-100x5@0.1 (aa)": 0.50}, "restarts"),                      # PGD-20 had not converged
    ({"pgd-100@0.5 (aa)": 0.40}, "large_eps"),                       # eps 0.5 reaches the grey image
])
def test_each_check_fires_on_its_numbers_and_only_there(change, check):
    assert masking.check_row(pd.Series(HEALTHY)) == {}
    found = masking.check_row(pd.Series({**HEALTHY, **change}))
    assert set(found) == {check}, found


def test_the_probes_name_their_steps_and_restarts_and_the_checks_read_any_such_columns():
    # the smoke setting's PGD-5 x 2: the same checks, on columns that say what ran
    row = {k: v for k, v in HEALTHY.items() if k not in ("pgd-100x5@0.1 (aa)", "pgd-100@0.5 (aa)")}
    row.update({"pgd-5x2@0.1 (aa)": 0.50, "pgd-5@0.5 (aa)": 0.40})
    assert set(masking.check_row(pd.Series(row))) == {"restarts", "large_eps"}
    assert masking.flags(pd.DataFrame([row])).iloc[0]["not checked"] == ""
    assert masking.restarts_column("8/255", 5, 2) == "pgd-5x2@8/255 (aa)" and masking.large_column(5) == "pgd-5@0.5 (aa)"


def test_restarts_and_autoattack_are_compared_on_the_same_images_or_not_at_all():
    row = {k: v for k, v in HEALTHY.items() if k != "pgd-rs@0.1 (aa)"}      # no PGD-20 on the AutoAttack images
    row["pgd-100x5@0.1 (aa)"] = 0.10                                       # far below pgd-rs@0.1, but on others
    found = masking.flags(pd.DataFrame([row])).iloc[0]
    assert found["masking"] == "none found" and found["not checked"] == "restarts, autoattack"
    assert masking.summary({"t": pd.DataFrame([row])}).iloc[0]["checks run"] == "rises, flat, large_eps"


def test_zero_robust_everywhere_is_not_flat_and_missing_numbers_are_not_passed():
    broken = pd.Series({**HEALTHY, "pgd@0.05": 0.0, "pgd@0.1": 0.0, "pgd@0.2": 0.0,
                        "pgd-rs@0.05": 0.0, "pgd-rs@0.1": 0.0, "pgd-rs@0.2": 0.0})
    assert "flat" not in masking.check_row(broken)          # nothing robust: nothing masked
    one_eps = pd.DataFrame([{"method": "m", "natural": 0.9, "pgd@0.1": 0.5}])
    row = masking.flags(one_eps).iloc[0]
    assert row["masking"] == "none found" and row["not checked"] == ", ".join(masking.CHECKS)
    assert masking.summary({"t": one_eps}).iloc[0]["flags"].startswith("nothing to check")


class Quantised(nn.Module):
    """Rounds its input to 4 grey levels first: the gradient through torch.round is zero everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


@pytest.fixture(scope="module")
def digits_models(one_thread):
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model("digits-cnn", in_channels=1, image_size=8)
    loader = [(train.float_x()[i:i + 64], train.y[i:i + 64]) for i in range(0, len(train), 64)]
    fit(model, loader, epochs=6, lr=0.05, lr_schedule="constant", progress=False)
    return {"plain": model.eval(), "quantised": Quantised(model).eval()}, test.float_x()[:120], test.y[:120]


def test_a_masked_model_raises_the_flags_and_its_unmasked_twin_none(digits_models):
    models, x, y = digits_models
    table = evaluate.evaluate_table(models, x, y, eps_list=("0.05", "0.1", "0.2"))
    table = masking.add_probes(table, models, x, y, eps="0.1", n=60)    # a table without AutoAttack, as in 04
    assert "pgd-rs@0.1 (aa)" in table                                       # the restarts' baseline, same images
    assert set(masking.flags(table)["not checked"]) == {"autoattack"}
    found = masking.flags(table).set_index("method")["masking"]
    assert found["plain"] == "none found", table.round(3).to_dict("records")
    assert "flat" in found["quantised"] and "large_eps" in found["quantised"], found["quantised"]
    assert table.set_index("method").loc["quantised", masking.large_column()] > 0.5   # the attack cannot move it
    short = masking.probe(models["plain"], x, y, eps="0.1", n=20, steps=3, restarts=2)
    assert set(short) == {"pgd-rs@0.1 (aa)", "pgd-3x2@0.1 (aa)", "pgd-3@0.5 (aa)"}
    flagged = masking.summary({"t": table}).iloc[0]["flags"]
    assert flagged.startswith("quantised:") and "plain" not in flagged


def test_under_torchrun_a_probe_attacks_only_its_part_and_gathers_the_rest(digits_models, monkeypatch):
    """shard=True as process 1 of 2: it attacks the second half of the AutoAttack images (exactly as one process
    would attack those images alone) and counts the other process's outcomes, gathered, with its own."""
    from robustlib import distributed
    models, x, y = digits_models
    idx = evaluate.attack_subset(len(y), 40, 0)
    alone = masking.probe(models["plain"], x[idx][20:], y[idx][20:], eps="0.1", steps=3, restarts=2)
    got = []

    def gather(part):                 # the other process's 20 outcomes: all robust; then this process's
        got.append(len(part))
        return torch.cat([torch.ones(20, dtype=torch.bool), part])
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "gather", gather)
    sharded = masking.probe(models["plain"], x, y, eps="0.1", n=40, steps=3, restarts=2, shard=True)
    assert got == [20, 20, 20]                                  # three outcomes per image, of this part only
    assert sharded.keys() == alone.keys()
    for column, value in alone.items():
        assert sharded[column] == pytest.approx((20 + 20 * value) / 40), column


def test_the_report_shows_the_checks_beside_the_tables(tmp_path):
    healthy = pd.DataFrame([{**HEALTHY, "seed": 0}, {**HEALTHY, "method": "bad", "pgd-100@0.5 (aa)": 0.9, "seed": 0}])
    md = "\n".join(report._masking({"03_methods_per_seed.csv": healthy, "03_methods.csv": healthy,
                                    "03_methods_std.csv": healthy}))
    assert "## Gradient-masking checks" in md and masking.RULE in md
    assert md.count("`03_methods") == 1                 # the per-seed rows only, not the mean or spread tables
    assert "bad 0: large_eps: 90.0% robust at eps 0.5" in md
