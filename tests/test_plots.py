"""What the figures show: the differences they draw are the paired ones, and every label is whole."""
import matplotlib
import pandas as pd
import pytest

from robustlib import plots

matplotlib.use("Agg")


def test_paired_differences_draws_each_variant_minus_the_reference_on_the_same_seed(tmp_path):
    per_seed = pd.DataFrame({"method": ["ref"] * 3 + ["a long variant name, kept whole"] * 3,
                             "seed": [0, 1, 2, 0, 1, 2],
                             "natural": [0.90, 0.92, 0.94, 0.91, 0.95, 0.93],
                             "pgd@0.1": [0.50, 0.52, 0.54, 0.60, 0.61, 0.65]})
    fig = plots.paired_differences(per_seed, reference="ref", metrics={"natural": "natural", "pgd@0.1": "robust"},
                                   title="t", run_dir=tmp_path, name="diff")
    nat, rob = fig.axes
    assert [t.get_text() for t in nat.get_yticklabels()] == ["a long variant name, kept whole"]
    # paired by seed: (0.91-0.90, 0.95-0.92, 0.93-0.94) -> mean 1.0 point; robust (10, 9, 11) -> 10 points
    assert nat.containers[0].lines[0].get_xdata()[0] == pytest.approx(1.0)
    assert rob.containers[0].lines[0].get_xdata()[0] == pytest.approx(10.0)
    assert (tmp_path / "figures" / "diff.png").exists()


def test_a_line_plot_drops_a_one_value_style_and_names_its_metrics():
    df = pd.DataFrame({"epoch": [1, 2, 1, 2], "metric": ["val_acc"] * 2 + ["val_robust_acc"] * 2,
                       "value": [0.9, 0.92, 0.5, 0.55], "T": [5] * 4})
    fig = plots.line_plot(df, x="epoch", y="value", hue="metric", style="T", xlabel="", ylabel="", title="", name="x")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["held-out, clean", "held-out, under PGD"]          # no "T", no "5", no column names


def test_differences_by_row_pairs_each_model_with_the_reference_on_its_seed(tmp_path):
    wide = pd.DataFrame({"corruption": ["fog", "fog", "snow", "snow"], "seed": [0, 1, 0, 1],
                         "Vanilla": [0.50, 0.60, 0.40, 0.40], "Ours": [0.55, 0.67, 0.40, 0.42]})
    fig = plots.differences_by_row(wide, row="corruption", reference="Vanilla", others=["Ours"], title="t",
                                   run_dir=tmp_path, name="rows")
    ax = fig.axes[0]
    means = [c.lines[0].get_xdata()[0] for c in ax.containers]
    assert means == pytest.approx([6.0, 1.0])                 # fog: (5 + 7) / 2; snow: (0 + 2) / 2 points
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fog", "snow"]


def test_grouped_paired_differences_take_each_groups_own_reference(tmp_path):
    """Table V: each training method's DRA row minus its own PGD row, seed by seed."""
    rows = [("Madry", "PGD", 0, 0.80), ("Madry", "PGD", 1, 0.82), ("Madry", "DRA", 0, 0.83), ("Madry", "DRA", 1, 0.83),
            ("Ours", "PGD", 0, 0.90), ("Ours", "PGD", 1, 0.90), ("Ours", "DRA", 0, 0.88), ("Ours", "DRA", 1, 0.90)]
    per_seed = pd.DataFrame(rows, columns=["training", "adversary", "seed", "natural"])
    fig = plots.paired_differences(per_seed, reference="PGD", label="adversary", group="training",
                                   metrics={"natural": "natural"}, title="Table V " + "long words " * 30, name="v")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Madry: DRA", "Ours: DRA"]
    assert [c.lines[0].get_xdata()[0] for c in ax.containers] == pytest.approx([2.0, -1.0])   # (3 + 1)/2, (-2 + 0)/2
    width = 13 * fig.get_figwidth()
    assert all(len(line) <= width for line in fig._suptitle.get_text().splitlines())   # wrapped to the figure
    with pytest.raises(plots.RobustlibError, match="no adversary 'FGSM' in the table for training 'Madry'"):
        plots.paired_differences(per_seed, reference="FGSM", label="adversary", group="training",
                                 metrics={"natural": "natural"}, title="t", name="v")
