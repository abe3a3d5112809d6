"""Train / val / test splits: every layout, the flat-folder label rule, every bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.folders import LabelledImage
from cnnlab.data.splits import DatasetSplit, label_by_prefix, load_splits, stratified_split
from cnnlab.errors import CnnlabError


def img(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def tree(root: Path, spec: dict[str, int]) -> Path:
    """spec: 'train/cat' -> number of photos to create in that folder."""
    for folder, n in spec.items():
        for i in range(n):
            img(root / folder / f"{i:03d}.png", seed=i)
    return root


def names(items) -> list[str]:
    return [f"{it.path.parent.name}/{it.path.name}:{it.label}" for it in items]


# ------------------------------------------------------------------------- the flat-folder rule


LAB = ("capacitor", "mica_capacitor", "resistor", "resistor_array", "diode")


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("resistor_array_2", "resistor_array"),  # the longest class wins...
        ("resistor_2", "resistor"),  # ...and a shorter one still matches its own files
        ("resistor", "resistor"),  # end of the stem is a boundary
        ("resistor12", "resistor"),  # a digit is a boundary
        ("resistor-7", "resistor"),
        ("resistor (3)", "resistor"),  # a space is a boundary: "Save as" copies
        ("mica_capacitor_3", "mica_capacitor"),
        ("capacitor_12", "capacitor"),
        ("Capacitor_12", "capacitor"),  # case-insensitive
        ("resistors_1", None),  # no boundary after "resistor": not a resistor
        ("resistor_arrays", "resistor"),  # "resistor_array" lacks a boundary; "resistor" has one
        ("transistor_1", None),
        ("diodes", None),
        ("", None),
    ],
)
def test_label_by_prefix(stem, expected):
    assert label_by_prefix(stem, LAB) == expected


def test_label_by_prefix_never_takes_a_class_inside_another_name():
    # The lab's own trap: `mica_capacitor_3.jpg` must not count as a capacitor, even when
    # mica_capacitor is not a class at all.
    assert label_by_prefix("mica_capacitor_3", ("capacitor", "diode")) is None


def test_label_by_prefix_exact_case_breaks_a_case_tie():
    assert label_by_prefix("Cat_1", ("cat", "Cat")) == "Cat"
    assert label_by_prefix("CAT_1", ("cat", "Cat")) is None  # ambiguous: no guess


def test_flat_test_folder_labelled_by_longest_prefix(tmp_path):
    tree(tmp_path, {"train/resistor": 2, "train/resistor_array": 2, "train/capacitor": 2,
                    "train/mica_capacitor": 2, "val/resistor": 1, "val/resistor_array": 1,
                    "val/capacitor": 1, "val/mica_capacitor": 1})
    for stem in ("resistor_array_2", "resistor_2", "mica_capacitor_3", "capacitor_12"):
        img(tmp_path / "test" / f"{stem}.jpg")
    ds = load_splits(tmp_path)
    labels = {it.path.stem: it.label for it in ds.test}
    assert labels == {"resistor_array_2": "resistor_array", "resistor_2": "resistor",
                      "mica_capacitor_3": "mica_capacitor", "capacitor_12": "capacitor"}
    assert ds.sources["test"] == "test/"


def test_flat_folder_with_an_unknown_class_is_one_error(tmp_path):
    tree(tmp_path, {"train/capacitor": 2, "train/diode": 2})
    img(tmp_path / "test" / "capacitor_1.jpg")
    img(tmp_path / "test" / "mica_capacitor_3.jpg")
    with pytest.raises(CnnlabError, match=r"1 file\(s\).*'mica_capacitor_3.jpg'.*capacitor, diode"):
        load_splits(tmp_path)


# ------------------------------------------------------------------------------------ layouts


def test_three_split_folders_are_used_as_they_are(tmp_path):
    tree(tmp_path, {"train/a": 3, "train/b": 2, "val/a": 1, "val/b": 1, "test/a": 2, "test/b": 1})
    ds = load_splits(tmp_path)
    assert ds.layout == "split folders"
    assert ds.classes == ("a", "b")
    assert ds.counts() == {"n_train": 5, "n_val": 2, "n_test": 3}
    assert ds.targets("test") == [0, 0, 1]
    assert ds.sources == {"train": "train/", "val": "val/", "test": "test/"}


@pytest.mark.parametrize("val_name", ["valid", "validation", "Val"])
def test_other_names_of_the_validation_folder(tmp_path, val_name):
    tree(tmp_path, {"train/a": 2, "train/b": 2, f"{val_name}/a": 1, f"{val_name}/b": 1,
                    "test/a": 1, "test/b": 1})
    ds = load_splits(tmp_path)
    assert len(ds.val) == 2 and ds.sources["val"] == f"{val_name}/"


def test_no_val_folder_carves_validation_off_train(tmp_path):
    tree(tmp_path, {"train/a": 10, "train/b": 5, "test/a": 1, "test/b": 1})
    ds = load_splits(tmp_path, val_fraction=0.2, seed=3)
    # round-half-up per class: a 10 x 0.2 = 2, b 5 x 0.2 = 1
    assert Counter(it.label for it in ds.val) == {"a": 2, "b": 1}
    assert Counter(it.label for it in ds.train) == {"a": 8, "b": 4}
    assert not {it.path for it in ds.val} & {it.path for it in ds.train}
    assert ds.sources["val"] == "0.2 of train/, stratified (seed 3)"


def test_no_test_folder_holds_out_the_val_folder_as_test(tmp_path):
    """hymenoptera's layout: test error is measured on val/, which never chooses the model."""
    tree(tmp_path, {"train/a": 10, "train/b": 10, "val/a": 3, "val/b": 4})
    ds = load_splits(tmp_path, val_fraction=0.2)
    assert [it.path.parent.parent.name for it in ds.test] == ["val"] * 7
    assert all(it.path.parent.parent.name == "train" for it in ds.val)
    assert len(ds.val) == 4 and len(ds.train) == 16
    assert "held out as the test set" in ds.sources["test"]


def test_val_fraction_zero_trains_without_validation(tmp_path):
    tree(tmp_path, {"train/a": 4, "train/b": 4, "val/a": 1, "val/b": 1})
    ds = load_splits(tmp_path, val_fraction=0.0)
    assert ds.val == () and len(ds.train) == 8 and len(ds.test) == 2
    assert ds.sources["val"].startswith("none")


def test_one_folder_is_split_stratified_and_reproducibly(tmp_path):
    tree(tmp_path, {"cat": 10, "dog": 20})
    ds = load_splits(tmp_path, fractions=(0.6, 0.2, 0.2), seed=7)
    assert ds.layout == "one folder"
    for part, want in (("train", {"cat": 6, "dog": 12}), ("val", {"cat": 2, "dog": 4}),
                       ("test", {"cat": 2, "dog": 4})):
        assert Counter(it.label for it in ds.part(part)) == want
    all_paths = [it.path for p in ("train", "val", "test") for it in ds.part(p)]
    assert len(set(all_paths)) == 30  # a partition: nothing lost, nothing twice
    again = load_splits(tmp_path, fractions=(0.6, 0.2, 0.2), seed=7)
    assert names(again.test) == names(ds.test)
    other = load_splits(tmp_path, fractions=(0.6, 0.2, 0.2), seed=8)
    assert names(other.test) != names(ds.test)


def test_a_class_split_does_not_depend_on_other_classes():
    def items(classes):
        return [LabelledImage(Path(f"/d/{c}/{i}.jpg"), c) for c in classes for i in range(10)]

    _, _, test_ab = stratified_split(items(["a", "b"]), (0.6, 0.2, 0.2), seed=1)
    _, _, test_abc = stratified_split(items(["a", "b", "c"]), (0.6, 0.2, 0.2), seed=1)
    assert [it for it in test_ab if it.label == "a"] == [it for it in test_abc if it.label == "a"]


def test_split_round_trips_through_json(tmp_path):
    tree(tmp_path / "data", {"cat": 5, "dog": 5})
    ds = load_splits(tmp_path / "data", seed=2)
    saved = json.loads(json.dumps(ds.to_json()))
    back = DatasetSplit.from_json(saved)
    assert (back.train, back.val, back.test, back.classes) == (ds.train, ds.val, ds.test,
                                                               ds.classes)
    (tmp_path / "data" / ds.test[0].path.relative_to(tmp_path / "data")).unlink()
    with pytest.raises(CnnlabError, match="gone"):
        DatasetSplit.from_json(saved)


def test_extra_folders_beside_the_splits_are_reported_not_used(tmp_path):
    tree(tmp_path, {"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1, "old/a": 3})
    ds = load_splits(tmp_path, val_fraction=0)
    assert any(s.path == "old/" for s in ds.skipped)
    assert all("old" not in it.path.parts for p in ("train", "val", "test") for it in ds.part(p))


def test_without_drops_unreadable_files_and_checks_again(tmp_path):
    tree(tmp_path, {"train/a": 3, "train/b": 2, "test/a": 1, "test/b": 1})
    ds = load_splits(tmp_path, val_fraction=0)
    first_a = ds.train[0].path
    smaller = ds.without({first_a: "truncated image"})
    assert len(smaller.train) == 4 and smaller.skipped[-1].reason == "truncated image"
    b = [it.path for it in ds.train if it.label == "b"]
    with pytest.raises(CnnlabError, match=r"after dropping unreadable files.*'b' \(1\)"):
        ds.without({b[0]: "corrupt"})


@pytest.mark.slow
def test_hymenoptera_layout(shared_data):
    root = shared_data("hymenoptera")
    ds = load_splits(root, val_fraction=0.2, seed=0)
    assert ds.classes == ("ants", "bees")
    # val/ (70 ants, 83 bees) is the held-out test set; validation is 0.2 of train/: 124 ants
    # (123 photos + imageNotFound.gif, a valid image) -> 25, 121 bees -> 24.
    assert Counter(it.label for it in ds.test) == {"ants": 70, "bees": 83}
    assert Counter(it.label for it in ds.val) == {"ants": 25, "bees": 24}
    assert Counter(it.label for it in ds.train) == {"ants": 99, "bees": 97}


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ({"train/a": 2, "train/b": 2, "test/a": 1, "test/c": 1}, None,
         r"test/ \(test\) has class\(es\) that train/ does not: 'c' \(1 photo\)"),
        ({"train/a": 2, "train/b": 2, "val/a": 1, "val/zebra": 2, "test/a": 1}, None,
         r"val/ \(val\) has class\(es\).*'zebra' \(2 photos\)"),
        ({"train/a": 2, "train/b": 1, "test/a": 1, "test/b": 1}, None,
         r"fewer than 2 training photos: 'b' \(1\)"),
        ({"a": 3, "b": 10}, None, r"fewer than 2 training photos: 'a' \(1\)"),  # 3 -> 1/1/1
        ({"train/a": 4, "test/a": 1}, None, r"only one class \('a'\)"),
        ({"a": 10}, None, r"only one class \('a'\)"),
        ({"train/a": 2, "train/b": 2}, "test", r"test split \(test/\).*empty"),
        ({"train/a": 2, "train/b": 2}, "test-txt", r"test split \(test/\).*no usable images"),
        ({"train/a": 2, "train/b": 2}, None, r"no val/ or test/"),
        ({"test/a": 2, "test/b": 2}, None, r"has test/ but no train/"),
        ({"train/a": 2, "train/b": 2, "val/a": 1, "valid/a": 1, "test/a": 1}, None,
         r"both val/ and valid/"),
        ({}, "flat-train", r"train/ must hold one sub-folder per class"),
        ({}, "flat-root", r"no class sub-folders"),
    ],
)
def test_bad_layouts_are_one_clear_error(tmp_path, spec, extra, message):
    tree(tmp_path, spec)
    if extra == "test":
        (tmp_path / "test").mkdir()
    elif extra == "test-txt":
        (tmp_path / "test").mkdir()
        (tmp_path / "test" / "notes.txt").write_text("x")
    elif extra == "flat-train":
        img(tmp_path / "train" / "a_1.png")
        img(tmp_path / "test" / "a_2.png")
    elif extra == "flat-root":
        img(tmp_path / "a_1.png")
    with pytest.raises(CnnlabError, match=message):
        load_splits(tmp_path)


def test_val_becomes_test_but_then_validation_is_empty(tmp_path):
    tree(tmp_path, {"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1})
    # 2 x 0.2 rounds to 0 per class: no validation photo at all.
    with pytest.raises(CnnlabError, match="validation split is empty"):
        load_splits(tmp_path, val_fraction=0.2)


@pytest.mark.parametrize(
    ("fractions", "val_fraction", "message"),
    [
        ((0.6, 0.2, 0.1), 0.2, "add up to 1"),
        ((0.8, 0.2, 0.0), 0.2, "train and test shares must be above 0"),
        ((1.2, -0.1, -0.1), 0.2, "between 0 and 1"),
        ((0.6, 0.2, 0.2), 1.0, "val-fraction"),
    ],
)
def test_bad_shares(tmp_path, fractions, val_fraction, message):
    tree(tmp_path, {"a": 5, "b": 5})
    with pytest.raises(CnnlabError, match=message):
        load_splits(tmp_path, fractions=fractions, val_fraction=val_fraction)


def test_missing_folder(tmp_path):
    with pytest.raises(CnnlabError, match="folder not found"):
        load_splits(tmp_path / "nope")
