"""Labelled photo folders: find the images and their labels.

Where labels come from (`discover`), in this order of preference when `labels="auto"`:

1. class sub-folders: `ROOT/<label>/**/*.jpg`;
2. a CSV of `file,label` rows (`ROOT/labels.csv`, or an explicit file); paths relative to ROOT;
3. the file name itself: `volcano.jpg` -> "volcano", `n01440764_tench.JPEG` -> "n01440764_tench".

Files that are not images (by extension) are skipped here, with their reason; files that fail to
decode are the business of `data/decode.py`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError

# Lower-case suffixes Pillow decodes that photo folders actually hold.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
LABEL_SOURCES = ("auto", "folders", "csv", "filename")
DEFAULT_CSV = "labels.csv"


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str  # raw label string, as found (folder name, CSV cell, file stem)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    items: list[LabelledImage]
    skipped: list[Skipped]
    label_source: str  # "folders" | "csv" | "filename"





def label_from_filename(name: str) -> str:
    """The label a file name carries: its stem. 'great_white_shark_2.png' -> 'great_white_shark_2'.

    Counters (`_2`, ` (1)`) are kept here and dropped by label resolution (`data.imagenet`),
    which tries the label as written first, so a name is never cut short by mistake.
    """
    return Path(name).stem.strip()


def _is_hidden(path: Path, root: Path) -> bool:
    # .DS_Store, .ipynb_checkpoints/, .git/: tool litter, not data; ignored rather than reported.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _walk(folder: Path, root: Path, skipped: list[Skipped]) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by path (deterministic across file systems).

    Symbolic links to folders are followed, once each (a link cycle would otherwise recurse
    forever); a folder that cannot be listed is reported in `skipped`, not silently dropped.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        where = _rel(Path(err.filename), root) if err.filename else str(folder)
        skipped.append(Skipped(where, f"cannot read folder ({err.strerror or err})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(p for p in found if not _is_hidden(p, root))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _classify(path: Path, root: Path, label: str, items: list, skipped: list) -> None:
    """Append to items or skipped: a non-image or a dangling link is skipped with its reason."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        kind = f"'{path.suffix}'" if path.suffix else "no extension"
        skipped.append(Skipped(_rel(path, root), f"not an image file ({kind})"))
    elif not path.exists():
        skipped.append(Skipped(_rel(path, root), "broken symbolic link"))
    elif not label:
        skipped.append(Skipped(_rel(path, root), "empty label"))
    else:
        items.append(LabelledImage(path, label))


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_images(folder: Path) -> bool:
    """Whether any image file lies somewhere under `folder` (stops at the first one)."""
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            return True
    return False


def _from_folders(root: Path) -> Discovery:
    items: list[LabelledImage] = []
    skipped: list[Skipped] = []
    for path in _walk(root, root, skipped):
        if path.parent == root:
            skipped.append(Skipped(path.name, "not inside a class sub-folder"))
        else:
            _classify(path, root, path.relative_to(root).parts[0], items, skipped)
    return Discovery(items, skipped, "folders")


def _from_filenames(root: Path) -> Discovery:
    items: list[LabelledImage] = []
    skipped: list[Skipped] = []
    for path in _walk(root, root, skipped):
        _classify(path, root, label_from_filename(path.name), items, skipped)
    return Discovery(items, skipped, "filename")


def _from_csv(root: Path, csv_path: Path) -> Discovery:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"cannot read labels file {csv_path}: {exc}") from exc
    items: list[LabelledImage] = []
    skipped: list[Skipped] = []
    listed: set[Path] = set()
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < 2:
            skipped.append(Skipped(f"{csv_path.name}:{lineno}", "expected 'file,label'"))
            continue
        name, label = row[0].strip(), row[1].strip()
        if lineno == 1 and name.lower() in {"file", "filename", "path", "image"}:
            continue  # header row
        # normpath: "./a.jpg" and "a.jpg" are one file (not resolve(): keep symlinked names).
        path = Path(os.path.normpath(Path(name) if Path(name).is_absolute() else root / name))
        if path in listed:
            skipped.append(Skipped(_rel(path, root), f"listed twice in {csv_path.name}"))
            continue
        listed.add(path)
        if not path.exists() and not path.is_symlink():
            skipped.append(Skipped(_rel(path, root), f"listed in {csv_path.name} but not found"))
            continue
        _classify(path, root, label, items, skipped)
    # Images beside the CSV that it does not name are reported, so none is dropped silently.
    for path in _walk(root, root, skipped):
        path = Path(os.path.normpath(path))
        if (path not in listed and path != csv_path
                and path.suffix.lower() in IMAGE_EXTENSIONS):
            skipped.append(Skipped(_rel(path, root), f"no label: not listed in {csv_path.name}"))
    items.sort(key=lambda it: it.path)
    return Discovery(items, skipped, "csv")


def discover(root: Path, labels: str = "auto", csv_path: Path | None = None) -> Discovery:
    """Find the labelled images under `root`.

    labels: "auto" | "folders" | "csv" | "filename". auto: an explicit `csv_path` if given, else
    class sub-folders if there are any, else `root/labels.csv` if present, else file names.
    Raises CnnlabError for a missing or empty folder, or when it holds no usable image.
    """
    if labels not in LABEL_SOURCES:
        choices = ", ".join(LABEL_SOURCES)
        raise CnnlabError(f"unknown label source {labels!r}; choose one of {choices}")
    root = Path(root).expanduser()
    if not root.exists():
        raise CnnlabError(f"folder not found: {root}")
    if not root.is_dir():
        raise CnnlabError(f"not a folder: {root} (give the folder that holds the photos)")
    try:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    except PermissionError as exc:
        raise CnnlabError(f"cannot read folder {root}: permission denied") from exc
    if not entries:
        raise CnnlabError(f"folder is empty: {root}")
    if csv_path is not None:
        csv_path = Path(csv_path).expanduser()
        if not csv_path.is_file():
            raise CnnlabError(f"labels file not found: {csv_path}")

    source = labels
    if labels == "auto":
        # An explicit CSV is the user's stated intent, so it wins over folder structure.
        if csv_path is not None:
            source = "csv"
        elif any(_holds_images(d) for d in _class_folders(root)):
            # Only sub-folders with images count: an empty "thumbs/" beside flat photos does not
            # turn a file-name folder into a class-folder one.
            source = "folders"
        elif (root / DEFAULT_CSV).is_file():
            source = "csv"
        else:
            source = "filename"

    if source == "folders":
        if not _class_folders(root):
            raise CnnlabError(f"no class sub-folders in {root} (expected {root}/<label>/*.jpg)")
        found = _from_folders(root)
    elif source == "csv":
        path = csv_path if csv_path is not None else root / DEFAULT_CSV
        if not path.is_file():
            raise CnnlabError(f"labels file not found: {path} (expected rows 'file,label')")
        found = _from_csv(root, path)
    else:
        found = _from_filenames(root)

    if not found.items:
        detail = ""
        if found.skipped:
            first = found.skipped[0]
            detail = f"; {len(found.skipped)} file(s) skipped, e.g. {first.path}: {first.reason}"
        raise CnnlabError(
            f"no usable images in {root} (labels from {found.label_source}){detail}"
        )
    return found
