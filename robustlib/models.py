"""Model registry: ``build_model(name, num_classes=..., in_channels=..., ...)``.

Every model built here starts with a :class:`Normalize` layer, so it takes images in [0, 1] and every
attack budget is in pixel units (as MadryLab's ``robustness`` does with its input normaliser).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .data import dataset_info
from .io import RobustlibError
from .profiles import REGISTRIES


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics stored as buffers (saved in checkpoints)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 convolutions, one pooling, two fully connected layers."""

    def __init__(self, num_classes=10, in_channels=1, image_size=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (image_size // 2) ** 2, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """The paper's MNIST model (Section V.A): 2 convolutional + 2 fully connected layers, after TRADES' net_mnist."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * side * side, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SmallCNN(nn.Module):
    """TRADES' SmallCNN: 4 convolutional + 3 fully connected layers, dropout 0.5."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28, drop=0.5):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * side * side, 200)), ("relu1", nn.ReLU()), ("drop", nn.Dropout(drop)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, num_classes)),
        ]))

    def forward(self, x):
        return self.classifier(self.feature_extractor(x).flatten(1))


# --- CIFAR-style ResNets (3x3 stem, no max-pool), after kuangliu/pytorch-cifar ---------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes * 4:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet; ``width`` is the stem's channel count (64 in the paper; 8 or 16 run on a CPU)."""

    def __init__(self, block, layers, num_classes=10, in_channels=3, width=64):
        super().__init__()
        self.cin = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        for i, n in enumerate(layers):
            stages.append(self._stage(block, width * 2 ** i, n, stride=1 if i == 0 else 2))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(width * 8 * block.expansion, num_classes)

    def _stage(self, block, planes, n, stride):
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(block(self.cin, planes, s))
            self.cin = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _resnet(block, layers):
    def build(num_classes=10, in_channels=3, image_size=32, width=None):
        return ResNet(block, layers, num_classes, in_channels, width or 64)
    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "digits-cnn": lambda num_classes=10, in_channels=1, image_size=8, width=None: DigitsCNN(num_classes, in_channels, image_size),
    "mnist-cnn": lambda num_classes=10, in_channels=1, image_size=28, width=None: MnistCNN(num_classes, in_channels, image_size),
    "smallcnn": lambda num_classes=10, in_channels=1, image_size=28, width=None: SmallCNN(num_classes, in_channels, image_size),
    "resnet18": _resnet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet(Bottleneck, [3, 4, 6, 3]),
    "resnet101": _resnet(Bottleneck, [3, 4, 23, 3]),
}
REGISTRIES["models"] = MODELS         # profiles check their model and backbones against it


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                width: int | None = None, mean=None, std=None) -> nn.Sequential:
    """Build a registered model that takes images in [0, 1].

    Parameters
    ----------
    name : one of ``MODELS`` (``digits-cnn``, ``mnist-cnn``, ``smallcnn``, ``resnet18/34/50/101``).
    num_classes, in_channels, image_size : the data's shape.
    width : ResNet stem width (64 = the paper's); ignored by the small CNNs.
    mean, std : per-channel statistics of the Normalize layer (default: 0 and 1, i.e. none).

    Returns
    -------
    ``nn.Sequential(Normalize, net)`` mapping (B, C, H, W) in [0, 1] to (B, num_classes) logits.

    Example
    -------
    >>> m = build_model("digits-cnn", num_classes=10, in_channels=1, image_size=8)
    >>> m(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    if name not in MODELS:
        raise RobustlibError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    mean = [0.0] * in_channels if mean is None else list(mean)
    std = [1.0] * in_channels if std is None else list(std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise RobustlibError(f"mean/std need {in_channels} values (one per channel), got {len(mean)}/{len(std)}")
    net = MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)
    return nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), ("net", net)]))


def model_spec(profile) -> dict:
    """The keyword arguments that rebuild the profile's model; stored in every checkpoint."""
    info = dataset_info(profile.dataset)
    return dict(name=profile.model, num_classes=info.num_classes, in_channels=info.in_channels,
                image_size=info.image_size, width=profile.width, mean=list(info.mean), std=list(info.std))


def first_nonfinite(named) -> str | None:
    """The name of the first floating tensor of ``named`` (``(name, tensor)`` pairs: ``state_dict().items()``,
    ``named_parameters()``) that holds NaN or inf; ``None`` if every one is finite."""
    return next((k for k, v in named if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()),
                None)


class FoldedBatchNorm:
    """An attack's view of ``model`` with every eval-mode BatchNorm folded into the convolution before it.

    In eval mode a BatchNorm is an affine map per channel, so ``conv -> bn`` is one convolution with a bias:
    the same function up to float rounding, without the BatchNorm kernels forward and backward. An attack's
    passes are eval-mode input gradients, where PyTorch's BatchNorm backward in bf16 + channels_last is a slow
    generic kernel: on an H100 (ResNet-50, batch 512) folding made that pass 1.9x faster (bench/passes.py).

    The view is a ``torch.fx`` trace of ``model`` that shares every module but the folded convolutions with it;
    :meth:`refresh` recomputes those from ``model``'s current weights and running statistics (call it after each
    update, as :func:`~robustlib.train.fit` does before each attack) and returns the view. Its folded weights
    do not require grad: it is for input gradients only. A model with nothing to fold is its own view. The view
    is fixed to the model's device and to Python values read at trace time: build it after moving the model.

    >>> m = build_model("resnet18", width=8).eval()
    >>> view = FoldedBatchNorm(m).refresh()
    >>> x = torch.rand(2, 3, 32, 32)
    >>> bool(torch.allclose(view(x), m(x), atol=1e-4))
    True
    """

    def __init__(self, model: nn.Module):
        import torch.fx
        self.model, self.pairs = model, []
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as e:
            raise RobustlibError(f"cannot fold the BatchNorms of {type(model).__name__} (torch.fx cannot trace it: "
                                 f"{type(e).__name__}); turn fold_bn off for this model") from None
        modules = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
                continue
            conv = node.args[0]
            if not (isinstance(conv, torch.fx.Node) and conv.op == "call_module" and len(conv.users) == 1
                    and type(modules.get(conv.target)) is nn.Conv2d):
                continue
            c, bn = modules[conv.target], modules[node.target]
            if not bn.track_running_stats or bn.running_mean is None:
                continue                  # a BatchNorm that normalises by the batch in eval mode: not affine
            folded = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                               c.groups, bias=True, padding_mode=c.padding_mode)
            folded = folded.to(device=c.weight.device, dtype=c.weight.dtype).requires_grad_(False)
            if c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous():
                folded = folded.to(memory_format=torch.channels_last)
            name = f"folded_{len(self.pairs)}"           # one per call site, never an existing name
            if hasattr(gm, name):
                raise RobustlibError(f"cannot fold the BatchNorms of {type(model).__name__}: it has a submodule "
                                     f"named {name!r} already; turn fold_bn off for this model")
            gm.add_submodule(name, folded)
            conv.target = name
            node.replace_all_uses_with(conv)
            gm.graph.erase_node(node)
            self.pairs.append((c, bn, folded))
        if self.pairs:
            gm.graph.lint()
            gm.recompile()
            gm.delete_all_unused_submodules()         # the folded BatchNorms and the convolutions they replaced
            self.view = gm
        else:
            self.view = model
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """The view, its folded convolutions recomputed from the model's weights and running statistics."""
        for c, bn, folded in self.pairs:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(
                bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(scale)
            folded.weight.copy_(c.weight * scale.view(-1, 1, 1, 1))
            bias = c.bias if c.bias is not None else torch.zeros_like(scale)
            folded.bias.copy_((bias - bn.running_mean) * scale + shift)
        return self.view


class eval_mode:
    """Context manager: put a model in eval mode and restore each submodule's own mode afterwards.

    Every attack and evaluation runs inside it, so that batch-norm statistics and dropout are frozen while
    adversarial examples are made (the mode is restored per module, as torchattacks does).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training
        return False
