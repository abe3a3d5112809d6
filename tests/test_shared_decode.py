"""One decode for many nets (issue 27 item 2): `evaluate -m A -m B -m C` and `finetune --model
auto` read and decode each photo once, then resize and crop it per net.

Oracles: each net's own path (`decode.load_image`, one decode per net, as before) on every
shared sample photo; a decode counter on Pillow's `Image.open`; the per-net feature pass and
cross-validation for `--model auto`. The imports of the new code sit inside the tests, so the
counting tests can be run against the old code too (they fail there: 3 decodes per photo).
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab.progress import Reporter

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Mean |shared - own| per input value, in normalised units (mean = std = 0.5: 1 unit = 127.5
# uint8 levels), on a photo whose own JPEG draft factor is coarser than the shared decode's.
# Measured on the 255 sample + hymenoptera photos where it happens: 0.004-0.053 (0.5-6.8
# levels: the shared path resizes a finer decode with Pillow's antialiased bicubic where the
# own path shrank in the DCT domain first; the shared path is then torchvision's full-decode
# reference exactly, see below).
MEAN_TOLERANCE = 0.06


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lites():
    from cnnlab.models.registry import create_pretrained

    return [create_pretrained(name, None) for name in LITES]  # (net, preprocess, weights)


def sample_files() -> list[Path]:
    from conftest import data_path

    folder = data_path("imagenet-samples")
    return sorted(p for p in folder.iterdir() if p.is_file())


def count_decodes(monkeypatch) -> collections.Counter:
    """Counts every `PIL.Image.open` per file name: each decode starts with one."""
    from PIL import Image

    opened: collections.Counter = collections.Counter()
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened[Path(fp).name] += 1
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_every_nets_input_from_one_decode_is_its_own_paths_on_every_sample(lites):
    """On the 250 sample photos, Lite0/1/2's inputs from one shared decode equal each net's own
    `load_image` bit for bit wherever the shared decode is at the net's own JPEG draft factor
    (`exact`); elsewhere (5 photos for Lite0, 1 for Lite1: short sides 512-563 px, where Lite2
    needs a full decode) they equal the full-decode path exactly and the own path within
    MEAN_TOLERANCE, and the top-5 classes of the net on both inputs are the same."""
    from cnnlab.data.decode import load_image, load_images

    preprocesses = [pp for _, pp, _ in lites]
    inexact: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for path in sample_files():
        shared, exact = load_images(path, preprocesses)
        for k, pp in enumerate(preprocesses):
            own = load_image(path, pp)
            assert shared[k].shape == own.shape == (3, pp.crop_size, pp.crop_size)
            if exact[k]:
                assert torch.equal(shared[k], own), (path.name, LITES[k])
                continue
            assert torch.equal(shared[k], load_image(path, pp, draft=False)), path.name
            assert float((shared[k] - own).abs().mean()) <= MEAN_TOLERANCE, path.name
            inexact.append((k, shared[k], own))
    # Lite2 (the largest) is always exact; the others not on 5 + 1 of the 250 photos.
    assert sorted(collections.Counter(k for k, _, _ in inexact).items()) == [(0, 5), (1, 1)]
    with torch.inference_mode():
        for k, shared_x, own_x in inexact:
            net = lites[k][0].eval()
            top_shared = net(shared_x[None]).topk(5, dim=1).indices
            top_own = net(own_x[None]).topk(5, dim=1).indices
            assert torch.equal(top_shared, top_own), LITES[k]


def test_one_net_is_exactly_the_old_single_decode(tmp_path):
    """`decode_many` with one preprocessing is `load_image` (exact, every crop mode, draft on),
    and with a net that needs a full decode beside one that could draft, the drafting one is
    flagged inexact and gets the full-decode pixels."""
    import numpy as np
    from PIL import Image

    from cnnlab.data.decode import load_image, load_images
    from cnnlab.data.preprocess import Preprocess

    rng = np.random.default_rng(0)
    path = tmp_path / "p.jpg"  # short side 560: 2x of 256 fits, 2x of 292 does not
    Image.fromarray(rng.integers(0, 256, (560, 700, 3), dtype=np.uint8)).save(path)
    for mode in ("center", "squash", "border"):
        small = Preprocess(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3, mode)
        (only,), (exact,) = load_images(path, [small])
        assert exact and torch.equal(only, load_image(path, small))
    small = Preprocess(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    large = Preprocess(292, 260, "bilinear", (0.4,) * 3, (0.3,) * 3)
    (a, b), exact = load_images(path, [small, large])
    assert exact == [False, True]
    assert torch.equal(a, load_image(path, small, draft=False))
    assert not torch.equal(a, load_image(path, small))  # its own path drafts at 1/2
    assert torch.equal(b, load_image(path, large))


def photo_folder(tmp_path: Path, n: int = 6) -> Path:
    """n sample photos whose labels resolve (wnid_name.JPEG), the first ones an inexact case."""
    folder = tmp_path / "photos"
    folder.mkdir()
    firsts = ["n02095314_wire-haired_fox_terrier.JPEG", "n01622779_great_grey_owl.JPEG"]
    files = [p for p in sample_files() if p.name in firsts]
    files += [p for p in sample_files() if p.name not in firsts][: n - len(files)]
    for p in files:
        shutil.copy(p, folder / p.name)
    return folder


def test_evaluate_decodes_each_photo_once_for_three_models(tmp_path, monkeypatch):
    """Three models, one decode per photo (the old per-model passes decoded it 3 times); the
    predictions of each model equal its own single-model run's, top-5 and order, and the
    probabilities too wherever its inputs are exact."""
    from cnnlab.tasks.evaluate import EvaluateConfig, evaluate

    folder = photo_folder(tmp_path)
    settings = {"workers": 0, "explain": False, "report": False, "engine": "torch"}
    opened = count_decodes(monkeypatch)
    together = evaluate(EvaluateConfig(path=str(folder), models=LITES, **settings),
                        Reporter(quiet=True), out=tmp_path / "together")
    assert dict(opened) == {p.name: 1 for p in folder.iterdir()}
    assert [m["n_images"] for m in together["models"]] == [6, 6, 6]
    assert all(m["seconds"] > 0 for m in together["models"])
    rows = read_top5(tmp_path / "together")
    for name in LITES:
        evaluate(EvaluateConfig(path=str(folder), models=(name,), **settings),
                 Reporter(quiet=True), out=tmp_path / name)
        alone = read_top5(tmp_path / name)
        assert {f: top for (f, m), top in rows.items() if m == name} == {
            f: top for (f, _), top in alone.items()}


def read_top5(run: Path) -> dict[tuple[str, str], list[str]]:
    import csv

    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        out: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for row in csv.DictReader(f):
            if int(row["rank"]) <= 5:
                out[(row["file"], row["model"])].append(row["class_index"])
    return dict(out)


def lab_like(n_per_class: int = 10) -> tuple[list[Path], list[int]]:
    """The lab's shape (k = 8 training + 2 validation photos per class, BENCHMARKS.md's
    few-shot protocol) from hymenoptera's train/: the first 10 ants and 10 bees by name. One of
    them (ants/0013035.jpg, 768 x 512) is decoded finer for Lite0 than its own path would."""
    from conftest import data_path

    root = data_path("hymenoptera", "train")
    paths, targets = [], []
    for target, name in enumerate(("ants", "bees")):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() == ".jpg")
        paths += files[:n_per_class]
        targets += [target] * n_per_class
    return paths, targets


def test_backbone_scoring_decodes_each_photo_once_and_scores_as_per_net(tmp_path, monkeypatch):
    """`--model auto`'s scoring on a lab-like folder: one decode per photo for the three
    candidates, and the table the per-net passes (one backbone at a time, the old path) give:
    the same choice, the same accuracies, log-losses within 1% (one photo of 20 has other
    pixels for Lite0, module docstring)."""
    from cnnlab.models.backbone_choice import best_of, frozen_features, score_backbones
    from cnnlab.models.head_fit import cross_validate, n_folds

    paths, targets = lab_like()
    opened = count_decodes(monkeypatch)
    rows = score_backbones([(name, None) for name in LITES], paths, targets, 2,
                           Reporter(quiet=True), workers=0)
    assert dict(opened) == {p.name: 1 for p in paths}

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "per-net"))  # computed again
    per_net = {}
    for name in LITES:
        feats = frozen_features(name, None, paths, Reporter(quiet=True), device="cpu",
                                workers=0, draft=True)
        y = torch.tensor(targets)
        per_net[name] = min(cross_validate(feats.rows, y, 2, n_folds(y), 0),
                            key=lambda r: r["cv_log_loss"])
    for row in rows:
        assert row["cv_log_loss"] == pytest.approx(per_net[row["backbone"]]["cv_log_loss"],
                                                   rel=1e-2)
        assert row["cv_accuracy"] == per_net[row["backbone"]]["cv_accuracy"]
    assert best_of(rows) == min(per_net, key=lambda n: per_net[n]["cv_log_loss"])


def test_only_a_nets_own_pixels_are_cached_under_its_key(tmp_path):
    """The vectors of a photo whose pixels were not the net's own (Lite0 on the fox terrier and
    the owl, Lite1 on the owl) are not cached under its key: the chosen backbone's run
    recomputes those, reuses the rest, and gets what its own pass gives."""
    from cnnlab.models.backbone_choice import frozen_features, frozen_features_many

    paths = sorted(photo_folder(tmp_path, 8).iterdir())
    quiet = Reporter(quiet=True)
    shared = frozen_features_many([(name, None) for name in LITES], paths, quiet, device="cpu",
                                  workers=0, draft=True)
    assert [f.computed for f in shared] == [8, 8, 8]
    again = [frozen_features(name, None, paths, quiet, device="cpu", workers=0, draft=True)
             for name in LITES]
    assert [f.computed for f in again] == [2, 1, 0]
    assert torch.equal(again[2].rows, shared[2].rows)
