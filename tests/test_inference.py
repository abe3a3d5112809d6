"""The inference engines (models/inference.py): the ONNX Runtime pass against PyTorch itself.

The oracle is the PyTorch forward of the same net on the same input: the same top-5 classes, in
the same order, on every one of the 250 sample photos, logits within the stated bound; and the
machinery around it (export once, cache, refusal and fallback, a damaged cache, errors).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import inference
from cnnlab.models.inference import check_batch, prepare_forward, resolve_engine

pytest.importorskip("onnxruntime")

CPU = torch.device("cpu")


def tiny_net() -> nn.Module:
    """A small CNN (conv, batch norm, ReLU, pooling, linear): exported in a second."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():  # non-trivial running statistics: eval mode must be what is exported
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def test_onnx_pass_equals_pytorch_and_is_exported_once(tmp_path):
    net, lines = tiny_net(), []
    first = prepare_forward(net, "onnxruntime", identity="tiny:1", input_size=32, device=CPU,
                            log=lines.append, root=tmp_path)
    assert first.engine == "onnxruntime" and not lines
    about = first.about
    assert about["exported"] and about["max_abs_diff"] < inference.MAX_ABS_DIFF
    # A batch size neither the export's nor the check's: the batch axis is dynamic.
    x = check_batch(32, 5)
    with torch.inference_mode():
        expected = net(x)
    torch.testing.assert_close(first(x), expected, rtol=1e-5, atol=1e-5)
    graph = tmp_path / "onnx"
    (folder,) = graph.iterdir()
    record = json.loads((folder / "verify.json").read_text())
    assert record["max_abs_diff"] == about["max_abs_diff"] and record["check_batch"] == 3
    stamp = (folder / "model.onnx").stat().st_mtime_ns

    again = prepare_forward(net, "onnxruntime", identity="tiny:1", input_size=32, device=CPU,
                            root=tmp_path)
    assert again.engine == "onnxruntime" and again.about["exported"] is False
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp
    torch.testing.assert_close(again(x), expected, rtol=1e-5, atol=1e-5)
    # Other weights (identity) or another input size: another graph.
    prepare_forward(net, "onnxruntime", identity="tiny:2", input_size=32, device=CPU,
                    root=tmp_path)
    prepare_forward(net, "onnxruntime", identity="tiny:1", input_size=40, device=CPU,
                    root=tmp_path)
    assert len(list(graph.iterdir())) == 3


def test_a_graph_outside_the_bound_is_refused_for_pytorch_with_one_line(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(inference, "MAX_ABS_DIFF", 0.0)  # any rounding difference is too much
    net, lines = tiny_net(), []
    forward = prepare_forward(net, "auto", identity="tiny:1", input_size=32, device=CPU,
                              log=lines.append, label="tiny")
    assert forward.engine == "torch"
    assert len(lines) == 1 and lines[0].startswith("tiny: ONNX graph refused (its outputs "
                                                   "differ from PyTorch's by")
    assert lines[0].endswith("running PyTorch instead")
    refused = forward.about["refused"]
    assert refused["max_abs_diff"] > 0 and forward.about["requested"] == "auto"
    x = check_batch(32, 4)
    with torch.inference_mode():
        torch.testing.assert_close(forward(x), net(x), rtol=0, atol=0)


def test_a_damaged_cached_graph_is_exported_again(tmp_path):
    net = tiny_net()
    prepare_forward(net, "onnxruntime", identity="tiny:1", input_size=32, root=tmp_path)
    (folder,) = (tmp_path / "onnx").iterdir()
    (folder / "model.onnx").write_bytes(b"not a graph")
    forward = prepare_forward(net, "onnxruntime", identity="tiny:1", input_size=32,
                              root=tmp_path)
    assert forward.engine == "onnxruntime" and forward.about["exported"]
    x = check_batch(32, 2)
    with torch.inference_mode():
        torch.testing.assert_close(forward(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_net_the_exporter_cannot_take_runs_in_pytorch(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return torch.tensor([x.sum().item()]).expand(x.shape[0], 1)  # data-dependent

    lines = []
    forward = prepare_forward(Odd(), "auto", identity="odd:1", input_size=8, log=lines.append,
                              root=tmp_path)
    # Either the export fails or its frozen constant fails the check: PyTorch runs.
    assert forward.engine == "torch" and len(lines) == 1 and "refused" in lines[0]


def test_engine_names_and_where_onnxruntime_runs(monkeypatch):
    with pytest.raises(CnnlabError, match="--engine must be one of auto, torch, onnxruntime"):
        resolve_engine("tensorrt", CPU)
    assert resolve_engine("auto", CPU) == "onnxruntime"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", CPU) == "torch"
    monkeypatch.setattr(inference, "onnxruntime_version", lambda: None)
    assert resolve_engine("auto", CPU) == "torch"
    with pytest.raises(CnnlabError, match="pip install onnxruntime"):
        resolve_engine("onnxruntime", CPU)


def test_configs_refuse_an_unknown_engine():
    from cnnlab.tasks.evaluate import EvaluateConfig
    from cnnlab.tasks.predict import PredictConfig

    with pytest.raises(CnnlabError, match="--engine must be one of"):
        EvaluateConfig(path="x", engine="tensorrt")
    with pytest.raises(CnnlabError, match="--engine must be one of"):
        PredictConfig(model="efficientnet_lite0", inputs=("x",), engine="tensorrt")


def test_the_frozen_feature_pass_on_onnxruntime_equals_pytorch(tmp_path, monkeypatch):
    """finetune's one pass (models/features.compute_features) on either engine: the same
    vectors to within rounding, the graph named by the feature cache's key."""
    from PIL import Image

    from cnnlab.data.preprocess import Preprocess
    from cnnlab.models.features import FeatureCache, compute_features
    from cnnlab.progress import Reporter

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    small = Preprocess(40, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (48, 40), (40 * i, 255 - 30 * i, 90)).save(paths[-1])
    body = tiny_net()[:-1]  # pooled features, (N, 8)
    runs = {}
    for engine in ("torch", "onnxruntime"):
        cache = FeatureCache(f"key-{engine}", root=tmp_path / "features")
        runs[engine] = compute_features(body, paths, small, cache, Reporter(quiet=True),
                                        workers=0, engine=engine)
    assert runs["torch"].engine["engine"] == "torch"
    assert runs["onnxruntime"].engine["engine"] == "onnxruntime"
    assert runs["onnxruntime"].rows.shape == (5, 8)
    torch.testing.assert_close(runs["onnxruntime"].rows, runs["torch"].rows, rtol=1e-5,
                               atol=1e-5)


@pytest.fixture(scope="module")
def sample_batches():
    """The 250 sample photos, decoded once with Lite0's preprocessing, in batches of 32."""
    from cnnlab.data.batching import ImageDataset
    from cnnlab.data.folders import LabelledImage
    from cnnlab.models.registry import create_pretrained
    from conftest import data_path

    folder = data_path("imagenet-samples")
    net, preprocess, weights = create_pretrained("efficientnet_lite0", None)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    dataset = ImageDataset([LabelledImage(p, "") for p in files], preprocess)
    batches = []
    for start in range(0, len(files), 32):
        images, _, bad = dataset.collate([dataset[i] for i in
                                                range(start, min(start + 32, len(files)))])
        assert not bad
        batches.append(images)
    return net, preprocess, weights, batches


def test_onnxruntime_top5_equals_pytorch_on_every_sample_photo(sample_batches, tmp_path):
    """Lite0 as `evaluate` runs it: ONNX Runtime's top-5 (classes and order) is PyTorch's on
    each of the 250 photos, and the logits agree to well within the refusal bound."""
    from cnnlab.models.inference import torch_forward, weights_identity

    net, preprocess, weights, batches = sample_batches
    ort = prepare_forward(net, "onnxruntime", identity=weights_identity("lite0", weights),
                          input_size=preprocess.crop_size, root=tmp_path)
    assert ort.engine == "onnxruntime"
    reference = torch_forward(net, CPU)
    n, worst = 0, 0.0
    for images in batches:
        expected, got = reference(images), ort(images)
        assert torch.equal(got.topk(5, dim=1).indices, expected.topk(5, dim=1).indices)
        worst = max(worst, float((got - expected).abs().max()))
        n += len(images)
    assert n == 250
    assert worst < inference.MAX_ABS_DIFF / 10, worst
