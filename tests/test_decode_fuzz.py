"""Decoder fuzzing: damaged real image files are scored or skipped with a reason, never more.

Property-based (hypothesis): real files in each format that `cnnlab evaluate` reads (JPEG
photos, the hymenoptera GIF, and a real photo re-encoded as PNG and WebP by Pillow) are
truncated, bit-flipped, overwritten and spliced into each other. `load_image` must return a
finite tensor of the model's shape or raise `BadImage` with a one-line reason: any other
exception is a crash of a whole run, and a hang is caught by a watchdog that ends the test
process. Real decompression bombs (small files that decode to hundreds of megapixels) are
refused before any pixel is decoded.

Bounded: a fixed number of examples per property, a per-example deadline, no example database
written to disk.
"""

from __future__ import annotations

import faulthandler
import io
import struct
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from cnnlab.data.decode import BadImage, load_image
from cnnlab.data.preprocess import Preprocess
from conftest import data_path

SMALL = Preprocess(40, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),  # one decode of a <= 500 px image takes ~10 ms idle
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
WATCHDOG_S = 300  # a decoder stuck in C cannot be interrupted: end the process, with tracebacks


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _reencode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    """Real files, one or more per format."""
    photos = data_path("imagenet-samples")
    ants = data_path("hymenoptera", "train", "ants")
    jpeg = (photos / "n01440764_tench.JPEG").read_bytes()  # 500 x 375 baseline JPEG
    with Image.open(io.BytesIO(jpeg)) as im:
        small = im.convert("RGB").resize((120, 90))
    return {
        "jpeg": jpeg,
        "jpeg-progressive": _reencode(small, "JPEG", quality=85, progressive=True),
        "gif": (ants / "imageNotFound.gif").read_bytes(),  # a real GIF from the data set
        "png": _reencode(small, "PNG"),
        "png-palette": _reencode(small.quantize(64), "PNG", transparency=0),
        "webp": _reencode(small, "WEBP", quality=80),
        "webp-lossless": _reencode(small, "WEBP", lossless=True),
    }


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _mutate(data: bytes, other: bytes, draw) -> bytes:
    """One damage, or a few, of the kinds files really suffer."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "splice", "insert"]))
        n = len(data)
        if n == 0:
            break
        at = draw(st.integers(0, n - 1))
        if kind == "truncate":  # an interrupted download or copy
            data = data[:at]
        elif kind == "flip":  # bit rot, a bad sector
            for pos in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)):
                data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":  # a block of garbage
            junk = draw(st.binary(min_size=1, max_size=64))
            data[at : at + len(junk)] = junk
        elif kind == "splice":  # the head of one file, the tail of another
            cut = draw(st.integers(0, len(other)))
            data = data[:at] + other[cut:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def _check(path: Path, draft: bool) -> str:
    """Scored (a finite tensor of the right shape) or skipped (BadImage, one-line reason)."""
    try:
        x = load_image(path, SMALL, draft=draft)
    except BadImage as exc:
        assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 200, exc.reason
        return "skipped"
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    return "scored"


FORMATS = ["jpeg", "jpeg-progressive", "gif", "png", "png-palette", "webp", "webp-lossless"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_intact_seeds_are_scored(seeds, fuzz_dir, fmt):
    path = fuzz_dir / f"intact-{fmt}"
    path.write_bytes(seeds[fmt])
    assert _check(path, draft=True) == "scored"


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_are_scored_or_skipped_never_crash(seeds, fuzz_dir, fmt):
    outcomes = []

    @FUZZ
    @given(data=st.data(), draft=st.booleans())
    def damaged(data, draft):
        other = seeds[data.draw(st.sampled_from(FORMATS))]
        content = _mutate(seeds[fmt], other, data.draw)
        path = fuzz_dir / f"damaged-{fmt}"  # the extension does not matter: content does
        path.write_bytes(content)
        outcomes.append(_check(path, draft))

    damaged()
    # The fuzzing exercised both outcomes, not only one path.
    assert "skipped" in outcomes, fmt
    assert len(outcomes) >= 20


def _png_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height black 1-bit pixels: ~50 kB on disk, many megapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 14_000])  # 100 MP (Pillow warns), 196 MP (it raises)
def test_a_real_decompression_bomb_is_refused_not_decoded(tmp_path, monkeypatch, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(side, side))
    assert bomb.stat().st_size < 100_000
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # a real, valid image: without the limit Pillow decodes it
    try:
        with Image.open(bomb) as im:
            im.load()
            assert im.size == (side, side) and im.mode == "1" and im.getextrema() == (0, 0)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    loads = []
    original = ImageFile.ImageFile.load

    def spy(self, *args, **kwargs):
        loads.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(BadImage, match="decompression bomb"):
        load_image(bomb, SMALL)
    assert loads == []  # refused from the header: no pixel decoded


def test_pillow_errors_other_than_oserror_are_skipped_too(seeds, fuzz_dir):
    """Found by fuzzing: a PNG whose IHDR chunk claims 5 bytes instead of 13 makes Pillow raise
    ValueError (not OSError) from Image.open; it must be skipped like any corrupt file."""
    png = bytearray(seeds["png"])
    assert png[8:16] == b"\0\0\0\rIHDR"
    png[11] = 5
    with pytest.raises(ValueError, match="Truncated IHDR"):
        Image.open(io.BytesIO(bytes(png)))
    path = fuzz_dir / "ihdr.png"
    path.write_bytes(bytes(png))
    assert _check(path, draft=True) == "skipped"
