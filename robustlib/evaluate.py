"""Clean accuracy, per-class accuracy and the confusion matrix, as numbers and pandas DataFrames."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from .models import eval_mode


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels (N,) for images ``x`` (N, C, H, W) in [0, 1], in eval mode, batch by batch."""
    device = _device_of(model)
    with eval_mode(model):
        out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Fraction of ``x`` classified as ``y`` (a float in [0, 1])."""
    return (predict(model, x, batch_size=batch_size) == y.cpu()).float().mean().item()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, classes) -> pd.DataFrame:
    """Counts, rows = true class, columns = predicted class."""
    k = len(classes)
    cm = torch.bincount(y_true.cpu() * k + y_pred.cpu(), minlength=k * k).reshape(k, k).numpy()
    return pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def clean_report(model: nn.Module, data, *, batch_size: int = 512) -> dict:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` on an :class:`~robustlib.data.ImageData`.

    Returns
    -------
    dict with ``accuracy`` (float), ``per_class`` (DataFrame: class, n, accuracy) and ``confusion``.
    """
    x, y = data.float_x(), data.y
    pred = predict(model, x, batch_size=batch_size)
    classes = list(data.info.classes)
    cm = confusion_matrix(y, pred, classes)
    counts = cm.to_numpy().sum(1)
    per_class = pd.DataFrame({
        "class": classes,
        "n": counts,
        "accuracy": np.divide(np.diag(cm.to_numpy()), counts, out=np.full(len(classes), np.nan), where=counts > 0),
    })
    return {"accuracy": (pred == y).float().mean().item(), "per_class": per_class, "confusion": cm}
