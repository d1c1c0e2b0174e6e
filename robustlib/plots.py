"""One seaborn theme and the figure helpers the notebooks share. Every figure is saved as SVG and PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from .io import save_figure


def set_theme() -> None:
    """The project's one plotting style."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    matplotlib.rcParams.update({"figure.dpi": 100, "axes.titleweight": "bold", "svg.hashsalt": "robustlib"})


def finish(fig, run_dir: str | Path | None, name: str):
    """Tighten the layout and save the figure to ``<run_dir>/figures/<name>.{svg,png}``."""
    fig.tight_layout()
    if run_dir is not None:
        save_figure(fig, Path(run_dir) / "figures", name)
    return fig


def learning_curves(history: pd.DataFrame, *, title: str, run_dir=None, name="learning_curves"):
    """Loss and accuracy per epoch from a :func:`robustlib.train.fit` history."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(history["epoch"], history["train_loss"], marker=".", label="train")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    acc_cols = [c for c in history.columns if c.endswith("_acc")]
    for c in acc_cols:
        ax2.plot(history["epoch"], 100 * history[c], marker=".", label=c.replace("_acc", ""))
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.45 * nrows), squeeze=False)
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
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sns.lineplot(data=data, x=x, y=y, hue=hue, style=style, markers=True, dashes=False, ax=ax,
                 palette="colorblind" if hue else None)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return finish(fig, run_dir, name)


def scatter_tradeoff(df: pd.DataFrame, *, x: str, y: str, hue: str, title: str, run_dir=None, name: str):
    """Accuracy (y) against robust accuracy (x), in percent, one marker per row."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    sns.scatterplot(data=df.assign(**{x: 100 * df[x], y: 100 * df[y]}), x=x, y=y, hue=hue, style=hue, s=80, ax=ax)
    ax.set(title=title, xlabel=f"robust accuracy, {x} (%)", ylabel="natural accuracy (%)")
    ax.legend(fontsize=8, loc="best")
    return finish(fig, run_dir, name)


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
        ax.legend(fontsize=8, loc="best")
    return finish(fig, run_dir, name)
