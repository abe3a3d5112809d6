"""The CIFAR models: parameter counts against hand calculations and the published numbers, the
lab's plain CNN against a literal transcription of the lab's own code, and every model built,
run on [2, 3, 32, 32] and counted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.fast_cifar import FastCifarNet, WhiteningConv, patches, whiten_init
from cnnlab.models.registry import count_parameters, create_model, get_spec
from cnnlab.models.resnet_cifar import PadShortcut

CIFAR_MODELS = [
    "simple-cnn", "resnet18", "resnet18-cifar", "fast-cifar",
    "resnet20", "resnet32", "resnet44", "resnet56", "plain20", "plain32", "plain44", "plain56",
]


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_out * c_in * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers, not parameters


def fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


class LabSimpleCNN(nn.Module):
    """The plain CNN as the course lab wrote it (transcribed, not imported)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 8 * 8, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 8 * 8)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def test_simple_cnn_is_the_lab_cnn():
    by_hand = conv(3, 32, 3) + conv(32, 64, 3) + fc(4096, 512) + fc(512, 10)
    assert by_hand == 2_122_186
    lab = LabSimpleCNN()
    ours = create_model("simple-cnn")
    assert count_parameters(lab) == count_parameters(ours) == by_hand
    assert get_spec("simple-cnn").published_params == by_hand
    # Same layers in the same order: the lab's weights load one to one and give the same logits.
    ours.load_state_dict(dict(zip(ours.state_dict(), lab.state_dict().values(), strict=True)))
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(ours(x), lab(x), atol=1e-6)


def cifar_resnet_by_hand(n: int, projection: bool) -> int:
    """He et al. 2016 section 4.2: 16-32-64 filters, n blocks of two 3x3 convs per stage."""
    total = conv(3, 16, 3, bias=False) + bn(16)
    c_in = 16
    for width in (16, 32, 64):
        for j in range(n):
            first_in = c_in if j == 0 else width
            total += conv(first_in, width, 3, bias=False) + bn(width)
            total += conv(width, width, 3, bias=False) + bn(width)
            if projection and first_in != width:
                total += conv(first_in, width, 1, bias=False) + bn(width)
        c_in = width
    return total + fc(64, 10)


@pytest.mark.parametrize("depth,n", [(20, 3), (32, 5), (44, 7), (56, 9)])
def test_cifar_resnets_match_the_hand_calculation(depth, n):
    option_a = cifar_resnet_by_hand(n, projection=False)
    assert count_parameters(create_model(f"resnet{depth}")) == option_a
    assert count_parameters(create_model(f"plain{depth}")) == option_a  # option A adds nothing
    option_b = cifar_resnet_by_hand(n, projection=True)
    assert count_parameters(create_model(f"resnet{depth}", shortcut="B")) == option_b
    assert option_b - option_a == 576 + 2176  # two 1x1 projections + BN, at any depth


def test_published_cifar_resnet_sizes():
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-56 0.85M parameters.
    assert count_parameters(create_model("resnet20")) == 269_722
    assert count_parameters(create_model("resnet56")) == 853_018
    assert round(269_722 / 1e6, 2) == 0.27 and round(853_018 / 1e6, 2) == 0.85
    # With 1x1 projection shortcuts (option B) where the shape changes:
    assert count_parameters(create_model("resnet20", shortcut="B")) == 272_474
    assert count_parameters(create_model("resnet56", shortcut="B")) == 855_770
    assert get_spec("resnet20").published_params == 269_722


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))


def test_plain_nets_have_no_shortcuts():
    plain, res = create_model("plain20"), create_model("resnet20")
    assert all(b.shortcut is None for stage in (plain.layer1, plain.layer2, plain.layer3)
               for b in stage)
    assert sum(isinstance(m, PadShortcut) for m in res.modules()) == 2
    with pytest.raises(CnnlabError, match="shortcut"):
        create_model("resnet20", shortcut="C")


def test_resnet18_variants():
    lab = create_model("resnet18", num_classes=10)  # torchvision's, ImageNet stem, as the lab used
    assert count_parameters(lab) == 11_689_512 - fc(512, 1000) + fc(512, 10) == 11_181_642
    cifar = create_model("resnet18-cifar")
    # The 7x7 stem conv (9,408 weights) becomes a 3x3 one (1,728); the max-pool goes.
    assert count_parameters(cifar) == 11_181_642 - 9_408 + 1_728 == 11_173_962
    assert isinstance(cifar.maxpool, nn.Identity) and cifar.conv1.stride == (1, 1)


def fast_cifar_by_hand(widths, classes=10) -> int:
    total = conv(3, 24, 2)  # the whitening conv (frozen weights, trained bias)
    c_in = 24
    for w in widths:
        total += conv(c_in, w, 3, bias=False) + bn(w) + conv(w, w, 3, bias=False) + bn(w)
        c_in = w
    return total + c_in * classes  # no bias in the head


def test_fast_cifar_parameters_and_frozen_parts():
    model = create_model("fast-cifar")
    widths = tuple(model.get_submodule(f"block{i}").conv1.out_channels for i in (1, 2, 3))
    assert count_parameters(model) == fast_cifar_by_hand(widths)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen
    assert all(n == "whiten.weight" or n.endswith("norm1.weight") or n.endswith("norm2.weight")
               for n in frozen)
    # Dirac init: the first 24 filters of block1.conv1 are the identity.
    w = model.block1.conv1.weight
    assert torch.equal(w[:24, :, 1, 1], torch.eye(24)) and w[:24, :, 0, 0].abs().sum() == 0
    with pytest.raises(CnnlabError, match="widths"):
        FastCifarNet(widths=(8, 8))


def test_whitening_conv_is_a_conv_with_its_bias_added_after():
    torch.manual_seed(0)
    ours, ref = WhiteningConv(3, 24, 2), nn.Conv2d(3, 24, 2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    ours(x).sum().backward()
    ref(x).sum().backward()
    assert torch.allclose(ours.bias.grad, ref.bias.grad)


def test_whitening_init_whitens_the_patches():
    """After whiten_init the first 12 filters map the training patches to unit covariance
    (up to eps), and the other 12 are their negatives (airbench's init_whitening_conv)."""
    g = torch.Generator().manual_seed(0)
    # Correlated channels, like real images: whitening has something to undo.
    base = torch.randn(64, 1, 32, 32, generator=g)
    images = torch.cat([base, 0.5 * base + 0.1 * torch.randn(64, 1, 32, 32, generator=g),
                        torch.randn(64, 1, 32, 32, generator=g)], dim=1)
    model = FastCifarNet(widths=(8, 8, 8))
    whiten_init(model, images, eps=0.0)
    weight = model.whiten.weight
    assert torch.equal(weight[12:], -weight[:12])
    out = F.conv2d(images, weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    # patches() is F.unfold by another name.
    ref = F.unfold(images[:2], 2).transpose(1, 2).reshape(-1, 3, 2, 2)
    assert torch.equal(patches(images[:2], 2), ref)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_every_cifar_model_builds_runs_and_counts(name):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) > 0
    spec = get_spec(name)
    if spec.source == "cnnlab":
        assert spec.default_input == (3, 32, 32)
        if spec.published_params:  # torchvision's count is for its 1000 ImageNet classes
            assert count_parameters(model) == spec.published_params
    with torch.no_grad():
        assert create_model(name, num_classes=7).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)
