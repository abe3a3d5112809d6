"""Grad-CAM without autograd for a linear head (analysis/linear_cams.py, models/linear_head.py)
and the ONNX graph's second output that feeds it (models/inference.py).

Oracles: grad-cam's GradCAM itself (one photo and class at a time) and cnnlab's batched
gradcam_batch (the general path, held equal to grad-cam by tests/test_cams_batched.py), on real
sample photos through the real EfficientNet-Lite0 weights; the head detector against nets whose
head is and is not pooling + Linear; the exported graph's activations against PyTorch's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.analysis.cams import read_photo
from cnnlab.analysis.explanations import finish_maps, gradcam_batch
from cnnlab.analysis.linear_cams import linear_gradcam
from cnnlab.models.inference import check_batch, graph_dir, prepare_forward
from cnnlab.models.linear_head import linear_head
from cnnlab.models.registry import create_model, create_pretrained

N_PHOTOS = 5
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0_photos():
    from conftest import data_path

    model, preprocess, _ = create_pretrained("efficientnet_lite0")
    paths = sorted(data_path("imagenet-samples").iterdir())[:N_PHOTOS]
    x = torch.cat([read_photo(p, preprocess, True)[1] for p in paths])
    with torch.inference_mode():
        top = model(x).argmax(1).tolist()
    classes = [[t, (t + 500) % 1000] for t in top]  # its prediction and a class it did not pick
    return model, x, classes


def _activations(model, layer, x):
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().clone()))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return captured[-1].numpy()


def _grad_cam(model, layer, x, classes):
    """grad-cam's own Grad-CAM of one photo x (1, 3, H, W) per class: the oracle."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return np.stack([cam(input_tensor=x.clone().requires_grad_(True),
                             targets=[ClassifierOutputTarget(c)])[0] for c in classes])


def _fast_maps(activations, weight, classes):
    return np.stack([finish_maps(linear_gradcam(a, weight, c), (224, 224))
                     for a, c in zip(activations, classes, strict=True)])


def test_lite0_maps_from_the_head_weights_equal_grad_cam_and_gradcam_batch(lite0_photos):
    model, x, classes = lite0_photos
    head = linear_head(model, "bn2", check_batch(224))
    assert head is not None
    np.testing.assert_array_equal(head.weight, model.classifier.weight.detach().numpy())
    fast = _fast_maps(_activations(model, "bn2", x), head.weight, classes)
    batched, _ = gradcam_batch(model, "bn2", x, classes)
    np.testing.assert_allclose(fast, batched, atol=1e-5, rtol=0)
    for i in range(N_PHOTOS):
        np.testing.assert_allclose(fast[i], _grad_cam(model, "bn2", x[i:i + 1], classes[i]),
                                   atol=1e-5, rtol=0)
    assert fast.max() > 0.99 and not np.allclose(fast[:, 0], fast[:, 1], atol=0.05)


def test_the_onnx_graphs_second_output_gives_the_same_maps(lite0_photos, tmp_path):
    """The production path: the activations come from ONNX Runtime (output a), checked against
    PyTorch's at export; the graph's logits are still checked and equal its one-output run."""
    model, x, classes = lite0_photos
    forward = prepare_forward(model, "onnxruntime", identity="lite0:test", input_size=224,
                              device=CPU, root=tmp_path, layer="bn2")
    assert forward.engine == "onnxruntime" and forward.layer == "bn2"
    about = forward.about
    assert about["max_abs_diff"] < 1e-4 and about["layer_max_abs_diff"] < 1e-3
    logits, activations = forward.run_layer(x)
    assert activations.shape == (N_PHOTOS, 1280, 7, 7)
    torch.testing.assert_close(logits, forward(x), rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)
    batched, _ = gradcam_batch(model, "bn2", x, classes)
    np.testing.assert_allclose(_fast_maps(activations, forward.head.weight, classes), batched,
                               atol=1e-5, rtol=0)
    # A graph asked for with a layer is a different cache entry from one without: a graph
    # exported without the second output is never reused for the maps.
    assert graph_dir("lite0:test", 224, tmp_path, "bn2") != graph_dir("lite0:test", 224, tmp_path)
    record = json.loads((graph_dir("lite0:test", 224, tmp_path, "bn2") / "verify.json")
                        .read_text())
    assert record["linear_head"] and record["layer"] == "bn2"
    again = prepare_forward(model, "onnxruntime", identity="lite0:test", input_size=224,
                            device=CPU, root=tmp_path, layer="bn2")
    assert not again.about["exported"] and again.head is not None
    np.testing.assert_array_equal(again.head.weight, forward.head.weight)


def _tiny(*head: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), *head).eval()


@pytest.mark.parametrize("head,expected", [
    ((nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 10)), True),
    ((nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 10)), False),  # max: not a mean
    ((nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)), False),  # 2x2: not global
    ((nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10)),
     False),  # an MLP head
    ((nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)), False),  # ReLU after
])
def test_the_head_detector(head, expected):
    model = _tiny(*head)
    found = linear_head(model, "1", check_batch(16))
    assert (found is not None) == expected
    if expected:
        np.testing.assert_array_equal(found.weight, model[-1].weight.detach().numpy())


@pytest.mark.parametrize("name,layer,expected", [
    ("resnet18", "layer4", True),  # avgpool + fc
    ("densenet121", "features", False),  # F.relu after it: seen by the numerical check only
    ("efficientnet_lite0", "blocks", False),  # conv_head and bn2 follow
])
def test_the_head_detector_on_registry_nets(name, layer, expected):
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert (linear_head(model, layer, check_batch(64)) is not None) == expected


def test_a_net_without_a_linear_head_exports_one_output(tmp_path):
    """DenseNet-like: the graph has no second output, the forward no fast maps, the logits
    still run on ONNX Runtime."""
    model = _tiny(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    forward = prepare_forward(model, "onnxruntime", identity="tiny:relu", input_size=16,
                              device=CPU, root=tmp_path, layer="1")
    assert forward.engine == "onnxruntime"
    assert forward.run_layer is None and forward.head is None
    x = check_batch(16, 4)
    with torch.inference_mode():
        torch.testing.assert_close(forward(x), model(x), rtol=1e-5, atol=1e-5)


def test_evaluates_maps_from_the_graph_equal_the_pytorch_paths(shared_data, tmp_path):
    """End to end: `evaluate` on ONNX Runtime (maps from the graph's second output, no model
    built) against `evaluate --engine torch` (gradcam_batch on the PyTorch model): the same
    mistakes, the same classes mapped, the same images up to JPEG rounding."""
    from PIL import Image

    from cnnlab.progress import Reporter
    from cnnlab.tasks.evaluate import EvaluateConfig, evaluate

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["n01440764_tench.JPEG", "n01494475_hammerhead.JPEG",
                 "n01667778_terrapin.JPEG"]:
        (folder / name).symlink_to(shared_data("imagenet-samples", name))
    runs = {}
    for engine in ("onnxruntime", "torch"):
        config = EvaluateConfig(path=str(folder), models=("efficientnet_lite0",), workers=1,
                                engine=engine)
        runs[engine] = evaluate(config, Reporter(quiet=True), out=tmp_path / engine)
    fast, slow = (runs[e]["explanations"] for e in ("onnxruntime", "torch"))
    assert runs["onnxruntime"]["models"][0]["engine"]["layer"] == "bn2"
    assert len(fast["cams"]) == 2
    strip = [{k: {"index": v["index"], "class": v["class"]} if isinstance(v, dict) else v
              for k, v in c.items()} for c in fast["cams"]]
    assert strip == [{k: {"index": v["index"], "class": v["class"]} if isinstance(v, dict)
                      else v for k, v in c.items()} for c in slow["cams"]]
    assert fast["models"][0]["layer_shape"] == slow["models"][0]["layer_shape"] == [1280, 7, 7]
    for a, b in zip(fast["cams"], slow["cams"], strict=True):
        for side in ("predicted", "true"):
            x = np.asarray(Image.open(tmp_path / "onnxruntime" / a[side]["cam"]), np.float32)
            y = np.asarray(Image.open(tmp_path / "torch" / b[side]["cam"]), np.float32)
            assert x.shape == y.shape == (224, 224, 3)
            assert np.abs(x - y).mean() < 0.5  # JPEG of maps within ~1e-5 of each other


def test_predict_explains_maps_from_the_graph_equal_the_pytorch_paths(shared_data, tmp_path):
    """`predict --explain` on ONNX Runtime (the top class's map from the graph's activations)
    against `--engine torch` (CamWriter on the PyTorch model): same classes, same map."""
    from PIL import Image

    from cnnlab.cli import main

    photos = [str(shared_data("imagenet-samples", n)) for n in
              ("n01494475_hammerhead.JPEG", "n01667778_terrapin.JPEG")]
    for engine in ("onnxruntime", "torch"):
        assert main(["predict", "efficientnet_lite0", *photos, "--explain", "--workers", "0",
                     "--engine", engine, "--out", str(tmp_path / engine), "-q"]) == 0
    fast, slow = (json.loads((tmp_path / e / "results.json").read_text())
                  for e in ("onnxruntime", "torch"))
    assert fast["layer"] == slow["layer"] == "bn2"
    assert fast["layer_shape"] == slow["layer_shape"] == [1280, 7, 7]
    for a, b in zip(fast["photos"], slow["photos"], strict=True):
        assert a["top"][0]["index"] == b["top"][0]["index"]
        x = np.asarray(Image.open(tmp_path / "onnxruntime" / a["top"][0]["cam"]), np.float32)
        y = np.asarray(Image.open(tmp_path / "torch" / b["top"][0]["cam"]), np.float32)
        assert x.shape == y.shape == (224, 224, 3) and np.abs(x - y).mean() < 0.5
