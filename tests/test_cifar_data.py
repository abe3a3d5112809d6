"""CIFAR-style data: every source layout gives the same tensors, the cache is exact and keyed by
content, subsets and validation splits are stratified, and every structural mistake is one line.

Synthetic sets are PNGs (lossless, so pixel values are known exactly); the real JPEG zip is used
through the `shared_data` fixture, on a per-class subset that decodes ~100 images, not 60,000.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.cifar import (
    CifarData,
    cache_root,
    channel_stats,
    load_cifar,
    split_validation,
    stratified_indices,
    subset,
)
from cnnlab.errors import CnnlabError

CLASSES = ("cat", "dog", "frog")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


def synthetic_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def make_folder(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> dict:
    """ROOT/{train,test}/<class>/NNNN.png with random pixels; returns {split: (x NHWC, y)}."""
    per_class = per_class or {"train": 4, "test": 2}
    made = {}
    for s, split in enumerate(("train", "test")):
        xs, ys = [], []
        for label, cls in enumerate(CLASSES):
            imgs = synthetic_images(per_class[split], seed + 10 * s + label)
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(imgs):
                Image.fromarray(img).save(folder / f"{i:04d}.png")
            xs.append(imgs)
            ys += [label] * len(imgs)
        made[split] = (np.concatenate(xs), np.array(ys))
    return made


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f.relative_to(folder).as_posix())
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Every load in these tests caches under tmp_path (never under ~/.cache or ../shared)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(path))
    return path


def assert_same(a: CifarData, b: CifarData) -> None:
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.classes == b.classes
    assert a.mean == pytest.approx(b.mean) and a.std == pytest.approx(b.std)


def test_folder_pixels_labels_and_stats_are_exact(tmp_path, cache):
    made = make_folder(tmp_path / "set")
    data = load_cifar(tmp_path / "set", workers=1)
    assert data.classes == CLASSES
    for split in ("train", "test"):
        x, y = made[split]
        assert torch.equal(getattr(data, f"{split}_x"), torch.from_numpy(x).permute(0, 3, 1, 2))
        assert getattr(data, f"{split}_y").tolist() == y.tolist()
    ref = torch.from_numpy(made["train"][0]).double() / 255
    assert data.mean == pytest.approx(ref.mean(dim=(0, 1, 2)).tolist(), abs=1e-12)
    assert data.std == pytest.approx(ref.std(dim=(0, 1, 2), unbiased=False).tolist(), abs=1e-12)
    assert data.skipped == () and data.key and data.image_shape == (3, 32, 32)


def test_zip_folder_and_official_batches_give_identical_tensors(tmp_path, cache):
    made = make_folder(tmp_path / "set")
    zipped = load_cifar(zip_folder(tmp_path / "set", tmp_path / "set.zip"), cache=False)
    folder = load_cifar(tmp_path / "set", cache=False, workers=1)
    assert_same(zipped, folder)

    # The official python format: rows of 3072 bytes (R plane, G plane, B plane), pickled.
    official = tmp_path / "cifar-10-batches-py"
    official.mkdir()
    x, y = made["train"]
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for i, part in enumerate(np.array_split(np.arange(len(x)), 5), start=1):
        batch = {b"data": rows[part], b"labels": y[part].tolist()}
        (official / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    tx, ty = made["test"]
    test = {b"data": tx.transpose(0, 3, 1, 2).reshape(len(tx), -1), b"labels": ty.tolist()}
    (official / "test_batch").write_bytes(pickle.dumps(test))
    meta = {b"label_names": [c.encode() for c in CLASSES]}
    (official / "batches.meta").write_bytes(pickle.dumps(meta))
    assert_same(load_cifar(tmp_path, cache=False), folder)  # found inside its parent too
    assert_same(load_cifar(official, limit_per_class=1, cache=False),
                load_cifar(tmp_path / "set", limit_per_class=1, cache=False, workers=1))


def test_the_real_zip_matches_its_extraction(shared_data, tmp_path, cache):
    """The shared JPEG zip read in place == the same files extracted (5 per class per split)."""
    zip_path = shared_data("cifar10", "cifar10-jpg.zip")
    from_zip = load_cifar(zip_path, limit_per_class=5, cache=False, workers=2)
    assert from_zip.classes == CIFAR_CLASSES
    assert len(from_zip.train_y) == len(from_zip.test_y) == 50
    assert torch.bincount(from_zip.train_y).tolist() == [5] * 10
    with zipfile.ZipFile(zip_path) as zf:
        wanted = []
        for split in ("train", "test"):
            for cls in CIFAR_CLASSES:
                names = sorted(n for n in zf.namelist()
                               if n.startswith(f"{split}/{cls}/") and n.endswith(".jpg"))
                wanted += names[:5]
        zf.extractall(tmp_path / "extracted", members=wanted)
    assert_same(from_zip, load_cifar(tmp_path / "extracted", cache=False, workers=1))
    assert not list(zip_path.parent.glob("*.safetensors"))  # nothing written beside the data


def test_cache_is_exact_keyed_by_content_and_under_cnnlab_cache(tmp_path, cache):
    make_folder(tmp_path / "set")
    first = load_cifar(tmp_path / "set", workers=1)
    files = list((cache / "cifar").glob("*.safetensors"))
    assert [f.name for f in files] == [f"{first.key}.safetensors"]
    assert not list((tmp_path / "set").rglob("*.safetensors"))
    again = load_cifar(tmp_path / "set", workers=1)
    assert_same(first, again)
    assert again.key == first.key and again.source == first.source
    # A cached load reads the file, not the images: change the cache and the load sees it.
    assert load_cifar(tmp_path / "set", cache=False, workers=1).key == first.key

    # Same size, new content: the key changes, and the new pixels are decoded.
    img = tmp_path / "set" / "train" / "cat" / "0000.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    changed = load_cifar(tmp_path / "set", workers=1)
    assert changed.key != first.key
    assert changed.train_x[0].sum() == 0 and first.train_x[0].sum() > 0
    # A subset has its own key, and so does a zip of the same images.
    assert load_cifar(tmp_path / "set", limit_per_class=1, workers=1).key != changed.key
    zipped = load_cifar(zip_folder(tmp_path / "set", tmp_path / "set.zip"))
    assert zipped.key != changed.key
    assert len(list((cache / "cifar").glob("*.safetensors"))) == 4


def test_a_torn_cache_file_is_decoded_again(tmp_path, cache):
    make_folder(tmp_path / "set")
    data = load_cifar(tmp_path / "set", workers=1)
    path = cache / "cifar" / f"{data.key}.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert_same(load_cifar(tmp_path / "set", workers=1), data)


def test_cache_root_order(tmp_path):
    assert cache_root({"CNNLAB_CACHE": "/a", "XDG_CACHE_HOME": "/b"}) == Path("/a")
    assert cache_root({"XDG_CACHE_HOME": "/b"}) == Path("/b/cnnlab")
    assert cache_root({}) == Path.home() / ".cache" / "cnnlab"


def test_corrupt_and_wrong_size_images_are_skipped_with_reasons(tmp_path, cache):
    make_folder(tmp_path / "set")
    (tmp_path / "set" / "train" / "dog" / "zz-bad.png").write_bytes(b"not a png")
    Image.new("RGB", (31, 32)).save(tmp_path / "set" / "test" / "frog" / "zz-small.png")
    (tmp_path / "set" / "train" / "dog" / "notes.txt").write_text("ignored: not an image")
    data = load_cifar(tmp_path / "set", workers=2)
    reasons = dict(data.skipped)
    assert set(reasons) == {"train/dog/zz-bad.png", "test/frog/zz-small.png"}
    assert "cannot decode" in reasons["train/dog/zz-bad.png"]
    assert "31x32, expected 32x32" in reasons["test/frog/zz-small.png"]
    assert torch.bincount(data.train_y).tolist() == [4, 4, 4]
    assert load_cifar(tmp_path / "set", workers=1).skipped == data.skipped  # cached too


def _structure_error(tmp_path: Path, setup) -> str:
    setup(tmp_path)
    with pytest.raises(CnnlabError) as exc:
        load_cifar(tmp_path / "set", cache=False, workers=1)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_structural_mistakes_are_one_line_errors(tmp_path, cache):
    with pytest.raises(CnnlabError, match="data not found"):
        load_cifar(tmp_path / "nowhere")

    def no_test(root):
        make_folder(root / "set")
        for f in sorted((root / "set" / "test").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (root / "set" / "test").rmdir()

    assert "no test/ folder" in _structure_error(tmp_path / "a", no_test)

    def empty_class(root):
        make_folder(root / "set")
        (root / "set" / "train" / "bird").mkdir()

    assert "train/bird/ holds no images" in _structure_error(tmp_path / "b", empty_class)

    def mismatched(root):
        make_folder(root / "set")
        (root / "set" / "test" / "frog").rename(root / "set" / "test" / "toad")

    msg = _structure_error(tmp_path / "c", mismatched)
    assert "different classes" in msg and "only in train: frog" in msg and "toad" in msg

    def unknown(root):
        (root / "set" / "images").mkdir(parents=True)

    assert "unknown data layout" in _structure_error(tmp_path / "d", unknown)

    (tmp_path / "e").mkdir()
    with zipfile.ZipFile(tmp_path / "e" / "flat.zip", "w") as zf:
        zf.writestr("images/cat/0.png", b"x")
    with pytest.raises(CnnlabError, match="has no train/<class>/ images"):
        load_cifar(tmp_path / "e" / "flat.zip", cache=False)
    (tmp_path / "e" / "notes.txt").write_text("hello")
    with pytest.raises(CnnlabError, match="not a zip"):
        load_cifar(tmp_path / "e" / "notes.txt")
    with pytest.raises(CnnlabError, match="limit_per_class"):
        load_cifar(tmp_path / "e" / "flat.zip", limit_per_class=0)


def _tiny(n_per_class: int = 10, classes: int = 3) -> CifarData:
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 256, (len(y), 3, 4, 4), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    mean, std = channel_stats(x)
    return CifarData(x, y, x[::5].clone(), y[::5].clone(), tuple("abc"[:classes]), mean, std,
                     "tiny", "")


def test_channel_stats_match_a_direct_computation():
    x = torch.randint(0, 256, (9000, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(x)
    ref = x.double() / 255
    assert mean == pytest.approx(ref.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(ref.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_stratified_subset_and_validation_split():
    data = _tiny()
    idx = stratified_indices(data.train_y, per_class=4, seed=1)
    assert torch.bincount(data.train_y[idx]).tolist() == [4, 4, 4]
    assert torch.equal(idx, stratified_indices(data.train_y, per_class=4, seed=1))
    assert not torch.equal(idx, stratified_indices(data.train_y, per_class=4, seed=2))
    assert torch.bincount(data.train_y[stratified_indices(data.train_y, fraction=0.5)]).tolist() \
        == [5, 5, 5]

    small = subset(data, per_class=3)
    assert torch.bincount(small.train_y).tolist() == [3, 3, 3]
    assert torch.bincount(small.test_y).tolist() == [2, 2, 2]  # capped at what test has
    assert small.mean == pytest.approx(channel_stats(small.train_x)[0])

    split = split_validation(data, per_class=2, seed=0)
    assert torch.bincount(split.val_y).tolist() == [2, 2, 2]
    assert torch.bincount(split.train_y).tolist() == [8, 8, 8]
    assert torch.equal(split.test_x, data.test_x)  # never from test
    rows = {tuple(r.flatten().tolist()) for r in split.train_x}
    assert not any(tuple(r.flatten().tolist()) in rows for r in split.val_x)  # disjoint
    assert split.mean == pytest.approx(channel_stats(split.train_x)[0])
    assert "24 train, 6 val, 6 test" in split.describe()

    with pytest.raises(CnnlabError, match="exactly one"):
        stratified_indices(data.train_y)
    with pytest.raises(CnnlabError, match="fewer than 11"):
        stratified_indices(data.train_y, per_class=11)
    with pytest.raises(CnnlabError, match="no training images"):
        split_validation(data, fraction=1.0)


def test_load_cifar_once_in_a_world_of_one_is_load_cifar(tmp_path, cache):
    from cnnlab.data.cifar import load_cifar_once
    from cnnlab.dist import DistInfo

    make_folder(tmp_path / "set")
    assert_same(load_cifar_once(tmp_path / "set", DistInfo(), workers=1),
                load_cifar(tmp_path / "set", workers=1))


def test_first_classes_keeps_those_classes_everywhere_and_recomputes_the_stats():
    from cnnlab.data.cifar import first_classes

    data = split_validation(_tiny(), per_class=2, seed=0)
    two = first_classes(data, 2)
    assert two.classes == data.classes[:2] and two.num_classes == 2
    for split in ("train", "test", "val"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        kx, ky = getattr(two, f"{split}_x"), getattr(two, f"{split}_y")
        assert torch.equal(ky, y[y < 2]) and torch.equal(kx, x[y < 2])  # same images, in order
    assert torch.bincount(two.train_y).tolist() == [8, 8]
    assert two.mean == pytest.approx(channel_stats(two.train_x)[0])
    assert two.mean != pytest.approx(data.mean)
    assert first_classes(data, 3) is data
    with pytest.raises(CnnlabError, match="classes must be 2 to 3, not 1"):
        first_classes(data, 1)
