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
