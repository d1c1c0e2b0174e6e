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
