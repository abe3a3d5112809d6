"""`cnnlab finetune --strategy partial` (the top stages trained on cached activations of the
frozen early ones) and `--strategy auto` (issue 17).

timm's `test_efficientnet` (the EfficientNet chain: conv_stem, bn1, blocks, conv_head, bn2,
global_pool) with a seeded random "ImageNet" weights file keeps these fast; the oracle for the
cache is the live backbone itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnlab.errors import CnnlabError
from cnnlab.models import head_fit
from cnnlab.progress import Reporter
from cnnlab.runs import RunDir
from cnnlab.tasks import finetune
from cnnlab.tasks.finetune import FinetuneConfig, choice, strategies

BACKBONE = "timm/test_efficientnet"
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 180, 30)}
# Grad-CAMs of the mistakes (another feature of the finetune report) are not what these test.
NO_EXPLAIN = ({"explain": False} if "explain" in FinetuneConfig.__dataclass_fields__ else {})


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for part, n in (("train", 5), ("val", 2), ("test", 2)):
        for c, rgb in COLOURS.items():
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 40, (40, 48, 3)), 0, 255)
                p = root / part / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(p)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def partial(data: Path, out: Path, weights: Path, **kw) -> dict:
    settings = {"backbone": BACKBONE, "weights": str(weights), "workers": 0, "epochs": 3,
                "batch_size": 8, "report": False, "strategy": "partial", **NO_EXPLAIN, **kw}
    return finetune.run(FinetuneConfig(data=str(data), **settings),
                        RunDir.create("finetune", out), Reporter(quiet=True))


def _body(weights: Path):
    from cnnlab.models.registry import create_pretrained
    from cnnlab.models.transfer import TransferModel

    model, preprocess, _ = create_pretrained(BACKBONE, weights)
    return TransferModel.from_pretrained(model, 3), preprocess


def test_partial_trains_the_top_stages_and_leaves_the_early_ones(photos, tmp_path, weights):
    """Weights compared with the ImageNet file: every parameter of the top stage(s) moved
    (or most of them), every one below the cut is bit for bit the pretrained one, and so are
    all BatchNorm statistics (--bn frozen)."""
    pre = torch.load(weights, weights_only=True)
    net, _ = _body(weights)
    for stages in (1, 2):
        r = partial(photos, tmp_path / f"s{stages}", weights, train_stages=stages)
        assert r["settings"]["strategy"] == "partial"
        assert r["settings"]["model"]["unfrozen_stages"] == stages
        top = {n for s in net.stages[-stages:] for n in s}
        w = load_file(str(tmp_path / f"s{stages}" / "model.safetensors"))
        params = [k for k in pre if k in dict(net.body.named_parameters())]
        moved = [k for k in params if not torch.equal(pre[k], w[f"body.{k}"])]
        assert moved and set(moved) <= top, set(moved) - top
        assert len(moved) >= 0.8 * len(top)  # not one stray tensor: the stage trained
        assert all(torch.equal(pre[k], w[f"body.{k}"]) for k in params if k not in top)
        stats = [k for k in pre if k.endswith(("running_mean", "running_var"))]
        assert stats and all(torch.equal(pre[k], w[f"body.{k}"]) for k in stats)
        first = net.stages[-stages][0]  # the first parameter of the lowest trained stage
        assert r["feature_cache"]["cut"] == ".".join(first.split(".")[:2])


def test_cached_activations_equal_the_live_early_stages(photos, tmp_path, weights):
    """The oracle is the whole backbone run live: a forward hook takes the input of the first
    trained module while `body(view)` runs; the cached activations of every view (the
    evaluation view, its mirror, two random crops), first computed and then read back from
    the disk cache, equal it. View 0 is exactly the evaluation transform (`load_image`)."""
    from cnnlab.data.decode import load_image
    from cnnlab.models.features import file_digest
    from cnnlab.models.partial import (
        Views,
        activation_cache,
        activation_key,
        compute_activations,
        split_body,
        view_images,
    )

    net, preprocess = _body(weights)
    net.set_strategy("partial")
    net.unfreeze(1)
    body = net.body.eval()
    early, _late, cut = split_body(body, preprocess.crop_size)
    paths = sorted((photos / "train").rglob("*.png"))[:3]
    views = Views(count=4, seed=7)
    key = activation_key(BACKBONE, file_digest(weights), preprocess, True, cut, views)
    runs = []
    for _ in range(2):  # computed, then from the disk cache
        cache = activation_cache(key)
        runs.append(compute_activations(early, paths, [4] * len(paths), preprocess, views,
                                        cache, Reporter(quiet=True), workers=0))
    assert runs[0].computed == 12 and runs[1].computed == 0
    seen = []
    hook = body.get_submodule(cut).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone()))
    for p in paths:
        x = view_images(p, file_digest(p), preprocess, views, 4)
        assert torch.equal(x[0], load_image(p, preprocess))
        assert torch.equal(x[1], x[0].flip(-1))
        assert not torch.equal(x[2], x[3])  # two different random crops
        with torch.no_grad():
            body(x)
        live = seen.pop()
        for run in runs:
            assert torch.allclose(run.views[p], live, rtol=1e-5, atol=1e-5)
    hook.remove()
    # The random views are fixed by (seed, view, photo): another seed, other crops.
    digest = file_digest(paths[0])
    mine = view_images(paths[0], digest, preprocess, views, 4)
    other = view_images(paths[0], digest, preprocess, Views(4, seed=8), 4)
    assert torch.equal(mine, view_images(paths[0], digest, preprocess, views, 4))
    assert torch.equal(other[:2], mine[:2]) and not torch.equal(other[2], mine[2])


def test_partial_logits_are_the_whole_networks(photos, tmp_path, weights):
    """The test photos are scored on cached activations: the exported network, run whole on
    the test photos, gives the same top-1 predictions and probabilities."""
    import csv

    from cnnlab.data.decode import load_image
    from cnnlab.models.transfer import build_transfer

    partial(photos, tmp_path / "run", weights)
    net = build_transfer(BACKBONE, 3)
    net.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))
    net.eval()
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    from cnnlab.data.preprocess import Preprocess

    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in info["preprocess"].items()})
    rows = [r for r in csv.DictReader((tmp_path / "run" / "predictions.csv").open())
            if r["rank"] == "1"]
    for r in rows:
        with torch.no_grad():
            p = torch.softmax(net(load_image(photos / r["file"], pre)[None]), 1)[0]
        assert info["classes"][int(p.argmax())] == r["class"]
        assert float(p.max()) == pytest.approx(float(r["probability"]), abs=1e-4)


def test_partial_cross_validation_and_training_never_see_test_photos(photos, tmp_path, weights,
                                                                      monkeypatch):
    """The head's start (L-BFGS, L2 by cross-validation) sees train + validation photos'
    features only, and every training batch comes from train + validation activations."""
    events = []
    real_cv = head_fit.cross_validate
    real_batches = strategies.Trainer.batches

    def cv(x, y, *a, **kw):
        events.append(("cv", len(x)))
        return real_cv(x, y, *a, **kw)

    def batches(self, epoch):
        for x, y in real_batches(self, epoch):
            events.append(("batch", x.clone()))
            yield x, y

    monkeypatch.setattr(head_fit, "cross_validate", cv)
    monkeypatch.setattr(strategies.Trainer, "batches", batches)
    r = partial(photos, tmp_path / "run", weights, views=2)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    n_fit = len(split["train"]) + len(split["val"])
    assert r["head_init"]["photos"] == n_fit == 21 and r["n_test"] == 6
    assert [e[1] for e in events if e[0] == "cv"] == [n_fit]

    net, preprocess = _body(weights)
    net.set_strategy("partial")
    net.unfreeze(1)
    from cnnlab.models.partial import Views, compute_activations, split_body

    early, _, _ = split_body(net.body, preprocess.crop_size)
    test_paths = [photos / f for f, _ in split["test"]]
    test = compute_activations(early, test_paths, [2] * len(test_paths), preprocess,
                               Views(2), None, Reporter(quiet=True))
    trained = torch.cat([e[1] for e in events if e[0] == "batch"]).flatten(1)
    assert len(trained) == 3 * n_fit  # 3 epochs, every train + validation photo once each
    for p in test_paths:
        for v in test.views[p]:
            assert not (trained - v.flatten()).abs().max(1).values.lt(1e-6).any()


def test_resume_after_kill_9_ends_as_an_uninterrupted_partial_run(photos, tmp_path, weights):
    """Killed (SIGKILL) mid-run and resumed: the same weights, metrics and predictions."""

    def cli(*args, env=None):
        return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True,
                              text=True, timeout=600, env={**os.environ, **(env or {})})

    common = ["finetune", str(photos), "-m", BACKBONE, "--weights", str(weights), "--strategy",
              "partial", "--epochs", "3", "--batch-size", "8", "--workers", "0", "-q",
              "--no-report", *(["--no-explain"] if NO_EXPLAIN else [])]
    straight = cli(*common, "--out", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = cli(*common, "--out", str(tmp_path / "b"), env={"CNNLAB_CRASH_AT": "step-5"})
    assert crashed.returncode == -signal.SIGKILL
    resumed = cli("finetune", "--resume", str(tmp_path / "b"), "-q")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    for key in ("top1_error", "train_accuracy", "per_class_accuracy", "epochs_run"):
        assert a[key] == b[key], key
    assert (tmp_path / "a" / "predictions.csv").read_text() == \
        (tmp_path / "b" / "predictions.csv").read_text()
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_partial_settings_are_checked():
    with pytest.raises(CnnlabError, match="train-stages"):
        FinetuneConfig(data=".", strategy="partial", train_stages=0)
    with pytest.raises(CnnlabError, match="keep last"):
        FinetuneConfig(data=".", strategy="partial", keep="best")


@pytest.mark.parametrize(("photos_", "classes", "chosen"), [
    (60, 3, "partial"),   # 20 per class: at the threshold
    (61, 3, "freeze"),    # over it
    (100, 10, "partial"),  # the lab's shape: 10 classes, ~8 + 2 photos each
    (245, 2, "freeze"),   # hymenoptera's train/ (122 per class)
])
def test_auto_rule_picks_as_documented(photos_, classes, chosen):
    assert finetune.auto_strategy(photos_, classes)[0] == chosen


def test_auto_rule_switches_where_the_docs_say():
    """The threshold BENCHMARKS.md and the README state, read from them: partial at that many
    training photos per class, freeze one photo over it, for any number of classes."""
    import re

    repo = Path(__file__).resolve().parents[1]
    bench = re.search(r"at most (\d+) per class \(`AUTO_PARTIAL_MAX_PER_CLASS`\)",
                      (repo / "BENCHMARKS.md").read_text(encoding="utf-8"))
    readme = re.search(r"partial for at most (\d+) photos per class, else freeze",
                       " ".join((repo / "README.md").read_text(encoding="utf-8").split()))
    assert bench and readme and bench.group(1) == readme.group(1)
    n = int(bench.group(1))
    for classes in (2, 3, 10):
        assert finetune.auto_strategy(n * classes, classes)[0] == "partial"
        assert finetune.auto_strategy(n * classes + 1, classes)[0] == "freeze"


def test_auto_counts_train_and_validation_photos_never_test(photos, tmp_path, weights,
                                                             monkeypatch):
    """7 train + validation photos per class (and 2 test): partial at a threshold of 7, freeze
    at 6; adding test photos changes nothing."""
    seen = []
    real = choice.auto_strategy

    def spy(n, c):
        seen.append((n, c))
        return real(n, c)

    monkeypatch.setattr(choice, "auto_strategy", spy)
    for extra in range(3):  # more test photos per class
        for c, rgb in COLOURS.items():
            Image.new("RGB", (40, 48), rgb).save(photos / "test" / c / f"extra{extra}.png")
    for threshold, chosen in ((7, "partial"), (6, "freeze")):
        monkeypatch.setattr(choice, "AUTO_PARTIAL_MAX_PER_CLASS", threshold)
        r = partial(photos, tmp_path / chosen, weights, strategy="auto", epochs=None)
        assert r["settings"]["strategy"] == chosen
        config = json.loads((tmp_path / chosen / "config.json").read_text())
        assert config["strategy"] == chosen  # a resume runs what was chosen
    assert seen == [(21, 3), (21, 3)]
