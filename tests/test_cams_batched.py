"""The maps of mistakes drawn in batches (analysis/explanations.gradcam_batch, analysis/cams.py).

Oracle: the grad-cam package itself, run as its README shows (GradCAM, ClassifierOutputTarget,
show_cam_on_image), one photo and its classes at a time, on real photos through the real
EfficientNet-Lite0 weights and on torchvision nets whose layer is followed by an in-place ReLU
(DenseNet) or by pooling (ResNet). The batched maps must equal its maps; the batching and the cut
backward pass must really happen (forward passes counted, no gradient reaching the first layer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.analysis.cams import CamWriter, explain_mistakes, read_photo
from cnnlab.analysis.explanations import gradcam_batch, overlay
from cnnlab.models.registry import create_model, create_pretrained
from cnnlab.progress import Reporter
from cnnlab.runs import RunDir

N_PHOTOS = 5  # one more than a MAP_BATCH of 4: a full pass and a short one


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0():
    model, preprocess, _ = create_pretrained("efficientnet_lite0")
    return model, preprocess


def _photos(shared_data, n=N_PHOTOS):
    return sorted(shared_data("imagenet-samples").iterdir())[:n]


def _grad_cam_maps(model, layer, x, classes):
    """grad-cam's own Grad-CAM of one photo x (1, 3, H, W) per class: the oracle."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return np.stack([cam(input_tensor=x.clone().requires_grad_(True),
                             targets=[ClassifierOutputTarget(c)])[0] for c in classes])


def test_lite0_batched_maps_equal_grad_cams_one_at_a_time(lite0, shared_data):
    model, preprocess = lite0
    x = torch.cat([read_photo(p, preprocess, True)[1] for p in _photos(shared_data)])
    with torch.inference_mode():
        top = model(x).argmax(1).tolist()
    classes = [[t, (t + 500) % 1000] for t in top]  # its prediction and a class it did not pick
    maps, shape = gradcam_batch(model, "bn2", x, classes)
    assert shape == (N_PHOTOS, 1280, 7, 7)
    assert maps.shape == (N_PHOTOS, 2, 224, 224)
    for i in range(N_PHOTOS):
        expected = _grad_cam_maps(model, "bn2", x[i:i + 1], classes[i])
        np.testing.assert_allclose(maps[i], expected, atol=1e-5, rtol=0)
    assert maps.max() > 0.99  # real maps, scaled to [0, 1], not all zero
    assert not np.allclose(maps[:, 0], maps[:, 1], atol=0.05)  # per class, not one map twice


@pytest.mark.parametrize("name", ["densenet121", "resnet18"])
def test_torchvision_nets_equal_grad_cam(name):
    """DenseNet's `features` is followed by ReLU(inplace=True): grad-cam's saved activations
    show that in-place ReLU, and so must the batched ones."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    layer = {"densenet121": "features", "resnet18": "layer4"}[name]
    x = torch.randn(3, 3, 64, 64)
    classes = [[1, 7], [3, 3], [999, 0]]
    maps, _ = gradcam_batch(model, layer, x, classes)
    for i in range(3):
        np.testing.assert_allclose(maps[i], _grad_cam_maps(model, layer, x[i:i + 1], classes[i]),
                                   atol=1e-5, rtol=0)


def test_the_backward_pass_stops_at_the_layer(lite0, shared_data):
    """grad-cam runs the backward pass down to the input; the batched maps need the gradient
    of the layer's output only, so no gradient may reach the layers before it."""
    model, preprocess = lite0
    x = torch.cat([read_photo(p, preprocess, True)[1] for p in _photos(shared_data, 2)])
    reached = []
    handle = model.conv_stem.register_full_backward_hook(lambda *_: reached.append(1))
    try:
        gradcam_batch(model, "bn2", x, [[1, 2], [3, 4]])
    finally:
        handle.remove()
    assert reached == []


def test_overlay_is_grad_cams_show_cam_on_image():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    cam = rng.random((40, 30), dtype=np.float32)
    expected = show_cam_on_image(pixels.astype(np.float32) / 255, cam, use_rgb=True,
                                 image_weight=0.5)
    np.testing.assert_array_equal(overlay(pixels, cam), expected)


def test_explain_mistakes_draws_in_batches_and_keeps_the_order(lite0, shared_data, tmp_path):
    """5 mistakes and an unreadable file among them, 4 per pass: two forward passes, the maps of
    each photo under its own stem, the bad one an error in its place; the files are grad-cam's
    maps over the photo."""
    from PIL import Image

    model, preprocess = lite0
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths = _photos(shared_data)
    paths = [*paths[:2], bad, *paths[2:]]
    mistakes = [{"path": p, "predicted": 10 * i, "true": 10 * i + 1, "stem": f"cams/{i}"}
                for i, p in enumerate(paths)]
    run_dir = RunDir.create("cams", out=tmp_path / "run")
    writer = CamWriter(model, "bn2", preprocess, run_dir, fmt="png")
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        drawn = explain_mistakes(writer, mistakes, Reporter(quiet=True), batch=4)
    finally:
        handle.remove()
    assert len(calls) == 2  # 5 readable photos: one pass of 4, one of 1
    assert [sorted(d) for d in drawn] == [["predicted", "true"]] * 2 + [["error"]] \
        + [["predicted", "true"]] * 3
    assert drawn[3] == {"predicted": "cams/3-pred.png", "true": "cams/3-true.png"}
    assert writer.describe()["layer_shape"] == [1280, 7, 7]
    pixels, x = read_photo(paths[3], preprocess, True)
    expected = _grad_cam_maps(model, "bn2", x, [30, 31])
    from pytorch_grad_cam.utils.image import show_cam_on_image

    for cam, name in zip(expected, ("pred", "true"), strict=True):
        want = show_cam_on_image(pixels.astype(np.float32) / 255, cam, use_rgb=True)
        got = np.asarray(Image.open(run_dir.file(f"cams/3-{name}.png")))
        # PNG is lossless; a map within 1e-5 of grad-cam's may still round a pixel to the next
        # of the 256 colour-map levels (a step of a few units in one channel)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert (diff > 0).mean() < 1e-3 and diff.max() <= 8
