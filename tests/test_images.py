"""Labelled photo folders: discovery, exact decoding (oracle: torchvision), and every bad input.

Each bad file is made here in tmp_path; the real data is used through the `shared_data` fixture.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.batching import ImageDataset, collate_images
from cnnlab.data.decode import BadImage, load_image
from cnnlab.data.folders import (
    IMAGE_EXTENSIONS,
    LabelledImage,
    Skipped,
    discover,
    label_from_filename,
)
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError

IMAGENET = Preprocess(256, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# EfficientNet-Lite1 as timm configures it: 240 crop, crop_pct 0.882 -> 272, bicubic, [-1, 1].
LITE1 = Preprocess(272, 240, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Small sizes keep the synthetic-file tests fast; the resize + crop path is the same.
SMALL = Preprocess(40, 32, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
LARGEST_SAMPLE = "n03109150_corkscrew.JPEG"  # 1200 x 1600, the largest of the 250 samples


def torchvision_reference(path: Path, p: Preprocess) -> torch.Tensor:
    """The oracle: torchvision's own eval preset on Pillow's RGB conversion."""
    from torchvision import transforms as T

    tf = T.Compose([
        T.Resize(p.resize_size, interpolation=T.InterpolationMode(p.interpolation), antialias=True),
        T.CenterCrop(p.crop_size),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])
    with Image.open(path) as im:
        return tf(im.convert("RGB"))


def save(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, **kw)
    return path


def photo(size=(64, 48)) -> Image.Image:
    """A smooth RGB test card (a plain gradient, so resizing is well defined)."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    arr = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but holds none: the classic bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def pixels(t: torch.Tensor) -> np.ndarray:
    """Back from a SMALL-preprocessed tensor (mean 0, std 1) to HWC 0..255 values."""
    return (t.permute(1, 2, 0).numpy() * 255).round()


# ---------------------------------------------------------------------------------------------
# Discovery


def test_label_from_filename():
    assert label_from_filename("great_white_shark_2.png") == "great_white_shark_2"
    assert label_from_filename("n01440764_tench.JPEG") == "n01440764_tench"
    assert label_from_filename("bighorn.JPG") == "bighorn"
    assert label_from_filename("tench (1).jpg") == "tench (1)"


def test_extensions_are_lower_case_and_cover_the_usual_formats():
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_discover_class_folders_on_hymenoptera(shared_data):
    root = shared_data("hymenoptera", "train")
    found = discover(root)
    assert found.label_source == "folders"
    assert len(found.items) == 124 + 121  # the README's 123 ants + the placeholder gif, 121 bees
    assert {it.label for it in found.items} == {"ants", "bees"}
    assert sum(it.label == "ants" for it in found.items) == 124
    assert all(it.path.parent.name == it.label for it in found.items)
    assert found.items == sorted(found.items, key=lambda it: it.path)
    assert discover(root) == found  # deterministic
    assert discover(root, labels="folders") == found


def test_discover_file_names_on_imagenet_samples(shared_data):
    root = shared_data("imagenet-samples")
    found = discover(root)
    assert found.label_source == "filename" and found.skipped == []
    assert len(found.items) == 250
    assert found.items[0] == LabelledImage(root / "n01440764_tench.JPEG", "n01440764_tench")
    assert [it.path.name for it in found.items] == sorted(p.name for p in root.iterdir())


def test_discover_csv_pointing_at_real_files(tmp_path, shared_data):
    samples = shared_data("imagenet-samples")
    chosen = sorted(samples.iterdir())[:3]
    rows = ["file,label"] + [f"{p},{p.stem.split('_', 1)[1]}" for p in chosen]
    rows += [f"{samples / 'missing.jpg'},volcano", "only-one-column", "", f"{chosen[0]},again"]
    (tmp_path / "labels.csv").write_text("\ufeff" + "\n".join(rows) + "\n")  # with a BOM
    save(tmp_path / "unlisted.png", photo())
    (tmp_path / "notes.txt").write_text("not listed, not an image: ignored")

    found = discover(tmp_path)  # auto: no sub-folders, labels.csv present
    assert found.label_source == "csv"
    assert [(it.path, it.label) for it in found.items] == [
        (p, p.stem.split("_", 1)[1]) for p in chosen
    ]
    reasons = {s.reason for s in found.skipped}
    assert "listed in labels.csv but not found" in reasons
    assert "expected 'file,label'" in reasons
    assert "listed twice in labels.csv" in reasons
    assert Skipped("unlisted.png", "no label: not listed in labels.csv") in found.skipped
    # An explicit CSV elsewhere, paths relative to the root folder.
    other = tmp_path / "elsewhere.csv"
    other.write_text(f"{chosen[1].name},tench\n")
    found = discover(samples, labels="auto", csv_path=other)
    assert found.label_source == "csv"
    assert found.items == [LabelledImage(chosen[1], "tench")]
    assert len(found.skipped) == 249  # every other sample is reported as unlabelled


def test_discover_skips_non_images_and_loose_files(tmp_path):
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "deep").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden: tool litter, ignored
    save(tmp_path / "dog" / "b.jpg", photo())
    save(tmp_path / "dog" / "deep" / "a.png", photo())
    save(tmp_path / ".ipynb_checkpoints" / "x.jpg", photo())
    (tmp_path / "dog" / "readme.txt").write_text("hi")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "dog" / "LICENSE").write_text("x")
    save(tmp_path / "loose.jpg", photo())
    (tmp_path / "dog" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "dog" / "deep" / "loop").symlink_to(tmp_path / "dog")  # a link cycle

    found = discover(tmp_path)
    assert found.label_source == "folders"
    assert [it.path.relative_to(tmp_path).as_posix() for it in found.items] == [
        "dog/b.jpg", "dog/deep/a.png"]  # the cycle is walked once
    assert {s.path: s.reason for s in found.skipped} == {
        "dog/readme.txt": "not an image file ('.txt')",
        "dog/LICENSE": "not an image file (no extension)",
        "dog/gone.jpg": "broken symbolic link",
        "loose.jpg": "not inside a class sub-folder",
    }
    assert discover(tmp_path, labels="folders") == found
    by_name = discover(tmp_path, labels="filename")
    assert sorted(it.label for it in by_name.items) == ["a", "b", "loose"]


def test_auto_ignores_sub_folders_without_images(tmp_path):
    (tmp_path / "thumbs").mkdir()  # empty
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    save(tmp_path / "beagle.jpg", photo())
    found = discover(tmp_path)
    assert found.label_source == "filename"
    assert found.items == [LabelledImage(tmp_path / "beagle.jpg", "beagle")]
    assert found.skipped == [Skipped("notes/todo.txt", "not an image file ('.txt')")]


def test_csv_paths_are_normalised(tmp_path):
    save(tmp_path / "a.png", photo())
    (tmp_path / "labels.csv").write_text("./a.png,tench\na.png,beagle\n")
    found = discover(tmp_path)
    assert found.items == [LabelledImage(tmp_path / "a.png", "tench")]
    assert found.skipped == [Skipped("a.png", "listed twice in labels.csv")]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing", "folder not found"),
        (lambda d: d, "folder is empty"),
        (lambda d: (d / ".hidden").write_text("x") and d, "folder is empty"),
        (lambda d: (d / "a.txt").write_text("x") and d, "no usable images"),
        (lambda d: save(d / "x.png", photo()), "not a folder"),
    ],
)
def test_discover_errors(tmp_path, setup, message):
    root = setup(tmp_path)
    with pytest.raises(CnnlabError, match=message):
        discover(root)


def test_discover_explicit_source_errors(tmp_path):
    save(tmp_path / "tench.jpg", photo())
    with pytest.raises(CnnlabError, match="no class sub-folders"):
        discover(tmp_path, labels="folders")
    with pytest.raises(CnnlabError, match="labels file not found"):
        discover(tmp_path, labels="csv")
    with pytest.raises(CnnlabError, match="labels file not found"):
        discover(tmp_path, csv_path=tmp_path / "nope.csv")
    with pytest.raises(CnnlabError, match="unknown label source"):
        discover(tmp_path, labels="magic")


# ---------------------------------------------------------------------------------------------
# Decoding: exactness against torchvision


@pytest.mark.parametrize("preprocess", [IMAGENET, LITE1], ids=["bilinear-224", "bicubic-240"])
def test_load_image_equals_torchvision_eval_transform(shared_data, preprocess):
    root = shared_data("imagenet-samples")
    # The largest photo, a portrait one, and a grayscale JPEG (L -> RGB through convert).
    for name in (LARGEST_SAMPLE, "n01440764_tench.JPEG", "n04090263_rifle.JPEG"):
        ours = load_image(root / name, preprocess, draft=False)
        ref = torchvision_reference(root / name, preprocess)
        assert ours.dtype == torch.float32
        assert ours.shape == ref.shape == (3, preprocess.crop_size, preprocess.crop_size)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)  # bit for bit


def timm_reference(path: Path, p: Preprocess) -> torch.Tensor:
    """The oracle for timm models: timm's own eval transform for this crop mode."""
    from timm.data.transforms_factory import transforms_imagenet_eval

    tf = transforms_imagenet_eval(
        img_size=p.crop_size, crop_pct=p.crop_size / p.resize_size, crop_mode=p.crop_mode,
        interpolation=p.interpolation, mean=p.mean, std=p.std,
    )
    with Image.open(path) as im:
        return tf(im.convert("RGB"))


def _crop_mode_cases():
    # crop_pct 1.0 (timm's squash / border models) and 0.875; Lite-style [-1, 1] normalisation
    # makes the border fill round(255 * 0.5) = 128, ImageNet's (124, 116, 104).
    for mode in ("center", "squash", "border"):
        yield Preprocess(224, 224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), mode)
        yield Preprocess(256, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                         mode)


@pytest.mark.parametrize("preprocess", list(_crop_mode_cases()),
                         ids=lambda p: f"{p.crop_mode}-{p.interpolation}-{p.resize_size}")
def test_crop_modes_equal_timms_eval_transform(tmp_path, shared_data, preprocess):
    """Bit for bit against timm.data.transforms_imagenet_eval, on real photos (a portrait and a
    landscape one) and on synthetic ones of extreme shapes, where squash and border differ most
    from center (and border pads)."""
    real = shared_data("imagenet-samples")
    files = [real / LARGEST_SAMPLE, real / "n01440764_tench.JPEG"]
    for size in ((300, 90), (90, 300), (500, 499)):
        files.append(save(tmp_path / f"{size[0]}x{size[1]}.png", photo(size)))
    for path in files:
        ours = load_image(path, preprocess, draft=False)
        ref = timm_reference(path, preprocess)
        assert ours.shape == ref.shape == (3, 224, 224)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0, msg=lambda m, p=path: f"{p}: {m}")


def test_crop_modes_differ_where_they_should(tmp_path):
    """A wide picture: squash keeps its full width (squeezed), border pads top and bottom with
    the mean colour, center cuts the sides off."""
    path = save(tmp_path / "wide.png", photo((300, 100)))
    base = dict(resize_size=32, crop_size=32, interpolation="bilinear",
                mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    out = {m: load_image(path, Preprocess(**base, crop_mode=m), draft=False)
           for m in ("center", "squash", "border")}
    border = out["border"]
    # Long side 300 -> 32, short 100 -> round(10.67) = 11 rows of picture, 21 of padding;
    # padding is the mean colour, i.e. (128 / 255 - 0.5) / 1 after normalisation.
    def is_fill(t):
        return bool(((t - (128 / 255 - 0.5)).abs() < 1e-6).all())

    assert is_fill(border[:, :10]) and is_fill(border[:, -11:])
    assert not is_fill(border[:, 10:21])
    # Red runs 0..255 left to right: squash and border see the whole width, center only the
    # middle third.
    red = {m: float(t[0, 16, 0] + 0.5) for m, t in out.items()}
    assert red["squash"] < 0.05 and red["border"] < 0.05 and red["center"] > 0.25
    with pytest.raises(ValueError, match="crop_mode"):
        Preprocess(**base, crop_mode="stretch")


def test_timm_crop_mode_is_read_from_its_pretrained_cfg():
    import timm

    from cnnlab.models.pretrained import preprocess_from_timm, timm_pretrained_spec

    squash = timm_pretrained_spec("coat_lite_medium_384")
    assert timm.models.get_pretrained_cfg("coat_lite_medium_384").crop_mode == "squash"
    assert squash is not None and squash.preprocess.crop_mode == "squash"
    assert squash.preprocess.resize_size == squash.preprocess.crop_size == 384  # crop_pct 1.0
    assert timm_pretrained_spec("resnet18").preprocess.crop_mode == "center"
    cfg = {"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "border",
           "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    assert preprocess_from_timm(cfg).crop_mode == "border"
    assert preprocess_from_timm({**cfg, "crop_mode": None, "crop_pct": None}) == Preprocess(
        256, 224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center")


def test_draft_with_squash_and_border_keeps_both_sides_large_enough(tmp_path):
    """Draft decoding in the other crop modes still only shrinks in the final resize."""
    path = save(tmp_path / "big.jpg", photo((1600, 400)), quality=95)
    for mode in ("squash", "border"):
        p = Preprocess(100, 100, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), mode)
        drafted = load_image(path, p, draft=True)
        full = load_image(path, p, draft=False)
        assert drafted.shape == full.shape == (3, 100, 100)
        assert (drafted - full).abs().mean() < 0.05, mode


def test_draft_decode_stays_close_and_only_for_large_jpegs(shared_data):
    """Draft decoding: JPEG's DCT-domain 1/2, 1/4, 1/8 scaling replaces the first part of the
    shrink, so pixels differ a little from a full decode (the DCT reduction is a box-like filter,
    then the antialiased resize finishes): measured on the 1200x1600 sample, mean |diff| 0.04
    and max |diff| 0.6 in normalised units (about 2 and 35 of 255 grey levels, the max at sharp
    edges). A photo already near the model's size is decoded in full, identically."""
    root = shared_data("imagenet-samples")
    big = root / LARGEST_SAMPLE
    ref = torchvision_reference(big, IMAGENET)
    drafted = load_image(big, IMAGENET, draft=True)
    diff = (drafted - ref).abs()
    print(f"draft vs full decode, {LARGEST_SAMPLE}: max |diff| {diff.max():.3f}, "
          f"mean {diff.mean():.4f} (normalised units)")
    assert 0 < diff.max() < 1.0
    assert diff.mean() < 0.08
    # Same content: the drafted image is far closer to its own reference than to another photo.
    other = torchvision_reference(root / "n01440764_tench.JPEG", IMAGENET)
    assert diff.mean() * 5 < (drafted - other).abs().mean()
    # 500x375: short side < 2 x 256, nothing to gain, so no draft and no difference.
    small = root / "n01440764_tench.JPEG"
    assert torch.equal(load_image(small, IMAGENET, draft=True), load_image(small, IMAGENET,
                                                                           draft=False))


def test_draft_keeps_the_short_side_at_least_the_resize_size(tmp_path, monkeypatch):
    path = save(tmp_path / "big.jpg", photo((2000, 1100)), quality=90)
    seen = []
    real_load = Image.Image.load

    def spy(self):
        seen.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    load_image(path, IMAGENET, draft=True)
    decoded = seen[0]
    # 1100 / 256 = 4.3 -> Pillow picks the 1/4 scale: 500 x 275, short side still >= 256.
    assert decoded == (500, 275)
    assert min(decoded) >= IMAGENET.resize_size


# ---------------------------------------------------------------------------------------------
# Decoding: every kind of awkward but valid image


def test_cmyk_jpeg(tmp_path):
    path = save(tmp_path / "cmyk.jpg", photo().convert("CMYK"), quality=95)
    assert Image.open(path).mode == "CMYK"
    ours = load_image(path, SMALL)
    torch.testing.assert_close(ours, torchvision_reference(path, SMALL), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_grayscale_bilevel_palette(tmp_path, mode):
    path = save(tmp_path / f"{mode}.png", photo().convert(mode))
    assert Image.open(path).mode == mode
    ours = load_image(path, SMALL)
    assert ours.shape == (3, 32, 32)
    torch.testing.assert_close(ours, torchvision_reference(path, SMALL), rtol=0, atol=0)
    if mode != "P":
        assert torch.equal(ours[0], ours[1]) and torch.equal(ours[1], ours[2])  # grey stays grey


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    # Left half opaque red, right half fully transparent *black* (what sits under transparency).
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)
    image = Image.fromarray(rgba)
    if mode == "LA":
        image = image.convert("LA")
    path = tmp_path / f"{mode}.png"
    if mode == "PA":
        # Palette with a transparent entry (Pillow reads it as P + "transparency").
        image = image.convert("RGB").quantize(2)
        alpha_index = image.getpixel((39, 0))
        save(path, image, transparency=alpha_index)
    else:
        save(path, image)
    px = pixels(load_image(path, Preprocess(40, 40, "bilinear", (0, 0, 0), (1, 1, 1))))
    left = (255, 0, 0) if mode != "LA" else (76, 76, 76)  # LA: ITU-R 601 luma of red = 76
    assert tuple(px[20, 5]) == left
    assert tuple(px[20, 35]) == (255, 255, 255)  # white, not the black stored under alpha 0


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path, mode):
    levels = np.array([0, 257 * 64, 257 * 128, 65535], dtype=np.uint16)
    arr = np.repeat(np.repeat(levels[None, :], 8, axis=0), 8, axis=1)  # 8 x 32, four bands
    image = Image.fromarray(arr)
    if mode == "I":
        image = image.convert("I")
    path = save(tmp_path / "deep.png" if mode == "I;16" else tmp_path / "deep.tif", image)
    p = Preprocess(8, 8, "bilinear", (0, 0, 0), (1, 1, 1))
    px = load_image(path, p)
    assert px.shape == (3, 8, 8)
    # The short side is already 8 (no resize); the centre crop keeps columns 12..19, i.e. the
    # bands 64 and 128 (Pillow's own convert("RGB") would clip every level above 255 to white).
    got = pixels(px)[0, :, 0]
    assert sorted(set(got.tolist())) == [64.0, 128.0]


def test_crop_larger_than_resize_pads_like_torchvision(tmp_path):
    path = save(tmp_path / "wide.png", photo((60, 30)))
    p = Preprocess(20, 24, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # crop > short side
    torch.testing.assert_close(load_image(path, p), torchvision_reference(path, p),
                               rtol=0, atol=0)


def test_extreme_aspect_ratio_is_refused(tmp_path):
    path = save(tmp_path / "strip.png", Image.new("RGB", (5000, 2)))
    with pytest.raises(BadImage, match="extreme aspect ratio"):
        load_image(path, SMALL)


def test_animated_gif_uses_the_first_frame(tmp_path):
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    blue = Image.new("RGB", (40, 40), (0, 0, 255))
    path = save(tmp_path / "anim.gif", red, save_all=True, append_images=[blue], duration=100)
    assert Image.open(path).n_frames == 2
    px = pixels(load_image(path, SMALL))
    assert (px == (255, 0, 0)).all()


def test_exif_rotation_is_applied(tmp_path):
    # A landscape photo stored with "rotate 90" (orientation 6) is portrait when viewed.
    image = photo((60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "rotated.jpg", image, exif=exif, quality=95)
    upright = save(tmp_path / "upright.jpg", image.transpose(Image.Transpose.ROTATE_270),
                   quality=95)
    p = Preprocess(40, 40, "bilinear", (0, 0, 0), (1, 1, 1))
    assert (load_image(path, p) - load_image(upright, p)).abs().mean() < 0.02


def test_corrupt_exif_still_loads_quietly(tmp_path):
    """A broken EXIF block spoils metadata, not pixels: the image loads, and Pillow's
    "Corrupt EXIF data" warning stays inside load_image (a folder of them would flood the log)."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG", quality=95)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 30
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    path = tmp_path / "bad-exif.jpg"
    path.write_bytes(buf.getvalue()[:2] + app1 + buf.getvalue()[2:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping load_image fails the test
        px = pixels(load_image(path, Preprocess(30, 30, "bilinear", (0, 0, 0), (1, 1, 1))))
    assert np.abs(px - (200, 10, 10)).max() <= 3  # JPEG rounding


def test_the_hymenoptera_placeholder_gif_is_a_valid_image(shared_data):
    """`imageNotFound.gif` is a real, decodable 300x300 GIF showing "We're sorry, this image
    could not be found": a wrong picture, not a broken file. Decoding cannot tell, so it is
    scored (and misclassified) like any photo; this test pins that honest behaviour."""
    path = shared_data("hymenoptera", "train", "ants", "imageNotFound.gif")
    out = load_image(path, IMAGENET)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, torchvision_reference(path, IMAGENET), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Bad files: each raises BadImage with a short reason


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    photo((200, 150)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


BAD_FILES = {
    "zero-byte.jpg": (b"", "empty file (0 bytes)"),
    "truncated.jpg": (_jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated image"),
    "random.jpg": (np.random.default_rng(0).bytes(4096), "not an image"),
    "notes.txt": (b"just some text\n", "not an image"),
    "bomb.png": (png_header_only(30_000, 30_000), "decompression bomb"),  # > 2x Pillow's limit
    "mild-bomb.png": (png_header_only(10_000, 10_000), "decompression bomb"),  # warning range
    "bad-header.png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_raises_bad_image_with_reason(tmp_path, name):
    content, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImage) as info:
        load_image(path, SMALL)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason and len(info.value.reason) < 120


def test_missing_file(tmp_path):
    with pytest.raises(BadImage, match="file not found"):
        load_image(tmp_path / "gone.jpg", SMALL)


def run_unprivileged(fn):
    """`fn()` as an ordinary user, so that chmod 000 really denies access: in this process when
    it is not root, else in a forked child that drops to uid/gid 65534 ("nobody") after the
    imports are warm (CI runs as root, and root reads anything). The kernel's own permission
    check, not a mock. Returns ("ok", value) or ("raise", exception type name, message)."""
    def call():
        try:
            return ("ok", fn())
        except Exception as exc:
            return ("raise", type(exc).__name__, str(getattr(exc, "reason", exc)))

    if os.geteuid() != 0:
        return call()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root for good, run, report through the pipe, exit at once
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, pickle.dumps(call()))
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and chunks, "unprivileged child failed"
    return pickle.loads(b"".join(chunks))


@pytest.fixture
def open_dir():
    """A temporary folder every user can enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="cnnlab-perm-"))
    path.chmod(0o755)
    yield path
    for p in path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(path)


def test_unreadable_file(open_dir):
    path = save(open_dir / "locked.jpg", photo())
    good = save(open_dir / "good.jpg", photo())
    load_image(good, SMALL)  # warm Pillow's lazily imported plugins before dropping root
    path.chmod(0)
    assert run_unprivileged(lambda: load_image(path, SMALL)) == (
        "raise", "BadImage", "cannot read file: permission denied"
    )
    assert run_unprivileged(lambda: tuple(load_image(good, SMALL).shape))[1] == (3, 32, 32)


def test_unreadable_class_folder_is_reported(open_dir):
    for name in ("ok", "locked"):
        (open_dir / name).mkdir()
        save(open_dir / name / "a.png", photo())
        (open_dir / name).chmod(0o755)
    (open_dir / "locked").chmod(0)
    found = run_unprivileged(lambda: discover(open_dir))
    assert found[0] == "ok", found
    assert [it.label for it in found[1].items] == ["ok"]
    assert found[1].skipped == [Skipped("locked", "cannot read folder (Permission denied)")]


def test_unlistable_folder_is_reported_even_as_root(tmp_path, monkeypatch):
    """The os.walk error path of the test above, reachable as root (unit test, one mock)."""
    for name in ("ok", "locked"):
        (tmp_path / name).mkdir()
        save(tmp_path / name / "a.png", photo())
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover(tmp_path)
    assert [it.label for it in found.items] == ["ok"]
    assert found.skipped == [Skipped("locked", "cannot read folder (Permission denied)")]


def test_permission_error_is_reported(tmp_path, monkeypatch):
    """The same path as chmod 000, reachable when the tests run as root (unit test, one mock)."""
    path = save(tmp_path / "locked.jpg", photo())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(BadImage, match="permission denied"):
        load_image(path, SMALL)


def test_no_global_state_leaks(tmp_path):
    """The bomb check must not change Pillow's limit or the caller's warning filters."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(10_000, 10_000))
    from PIL import ImageFile

    limit = Image.MAX_IMAGE_PIXELS
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        before = list(warnings.filters)
        with pytest.raises(BadImage):
            load_image(bomb, SMALL)
        load_image(save(tmp_path / "ok.png", photo()), SMALL)
        assert warnings.filters == before
    assert limit == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated


# ---------------------------------------------------------------------------------------------
# A folder of everything: the good images still load, each bad one is reported


def test_mixed_folder_through_a_worker_dataloader(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (content, _) in BAD_FILES.items():
        (folder / name).write_bytes(content)
    save(folder / "good-rgb.jpg", photo(), quality=95)
    save(folder / "good-cmyk.jpg", photo().convert("CMYK"), quality=95)
    save(folder / "good-gray.png", photo().convert("L"))
    save(folder / "good-alpha.png", photo().convert("RGBA"))

    found = discover(folder)
    assert found.label_source == "filename"
    assert found.skipped == [Skipped("notes.txt", "not an image file ('.txt')")]
    dataset = ImageDataset(found.items, SMALL)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2,
                                         collate_fn=dataset.collate)
    good, bad = [], {}
    for images, indices, failures in loader:
        assert images.shape == (len(indices), 3, 32, 32)
        good += [found.items[i].path.name for i in indices.tolist()]
        bad.update({found.items[i].path.name: reason for i, reason in failures})
    assert sorted(good) == ["good-alpha.png", "good-cmyk.jpg", "good-gray.png", "good-rgb.jpg"]
    assert set(bad) == set(BAD_FILES) - {"notes.txt"}
    for name, reason in bad.items():
        assert BAD_FILES[name][1] in reason


def test_collate_images():
    a, b = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    images, indices, bad = collate_images([(a, 0, None), (None, 1, "broken"), (b, 2, None)])
    assert torch.equal(images, torch.stack([a, b]))
    assert indices.dtype == torch.long and indices.tolist() == [0, 2]
    assert bad == [(1, "broken")]
    images, indices, bad = collate_images([(None, 5, "x")], shape=(3, 2, 2))
    assert images.shape == (0, 3, 2, 2) and indices.tolist() == [] and bad == [(5, "x")]
    assert collate_images([(None, 5, "x")])[0].shape == (0,)


def test_dataset_items_are_indexed_and_never_raise(tmp_path):
    good = save(tmp_path / "a.png", photo())
    empty = tmp_path / "b.jpg"
    empty.write_bytes(b"")
    ds = ImageDataset([LabelledImage(good, "a"), LabelledImage(empty, "b")], SMALL)
    assert len(ds) == 2
    img, i, reason = ds[0]
    assert i == 0 and reason is None and img.shape == (3, 32, 32)
    assert ds[1] == (None, 1, "empty file (0 bytes)")


def _collate_and_report_sharing(batch):
    """Runs in the DataLoader worker: was the batch *stacked* into shared memory there? (Once it
    reaches the main process every tensor a worker sends is shared, so only the worker can
    tell the branch was taken.)"""
    images, _, _ = collate_images(batch, shape=(3, 32, 32))
    return images, images.is_shared(), torch.utils.data.get_worker_info() is not None


def test_collate_in_a_worker_stacks_into_shared_memory(tmp_path):
    """In a DataLoader worker, collate_images stacks straight into shared memory, and the batches
    equal the plain in-process stack (its memory effect is measured in
    benchmarks/eval_memory.py)."""
    items = [LabelledImage(save(tmp_path / f"{i}.png", photo()), "x") for i in range(4)]
    dataset = ImageDataset(items, SMALL)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1,
                                         collate_fn=_collate_and_report_sharing)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, 32, 32)] * 2
    assert [(shared, in_worker) for _, shared, in_worker in batches] == [(True, True)] * 2
    in_process = dataset.collate([dataset[0], dataset[1]])
    torch.testing.assert_close(batches[0][0], in_process[0], rtol=0, atol=0)
    assert not in_process[0].is_shared()  # outside a worker: ordinary memory
