"""`--engine openvino` (models/openvino_engine.py and its hook in models/inference.py): OpenVINO's
CPU plugin on the graph exported for ONNX Runtime, fp32 forced, against PyTorch itself.

The oracle is the PyTorch forward of the same net: the same top-5 classes, in the same order,
on every one of the 250 sample photos (Lite0), logits within the bound; the refusal (back to
ONNX Runtime, one line) and the one-line error when OpenVINO is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import inference, openvino_engine
from cnnlab.models.inference import check_batch, prepare_forward, resolve_engine
from test_inference import CPU, sample_batches, tiny_net  # noqa: F401 (a fixture)

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def test_openvino_pass_equals_pytorch_in_fp32(tmp_path):
    net, lines = tiny_net(), []
    forward = prepare_forward(net, "openvino", identity="tiny:1", input_size=32, device=CPU,
                              log=lines.append, root=tmp_path)
    assert forward.engine == "openvino" and not lines
    about = forward.about
    assert about["engine"] == "openvino" and about["requested"] == "openvino"
    assert about["precision_hint"] == "f32" and about["openvino"]
    assert about["max_abs_diff_vs_onnxruntime"] < 1e-5
    x = check_batch(32, 5)  # neither the export's nor the check's batch size
    with torch.inference_mode():
        expected = net(x)
    got = forward(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # channels-last batches (as evaluate's loader may give) read the same pixels
    torch.testing.assert_close(forward(x.contiguous(memory_format=torch.channels_last)),
                               expected, rtol=1e-5, atol=1e-5)


def test_openvino_outside_the_bound_falls_back_to_onnxruntime_with_one_line(tmp_path,
                                                                            monkeypatch):
    # Any difference from ONNX Runtime's logits is too much: OpenVINO is refused.
    monkeypatch.setattr(inference, "MAX_ABS_DIFF", 1e-3)
    net, lines = tiny_net(), []
    real = openvino_engine.checked_runners

    def strict(graph, threads, layer, check, expected, bound):
        return real(graph, threads, layer, check, expected + 1.0, bound)  # logits off by 1

    monkeypatch.setattr(openvino_engine, "checked_runners", strict)
    forward = prepare_forward(net, "openvino", identity="tiny:1", input_size=32, device=CPU,
                              log=lines.append, root=tmp_path, label="tiny")
    assert forward.engine == "onnxruntime"
    assert len(lines) == 1 and lines[0].startswith("tiny: OpenVINO refused (its outputs differ")
    assert lines[0].endswith("running ONNX Runtime instead")
    assert forward.about["openvino_refused"]["max_abs_diff_vs_onnxruntime"] > 0.9
    with torch.inference_mode():
        torch.testing.assert_close(forward(check_batch(32, 2)), net(check_batch(32, 2)),
                                   rtol=1e-5, atol=1e-5)


def test_missing_openvino_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(openvino_engine, "openvino_version", lambda: None)
    with pytest.raises(CnnlabError, match=r"pip install 'cnnlab\[openvino\]'") as err:
        resolve_engine("openvino", CPU)
    assert "\n" not in str(err.value)
    assert resolve_engine("auto", CPU) == "onnxruntime"  # auto never needs OpenVINO


def test_openvino_on_a_gpu_device_runs_pytorch_there(monkeypatch):
    lines = []
    monkeypatch.setattr(inference, "resolve_engine", lambda requested, device: "openvino")
    forward = prepare_forward(tiny_net(), "openvino", identity="tiny:1", input_size=32,
                              device="meta", log=lines.append, label="tiny")
    assert forward.engine == "torch" and lines == [
        "tiny: openvino runs on the CPU here; PyTorch runs on meta"]


def test_openvino_top5_equals_pytorch_on_every_sample_photo(sample_batches, tmp_path):  # noqa: F811
    """Lite0 as `evaluate --engine openvino` runs it, with the CAM layer's second output: the
    top-5 (classes and order) is PyTorch's on each of the 250 photos, the logits within a tenth
    of the bound, and the activations those of ONNX Runtime's graph."""
    from cnnlab.models.inference import torch_forward, weights_identity
    from cnnlab.models.registry import get_spec

    net, preprocess, weights, batches = sample_batches
    layer = get_spec("efficientnet_lite0").cam_layer
    kwargs = {"identity": weights_identity("lite0", weights),
              "input_size": preprocess.crop_size, "root": tmp_path, "layer": layer}
    ov = prepare_forward(net, "openvino", **kwargs)
    ort = prepare_forward(net, "onnxruntime", **kwargs)
    assert ov.engine == "openvino" and ov.run_layer is not None
    assert np.array_equal(ov.head.weight, ort.head.weight)  # the maps' head, as on ORT
    reference = torch_forward(net, CPU)
    n, worst = 0, 0.0
    for images in batches:
        expected, got = reference(images), ov(images)
        assert torch.equal(got.topk(5, dim=1).indices, expected.topk(5, dim=1).indices)
        worst = max(worst, float((got - expected).abs().max()))
        n += len(images)
    assert n == 250
    assert worst < inference.MAX_ABS_DIFF / 10, worst
    y, a = ov.run_layer(batches[0])
    y_ort, a_ort = ort.run_layer(batches[0])
    torch.testing.assert_close(y, y_ort, rtol=1e-4, atol=1e-4)
    assert a.shape == a_ort.shape and np.abs(a - a_ort).max() < 1e-3
