"""Train / validation / test splits of a labelled photo folder, for transfer learning.

Two layouts (`load_splits`):

  split folders   DATA/train/<class>/*   DATA/val/<class>/* (or valid/, validation/)
                  DATA/test/<class>/*    -- val and test are each optional
  one folder      DATA/<class>/*         -- split stratified by `fractions` with `seed`

Inside each split folder, labels are found by `data.folders.discover` (class sub-folders or a
labels.csv), with its bad-file policy. A val or test folder may also be flat, each file named after
its class, as the lab's test folder was: `capacitor_12.jpg`, `mica_capacitor_3.jpg`. Its label is
the longest training class name that prefixes the file's stem at a boundary (`label_by_prefix`).

Missing parts, and what is tested then (a test error is never measured on data that chose the
model: the validation set picks the best epoch and stops training early, so it is not held out):
  no val folder   validation is carved off train, stratified (`val_fraction`, `seed`);
  no test folder  the val folder becomes the held-out test set and validation is carved off
                  train as above (hymenoptera: train/ + val/ -> test = val/, 153 photos);
  neither         one folder layout: train/val/test = `fractions` of each class.
A `val_fraction` of 0 (or a 0 in `fractions`' middle) trains without validation: every epoch
runs and the last one is kept.

The result records where each part came from (`sources`) and is saved with the run
(`to_json` / `from_json`), so a resumed or compared run uses exactly the same photos.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cnnlab.data.folders import LabelledImage, Skipped, discover
from cnnlab.errors import CnnlabError

PARTS = ("train", "val", "test")
VAL_NAMES = ("val", "valid", "validation")  # accepted names of the validation folder
TEST_NAMES = ("test",)
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)  # one-folder layout: train / val / test
DEFAULT_VAL_FRACTION = 0.2  # share of train carved into validation when there is no val folder
MIN_TRAIN_PER_CLASS = 2  # a class with one training photo cannot be learnt or stratified
SPLIT_SCHEMA = "cnnlab.split/1"

# Characters that may follow a class name in a flat folder's file stem: `capacitor_12`,
# `capacitor-12`, `capacitor 12`, `capacitor12`, `capacitor`.
BOUNDARY = frozenset("_- ")


@dataclass(frozen=True)
class DatasetSplit:
    """The photos of each part, labelled with training class names (sorted)."""

    root: Path
    layout: str  # "split folders" | "one folder"
    classes: tuple[str, ...]
    train: tuple[LabelledImage, ...]
    val: tuple[LabelledImage, ...]
    test: tuple[LabelledImage, ...]
    sources: dict[str, str]  # part -> where its photos come from, in words
    seed: int
    skipped: tuple[Skipped, ...] = ()
    fractions: tuple[float, float, float] | None = None  # one-folder layout only
    val_fraction: float | None = None  # when validation was carved off train

    def part(self, name: str) -> tuple[LabelledImage, ...]:
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}")
        return getattr(self, name)

    def targets(self, name: str) -> list[int]:
        """Class indices of a part's photos, in its order."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[it.label] for it in self.part(name)]

    def counts(self) -> dict[str, int]:
        return {f"n_{p}": len(self.part(p)) for p in PARTS}

    def without(self, bad: dict[Path, str]) -> DatasetSplit:
        """The same split with the photos in `bad` (path -> reason) dropped and reported, then
        checked again: dropping unreadable files may leave a class or a part too small."""
        if not bad:
            return self
        dropped = [Skipped(_rel(p, self.root), r) for p, r in sorted(bad.items())]
        out = replace(
            self,
            train=tuple(it for it in self.train if it.path not in bad),
            val=tuple(it for it in self.val if it.path not in bad),
            test=tuple(it for it in self.test if it.path not in bad),
            skipped=self.skipped + tuple(dropped),
        )
        check_split(out, after_decoding=True)
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild the split; paths relative to `root`."""
        return {
            "schema": SPLIT_SCHEMA,
            "root": str(self.root.resolve()),
            "layout": self.layout,
            "seed": self.seed,
            "fractions": list(self.fractions) if self.fractions else None,
            "val_fraction": self.val_fraction,
            "classes": list(self.classes),
            "sources": self.sources,
            **{p: [[_rel(it.path, self.root), it.label] for it in self.part(p)] for p in PARTS},
            "skipped": [{"file": s.path, "reason": s.reason} for s in self.skipped],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], root: str | Path | None = None) -> DatasetSplit:
        """The split saved by `to_json`; `root` overrides the saved folder (data moved)."""
        if data.get("schema") != SPLIT_SCHEMA:
            raise CnnlabError(f"not a cnnlab split file (schema {data.get('schema')!r})")
        base = Path(root) if root is not None else Path(data["root"])
        parts = {
            p: tuple(LabelledImage(base / rel, label) for rel, label in data[p]) for p in PARTS
        }
        missing = [it.path for p in PARTS for it in parts[p] if not it.path.exists()]
        if missing:
            raise CnnlabError(
                f"{len(missing)} photo(s) of the saved split are gone, e.g. {missing[0]}; "
                "the data changed since the run started"
            )
        return cls(
            root=base,
            layout=data["layout"],
            classes=tuple(data["classes"]),
            train=parts["train"],
            val=parts["val"],
            test=parts["test"],
            sources=dict(data["sources"]),
            seed=int(data["seed"]),
            skipped=tuple(Skipped(s["file"], s["reason"]) for s in data.get("skipped", [])),
            fractions=tuple(data["fractions"]) if data.get("fractions") else None,
            val_fraction=data.get("val_fraction"),
        )


# ------------------------------------------------------------------------- the flat-folder rule


def label_by_prefix(stem: str, classes: tuple[str, ...] | list[str]) -> str | None:
    """The class a flat folder's file stem names, or None.

    The longest class name that prefixes `stem` and is followed by a boundary (`_`, `-`, a space,
    a digit, or the end of the stem); compared case-insensitively, an exact-case match winning a
    tie. With classes `resistor` and `resistor_array`, `resistor_array_2` is `resistor_array`
    and `resistor_2` is `resistor`; `mica_capacitor_3` is never `capacitor` (no prefix), and
    `capacitors_1` is not `capacitor` (no boundary). The lab's rule was `startswith`, which
    labels `resistor_array_2` as whichever class it tried first.
    """
    folded = stem.casefold()
    best: list[str] = []
    for name in classes:
        key = name.casefold()
        if not key or not folded.startswith(key):
            continue
        rest = folded[len(key):]
        if rest and not (rest[0] in BOUNDARY or rest[0].isdigit()):
            continue
        if not best or len(key) > len(best[0].casefold()):
            best = [name]
        elif len(key) == len(best[0].casefold()):
            best.append(name)
    if len(best) == 1:
        return best[0]
    exact = [b for b in best if stem.startswith(b)]
    return exact[0] if len(exact) == 1 else None


# ----------------------------------------------------------------------------- stratification


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def stratified_split(
    items: list[LabelledImage] | tuple[LabelledImage, ...],
    fractions: tuple[float, float, float],
    seed: int,
) -> tuple[list[LabelledImage], list[LabelledImage], list[LabelledImage]]:
    """Split each class's photos into train / val / test by `fractions`, reproducibly.

    Per class (photos sorted by path): shuffled by a generator seeded with (seed, class name), so
    a class's split does not change when another class is added; val and test take
    round-half-up(n x fraction) photos each, train the rest. Each part is returned sorted by path.
    """
    by_class: dict[str, list[LabelledImage]] = {}
    for it in sorted(items, key=lambda it: str(it.path)):
        by_class.setdefault(it.label, []).append(it)
    train: list[LabelledImage] = []
    val: list[LabelledImage] = []
    test: list[LabelledImage] = []
    _, f_val, f_test = fractions
    for label in sorted(by_class):
        members = list(by_class[label])
        random.Random(f"cnnlab-split:{seed}:{label}").shuffle(members)
        n = len(members)
        n_val = _round_half_up(n * f_val)
        n_test = min(_round_half_up(n * f_test), n - n_val)
        val += members[:n_val]
        test += members[n_val : n_val + n_test]
        train += members[n_val + n_test :]
    return tuple(sorted(p, key=lambda it: str(it.path)) for p in (train, val, test))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ layouts


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _subfolders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _one_of(found: dict[str, Path], names: tuple[str, ...], root: Path) -> Path | None:
    """The folder among `names` that exists (case-insensitive); two of them is ambiguous."""
    hits = [p for name, p in found.items() if name.lower() in names]
    if len(hits) > 1:
        listed = " and ".join(f"{p.name}/" for p in hits)
        raise CnnlabError(f"{root} holds both {listed}; keep one validation folder")
    return hits[0] if hits else None


def _discover_part(folder: Path, part: str, root: Path) -> tuple[list[LabelledImage], list[Skipped],
                                                                   str]:
    try:
        found = discover(folder)
    except CnnlabError as exc:
        raise CnnlabError(f"{part} split ({_rel(folder, root)}/): {exc}") from None
    prefix = _rel(folder, root)
    skipped = [Skipped(f"{prefix}/{s.path}", s.reason) for s in found.skipped]
    return list(found.items), skipped, found.label_source


def _label_flat(items: list[LabelledImage], classes: tuple[str, ...], folder: Path,
                root: Path) -> list[LabelledImage]:
    """A flat folder's files labelled by the class name their stem starts with."""
    labelled, unmatched = [], []
    for it in items:
        label = label_by_prefix(it.path.stem.strip(), classes)
        if label is None:
            unmatched.append(it.path.name)
        else:
            labelled.append(LabelledImage(it.path, label))
    if unmatched:
        shown = ", ".join(repr(n) for n in unmatched[:3])
        more = f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else ""
        raise CnnlabError(
            f"{_rel(folder, root)}/ is a flat folder labelled by file name, but "
            f"{len(unmatched)} file(s) start with no training class name followed by '_', '-', "
            f"a space or a digit: {shown}{more} (training classes: {_class_list(classes)})"
        )
    return labelled


def _class_list(classes: tuple[str, ...] | list[str], limit: int = 12) -> str:
    shown = ", ".join(classes[:limit])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > limit else "")


def _checked_labels(items: list[LabelledImage], classes: tuple[str, ...], part: str,
                    folder: Path, root: Path) -> None:
    unknown = Counter(it.label for it in items if it.label not in classes)
    if unknown:
        shown = ", ".join(f"{name!r} ({n} photo{'s' * (n != 1)})"
                          for name, n in sorted(unknown.items())[:5])
        raise CnnlabError(
            f"{_rel(folder, root)}/ ({part}) has class(es) that train/ does not: {shown}; "
            f"training classes: {_class_list(classes)}"
        )


def check_split(ds: DatasetSplit, after_decoding: bool = False) -> None:
    """One clear error for each split that cannot train or test a classifier."""
    when = " after dropping unreadable files" if after_decoding else ""
    classes_in_train = sorted({it.label for it in ds.train})
    if not ds.train:
        raise CnnlabError(f"the training split is empty{when} ({ds.sources['train']})")
    if len(classes_in_train) < 2:
        raise CnnlabError(
            f"only one class ({classes_in_train[0]!r}) in the training split{when}: a classifier "
            "needs at least two classes (one sub-folder per class)"
        )
    counts = Counter(it.label for it in ds.train)
    few = sorted((c, n) for c, n in counts.items() if n < MIN_TRAIN_PER_CLASS)
    missing = [c for c in ds.classes if c not in counts]
    if missing:
        few = sorted([*few, *((c, 0) for c in missing)])
    if few:
        shown = ", ".join(f"{c!r} ({n})" for c, n in few[:5])
        hint = (" (add photos, or give the training split a larger share)"
                if ds.layout == "one folder" or ds.val_fraction else " (add photos to train/)")
        raise CnnlabError(
            f"class(es) with fewer than {MIN_TRAIN_PER_CLASS} training photos{when}: "
            f"{shown}{hint}"
        )
    if not ds.test:
        raise CnnlabError(
            f"the test split is empty{when} ({ds.sources['test']}); give it photos or a larger "
            "share"
        )
    wants_val = ds.val_fraction != 0 and not (ds.fractions and ds.fractions[1] == 0)
    if wants_val and not ds.val:
        raise CnnlabError(
            f"the validation split is empty{when} ({ds.sources['val']}); give it photos or a "
            "larger share (a share of 0 trains without validation)"
        )


def load_splits(
    root: str | Path,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
) -> DatasetSplit:
    """Find the layout under `root` and return its checked train / val / test split.

    `fractions` (train, val, test) applies to the one-folder layout; `val_fraction` to a
    split-folder layout without a validation folder (or whose val folder becomes the test set).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise CnnlabError(f"folder not found: {root}")
    if not root.is_dir():
        raise CnnlabError(f"not a folder: {root} (give the folder that holds the photos)")
    check_fractions(fractions, val_fraction)
    sub = _subfolders(root)
    train_dir = _one_of(sub, ("train",), root)
    val_dir = _one_of(sub, VAL_NAMES, root)
    test_dir = _one_of(sub, TEST_NAMES, root)
    if train_dir is None:
        if val_dir is not None or test_dir is not None:
            found = ", ".join(f"{p.name}/" for p in (val_dir, test_dir) if p is not None)
            raise CnnlabError(
                f"{root} has {found} but no train/ folder (expected train/<class>/*.jpg)"
            )
        return _one_folder(root, fractions, seed)
    return _split_folders(root, train_dir, val_dir, test_dir, sub, val_fraction, seed)


def check_fractions(fractions: tuple[float, float, float], val_fraction: float) -> None:
    if len(fractions) != 3 or any(not (0 <= f <= 1) for f in fractions):
        raise CnnlabError(
            f"--split needs three shares train,val,test between 0 and 1, e.g. 0.6,0.2,0.2; got "
            f"{','.join(str(f) for f in fractions)}"
        )
    if abs(sum(fractions) - 1) > 1e-6:
        raise CnnlabError(f"--split shares must add up to 1, not {sum(fractions):g}")
    if fractions[0] == 0 or fractions[2] == 0:
        raise CnnlabError("--split: the train and test shares must be above 0")
    if not 0 <= val_fraction < 1:
        raise CnnlabError(f"--val-fraction must be in [0, 1), not {val_fraction}")


def _one_folder(root: Path, fractions: tuple[float, float, float], seed: int) -> DatasetSplit:
    found = discover(root)
    if found.label_source == "filename":
        raise CnnlabError(
            f"{root} holds no class sub-folders: expected {root}/<class>/*.jpg, or "
            "train/ (and val/, test/) folders of class sub-folders"
        )
    train, val, test = stratified_split(found.items, fractions, seed)
    classes = tuple(sorted({it.label for it in found.items}))
    shares = "/".join(f"{f:g}" for f in fractions)
    where = f"stratified {shares} split of {root.name}/ (seed {seed})"
    ds = DatasetSplit(
        root=root,
        layout="one folder",
        classes=classes,
        train=tuple(train),
        val=tuple(val),
        test=tuple(test),
        sources={p: where for p in PARTS},
        seed=seed,
        skipped=tuple(found.skipped),
        fractions=tuple(fractions),  # type: ignore[arg-type]
    )
    check_split(ds)
    return ds


def _split_folders(root: Path, train_dir: Path, val_dir: Path | None, test_dir: Path | None,
                   sub: dict[str, Path], val_fraction: float, seed: int) -> DatasetSplit:
    train, skipped, source = _discover_part(train_dir, "train", root)
    if source == "filename":
        raise CnnlabError(
            f"{_rel(train_dir, root)}/ must hold one sub-folder per class "
            f"({_rel(train_dir, root)}/<class>/*.jpg) or a labels.csv; file names label only "
            "val/ and test/ folders"
        )
    classes = tuple(sorted({it.label for it in train}))
    parts: dict[str, list[LabelledImage]] = {}
    for part, folder in (("val", val_dir), ("test", test_dir)):
        if folder is None:
            continue
        items, more, source = _discover_part(folder, part, root)
        if source == "filename":
            items = _label_flat(items, classes, folder, root)
        _checked_labels(items, classes, part, folder, root)
        parts[part] = items
        skipped += more
    for name, folder in sub.items():
        if folder not in (train_dir, val_dir, test_dir):
            skipped.append(Skipped(f"{name}/", "not a split folder (expected train/, val/, test/)"))

    sources = {"train": f"{train_dir.name}/"}
    carve = None
    if test_dir is not None:
        test = parts["test"]
        sources["test"] = f"{test_dir.name}/"
        if val_dir is not None:
            val = parts["val"]
            sources["val"] = f"{val_dir.name}/"
        else:
            carve = val_fraction
    else:
        if val_dir is None:
            raise CnnlabError(
                f"{train_dir.name}/ has no val/ or test/ beside it: give a test/ folder, or put "
                f"the class folders directly in {root} to split them with --split"
            )
        # No test folder: the val folder is held out as the test set and never chooses the
        # model; validation (best epoch, early stopping) comes from train instead.
        test = parts["val"]
        sources["test"] = f"{val_dir.name}/ (held out as the test set: there is no test/ folder)"
        carve = val_fraction
    if carve is not None:
        train, val, _ = stratified_split(train, (1 - carve, carve, 0.0), seed)
        if carve > 0:
            sources["train"] = f"{train_dir.name}/ less the validation photos"
            sources["val"] = f"{carve:g} of {train_dir.name}/, stratified (seed {seed})"
        else:
            sources["val"] = "none (validation share 0: every epoch runs, the last is kept)"
    ds = DatasetSplit(
        root=root,
        layout="split folders",
        classes=classes,
        train=tuple(train),
        val=tuple(val),
        test=tuple(test),
        sources=sources,
        seed=seed,
        skipped=tuple(skipped),
        val_fraction=carve,
    )
    check_split(ds)
    return ds
