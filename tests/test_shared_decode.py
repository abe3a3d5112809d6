"""One decode for many nets (issue 27 item 2): `evaluate -m A -m B -m C` and `finetune --model
auto` read and decode each photo once for all the nets (twice where their JPEG draft factors
differ), then resize and crop it per net.

Oracles: each net's own path (`decode.load_image`, one decode per net, as before) on every
shared sample photo, bit for bit; a decode counter on Pillow's `Image.open`; single-model
`evaluate` runs; the per-net feature pass and cross-validation for `--model auto`. The imports of
the new code sit inside the tests, so the counting tests can be run against the old code too
(they fail there: 3 decodes per photo).
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab.progress import Reporter

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Sample photos whose Lite0/1/2 draft factors differ (short side 512-563 px: Lite2's 292-px
# resize needs a full decode, Lite0's 256 drafts at 1/2; the owl's 563 lets Lite1 draft too).
TWO_DECODES = {"n01622779_great_grey_owl.JPEG", "n02095314_wire-haired_fox_terrier.JPEG",
               "n03673027_liner.JPEG", "n04118538_rugby_ball.JPEG", "n09399592_promontory.JPEG"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def preprocesses() -> list:
    from cnnlab.models.registry import create_pretrained

    return [create_pretrained(name, None)[1] for name in LITES]


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


def expected_decodes(names) -> dict[str, int]:
    return {n: 2 if n in TWO_DECODES else 1 for n in names}


def test_every_nets_input_is_its_own_paths_on_every_sample_photo(monkeypatch):
    """On the 250 sample photos, Lite0/1/2's inputs from the shared decode equal each net's own
    `load_image` bit for bit (so their outputs, top-5 included, are the old ones), from one
    decode per photo except the 5 whose draft factors differ (two decodes, not three)."""
    from cnnlab.data.decode import load_image, load_images

    pps = preprocesses()
    files = sample_files()
    opened = count_decodes(monkeypatch)
    shared = {p: load_images(p, pps) for p in files}
    assert dict(opened) == expected_decodes(p.name for p in files)
    for path in files:
        for k, pp in enumerate(pps):
            assert torch.equal(shared[path][k], load_image(path, pp)), (path.name, LITES[k])


def test_one_net_is_the_single_decode_and_factors_are_grouped(tmp_path, monkeypatch):
    """`load_images` with one preprocessing is `load_image` (every crop mode, draft on); two
    nets whose draft factors differ get their own pixels from two decodes, and two whose
    factors agree from one."""
    import numpy as np
    from PIL import Image

    from cnnlab.data.decode import load_image, load_images
    from cnnlab.data.preprocess import Preprocess

    rng = np.random.default_rng(0)
    path = tmp_path / "p.jpg"  # short side 560: 2x of 256 fits, 2x of 292 does not
    Image.fromarray(rng.integers(0, 256, (560, 700, 3), dtype=np.uint8)).save(path)
    for mode in ("center", "squash", "border"):
        small = Preprocess(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3, mode)
        (only,) = load_images(path, [small])
        assert torch.equal(only, load_image(path, small))
    small = Preprocess(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    also_small = Preprocess(270, 240, "bilinear", (0.4,) * 3, (0.3,) * 3)
    large = Preprocess(292, 260, "bilinear", (0.4,) * 3, (0.3,) * 3)
    assert not torch.equal(load_image(path, small), load_image(path, small, draft=False))
    opened = count_decodes(monkeypatch)
    a, b, c = load_images(path, [small, large, also_small])
    assert opened["p.jpg"] == 2
    assert torch.equal(a, load_image(path, small)) and torch.equal(b, load_image(path, large))
    assert torch.equal(c, load_image(path, also_small))
    opened.clear()
    load_images(path, [small, also_small])
    assert opened["p.jpg"] == 1


def photo_folder(tmp_path: Path, n: int = 6) -> Path:
    """n sample photos whose labels resolve (wnid_name.JPEG), two of them decoded twice."""
    folder = tmp_path / "photos"
    folder.mkdir()
    firsts = ["n02095314_wire-haired_fox_terrier.JPEG", "n01622779_great_grey_owl.JPEG"]
    files = [p for p in sample_files() if p.name in firsts]
    files += [p for p in sample_files() if p.name not in firsts][: n - len(files)]
    for p in files:
        shutil.copy(p, folder / p.name)
    return folder


def read_predictions(run: Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    import csv

    out: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[(row["file"], row["model"])].append((row["class_index"], row["probability"]))
    return dict(out)


def test_evaluate_decodes_each_photo_once_for_three_models(tmp_path, monkeypatch):
    """Three models, one decode per photo (two for the fox terrier and the owl; the old
    per-model passes decoded each 3 times); each model's predictions (top-5 classes, order
    and probabilities) and errors are its own single-model run's."""
    from cnnlab.tasks.evaluate import EvaluateConfig, evaluate

    folder = photo_folder(tmp_path)
    settings = {"workers": 0, "explain": False, "report": False, "engine": "torch"}
    opened = count_decodes(monkeypatch)
    together = evaluate(EvaluateConfig(path=str(folder), models=LITES, **settings),
                        Reporter(quiet=True), out=tmp_path / "together")
    assert dict(opened) == expected_decodes(p.name for p in folder.iterdir())
    assert [m["n_images"] for m in together["models"]] == [6, 6, 6]
    assert all(m["seconds"] > 0 for m in together["models"])
    rows = read_predictions(tmp_path / "together")
    for name, one in zip(LITES, together["models"], strict=True):
        alone = evaluate(EvaluateConfig(path=str(folder), models=(name,), **settings),
                         Reporter(quiet=True), out=tmp_path / name)
        assert {f: top for (f, m), top in rows.items() if m == name} == {
            f: top for (f, _), top in read_predictions(tmp_path / name).items()}
        (single,) = alone["models"]
        assert (one["top1_error"], one["top5_error"]) == (single["top1_error"],
                                                          single["top5_error"])


def lab_like(n_per_class: int = 10) -> tuple[list[Path], list[int]]:
    """The lab's shape (k = 8 training + 2 validation photos per class, BENCHMARKS.md's
    few-shot protocol) from hymenoptera's train/: the first 10 ants and 10 bees by name, one of
    them (ants/0013035.jpg, 768 x 512) decoded twice."""
    from conftest import data_path

    root = data_path("hymenoptera", "train")
    paths, targets = [], []
    for target, name in enumerate(("ants", "bees")):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() == ".jpg")
        paths += files[:n_per_class]
        targets += [target] * n_per_class
    return paths, targets


def test_backbone_scoring_decodes_each_photo_once_and_scores_as_before(tmp_path, monkeypatch):
    """`--model auto`'s scoring on a lab-like folder: one decode per photo for the three
    candidates (two for 0013035.jpg), the features of each in its own cache under its own key
    (a per-net pass finds them all), and the very table the per-net passes (one backbone at a
    time, the old path) give: the same choice, log-losses and accuracies."""
    from cnnlab.models.backbone_choice import best_of, frozen_features, score_backbones
    from cnnlab.models.head_fit import cross_validate, n_folds

    paths, targets = lab_like()
    quiet = Reporter(quiet=True)
    opened = count_decodes(monkeypatch)
    rows = score_backbones([(name, None) for name in LITES], paths, targets, 2, quiet,
                           workers=0)
    assert dict(opened) == {p.name: 2 if p.name == "0013035.jpg" else 1 for p in paths}
    cached = [frozen_features(name, None, paths, quiet, device="cpu", workers=0,
                              draft=True) for name in LITES]
    assert [f.computed for f in cached] == [0, 0, 0]

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "per-net"))  # computed again, per net
    per_net = {}
    for name, from_cache in zip(LITES, cached, strict=True):
        feats = frozen_features(name, None, paths, quiet, device="cpu", workers=0, draft=True)
        assert feats.computed == len(paths)
        assert torch.allclose(feats.rows, from_cache.rows, rtol=1e-5, atol=1e-6)
        y = torch.tensor(targets)
        per_net[name] = min(cross_validate(feats.rows, y, 2, n_folds(y), 0),
                            key=lambda r: r["cv_log_loss"])
    for row in rows:
        assert row["cv_log_loss"] == pytest.approx(per_net[row["backbone"]]["cv_log_loss"],
                                                   rel=1e-4)
        assert row["cv_accuracy"] == per_net[row["backbone"]]["cv_accuracy"]
        assert row["l2"] == per_net[row["backbone"]]["l2"]
    assert best_of(rows) == min(per_net, key=lambda n: per_net[n]["cv_log_loss"])
    json.dumps(rows)  # the table backbone_choice.json keeps
