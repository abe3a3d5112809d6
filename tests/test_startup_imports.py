"""Commands import only what they use (issue 27 item 4): a fresh process runs the command, then
reports which heavy modules ended up in sys.modules.

`evaluate` draws the maps of its mistakes with cnnlab's batched Grad-CAM (analysis/explanations.py)
and cv2, not through the grad-cam package, whose import loads matplotlib.pyplot, scipy, sklearn
and torchvision's ops for methods these maps never use (~2 CPU-s, BENCHMARKS.md "Start-up").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import json, sys
from cnnlab.cli import main
code = main(sys.argv[2:])
heavy = json.loads(sys.argv[1])
print(json.dumps({"code": code, "modules": sorted(m for m in heavy if m in sys.modules)}))
"""
# Imported by none of the commands below (each is used by other commands: sweeps, explain's
# other methods, the Python API's tables, figures).
NOT_NEEDED = ["pytorch_grad_cam", "sklearn", "scipy", "pandas", "matplotlib"]
# Lite0 gets two of these wrong (a hammerhead and a terrapin) and the tench right.
PHOTOS = ["n01440764_tench.JPEG", "n01494475_hammerhead.JPEG", "n01667778_terrapin.JPEG"]


def _modules_after(argv: list[str], tmp_path, heavy: list[str] | None = None) -> list[str]:
    """The modules of `heavy` (default: NOT_NEEDED and cv2) in sys.modules after the command."""
    heavy = [*NOT_NEEDED, "cv2"] if heavy is None else heavy
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(heavy), *argv],
                          capture_output=True, text=True, timeout=900,
                          env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    return out["modules"]


def _env(tmp_path) -> dict[str, str]:
    import os

    return {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def test_evaluate_with_maps_imports_no_grad_cam_scipy_sklearn_pandas_matplotlib(
        shared_data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).symlink_to(shared_data("imagenet-samples", name))
    out = tmp_path / "run"
    # --engine torch: the test is about the maps' imports; an ONNX export would only add time.
    modules = _modules_after(["evaluate", str(folder), "-m", "efficientnet_lite0", "--workers",
                              "0", "--engine", "torch", "--out", str(out), "-q"], tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert len(results["explanations"]["cams"]) == 2  # the maps were drawn
    assert modules == ["cv2"], modules  # cv2 draws them; nothing else of the list


def test_evaluate_on_a_cached_graph_imports_neither_timm_nor_torchvision(shared_data, tmp_path):
    """Scoring on a cached ONNX graph (evaluate, predict) needs the registry's metadata, not the
    PyTorch model: no timm, no torchvision (~4 CPU-s on top of torch, BENCHMARKS.md "Start-up").
    The first run exports the graph (and builds the model: timm); the next ones read it."""
    from cnnlab.models.registry import count_parameters, create_model

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).symlink_to(shared_data("imagenet-samples", name))
    argv = ["evaluate", str(folder), "-m", "efficientnet_lite0", "--workers", "0", "--engine",
            "onnxruntime", "-q"]
    first = _modules_after([*argv, "--no-explain", "--out", str(tmp_path / "r1")], tmp_path,
                           ["timm", "torchvision"])
    assert first == ["timm", "torchvision"]  # exported: the model was built
    second = _modules_after([*argv, "--no-explain", "--out", str(tmp_path / "r2")], tmp_path,
                            ["timm", "torchvision"])
    assert second == [], second
    summary = json.loads((tmp_path / "r2" / "results.json").read_text())["models"][0]
    assert summary["engine"]["engine"] == "onnxruntime" and not summary["engine"]["exported"]
    assert summary["n_images"] == 3
    # The count shown (report, results.json) is the real model's, not only the registry's table.
    assert summary["parameters"] == count_parameters(create_model("efficientnet_lite0"))
    # predict reads the same cached graph (same weights, same input size), whichever way the
    # name is typed (the graph's key holds the registry's name).
    predicted = _modules_after(["predict", "efficientnet-Lite0", str(folder / PHOTOS[0]),
                                "--workers", "0", "--engine", "onnxruntime"], tmp_path,
                               ["timm", "torchvision", "onnxruntime"])
    assert predicted == ["onnxruntime"], predicted
    # Maps on, but no mistake to map (Lite0 gets the tench right): still no model built.
    (folder / PHOTOS[1]).unlink()
    (folder / PHOTOS[2]).unlink()
    third = _modules_after([*argv, "--out", str(tmp_path / "r3")], tmp_path,
                           ["timm", "torchvision"])
    assert third == [], third
    explained = json.loads((tmp_path / "r3" / "results.json").read_text())["explanations"]
    assert explained["models"][0]["n_wrong"] == 0 and explained["cams"] == []


def test_evaluate_maps_on_a_cached_graph_build_no_model(shared_data, tmp_path):
    """The maps of mistakes come from the graph's second output (the CAM layer's activations)
    and the classifier's weights saved at export (analysis/linear_cams.py): with the graph
    cached, drawing them imports neither timm nor torchvision, so no PyTorch model is built."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).symlink_to(shared_data("imagenet-samples", name))
    argv = ["evaluate", str(folder), "-m", "efficientnet_lite0", "--workers", "0", "--engine",
            "onnxruntime", "-q"]
    first = _modules_after([*argv, "--out", str(tmp_path / "r1")], tmp_path,
                           ["timm", "torchvision"])
    assert first == ["timm", "torchvision"]  # exported: the model was built
    # The model name as a user may type it: the same registry net, the same cached graph.
    second = _modules_after([*argv[:3], "efficientnet-Lite0", *argv[4:], "--out",
                             str(tmp_path / "r2")], tmp_path, ["timm", "torchvision"])
    assert second == [], second
    results = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert not results["models"][0]["engine"]["exported"]
    explained = results["explanations"]
    assert explained["models"][0]["n_wrong"] == 2 and len(explained["cams"]) == 2
    assert explained["models"][0]["layer_shape"] == [1280, 7, 7]
    for cam in explained["cams"]:
        for side in ("predicted", "true"):
            assert (tmp_path / "r2" / cam[side]["cam"]).stat().st_size > 1000
    # predict --explain reads the same graph and draws its map from the same activations.
    out = tmp_path / "p1"
    predicted = _modules_after(["predict", "efficientnet_lite0", str(folder / PHOTOS[1]),
                                "--workers", "0", "--engine", "onnxruntime", "--explain",
                                "--out", str(out)], tmp_path, ["timm", "torchvision"])
    assert predicted == [], predicted
    record = json.loads((out / "results.json").read_text())
    assert record["layer"] == "bn2" and record["layer_shape"] == [1280, 7, 7]
    assert (out / record["photos"][0]["top"][0]["cam"]).stat().st_size > 1000


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2"])
def test_lite_table_matches_timm(name):
    """models/efficientnet_lite.py's table, written down so that the registry needs no timm,
    against timm's own pretrained_cfg and the built model's parameter count."""
    import timm

    from cnnlab.models.meta import build_on_meta
    from cnnlab.models.pretrained import preprocess_from_timm
    from cnnlab.models.registry import count_parameters, get_spec

    spec = get_spec(name)
    cfg = timm.models.get_pretrained_cfg(f"tf_{name}").to_dict()
    assert spec.pretrained.preprocess == preprocess_from_timm(cfg)
    assert spec.default_input == tuple(cfg["input_size"])
    assert spec.published_params == count_parameters(
        build_on_meta(lambda: timm.create_model(f"tf_{name}", pretrained=False)))


def test_imagenet_classes_match_timms_imagenet_info():
    """data/imagenet.py reads timm's class files itself (no timm import): the same classes,
    synonyms and definitions as timm's ImageNetInfo."""
    from timm.data import ImageNetInfo

    from cnnlab.data.imagenet import load_imagenet_classes

    classes, info = load_imagenet_classes(), ImageNetInfo("imagenet-1k")
    wnids = tuple(info.label_names())
    assert classes.wnids == wnids and len(wnids) == 1000
    assert classes.synonyms == tuple(
        tuple(s.strip() for s in info.label_name_to_description(w).split(", ")) for w in wnids)
    assert classes.definitions == tuple(
        info.label_name_to_description(w, detailed=True).split(": ", 1)[-1] for w in wnids)


def test_prepare_forward_builds_the_net_only_to_export_or_run_torch(tmp_path):
    """A builder passed to prepare_forward is called for the export and for the torch engine,
    never when the checked graph is in the cache."""
    import torch
    from torch import nn

    from cnnlab.models.inference import prepare_forward

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    calls = []

    def build():
        calls.append(1)
        return net

    kw = {"identity": "tiny:0", "input_size": 16, "root": tmp_path}
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        expected = net(x)
    exported = prepare_forward(build, "onnxruntime", **kw)
    assert exported.about["exported"] and calls == [1]
    cached = prepare_forward(build, "onnxruntime", **kw)
    assert cached.engine == "onnxruntime" and not cached.about["exported"] and calls == [1]
    torch.testing.assert_close(cached(x), expected, atol=1e-5, rtol=1e-5)
    prepare_forward(build, "torch", **kw)
    assert calls == [1, 1]


def _torch_oracle(photos: list, graph_run: dict, k: int = 5):
    """Today's ONNX Runtime path, in this process with torch: the cached graph's Forward called
    with torch tensors (load_image), then torch's softmax and topk. {file: (classes, probs)}."""
    import torch

    from cnnlab.data.decode import load_image
    from cnnlab.models.inference import prepare_forward, weights_identity
    from cnnlab.models.registry import PretrainedNet

    net = PretrainedNet("efficientnet_lite0", graph_run["weights"])
    forward = prepare_forward(net, "onnxruntime", input_size=net.preprocess.crop_size,
                              identity=weights_identity("efficientnet_lite0",
                                                        graph_run["weights"]),
                              layer=net.spec.cam_layer)
    assert forward.engine == "onnxruntime" and not forward.about["exported"]
    x = torch.stack([load_image(p, net.preprocess) for p in photos])
    probs = forward(x).float().softmax(dim=1)
    top_p, top_c = probs.topk(k, dim=1)
    return {p.name: (c, q) for p, c, q in zip(photos, top_c.tolist(), top_p.tolist(),
                                                strict=True)}


def _predictions(run) -> dict[str, tuple[list[int], list[float]]]:
    import csv

    out: dict[str, tuple[list[int], list[float]]] = {}
    with open(run / "predictions.csv", newline="") as f:
        for row in csv.DictReader(f):
            classes, probs = out.setdefault(row["file"], ([], []))
            classes.append(int(row["class_index"]))
            probs.append(float(row["probability"]))
    return out


def test_evaluate_on_a_cached_graph_imports_no_torch(shared_data, tmp_path, monkeypatch):
    """Issue 27 item 4: on a cached, checked ONNX graph on the CPU (world of one, maps from the
    graph's second output) evaluate runs without importing torch at all (dist, hardware, runs,
    registry, inference, decoding and top-k all torch-free on that path), and its results are
    today's: the same top-5 classes as the ONNX Runtime path with torch tensors and torch's
    softmax/topk (probabilities within one unit of predictions.csv's 6th decimal), the same
    top-5 as --engine torch, the same mistakes and maps."""
    folder = tmp_path / "photos"
    folder.mkdir()
    names = sorted(p.name for p in shared_data("imagenet-samples").iterdir()
                   if p.suffix == ".JPEG")[:24]
    for name in names:
        (folder / name).symlink_to(shared_data("imagenet-samples", name))
    argv = ["evaluate", str(folder), "-m", "efficientnet_lite0", "--workers", "0", "-q"]
    heavy = ["torch", "timm", "torchvision"]
    first = _modules_after([*argv, "--out", str(tmp_path / "r1")], tmp_path, heavy)
    assert first == sorted(heavy)  # the first run exported the graph: the PyTorch model was built
    second = _modules_after([*argv, "--out", str(tmp_path / "r2")], tmp_path, heavy)
    assert second == [], second
    # Threads decoding (the default) and the prefix rule: still no torch.
    third = _modules_after([*argv[:-3], "--match", "prefix", "-q", "--out",
                            str(tmp_path / "r3")], tmp_path, heavy)
    assert third == [], third

    run = tmp_path / "r2"
    results = json.loads((run / "results.json").read_text())
    model = results["models"][0]
    assert model["engine"]["engine"] == "onnxruntime" and not model["engine"]["exported"]
    assert results["device"] == "cpu" and model["n_images"] == len(names)
    env = json.loads((run / "environment.json").read_text())
    import torch

    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    # torch's own default in a fresh process with the run's environment (this test process's
    # thread count may have been set by an earlier test in the same worker)
    fresh = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert env["torch_threads"] == int(fresh.stdout.strip())

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    got = _predictions(run)
    oracle = _torch_oracle([folder / n for n in names], model)
    assert set(got) == set(oracle)
    for name, (classes, probs) in oracle.items():
        assert got[name][0] == classes, name
        assert max(abs(a - b) for a, b in zip(got[name][1], probs, strict=True)) <= 1.5e-6

    # predict (with its map of each top class) reads the same cached graph, also without torch,
    # and gives the same top-5 and probabilities as today's path.
    out = tmp_path / "p"
    predicted = _modules_after(["predict", "efficientnet_lite0", str(folder), "--workers", "0",
                                "--explain", "--out", str(out)], tmp_path, heavy)
    assert predicted == [], predicted
    photos = json.loads((out / "results.json").read_text())["photos"]
    assert len(photos) == len(names)
    for photo in photos:
        classes, probs = oracle[Path(photo["file"]).name]
        assert [t["index"] for t in photo["top"]] == classes
        assert max(abs(t["probability"] - p) for t, p in zip(photo["top"], probs,
                                                             strict=True)) <= 1e-6
        assert (out / photo["top"][0]["cam"]).stat().st_size > 1000

    # --engine torch: the same top-5 of every photo, the same mistakes and maps drawn.
    _modules_after([*argv, "--engine", "torch", "--out", str(tmp_path / "t")], tmp_path, heavy)
    in_torch = _predictions(tmp_path / "t")
    assert {n: c for n, (c, _) in in_torch.items()} == {n: c for n, (c, _) in got.items()}
    cams = results["explanations"]["cams"]
    torch_cams = json.loads((tmp_path / "t" / "results.json").read_text())[
        "explanations"]["cams"]
    assert cams and [(c["file"], c["predicted"]["index"], c["true"]["index"]) for c in cams] \
        == [(c["file"], c["predicted"]["index"], c["true"]["index"]) for c in torch_cams]
    # The maps of the torch-free run are those of the run that exported the graph (torch loaded).
    for c, c1 in zip(cams, json.loads((tmp_path / "r1" / "results.json").read_text())[
            "explanations"]["cams"], strict=True):
        for side in ("predicted", "true"):
            assert (run / c[side]["cam"]).read_bytes() == \
                (tmp_path / "r1" / c1[side]["cam"]).read_bytes()
