"""`cnnlab explain` and the shift demonstration of `cnnlab params --demo`.

Oracles: a network whose class depends only on one known region of its input (every CAM method
must put its maximum there); every registered CNN family's target layer resolves to a 4-D map; a
locally-connected layer with the convolution's weights at every position is the convolution
(same windows), and only the convolution's maps shift with a shifted photo. End to end: the real
EfficientNet-Lite0 weights call the shared tench photo a tench and draw its map.
"""

from __future__ import annotations

import html.parser
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.analysis.explanations import (
    METHODS,
    cam_layer_name,
    class_activation_maps,
    layer_output_shape,
    stage_outputs,
)
from cnnlab.analysis.shift import ShiftSetup, build_layers, measure, photo_pair
from cnnlab.cli import main
from cnnlab.models.layers import LocallyConnected2d
from cnnlab.models.meta import build_on_meta
from cnnlab.models.registry import get_spec, list_models

TENCH = "n01440764_tench.JPEG"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- CAM oracle

SIZE = 32
REGION = (slice(20, 28), slice(4, 12))  # rows 20-27, columns 4-11: off the diagonal, so a
# transposed or flipped map misses it


class RegionNet(nn.Module):
    """Its class depends on REGION of the input only: everything else is multiplied by zero
    first. Convolutions without bias, so outside the region (and its receptive-field rim) every
    activation is exactly zero; global average pooling and a linear head whose class 0 weights
    are positive and class 1 negative, so class 0 wins with positive evidence."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[(..., *REGION)] = 1
        self.register_buffer("mask", mask)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 2, bias=False)
        with torch.no_grad():
            self.head.weight[0] = self.head.weight[0].abs()
            self.head.weight[1] = -self.head.weight[1].abs()

    def forward(self, x):
        return self.head(self.pool(self.features(x * self.mask)).flatten(1))


@pytest.mark.parametrize("method", list(METHODS))
def test_cam_maximum_lies_in_the_region_the_class_depends_on(method):
    torch.manual_seed(0)
    net = RegionNet().eval()
    x = torch.rand(1, 3, SIZE, SIZE)  # content everywhere; only REGION can matter
    assert net(x).argmax().item() == 0
    layer = cam_layer_name(net)
    assert layer == "features.2"  # no registry entry: the last convolution
    maps = class_activation_maps(net, "features.3", x, [0], method)
    assert maps.shape == (1, SIZE, SIZE)
    row, col = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert REGION[0].start <= row < REGION[0].stop and REGION[1].start <= col < REGION[1].stop, (
        method, row, col)
    if method != "eigencam":  # EigenCAM centres the maps first: the outside is not zero
        # Not just the peak: nothing at all outside the region and its 2-pixel rim (the
        # receptive field of two 3x3 convolutions).
        outside = np.ones((SIZE, SIZE), bool)
        outside[REGION[0].start - 2:REGION[0].stop + 2, REGION[1].start - 2:REGION[1].stop + 2] = 0
        assert maps[0][outside].max() < 1e-6, method


def test_eigencam_is_never_inverted():
    """grad-cam's EigenCAM leaves the SVD's arbitrary sign: 4 of these 20 seeds gave a map
    that marks everything but the region. cnnlab orients it (analysis/explanations.py)."""
    for seed in range(20):
        torch.manual_seed(seed)
        net = RegionNet().eval()
        maps = class_activation_maps(net, "features.3", torch.rand(1, 3, SIZE, SIZE), [0],
                                     "eigencam")
        row, col = np.unravel_index(maps[0].argmax(), maps[0].shape)
        assert REGION[0].start <= row < REGION[0].stop, (seed, row)
        assert REGION[1].start <= col < REGION[1].stop, (seed, col)


def test_cams_of_several_classes_come_from_one_call():
    torch.manual_seed(0)
    net = RegionNet().eval()
    maps = class_activation_maps(net, "features.3", torch.rand(1, 3, SIZE, SIZE), [0, 1])
    assert maps.shape == (2, SIZE, SIZE)
    assert maps[1].max() == 0  # class 1 has only negative evidence: Grad-CAM's ReLU leaves none


# -------------------------------------------------------------------------- target layers

# The families and the layer the registry names for each: the last convolutional stage.
FAMILY_LAYERS = {
    "efficientnet_lite0": "bn2",
    "efficientnet_lite1": "bn2",
    "efficientnet_lite2": "bn2",
    "resnet18": "layer4",
    "resnet50": "layer4",
    "googlenet": "inception5b",
    "alexnet": "features.11",
    "vgg16": "features.29",
    "vgg11_bn": "features.27",
    "mobilenet_v2": "features.18",
    "mobilenet_v3_small": "features.12",
}


@pytest.mark.parametrize("name", list(FAMILY_LAYERS))
def test_target_layer_of_each_family(name):
    spec = get_spec(name)
    model = build_on_meta(spec.builder)
    layer = cam_layer_name(model, spec.cam_layer)
    assert layer == FAMILY_LAYERS[name]
    shape = layer_output_shape(model, layer, torch.empty(1, *spec.default_input, device="meta"))
    assert len(shape) == 4 and shape[2] >= 6, shape  # a map, before the global pooling


def test_every_registered_pretrained_cnn_has_a_target_layer():
    """Every model with ImageNet weights whose family the registry describes; transformers
    (vit, swin, maxvit) have no convolutional stage and say so by having none."""
    without = []
    for spec in list_models():
        if spec.pretrained is None:
            continue
        if spec.cam_layer is None:
            without.append(spec.name)
            continue
        model = build_on_meta(spec.builder)
        cam_layer_name(model, spec.cam_layer)  # resolves, or raises
    assert all(n.startswith(("vit_", "swin_", "maxvit")) for n in without), without


# ------------------------------------------------------------------------------ finetune run


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """A one-epoch finetune run of timm's tiny test_efficientnet on generated colour photos."""
    import timm

    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks import finetune
    from test_finetune import make_photos

    base = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    weights = base / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    data = make_photos(base / "data")
    config = finetune.FinetuneConfig(data=str(data), backbone="timm/test_efficientnet",
                                     weights=str(weights), workers=0, epochs=1, batch_size=8,
                                     report=False)
    finetune.run(config, RunDir.create("finetune", base / "run"), Reporter(quiet=True))
    return base / "run", data


def test_explain_a_finetune_run_with_its_own_classes(finetune_run, tmp_path, capsys):
    from cnnlab.analysis.cams import target_layer
    from cnnlab.models.predictor import load_predictor

    run, data = finetune_run
    predictor = load_predictor(str(run))
    layer = target_layer(predictor)
    assert layer.startswith("body.")  # the backbone inside the transfer model
    out = tmp_path / "ex"
    photo = data / "test" / "red" / "0.png"
    assert main(["explain", str(photo), "-m", str(run), "--top-k", "2", "--out", str(out),
                 "-q", "--no-report"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["layer"] == layer and len(results["layer_shape"]) == 3
    top = results["photos"][0]["top"]
    assert {g["class"] for g in top} <= {"red", "green", "blue"} and len(top) == 2
    assert all((out / g["cam"]).is_file() for g in top)


# --------------------------------------------------------------------------- the shift demo


def _photo(seed=0, side=64) -> np.ndarray:
    """A smooth random grey 'photo' (structure at several scales), values in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(rng.random((1, 1, side // 8, side // 8), dtype=np.float32))
    img = nn.functional.interpolate(img, size=(side, side), mode="bicubic")[0, 0].numpy()
    return img + 0.1 * rng.random((side, side), dtype=np.float32)


def test_conv_maps_shift_with_the_photo_and_the_others_do_not():
    setup = ShiftSetup()
    original, moved = photo_pair(_photo(), setup)
    dy, dx = setup.shift
    assert np.array_equal(moved[dy:, dx:], original[:-dy, :-dx])  # the scene moved, no wrap
    results, _ = measure(build_layers(setup), original, moved, setup)
    by = {r.kind: r for r in results}
    conv, local, dense = by["convolution"], by["locally-connected"], by["dense"]
    assert conv.difference < 1e-5 and conv.max_difference < 1e-4  # equal to float rounding
    assert conv.unaligned > 0.05  # ... and the maps did move
    assert local.difference > 0.3 and dense.difference > 0.3


def test_a_locally_connected_layer_with_tied_weights_is_the_convolution():
    """The oracle for the middle term: same windows, so copying the convolution's filter to
    every position gives the convolution's maps, and equivariance comes back."""
    setup = ShiftSetup()
    layers = build_layers(setup)
    conv, local = layers["convolution"], layers["locally-connected"]
    assert isinstance(local, LocallyConnected2d)
    with torch.no_grad():
        local.weight.copy_(conv.weight.reshape(1, 1, setup.channels, -1).expand_as(local.weight))
        local.bias.copy_(conv.bias[:, None, None].expand_as(local.bias))
    original, moved = photo_pair(_photo(1), setup)
    x = torch.from_numpy(original[None, None].astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(local(x), conv(x), atol=1e-5, rtol=1e-5)
    results, _ = measure({"tied": local}, original, moved, setup)
    assert results[0].difference < 1e-5


def test_params_demo_cli_writes_numbers_and_figure(shared_data, tmp_path, capsys):
    photo = shared_data("imagenet-samples", TENCH)
    out = tmp_path / "run"
    assert main(["params", "--sharing", "--demo", str(photo), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "whose maps shift with it" in printed and "locally-connected" in printed
    demo = json.loads((out / "results.json").read_text())["shift_demo"]
    by = {r["kind"]: r for r in demo["layers"]}
    assert by["convolution"]["difference"] < 1e-5
    assert by["locally-connected"]["difference"] > 0.3 and by["dense"]["difference"] > 0.3
    assert Image.open(out / demo["figure"]).size[0] > 300


# ------------------------------------------------------------------------ CLI and its errors


def test_help_explains_methods_and_layers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("gradcam++", "scorecam", "eigencam", "--layer", "--filters", "--maps",
                 "finetune"):
        assert word in out


def _one_line_error(capsys, *args: str) -> str:
    assert main(["explain", *args, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab explain: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_are_one_line(tmp_path, capsys):
    photo = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    out = str(tmp_path / "o")
    assert "unknown model 'no_such_net'" in _one_line_error(
        capsys, str(photo), "-m", "no_such_net", "--out", out)
    assert "file not found" in _one_line_error(
        capsys, str(tmp_path / "missing.jpg"), "--out", out)
    err = _one_line_error(capsys, str(photo), "--layer", "blocks.99", "--out", out)
    assert "no layer 'blocks.99'" in err
    assert "not a (N, C, H, W) map" in _one_line_error(
        capsys, str(photo), "--layer", "classifier", "--out", out)
    assert "give IMAGE|DIR" in _one_line_error(capsys, "--out", out)
    assert "--top-k must be at least 1" in _one_line_error(capsys, str(photo), "--top-k", "0")
    assert not (tmp_path / "o").exists()  # a refused run leaves no directory


# ------------------------------------------------------------------ hostile names in reports

HOSTILE = [
    "<img src=x onerror=document.title='PWNED'>.png",
    "<script>document.title='PWNED'<script>.png",
    "\"><svg onload=alert(1)>|col|`x`.png",
    "first\nsecond [a](javascript:x).png",
]


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, finetune_run):
    run, _ = finetune_run
    base = tmp_path_factory.mktemp("hostile")
    folder = base / "photos"
    folder.mkdir()
    for n, name in enumerate(HOSTILE):
        Image.new("RGB", (48, 40), (30 + 50 * n, 30, 200)).save(folder / name, "PNG")
    (folder / "<b onmouseover=x>broken.jpg").write_bytes(b"not a jpeg")
    out = base / "run"
    assert main(["explain", str(folder), "-m", str(run), "--top-k", "1", "--out", str(out),
                 "-q"]) == 0
    return out


def test_hostile_file_names_stay_text_in_both_reports(hostile_run):
    results = json.loads((hostile_run / "results.json").read_text())
    assert len(results["photos"]) == len(HOSTILE) and len(results["skipped"]) == 1
    page = (hostile_run / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    tags = {t for t, _ in parser.tags}
    assert not tags & {"script", "svg", "a"}, tags
    assert not any(k.startswith("on") for _, attrs in parser.tags for k in attrs)
    assert all(attrs["src"].startswith("data:image/png;base64,")
               for t, attrs in parser.tags if t == "img")
    text = "".join(parser.text)
    for name in HOSTILE:
        assert name in text  # shown exactly, as text
    assert "<b onmouseover=x>broken.jpg" in text
    # No file the run wrote is named after a user's file.
    assert all(p.name[0].isdigit() for p in (hostile_run / "cams").iterdir())

    from markdown_it import MarkdownIt

    md = (hostile_run / "report.md").read_text()
    parser = _Tags()
    parser.feed(MarkdownIt("commonmark", {"html": True}).enable("table").render(md))
    assert not {t for t, _ in parser.tags} & {"script", "svg", "a", "b"}
    assert not any(k.startswith("on") for _, attrs in parser.tags for k in attrs)
    imgs = [attrs["src"] for t, attrs in parser.tags if t == "img"]
    assert imgs and all(src.startswith("cams/") for src in imgs)


def test_html_report_is_inert_in_a_browser(hostile_run, chromium):
    from browser import open_page

    page = open_page(hostile_run / "report.html")
    assert "PWNED" not in page.title
    assert page.console_errors == [] and page.external_requests == []


# ----------------------------------------------------------------- the real thing, end to end


@pytest.mark.slow
def test_lite0_explains_the_tench_as_a_tench(shared_data, tmp_path, capsys):
    photo = shared_data("imagenet-samples", TENCH)
    out = tmp_path / "run"
    assert main(["explain", str(photo), "-m", "efficientnet_lite0", "--filters",
                 "efficientnet_lite0", "--maps", str(photo), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "1. tench" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["layer"] == "bn2" and results["layer_shape"] == [1280, 7, 7]
    top = results["photos"][0]["top"]
    assert top[0]["class"] == "tench" and top[0]["probability"] > 0.5
    cam = Image.open(out / top[0]["cam"])
    assert cam.size == (224, 224) and cam.mode == "RGB"
    assert results["filters"]["shape"] == [32, 3, 3, 3]
    sizes = [s["shape"][1] for s in results["maps"]["stages"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 112 and sizes[-1] == 7
    for f in ("filters.png", "maps.png", "report.html", "report.md"):
        assert (out / f).is_file()
    assert "tench" in (out / "report.md").read_text()


def test_stage_outputs_take_the_values_after_in_place_activations():
    """bn2 of EfficientNet-Lite applies its ReLU6 in place, after its inner `drop` module has
    returned the same tensor: the maps recorded are the activated ones (none negative, none
    above 6), under the parent's name."""
    net = build_on_meta(get_spec("efficientnet_lite0").builder).to_empty(device="cpu").eval()
    for p in net.parameters():
        nn.init.normal_(p, std=0.5)
    for name, b in net.named_buffers():
        b.fill_(1.0 if name.endswith("running_var") else 0.0)
    stages = stage_outputs(net, torch.randn(1, 3, 96, 96))
    last = stages[-1]
    assert last.name == "bn2" and last.maps.shape == (1280, 3, 3)
    assert last.maps.min() >= 0 and last.maps.max() <= 6 and last.maps.max() > 0
    assert [s.name for s in stages[:2]] == ["blocks.0", "blocks.1"]  # not the Sequential "blocks"
