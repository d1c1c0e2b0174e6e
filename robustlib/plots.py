"""One seaborn theme and the figure helpers the notebooks share. Every figure is saved as SVG and PNG."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from .io import RobustlibError, save_figure


def set_theme() -> None:
    """The project's one plotting style."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    matplotlib.rcParams.update({"figure.dpi": 100, "axes.titleweight": "bold", "svg.hashsalt": "robustlib"})


def show(fig) -> None:
    """Show ``fig`` here, before what the cell prints next (a notebook otherwise draws it at the cell's end),
    and let it go."""
    from IPython.display import display
    display(fig)
    plt.close(fig)


def finish(fig, run_dir: str | Path | None, name: str, bottom: float = 0.0):
    """Tighten the layout, leaving the figure's lowest ``bottom`` fraction free (for a footnote), and save the
    figure to ``<run_dir>/figures/<name>.{svg,png}``."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    if run_dir is not None:
        save_figure(fig, Path(run_dir) / "figures", name)
    return fig


# what a metric's column means, for legends and axes
LABELS = {"train_acc": "training batches", "val_acc": "held-out, clean", "val_robust_acc": "held-out, under PGD",
          "natural": "natural accuracy"}


def _legend_outside(ax) -> None:
    """The legend right of the axes, clear of the data; none where nothing is labelled."""
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)


def learning_curves(history: pd.DataFrame, *, title: str, run_dir=None, name="learning_curves"):
    """Loss and accuracy per epoch from a :func:`robustlib.train.fit` history."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(history["epoch"], history["train_loss"], marker=".", label="train")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    acc_cols = [c for c in history.columns if c.endswith("_acc")]
    for c in acc_cols:
        ax2.plot(history["epoch"], 100 * history[c], marker=".", label=LABELS.get(c, c.replace("_acc", "")))
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    fig.suptitle(title)
    return finish(fig, run_dir, name)


def confusion_heatmap(cm: pd.DataFrame, *, title: str, run_dir=None, name="confusion_matrix"):
    """A confusion matrix (counts) as an annotated heatmap."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(cm), 0.6 + 0.5 * len(cm)))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    return finish(fig, run_dir, name)


def image_grid(x: torch.Tensor, labels, *, title: str, ncols: int = 8, run_dir=None, name="examples"):
    """Images (N, C, H, W) in [0, 1] in a grid, each titled with its label string."""
    n = len(x)
    nrows = -(-n // ncols)
    width = max(1.3, 0.078 * max((len(str(v)) for v in labels), default=0))     # every title whole
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 1.45 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img = x[i].detach().cpu()
        ax = axes.flat[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1))
        ax.set_title(str(labels[i]), fontsize=8)
    fig.suptitle(title)
    return finish(fig, run_dir, name)


def _show(ax, img, **kw):
    img = img.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0], **kw)
    else:
        ax.imshow(img.permute(1, 2, 0) if not kw else img.abs().sum(0), **kw)
    ax.set_xticks([]), ax.set_yticks([])


def perturbation_panels(x: torch.Tensor, panels: dict, *, title: str, run_dir=None, name="perturbations"):
    """One row per image: the clean image, then one heat map per entry of ``panels`` (name -> (N, C, H, W)).

    Signed perturbations are drawn red/blue on a shared symmetric scale per row; a saliency map (entries
    whose name starts with "saliency") in greys. Fig. 3 of the paper, for any number of images.
    """
    n, cols = len(x), 1 + len(panels)
    fig, axes = plt.subplots(n, cols, figsize=(2.0 * cols, 2.0 * n), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], x[i].clamp(0, 1), **({"cmap": "gray", "vmin": 0, "vmax": 1} if x.shape[1] == 1 else {}))
        deltas = [v[i] for k, v in panels.items() if not k.startswith("saliency")]
        scale = max(float(d.abs().max()) for d in deltas) if deltas else 1.0
        for j, (label, v) in enumerate(panels.items(), start=1):
            if label.startswith("saliency"):
                _show(axes[i, j], v[i].abs().sum(0, keepdim=True), cmap="Greys")
            else:
                _show(axes[i, j], v[i].sum(0, keepdim=True), cmap="RdBu_r", vmin=-scale, vmax=scale)
            if i == 0:
                axes[i, j].set_title(label, fontsize=9)
    axes[0, 0].set_title("clean", fontsize=9)
    fig.suptitle(title)
    return finish(fig, run_dir, name)


def line_plot(df: pd.DataFrame, *, x: str, y: str, hue: str | None = None, style: str | None = None,
              title: str, xlabel: str, ylabel: str, run_dir=None, name: str, percent: bool = True):
    """A seaborn line plot of a tidy DataFrame (y in percent if ``percent``), saved like every figure."""
    data = df.assign(**{y: 100 * df[y]}) if percent else df
    if style is not None and data[style].nunique() < 2:        # one value: nothing for a legend to tell apart
        style = None
    if hue is not None and not pd.api.types.is_numeric_dtype(data[hue]):
        data = data.assign(**{hue: data[hue].map(lambda v: LABELS.get(v, v))})
    fig, ax = plt.subplots(figsize=(7.4, 4.0))
    marks = {"markers": True, "dashes": False} if style else {"marker": "o"}
    sns.lineplot(data=data, x=x, y=y, hue=hue, style=style, ax=ax, palette="colorblind" if hue else None, **marks)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if pd.api.types.is_integer_dtype(data[x]):                # epochs, severities: whole-number ticks
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _legend_outside(ax)
    return finish(fig, run_dir, name)


def scatter_tradeoff(df: pd.DataFrame, *, x: str, y: str, hue: str, title: str, run_dir=None, name: str):
    """Accuracy (y) against robust accuracy (x), in percent, one marker per row."""
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    sns.scatterplot(data=df.assign(**{x: 100 * df[x], y: 100 * df[y]}), x=x, y=y, hue=hue, style=hue, s=80, ax=ax)
    ax.set(title=title, xlabel=f"robust accuracy, {x} (%)", ylabel="natural accuracy (%)")
    _legend_outside(ax)
    return finish(fig, run_dir, name)


def frontier(per_seed: pd.DataFrame, *, robust, title: str, run_dir=None, name: str, margin: float = 0.005,
             markers=("Control", "Vanilla"), window: float = 0.05):
    """The accuracy–robustness frontier: natural accuracy (y) against ``robust`` (x), in percent, one curve per
    method (``family``) through its knob values (``value``, in the order of the knob), each point the mean over
    seeds with ±1 sd whiskers and its knob value written beside it; the ``markers`` families (the control,
    the vanilla model) as single stars; a dashed line ``margin`` below the control's clean accuracy, the floor
    of the frontier verdict (:mod:`robustlib.frontier`). ``robust``: a column, or several (one panel each,
    side by side, sharing the y axis). Where some points lie more than ``window`` below the control's clean
    accuracy, the axes zoom on the others, where the frontier question is asked, and name those points under
    the figure rather than squeeze the rest."""
    columns = [robust] if isinstance(robust, str) else list(robust)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.6 * len(columns) + 2.2, 5.0), sharey=True, squeeze=False)
    bottom = 0.0        # the figure's share kept free below the axes for the note of points not drawn
    families = [f for f in dict.fromkeys(per_seed["family"]) if f not in markers]
    palette = sns.color_palette("colorblind", 10)
    colours = dict(zip(families, [palette[i] for i in (0, 2, 4, 3, 6, 9, 1, 5, 7, 8)] * 2))
    styles = ["o", "s", "^", "D", "v", "P", "X"]
    for ax, col in zip(axes[0], columns):
        for k, family in enumerate(families):
            pts = per_seed[per_seed["family"] == family].groupby("value", sort=True)[["natural", col]]
            mean, sd = 100 * pts.mean(), 100 * pts.std(ddof=1).fillna(0.0)
            variant = str(family).startswith("Ours +")        # the recipe's variants: dashed beside Ours
            ax.plot(mean[col], mean["natural"], ls="--" if variant else "-", marker=styles[k % len(styles)], ms=5,
                    lw=1.4, color=colours[family], label=family, zorder=3)
            ax.errorbar(mean[col], mean["natural"], xerr=sd[col], yerr=sd["natural"], fmt="none", elinewidth=0.8,
                        capsize=2, alpha=0.35, color=colours[family], zorder=2)
            for value, row in mean.iterrows():
                ax.annotate(f"{value:g}", (row[col], row["natural"]), xytext=(4, 3), textcoords="offset points",
                            fontsize=7, color=colours[family])
        for k, family in enumerate(f for f in markers if f in set(per_seed["family"])):
            m = 100 * per_seed[per_seed["family"] == family][["natural", col]].mean()
            if k == 0:      # the control: a hollow star, so that the vanilla model shows through where they meet
                ax.scatter(m[col], m["natural"], marker="*", s=260, facecolors="none", edgecolors="0.1", linewidths=1.4,
                           zorder=5, label=family)
            else:
                ax.scatter(m[col], m["natural"], marker="X", s=60, color="0.45", zorder=6, label=family)
            if family == markers[0]:
                ax.axhline(m["natural"] - 100 * margin, ls="--", lw=1, color="0.4",
                           label=f"{family} − {100 * margin:g} point")
        at = f"at ε = {col.split('@', 1)[1]}" if "@" in col else col
        ax.set(xlabel=f"robust accuracy {at} (%)", ylabel="natural accuracy (%)" if ax is axes[0][0] else "")
        ax.grid(alpha=0.3)
    means = per_seed.groupby(["family", "value"], dropna=False)[["natural", *columns]].mean() * 100
    if markers[0] in set(per_seed["family"]):
        low = 100 * (per_seed.loc[per_seed["family"] == markers[0], "natural"].mean() - window)
        below, shown = means[means["natural"] < low], means[means["natural"] >= low]
        if len(below):      # zoom on the points within the window: the others are named, not drawn off-scale
            axes[0][0].set_ylim(shown["natural"].min() - 0.3, shown["natural"].max() + 0.3)
            for ax, col in zip(axes[0], columns):
                pad = max(1.0, 0.05 * (shown[col].max() - shown[col].min()))
                ax.set_xlim(shown[col].min() - pad, shown[col].max() + pad)
            knob_of = per_seed.drop_duplicates("family").set_index("family").get("knob", pd.Series(dtype=str))
            entries = [f"{f}" + (f" {knob_of.get(f, '')} = {v:g}" if v == v else "") + f" ({m:.1f}% clean)"
                       for (f, v), m in below["natural"].items()]
            # wrapped between entries to the figure's width (about 17 characters of 7-point text per inch), and
            # the layout keeps that many lines free below the axes' labels, so that the note never runs over them
            lines, width = ["below the axis:"], int(17 * fig.get_figwidth())
            for entry in entries:
                if len(lines[-1]) + 2 + len(entry) > width:
                    lines[-1] += ";"
                    lines.append(entry)
                else:
                    lines[-1] += ("; " if lines[-1] != "below the axis:" else " ") + entry
            fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="0.35", ha="left", va="bottom")
            bottom = (0.02 * fig.get_figheight() + len(lines) * 7 * 1.25 / 72) / fig.get_figheight()
    ax = axes[0][-1]
    knobs = (per_seed.drop_duplicates("family").set_index("family")["knob"] if "knob" in per_seed
             else pd.Series(dtype=str))
    handles, labels = ax.get_legend_handles_labels()
    labels = [f"{lab} (points: {knobs[lab]})" if lab in knobs and isinstance(knobs[lab], str) and knobs[lab] else lab
              for lab in labels]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.suptitle(title)
    return finish(fig, run_dir, name, bottom=bottom)


def bar_plot(df: pd.DataFrame, *, x: str, y: str, hue: str | None = None, title: str, xlabel: str, ylabel: str,
             run_dir=None, name: str, percent: bool = True, rotate: bool = False):
    """Grouped bars of a tidy DataFrame; several rows per bar (seeds) give the mean and a ±1 sd whisker."""
    data = df.assign(**{y: 100 * df[y]}) if percent else df
    fig, ax = plt.subplots(figsize=(max(6.4, 0.5 * data[x].nunique() * (data[hue].nunique() if hue else 1)), 4.0))
    sns.barplot(data=data, x=x, y=y, hue=hue, errorbar="sd", ax=ax, palette="colorblind" if hue else None)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if rotate:
        ax.tick_params(axis="x", rotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    if hue:
        _legend_outside(ax)
    return finish(fig, run_dir, name)


def _differences(ax, rows: list[tuple[float, float, list[tuple[pd.Series, tuple, str | None]]]]) -> None:
    """Draw paired differences in points: for each row ``(y, noise, [(differences by seed, colour, label)])`` a
    grey band of ±``noise`` (the reference's seed sd), each seed's difference as a small dot and their mean
    as a large one with a ±1 sd whisker, offset a little per entry so that they do not overlap."""
    for y, noise, entries in rows:
        if noise > 0:
            ax.fill_betweenx([y - 0.42, y + 0.42], -noise, noise, color="0.9", zorder=0, lw=0)
        offsets = [0.0] if len(entries) == 1 else [0.3 * (k / (len(entries) - 1) - 0.5) for k in range(len(entries))]
        for (diff, colour, label), dy in zip(entries, offsets):
            diff = diff.dropna()
            if diff.empty:
                continue
            ax.scatter(diff, [y + dy] * len(diff), s=14, color=colour, alpha=0.5, zorder=2)
            ax.errorbar(diff.mean(), y + dy, xerr=diff.std(ddof=1) if len(diff) > 1 else None, fmt="o", ms=7,
                        color=colour, capsize=4, zorder=3, label=label)
    ax.axvline(0, color="0.3", lw=1, zorder=1)
    ax.grid(axis="x", alpha=0.3)


def paired_differences(per_seed: pd.DataFrame, *, reference: str, metrics: dict, title: str, run_dir=None,
                       name: str, label: str = "method", group: str | None = None,
                       xlabel: str = "difference from the reference (points)"):
    """Each variant (a value of ``label``) minus ``reference``, trained with the same seed, in points: one
    panel per metric (``{column: title}``), each seed's difference as a small dot, their mean as a large one
    with a ±1 sd whisker; the grey band is ±1 sd of the reference itself over the seeds, the seed noise of one
    run. A difference inside the band is one the seeds alone could make. With ``group`` (a column), each
    group's variants are drawn against that group's own reference (Table V: each training method's DRA row
    against its PGD row)."""
    groups = [(None, per_seed)] if group is None else [(g, per_seed[per_seed[group] == g])
                                                        for g in dict.fromkeys(per_seed[group])]
    rows = []                                 # (tick label, the reference's rows, the variant's rows), by seed
    for g, sub in groups:
        ref = sub[sub[label] == reference].set_index("seed")
        if ref.empty:
            raise RobustlibError(f"no {label} {reference!r} in the table{'' if g is None else f' for {group} {g!r}'} "
                                 f"to draw differences from; pass one of {', '.join(map(repr, dict.fromkeys(sub[label])))}")
        rows += [(m if g is None else f"{g}: {m}", ref, sub[sub[label] == m].set_index("seed"))
                 for m in dict.fromkeys(sub[label]) if m != reference]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics) + 1.8, 1.2 + 0.5 * len(rows)),
                             sharey=True, squeeze=False)
    colours = sns.color_palette("colorblind", len(rows))
    for ax, (col, heading) in zip(axes[0], metrics.items()):
        _differences(ax, [(i, 100 * ref[col].std(ddof=1) if len(ref) > 1 else 0.0,
                           [(100 * (variant[col] - ref[col]), colours[i], None)])
                          for i, (_, ref, variant) in enumerate(rows)])
        ax.set(title=heading, xlabel=xlabel)
    axes[0, 0].set_yticks(range(len(rows)), [tick for tick, _, _ in rows])
    axes[0, 0].set_ylim(len(rows) - 0.5, -0.5)
    whose = reference if group is None else f"{reference} of each {group}"
    _subtitle(fig, f"{title}\nreference: {whose}; {_seeds_note(per_seed, whose)}")
    return finish(fig, run_dir, name)


def _subtitle(fig, text: str) -> None:
    """``text`` as the figure's title, each line wrapped to the figure's width (about 13 characters an inch at
    font size 10), the figure made taller by each line past two: a long subtitle neither runs off the canvas
    nor makes the saved figure wider and its panels smaller."""
    width = max(40, int(13 * fig.get_figwidth()))
    lines = [wrapped for line in text.splitlines() for wrapped in textwrap.wrap(line, width) or [""]]
    fig.set_figheight(fig.get_figheight() + 0.17 * max(0, len(lines) - 2))
    fig.suptitle("\n".join(lines), fontsize=10)


def _seeds_note(per_seed: pd.DataFrame, reference: str) -> str:
    """What the dots and the band are, in the words of a figure's subtitle."""
    n = per_seed["seed"].nunique()
    if n < 2:
        return "1 seed: no spread to show"
    return (f"{n} seeds: small dots per seed, a large one for their mean ±1 sd; grey: ±1 sd of {reference} over "
            f"the seeds, for scale (the verdicts' intervals are in the reading)")


def differences_by_row(per_seed: pd.DataFrame, *, row: str, reference: str, others: list[str], title: str,
                       run_dir=None, name: str):
    """For a wide table (one column per model, one row per ``row`` value and seed), each of ``others`` minus
    ``reference`` on the same seed, in points, one line per ``row`` value (e.g. per corruption); the grey
    band is ±1 sd of the reference over the seeds on that row."""
    if reference not in per_seed:
        raise RobustlibError(f"no column {reference!r} in the table to draw differences from")
    rows = list(dict.fromkeys(per_seed[row]))
    colours = sns.color_palette("colorblind", len(others))
    fig, ax = plt.subplots(figsize=(8.4, 1.2 + 0.42 * len(rows)))
    drawn = []
    for i, r in enumerate(rows):
        sub = per_seed[per_seed[row] == r].set_index("seed")
        noise = 100 * sub[reference].std(ddof=1) if len(sub) > 1 else 0.0
        drawn.append((i, noise, [(100 * (sub[m] - sub[reference]), colours[k], m if i == 0 else None)
                                 for k, m in enumerate(others)]))
    _differences(ax, drawn)
    ax.set_yticks(range(len(rows)), [str(r).replace("_", " ") for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set(xlabel=f"accuracy minus {reference}'s (points)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    _subtitle(fig, f"{title}\n{_seeds_note(per_seed, reference)}")
    return finish(fig, run_dir, name)
