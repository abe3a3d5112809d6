"""`cnnlab params`: counts and MACs proven against published numbers and PyTorch's flop counter."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.analysis.profile import parse_shape, profile_model, profile_registered, rows_at_depth
from cnnlab.analysis.sharing import ConvGeometry, compare, model_sharing, parse_layer
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models
from cnnlab.models.layers import LocallyConnected2d
from cnnlab.models.meta import build_on_meta
from cnnlab.tasks.params import SCHEMA, ParamsConfig, run_params

# Hand calculation for AlexNet as published (Krizhevsky et al. 2012): weights + biases per layer.
ALEXNET_PAPER = {
    1: {
        "conv1": 11 * 11 * 3 * 96 + 96,  # 34,944
        "conv2": 5 * 5 * 96 * 256 + 256,  # 614,656
        "conv3": 3 * 3 * 256 * 384 + 384,  # 885,120
        "conv4": 3 * 3 * 384 * 384 + 384,  # 1,327,488
        "conv5": 3 * 3 * 384 * 256 + 256,  # 884,992
        "fc1": 6 * 6 * 256 * 4096 + 4096,  # 37,752,832
        "fc2": 4096 * 4096 + 4096,  # 16,781,312
        "fc3": 4096 * 1000 + 1000,  # 4,097,000
    },
}
# groups=2: conv2, conv4, conv5 only see the 48 / 192 / 192 kernel maps on their own GPU.
ALEXNET_PAPER[2] = {
    **ALEXNET_PAPER[1],
    "conv2": 5 * 5 * 48 * 256 + 256,  # 307,456
    "conv4": 3 * 3 * 192 * 384 + 384,  # 663,936
    "conv5": 3 * 3 * 192 * 256 + 256,  # 442,624
}

# torchvision's weights metadata `num_params` (the figures quoted in the issue).
PUBLISHED = {
    "alexnet": 61_100_840,
    "googlenet": 6_624_904,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.mark.parametrize("groups, total", [(1, 62_378_344), (2, 60_965_224)])
def test_alexnet_paper_matches_the_hand_calculation(groups, total):
    profile = profile_registered("alexnet-paper", groups=groups)
    assert profile.total_params == total
    by_name = {r.name: r.params for r in profile.layers if r.params}
    assert by_name == ALEXNET_PAPER[groups]
    assert sum(ALEXNET_PAPER[groups].values()) == total
    conv1 = next(r for r in profile.layers if r.name == "conv1")
    assert conv1.output_shape == (96, 55, 55)  # the paper's 55x55 maps from a 227x227 input
    assert (conv1.weights, conv1.biases) == (34_848, 96)


@pytest.mark.parametrize("name, published", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, published):
    assert profile_registered(name).total_params == published


def test_resnet18_macs():
    # torchvision publishes 1.81 "GFLOPS" for resnet18 (they count multiply-adds); exact value:
    assert profile_registered("resnet18").total_macs == 1_814_073_344


def _real_flop_counter_macs(model: nn.Module, shape) -> int:
    """The oracle: PyTorch's own flop counter on a real CPU forward pass, FLOPs / 2."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    "name, options",
    [("alexnet-paper", {}), ("alexnet-paper", {"groups": 2}), ("resnet18", {}),
     ("googlenet", {}), ("mobilenet_v2", {}), ("efficientnet_lite0", {})],
)
def test_layer_macs_agree_with_flop_counter(name, options):
    profile = profile_registered(name, **options)
    shape = profile.input_shape
    torch.manual_seed(0)
    oracle = _real_flop_counter_macs(create_model(name, **options), shape)
    # The analytic per-layer sum alone (no flop-counter fallback for these conv/linear nets).
    assert profile.unattributed_macs == 0
    assert profile.macs == oracle


def test_attention_macs_are_attributed_to_layers():
    """ViT's attention arithmetic runs as functional calls inside nn.MultiheadAttention; it is
    still counted, and the total matches torchvision's published 17.56 G (GFLOPS metadata)."""
    profile = profile_registered("vit_b_16")
    published = tvm.get_model_weights("vit_b_16").DEFAULT.meta["_ops"]
    assert profile.total_macs / 1e9 == pytest.approx(published, abs=0.005)
    mha = [r for r in profile.layers if r.type == "MultiheadAttention"]
    assert len(mha) == 12 and all(r.macs > 0 for r in mha)
    assert sum(r.params for r in profile.layers) == profile.total_params == 86_567_656


def test_real_and_meta_models_give_the_same_attention_macs():
    """On real tensors under no_grad, MHA's fused fast path would hide its arithmetic from the
    flop counter; the profile must not depend on whether the weights are real."""
    real = profile_model(create_model("vit_b_16"), (3, 224, 224))
    meta = profile_registered("vit_b_16")
    assert real.total_macs == meta.total_macs
    assert torch.backends.mha.get_fastpath_enabled()  # the global switch is restored


@pytest.mark.slow
def test_every_torchvision_model_matches_its_published_metadata():
    """Every registered torchvision model: parameters == weights metadata `num_params`, and the
    per-layer rows add up to the total (no parameter is lost or counted twice)."""
    mismatches = []
    for spec in list_models("torchvision"):
        options = {}
        if spec.name == "vit_h_14":
            # Its DEFAULT weights are the 518x518 SWAG ones: more position embeddings.
            options = {"image_size": 518}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_on_meta(lambda s=spec, o=options: s.builder(**o))
        count = sum(p.numel() for p in model.parameters())
        if count != spec.published_params:
            mismatches.append((spec.name, count, spec.published_params))
    assert mismatches == []


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "swin_t", "regnet_y_400mf"])
def test_macs_match_torchvision_published_gflops(name):
    weights = tvm.get_model_weights(name).DEFAULT
    crop = weights.transforms().crop_size[0]
    profile = profile_registered(name, input_shape=(3, crop, crop))
    assert sum(r.params for r in profile.layers) == profile.total_params
    # torchvision rounds its "GFLOPS" (multiply-adds) to 3 decimals.
    assert profile.total_macs / 1e9 == pytest.approx(weights.meta["_ops"], abs=0.0015)


def test_frozen_parameters_are_split_out():
    model = create_model("resnet18")
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    profile = profile_model(model, (3, 64, 64))
    frozen = sum(p.numel() for p in model.layer1.parameters())
    assert profile.frozen_params == frozen == 147_968
    assert profile.trainable_params == 11_689_512 - frozen


def test_depth_groups_sum_to_the_same_totals():
    profile = profile_registered("resnet50")
    groups = rows_at_depth(profile, 1)
    assert [g.name for g in groups][:5] == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    assert sum(g.params for g in groups) == profile.total_params
    assert sum(g.macs for g in groups) == profile.macs
    assert next(g for g in groups if g.name == "layer4").output_shape == (2048, 7, 7)


def test_resnet_family_summary():
    result = run_params(
        ParamsConfig(models=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))
    )
    rows = {m["name"]: m["summary"] for m in result["models"]}
    assert rows["resnet18"] == {"depth": 18, "block": "basic", "stages": [2, 2, 2, 2]}
    assert rows["resnet34"] == {"depth": 34, "block": "basic", "stages": [3, 4, 6, 3]}
    assert rows["resnet50"] == {"depth": 50, "block": "bottleneck", "stages": [3, 4, 6, 3]}
    assert rows["resnet101"] == {"depth": 101, "block": "bottleneck", "stages": [3, 4, 23, 3]}
    assert rows["resnet152"] == {"depth": 152, "block": "bottleneck", "stages": [3, 8, 36, 3]}


# --- local connectivity and weight sharing ---------------------------------------------------


def test_layer_comparison_by_hand():
    conv, local, dense = compare(parse_layer("conv 3x224x224 -> 96 k11 s4 p2"))
    # (224 + 2*2 - 11) // 4 + 1 = 55 output positions per side.
    assert conv.params == 11 * 11 * 3 * 96 + 96 == 34_944
    assert local.params == 55 * 55 * 11 * 11 * 3 * 96 + 96 * 55 * 55 == 105_705_600
    assert dense.params == (3 * 224 * 224) * (96 * 55 * 55) + 96 * 55 * 55
    assert conv.macs == local.macs == 96 * 55 * 55 * 11 * 11 * 3


def test_locally_connected_layer_oracle():
    """The locally-connected count is the parameter count of a real layer, and with every
    position's filter set to the same kernel that layer IS the convolution (F.conv2d)."""
    g = parse_layer("conv 4x9x11 -> 6 k3 s2 p1 g2")
    conv_c, local_c, dense_c = compare(g)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    local = LocallyConnected2d(4, 6, (9, 11), 3, stride=2, padding=1, groups=2)
    dense = nn.Linear(g.input_units, g.output_units)
    assert sum(p.numel() for p in conv.parameters()) == conv_c.params
    assert sum(p.numel() for p in local.parameters()) == local_c.params
    assert sum(p.numel() for p in dense.parameters()) == dense_c.params
    with torch.no_grad():
        # Tie the weights: (positions, groups, Cout/g, Cin/g*k*k) <- conv (Cout, Cin/g, k, k).
        w = conv.weight.view(2, 3, -1)
        local.weight.copy_(w.unsqueeze(0).expand_as(local.weight))
        local.bias.copy_(conv.bias.view(6, 1, 1).expand_as(local.bias))
        x = torch.randn(2, 4, 9, 11)
        torch.testing.assert_close(local(x), F.conv2d(x, conv.weight, conv.bias, 2, 1, 1, 2))
    assert _real_flop_counter_macs(local, (4, 9, 11)) == conv_c.macs


def test_model_sharing_rows():
    rows = model_sharing(profile_registered("alexnet-paper", groups=2))
    assert [r.name for r in rows] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    conv2 = rows[1]
    assert conv2.geometry == ConvGeometry(96, 27, 27, 256, 5, 1, 2, 2)
    assert conv2.conv.params == 307_456
    assert conv2.local.params == 27 * 27 * (256 * 48 * 25) + 256 * 27 * 27


@pytest.mark.parametrize(
    "spec",
    ["conv 3x224 -> 96 k11", "3x224x224 -> 96", "conv 3x224x224 -> 96 k11 q4",
     "conv 3x4x4 -> 8 k7", "conv 3x8x8 -> 8 k3 g2", "hello"],
)
def test_bad_layer_specs_are_one_clear_error(spec):
    with pytest.raises(CnnlabError):
        parse_layer(spec)


def test_parse_shape():
    assert parse_shape("3x224x224") == (3, 224, 224)
    for bad in ("3x0x2", "axb", "", "3x-1"):
        with pytest.raises(CnnlabError):
            parse_shape(bad)


def test_json_schema_is_stable():
    result = run_params(ParamsConfig(models=("alexnet-paper",), sharing=True,
                                     layer="conv 3x32x32 -> 8 k3"))
    assert result["schema"] == SCHEMA
    m = result["models"][0]
    for key in ("name", "total_params", "trainable_params", "frozen_params", "macs", "flops",
                "input_shape", "layers", "summary", "sharing"):
        assert key in m
    for key in ("name", "type", "output_shape", "kernel", "stride", "weights", "biases",
                "params", "macs"):
        assert key in m["layers"][0]
    assert m["flops"] == 2 * m["macs"]
    assert [c["kind"] for c in result["layer"]["connectivity"]] == [
        "convolution", "locally-connected", "dense"]


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(CnnlabError, match="does not accept input 3x8x8"):
        profile_registered("alexnet-paper", input_shape=(3, 8, 8))
