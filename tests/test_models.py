import pytest
import torch

from robustlib import RobustlibError
from robustlib.models import MODELS, build_model, eval_mode


@pytest.mark.parametrize("name,c,size", [("digits-cnn", 1, 8), ("mnist-cnn", 1, 28), ("smallcnn", 1, 28),
                                         ("resnet18", 3, 32), ("resnet34", 3, 32), ("resnet50", 3, 32),
                                         ("resnet101", 3, 32)])
def test_every_model_maps_unit_images_to_logits(name, c, size):
    m = build_model(name, num_classes=7, in_channels=c, image_size=size, width=4, mean=[0.5] * c, std=[0.25] * c)
    assert m(torch.rand(2, c, size, size)).shape == (2, 7)


def test_paper_mnist_cnn_is_two_conv_two_fc():
    net = build_model("mnist-cnn", num_classes=10, in_channels=1, image_size=28).net
    kinds = [type(m).__name__ for m in net.modules() if type(m).__name__ in ("Conv2d", "Linear")]
    assert kinds == ["Conv2d", "Conv2d", "Linear", "Linear"]


def test_resnet_width_scales_parameters_and_stem_has_no_maxpool():
    narrow = build_model("resnet18", width=8)
    full = build_model("resnet18", width=64)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 11_000_000 < count(full) < 11_300_000          # the CIFAR ResNet-18: 11.2 M parameters
    assert count(narrow) < count(full) / 50
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in full.modules())


def test_normalisation_is_inside_the_model():
    m = build_model("digits-cnn", in_channels=1, image_size=8, mean=[0.3], std=[0.4])
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(m.normalize(x), (x - 0.3) / 0.4)


def test_unknown_model_lists_choices():
    with pytest.raises(RobustlibError, match="unknown model 'vgg'; choose one of " + ", ".join(MODELS)):
        build_model("vgg")


def test_eval_mode_restores_each_submodule():
    m = build_model("smallcnn", in_channels=1, image_size=28)
    m.train()
    m.net.classifier.drop.eval()                      # a mixed state must come back exactly
    before = [x.training for x in m.modules()]
    with eval_mode(m):
        assert not any(x.training for x in m.modules())
    assert [x.training for x in m.modules()] == before


def _with_running_stats(model, shape):
    """A model whose BatchNorms hold running statistics far from their initial 0 and 1."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(shape) * 3 + 0.5)
    return model.eval()


def test_folded_batchnorm_is_the_same_function_with_the_same_input_gradients():
    from robustlib.models import FoldedBatchNorm
    m = _with_running_stats(build_model("resnet18", width=8), (8, 3, 32, 32))
    folded = FoldedBatchNorm(m)
    view = folded.refresh()
    assert len(folded.pairs) == sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == 20
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in view.modules())      # every one folded away
    x = torch.rand(4, 3, 32, 32)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = m(xa), view(xb)
    assert (ya - yb).abs().max() < 1e-4 * ya.abs().max()
    ga, = torch.autograd.grad(ya.logsumexp(1).sum(), xa)
    gb, = torch.autograd.grad(yb.logsumexp(1).sum(), xb)
    assert (ga - gb).norm() < 1e-4 * ga.norm()
    assert not any(c.weight.requires_grad or c.bias.requires_grad for _, _, c in folded.pairs)


def test_a_folded_view_follows_the_models_updates_after_refresh():
    from robustlib.models import FoldedBatchNorm
    m = _with_running_stats(build_model("resnet18", width=8), (8, 3, 32, 32))
    folded = FoldedBatchNorm(m)
    x = torch.rand(4, 3, 32, 32)
    before = folded.refresh()(x).detach()
    with torch.no_grad():
        for p in m.parameters():              # an update, and new running statistics
            p.add_(0.05 * torch.randn_like(p))
    _with_running_stats(m, (8, 3, 32, 32))
    stale = folded.view(x).detach()            # the folded convolutions still hold the old weights
    assert not torch.allclose(stale, m(x), atol=1e-3) and not torch.allclose(before, m(x), atol=1e-3)
    assert torch.allclose(folded.refresh()(x), m(x), atol=1e-4, rtol=1e-4)
    assert m.training is False and all(not x.training for x in m.modules())


def test_a_model_without_batchnorm_is_its_own_folded_view():
    from robustlib.models import FoldedBatchNorm
    m = build_model("digits-cnn", in_channels=1, image_size=8)
    assert FoldedBatchNorm(m).refresh() is m


def test_a_model_that_does_not_trace_is_refused_with_the_fix():
    from robustlib.models import FoldedBatchNorm

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x      # data-dependent: torch.fx cannot trace it
    with pytest.raises(RobustlibError, match="turn fold_bn off"):
        FoldedBatchNorm(Branchy())


def test_folding_handles_a_biased_conv_a_non_affine_batchnorm_channels_last_and_bf16():
    from robustlib.models import FoldedBatchNorm
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=True), torch.nn.BatchNorm2d(8, affine=False),
                            torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1, bias=False), torch.nn.BatchNorm2d(8),
                            torch.nn.Flatten(), torch.nn.LazyLinear(4))
    m = _with_running_stats(m, (8, 3, 10, 10)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        m[4].weight.uniform_(0.5, 1.5), m[4].bias.uniform_(-0.5, 0.5)
    keys = list(m.state_dict())
    folded = FoldedBatchNorm(m)
    assert len(folded.pairs) == 2
    x = torch.rand(4, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(folded.view(x), m(x), atol=1e-5)          # refreshed when built
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = folded.view(x).float(), m(x).float()
    assert torch.allclose(a, b, atol=5e-2 * float(b.abs().max()))
    assert list(m.state_dict()) == keys                                   # the model keeps its own modules
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == 2
