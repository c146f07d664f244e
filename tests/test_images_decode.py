"""embedding_core.images: data URLs, safe decoding, modes, orientation and preprocessing.

No model here: these are the pure functions, on the committed images in tests/data/images and on
small images made in memory.
"""

from __future__ import annotations

import base64
import io
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from embedding_core import errors, images
from embedding_core.settings import Settings

IMAGES = Path(__file__).resolve().parent / "data" / "images"
SYN = IMAGES / "synthetic"
T = "input[0].image"
SETTINGS = Settings.from_env({})


def data_url(data: bytes, fmt: str) -> str:
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode()


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def fails(fn, *args, status=422, code="InvalidParameter", where=T, **kw) -> errors.ApiError:
    with pytest.raises(errors.ApiError) as info:
        fn(*args, **kw)
    err = info.value
    assert (err.status, err.code, err.target) == (status, code, where), err.body()
    return err


def parse(url: str, max_bytes: int = 1 << 20):
    return images.parse_data_url(url, max_bytes=max_bytes, target=T)


def pixels(path: Path, fmt: str | None = None, **kw) -> np.ndarray:
    fmt = fmt or {"jpg": "jpeg"}.get(path.suffix[1:], path.suffix[1:])
    return images.image_to_pixel_values(data_url(path.read_bytes(), fmt), SETTINGS, 0, **kw)


# -- data URLs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, fragment", [
    ("http://example.com/cat.jpg", "scheme 'http'"),
    ("https://example.com/cat.jpg", "scheme 'https'"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://example.com/cat.png", "scheme 'ftp'"),
    ("HTTPS://EXAMPLE.COM/x.png", "scheme 'https'"),
    ("/etc/passwd", "not a URL"),
    ("aGVsbG8gd29ybGQ=", "not a URL"),             # base64, but of no image
])
def test_only_data_urls_nothing_fetched(url, fragment):
    err = fails(parse, url)
    assert fragment in err.message and "does not fetch" in err.message


@pytest.mark.parametrize("data", [
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA",   # PNG
    "/9j/4AAQSkZJRgABAQ", "R0lGODlhAQABAAAAACw=", "UklGRiQAAABXRUJQ",  # JPEG, GIF, WebP
])
def test_an_image_s_base64_without_its_data_url_prefix_is_told_to_add_it(data):
    err = fails(parse, data)
    assert err.message == ("'image' looks like base64 without its data URL prefix: send "
                           "data:image/<format>;base64,<data>, i.e. put "
                           "'data:image/<format>;base64,' before the data.")


@pytest.mark.parametrize("url, fragment", [
    ("data:text/plain;base64,aGVsbG8=", "media type"),
    ("data:;base64,aGVsbG8=", "media type"),
    ("data:image/png,rawbytes", "base64"),
    ("data:image/png;name=cat.png,aGVsbG8=", "must be base64-encoded"),   # parameters, no base64
    ("data:image/tiff;base64,SUkqAA==", "PNG, JPEG, WebP, GIF, BMP"),
    ("data:image/svg+xml;base64,PHN2Zy8+", "not supported"),
    ("data:image/png;base64,", "no image data"),
    ("data:image/png;base64", "no ','"),
])
def test_bad_data_urls(url, fragment):
    assert fragment in fails(parse, url).message


@pytest.mark.parametrize("payload", ["@@@@", "aGVsbG8=!", "aGVs\vbG8=", "a", "aGVs\u00a0bG8="])
def test_invalid_base64(payload):
    assert "base64" in fails(parse, "data:image/png;base64," + payload).message


def test_padding_and_whitespace_anywhere_are_read_as_by_the_standard_library(monkeypatch):
    """Every placement of padding, whitespace and escaped padding in short payloads: the same
    bytes or the same refusal as with the standard library's strict decoding (which this service
    used before pybase64; on Python 3.11 it accepts padding after a whole group, 'aGVs=')."""
    import binascii
    import itertools
    import types

    def outcomes() -> dict[str, object]:
        out = {}
        for n in range(1, 7):
            for parts in itertools.product(("aG", "V", "s", "=", " ", "\n", "%3D"), repeat=n):
                payload = "".join(parts)
                try:
                    out[payload] = parse("data:image/png;base64," + payload).data
                except errors.ApiError as err:
                    out[payload] = err.message
        return out

    ours = outcomes()
    monkeypatch.setattr(images, "pybase64", types.SimpleNamespace(
        b64decode=lambda s, validate: base64.b64decode(s, validate=validate)))
    assert ours == outcomes()
    try:            # accepted by Python 3.11 and 3.12 (Azure's), refused by 3.13 (excess padding)
        stdlib = binascii.a2b_base64("aGVs====", strict_mode=True)
    except binascii.Error:
        stdlib = "The image data is not valid base64 (wrong length or padding)."
    assert ours["aGVs="] == ours["aGVs=="] == ours["aG Vs\n%3D"] == stdlib


def test_base64_decodes_every_length_as_the_standard_library():
    """The SIMD decoder (pybase64) against binascii, strict, on every length from 1 to 260
    bytes and large ones, each also with one character made invalid."""
    import binascii
    import random

    rng = random.Random(3)
    for n in [*range(1, 261), 4095, 65536, 1 << 20]:
        data = rng.randbytes(n)
        b64 = base64.b64encode(data).decode()
        assert parse("data:image/png;base64," + b64, 2 << 20).data == data \
            == binascii.a2b_base64(b64, strict_mode=True)
        i = rng.randrange(len(b64))
        bad = b64[:i] + rng.choice("!-_*\u00e9") + b64[i + 1:]
        assert "not valid base64" in fails(parse, "data:image/png;base64," + bad,
                                           2 << 20).message


# What the image route's base64 decoding does, run on an emulated CPU (pybase64 picks its SIMD
# code at run time: AVX512-VBMI here, AVX2 on Haswell, SSE4.2 on Nehalem).
B64_ON_CPU = """
import base64, binascii, random, pybase64
rng, wrong = random.Random(5), 0
for n in [*range(200), 4095, 65536, 1 << 20]:
    data = rng.randbytes(n)
    b64 = base64.b64encode(data).decode()
    wrong += pybase64.b64decode(b64, validate=True) != data
    if b64:
        i = rng.randrange(len(b64))
        try:
            pybase64.b64decode(b64[:i] + "!" + b64[i + 1:], validate=True)
            wrong += 1
        except binascii.Error:
            pass
print(pybase64.get_version(), wrong)
"""


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64",
                    reason="needs qemu-x86_64 (apt-get install qemu-user) on an x86-64 host")
@pytest.mark.parametrize("cpu, simd", [("Haswell", "AVX2"), ("Nehalem", "SSE42")])
def test_base64_is_decoded_right_on_cpus_without_avx512(cpu, simd):
    run = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", B64_ON_CPU],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    version, wrong = run.stdout.rsplit(" ", 1)
    assert wrong.strip() == "0", run.stdout            # right on whatever path it took
    feature = {"AVX2": ".avx2 ", "SSE42": ".sse4.2 "}[simd]
    if f"C extension active - {simd})" not in version and f"{feature}[bit" in run.stderr:
        pytest.skip(f"this qemu cannot emulate {simd} (qemu 7.2 can)")
    assert f"C extension active - {simd})" in version, run.stdout


def test_base64_wrapped_in_lines_is_accepted_as_browsers_do():
    data = bytes(range(256)) * 3
    wrapped = base64.encodebytes(data).decode()           # 76 columns, "\n" line ends
    assert "\n" in wrapped
    assert parse("data:image/png;base64," + wrapped).data == data
    crlf = " " + wrapped.replace("\n", "\r\n\t") + "\f"
    assert parse("data:image/png;base64," + crlf).data == data
    assert "no image data" in fails(parse, "data:image/png;base64, \n ").message


def test_data_url_with_surrounding_whitespace_or_percent_encoding_is_read_as_browsers_do():
    data = bytes([0xfb, 0xff, 0xbf, 0x00]) * 4            # base64 with '+', '/' and '='
    b64 = base64.b64encode(data).decode()
    assert "+" in b64 and "/" in b64 and b64.endswith("=")
    for url in ("\n data:image/png;base64," + b64 + " \r\n", "\x00data:image/png;base64," + b64,
                "data:image/png;base64," + b64.replace("+", "%2B").replace("/", "%2f")
                .replace("=", "%3D")):
        assert parse(url).data == data, repr(url[:30])
    assert "position 4 of" in fails(parse, "data:image/png;base64,aGVs%ZZbG8=").message
    msg = fails(parse, "data:image/png;base64,aG%2BVs%ZZbG8=").message
    assert "not valid base64" in msg and "unexpected character '%'" in msg
    # positions are those of what was sent, or not given once the data was transformed
    assert "position 10 of" in fails(parse, "data:image/png;base64,AAAAAAAAAA!A").message
    msg = fails(parse, "data:image/png;base64,AAAA\nAAAA\nAA!A").message
    assert "position" not in msg and "unexpected character '!'" in msg


def test_a_body_of_percent_signs_is_decoded_in_bounded_memory():
    """A general percent-decoder makes an object per escape: 32 MB of '%' took 34 s and 6 GB.
    Only the escapes base64 can carry are decoded, by str.replace; the rest is refused. (Memory
    is asserted, not time: tracemalloc's peak is deterministic.)"""
    import tracemalloc
    for payload, outcome in (("%" * (30 << 20), "not valid base64"),
                             ("%41" * (10 << 20), "not valid base64"),
                             ("%2B" * (10 << 20), None)):             # valid: 7.5 MB
        url = "data:image/png;base64," + payload
        tracemalloc.start()
        try:
            parsed, message = parse(url, 64 << 20), None
        except errors.ApiError as err:
            parsed, message = None, err.message
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if outcome is None:                                     # '++++' is FB EF BE
            assert message is None and parsed.data == b"\xfb\xef\xbe" * (10 << 18)
        else:
            assert outcome in message
        assert peak < 200 << 20, (payload[:3], peak >> 20)


def test_url_safe_base64_is_refused_with_a_hint():
    data = bytes([0xfb, 0xff, 0xbf]) * 4                  # standard base64 "+/+/..."; url-safe "-_-_"
    msg = fails(parse, "data:image/png;base64," + base64.urlsafe_b64encode(data).decode()).message
    assert "URL-safe base64" in msg and "'+' and '/'" in msg
    mixed = base64.b64encode(data).decode() + "-A=="
    assert "URL-safe" not in fails(parse, "data:image/png;base64," + mixed).message


def test_data_url_accepts_aliases_params_and_missing_padding():
    assert parse("data:image/jpg;base64,aGVsbG8=").declared == "jpeg"
    assert parse("data:image/apng;base64,aGVsbG8=").declared == "png"
    assert parse("data:image/vnd.mozilla.apng;base64,aGVsbG8=").declared == "png"
    assert parse("DATA:IMAGE/JPEG;BASE64,aGVsbG8=").declared == "jpeg"
    assert parse("data:image/png;name=x.png;base64,aGVsbG8").data == b"hello"


def test_too_many_bytes_is_413_before_decoding(monkeypatch):
    limit = 3000
    ok = base64.b64encode(b"\0" * limit).decode()
    assert len(parse("data:image/png;base64," + ok, limit).data) == limit
    over = base64.b64encode(b"\0" * (limit + 1)).decode()

    def boom(*a, **k):
        raise AssertionError("decoded a payload that is over the limit")

    monkeypatch.setattr(images.pybase64, "b64decode", boom)
    err = fails(parse, "data:image/png;base64," + over, limit, status=413, code="PayloadTooLarge")
    assert f"{limit + 1} bytes" in err.message and str(limit) in err.message


# -- headers, formats, limits -------------------------------------------------------------------

def test_not_an_image():
    err = fails(images.open_image, b"hello, this is not an image at all", "png", max_pixels=10**8,
                target=T)
    assert "not a readable image" in err.message and "PNG, JPEG" in err.message


def test_known_unsupported_format_is_named():
    tiff = encode(Image.new("RGB", (8, 8)), "TIFF")
    err = fails(images.open_image, tiff, "png", max_pixels=10**8, target=T)
    assert err.message.startswith("TIFF images are not supported")


@pytest.mark.parametrize("declared, path", [("png", "chelsea.jpg"), ("jpeg", "horse.png"),
                                            ("gif", "synthetic/cat.webp"),
                                            ("webp", "synthetic/cat.bmp")])
def test_declared_format_must_match(declared, path):
    err = fails(images.open_image, (IMAGES / path).read_bytes(), declared, max_pixels=10**8,
                target=T)
    assert f"declares image/{declared}" in err.message


def test_huge_header_is_refused_from_the_header():
    data = (SYN / "huge_header.png").read_bytes()
    assert len(data) < 200
    err = fails(pixels, SYN / "huge_header.png")
    assert "400,000,000 pixels" in err.message and "40,000,000" in err.message


def test_pixel_limit_from_settings():
    err = fails(images.open_image, (IMAGES / "chelsea.jpg").read_bytes(), "jpeg", max_pixels=10_000,
                target=T)
    assert "451x300 = 135,300 pixels" in err.message and "10,000" in err.message


def test_pillow_limit_is_only_raised():
    before = Image.MAX_IMAGE_PIXELS
    images.ensure_pillow_limit(10)
    assert Image.MAX_IMAGE_PIXELS == before


def test_truncated_files_are_refused():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert "truncated or corrupt" in fails(pixels, SYN / "truncated.jpg").message
    png = (IMAGES / "horse.png").read_bytes()
    fails(images.image_to_pixel_values, data_url(png[: len(png) // 2], "png"), SETTINGS, 0)


# -- modes --------------------------------------------------------------------------------------

def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 255, 0, 0))           # fully transparent green
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(images.to_rgb(rgba))
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    la = Image.new("LA", (2, 2), (0, 128))                     # half-transparent black
    assert np.asarray(images.to_rgb(la))[0, 0].tolist() == [127, 127, 127]


def bmp_32bit(bgra: np.ndarray) -> bytes:
    """A bottom-up 32-bit BMP with a BITMAPV5HEADER and an alpha mask (BI_BITFIELDS), as
    Windows writes them; ``bgra``: uint8 [height, width, 4]."""
    import struct
    height, width = bgra.shape[:2]
    pixels = bgra[::-1].tobytes()
    dib = struct.pack("<IiiHHIIiiII", 124, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    dib += struct.pack("<IIII", 0xFF0000, 0xFF00, 0xFF, 0xFF000000) + b"BGRs" + bytes(36 + 12 + 16)
    offset = 14 + len(dib)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + dib + pixels


def test_bmp_whose_alpha_is_all_zero_is_opaque_as_in_browsers():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    opaque = pixels_of(encode(Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])), "BMP"))
    unfilled = np.concatenate([bgr, np.zeros((40, 48, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(pixels_of(bmp_32bit(unfilled)), opaque)
    # real alpha is kept: with one opaque pixel, the transparent rest is white
    unfilled[0, 0, 3] = 255
    white = pixels_of(encode(Image.new("RGB", (48, 40), (255, 255, 255)), "BMP"))
    assert np.abs(pixels_of(bmp_32bit(unfilled))[:, 100:, 100:] - white[:, 100:, 100:]).max() < 1e-6


def pixels_of(data: bytes) -> np.ndarray:
    return images.image_to_pixel_values(data_url(data, "bmp"), SETTINGS, 0)


@pytest.mark.parametrize("name", ["cat_rgba.png", "cat_palette_trns.png"])
def test_transparent_corners_become_white(name):
    im = Image.open(SYN / name)
    im.load()
    corner = np.asarray(images.to_rgb(im))[0, 0]
    assert corner.tolist() == [255, 255, 255]                   # not the hidden green


def test_sixteen_bit_is_scaled_not_clipped():
    im16 = Image.open(SYN / "cat_16bit.png")
    assert im16.mode == "I;16"
    rgb = np.asarray(images.to_rgb(im16), dtype=np.float32)
    grey = np.asarray(images.to_rgb(Image.open(SYN / "cat_grey.jpg")), dtype=np.float32)
    assert rgb.max() < 255 and abs(rgb.mean() - grey.mean()) < 3
    i32 = Image.fromarray((np.arange(16, dtype=np.int32).reshape(4, 4) * 4369), "I")   # 0..65535
    assert np.asarray(images.to_rgb(i32))[-1, -1].tolist() == [255, 255, 255]
    # Between the ends too (at 65535 scaling and clipping agree), and 8-bit values kept.
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.int32)
    assert np.asarray(images.to_rgb(Image.fromarray(levels, "I")))[0, :, 0].tolist() == \
        [0, 64, 128, 255]
    small = Image.fromarray(np.array([[0, 64, 128, 255]], dtype=np.int32), "I")
    assert np.asarray(images.to_rgb(small))[0, :, 0].tolist() == [0, 64, 128, 255]
    f = Image.fromarray(np.full((2, 2), 0.5, np.float32), "F")
    assert np.asarray(images.to_rgb(f))[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "LA", "PA", "RGBA", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    im = Image.new("RGB", (5, 3), (200, 100, 50)).convert(mode)
    out = images.to_rgb(im)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_first_frame_of_an_animation():
    cat = pixels(IMAGES / "chelsea.jpg")
    coffee = pixels(IMAGES / "coffee.jpg")
    gif = pixels(SYN / "cat_anim.gif")
    assert np.abs(gif - cat).mean() < np.abs(gif - coffee).mean() / 3


def test_exif_orientation_is_applied():
    upright = pixels(SYN / "cat_rgba.png")
    rotated = pixels(SYN / "cat_exif6.jpg")
    stored = Image.open(SYN / "cat_exif6.jpg")
    assert images.exif_orientation(stored) == 6
    ignored = images.preprocess(images.to_rgb(stored.convert("RGB")), 1)
    assert np.abs(rotated - upright).mean() < 0.05 < np.abs(ignored - upright).mean()


@pytest.mark.parametrize("path", sorted(p.name for p in SYN.iterdir()
                                        if p.name not in ("huge_header.png", "truncated.jpg")))
def test_every_variant_decodes(path):
    x = pixels(SYN / path)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    original = images.to_rgb(Image.open(IMAGES / "chelsea.jpg"))
    if path in ("cat_grey.jpg", "cat_16bit.png"):
        original = images.to_rgb(original.convert("L"))
    assert np.abs(x - images.preprocess(original)).mean() < 0.05      # measured <= 0.03


# -- preprocessing ------------------------------------------------------------------------------

def test_pixel_values_range_and_layout():
    im = Image.new("RGB", (300, 224), (255, 127, 0))
    x = images.preprocess(im)
    assert x.shape == (3, 224, 224)
    assert np.allclose(x[0], 128 / 128) and np.allclose(x[1], 0) and np.allclose(x[2], -127 / 128)


@pytest.mark.parametrize("path", ["chelsea.jpg", "coffee.jpg", "grace_hopper.jpg", "horse.png"])
def test_one_resample_matches_resize_then_crop(path):
    im = images.to_rgb(Image.open(IMAGES / path))
    a = images.to_pixel_values(images.center_crop(images.resize_shorter(im)))
    b = images.to_pixel_values(images.resize_center_crop(im))
    assert np.abs(a - b).mean() < 0.05                            # < 7 grey levels on average


@pytest.mark.parametrize("path", ["horse.png", "synthetic/cat_rgba.png",
                                  "synthetic/cat_palette_trns.png"])
def test_composite_after_resize_equals_composite_first(path):
    im = Image.open(IMAGES / path)
    first = images.to_pixel_values(images.resize_center_crop(images.to_rgb(im)))
    assert images.to_resizable(im).mode == "RGBA"
    assert np.abs(images.preprocess(im) - first).mean() < 0.005       # < 1 grey level


@pytest.mark.parametrize("mode, expected", [("1", "L"), ("L", "L"), ("LA", "LA"), ("La", "LA"),
                                            ("P", "RGB"), ("PA", "RGBA"), ("RGB", "RGB"),
                                            ("RGBa", "RGBA"), ("CMYK", "RGB"), ("YCbCr", "RGB"),
                                            ("I;16", "L"), ("I", "L"), ("F", "L")])
def test_resizable_modes(mode, expected):
    im = Image.new("RGB", (4, 4), (200, 100, 50)).convert(mode)
    assert images.to_resizable(im).mode == expected


@pytest.mark.parametrize("size", [(1, 1), (40000, 1), (1, 3000), (224, 224), (257, 4000)])
def test_extreme_sizes_stay_cheap(size):
    im = Image.new("RGB", size, (10, 20, 30))
    assert images.resize_center_crop(im).size == (224, 224)


def test_orientation_commutes_with_the_crop():
    im = images.to_rgb(Image.open(IMAGES / "chelsea.jpg"))
    for orientation, method in images._ORIENTATION.items():
        a = images.to_pixel_values(images.resize_center_crop(im.transpose(method)))
        assert np.abs(a - images.preprocess(im, orientation)).max() < 1e-6


def test_jpeg_draft_decodes_big_jpegs_smaller():
    big = Image.open(IMAGES / "chelsea.jpg").resize((1804, 1200), Image.Resampling.LANCZOS)
    data = encode(big, "JPEG", quality=92)
    im = images.load_first_frame(Image.open(io.BytesIO(data)), target=T)
    assert im.size == (451, 300) and min(im.size) >= images.RESIZE_TO     # DCT scale 1/4
    full = images.load_first_frame(Image.open(io.BytesIO(data)), target=T, draft_to=None)
    assert full.size == (1804, 1200)
    url = data_url(data, "jpeg")
    drafted = images.image_to_pixel_values(url, SETTINGS, 0)
    exact = images.image_to_pixel_values(url, SETTINGS, 0, draft=False)
    assert np.abs(drafted - exact).mean() < 0.01                  # ~1 grey level


# -- files that cost decoding time without pixels -------------------------------------------------

def _jpeg_parts(data: bytes) -> tuple[bytes, list[bytes]]:
    """A JPEG's segments before its first scan, and its scans (each with the segments, such as
    Huffman tables, since the one before it)."""
    head, scans, pending, pos = b"", [], b"", 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if data[pos + 1] != 0xDA:
            if scans:
                pending += data[pos:end]
            else:
                head += data[pos:end]
            pos = end
            continue
        while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
            end += 1
        scans.append(pending + data[pos:end])
        pending, pos = b"", end
    return head, scans


def test_a_progressive_jpeg_of_many_scans_is_refused_before_decoding():
    src = encode(Image.open(IMAGES / "chelsea.jpg"), "JPEG", progressive=True)
    head, scans = _jpeg_parts(src)
    assert len(scans) == 10
    assert b"\xff\xd8" + head + b"".join(scans) + b"\xff\xd9" == src  # the parts are the file
    small = min(scans[1:], key=len)   # a refinement scan: repeating it changes nothing visible

    def with_scans(total: int) -> bytes:
        return b"\xff\xd8" + head + b"".join(scans) + small * (total - 10) + b"\xff\xd9"

    at_limit = images.image_to_pixel_values(data_url(with_scans(100), "jpeg"), SETTINGS, 0)
    assert at_limit.shape == (3, 224, 224)
    err = fails(images.image_to_pixel_values, data_url(with_scans(101), "jpeg"), SETTINGS, 0)
    assert "more than 100 scans" in err.message
    # Pillow and libjpeg skip a stray byte, or take a segment length of 0 as 2, and read on: the
    # count must too (review h_cpu1: 1,000 scans behind one stray byte took 30 s).
    app0 = 2 + int.from_bytes(src[4:6], "big")
    for trick in (b"\x00", b"\xff\xfe\x00\x00\x00", b"\xff\xd9", b"\xff" * 50):
        tricked = with_scans(101)[:2 + app0] + trick + with_scans(101)[2 + app0:]
        err = fails(images.image_to_pixel_values, data_url(tricked, "jpeg"), SETTINGS, 0)
        assert "more than 100 scans" in err.message, trick
        if trick != b"\xff\xd9":     # (libjpeg refuses an end of image before the frame header)
            fine = with_scans(10)[:2 + app0] + trick + with_scans(10)[2 + app0:]
            np.testing.assert_array_equal(
                images.image_to_pixel_values(data_url(fine, "jpeg"), SETTINGS, 0),
                images.image_to_pixel_values(data_url(src, "jpeg"), SETTINGS, 0))


def test_a_large_progressive_jpeg_gets_fewer_scans():
    """Each scan is a pass over every block, draft or not (~29 ms a refinement scan at 40 Mpx):
    100 scans of 40 Mpx took 2.9 s from a 163 KB file (review h_cpu1). Scans x pixels is at most
    1.2e9: 30 scans at 40 Mpx, 75 at 4000x4000."""
    src = encode(Image.new("L", (4000, 4000), 90), "JPEG", progressive=True)
    head, scans = _jpeg_parts(src)
    small = min(scans[1:], key=len)

    def with_scans(total: int) -> bytes:
        return b"\xff\xd8" + head + b"".join(scans) + small * (total - len(scans)) + b"\xff\xd9"

    assert images.jpeg_structure(with_scans(75)).scans == 75
    images.check_structure(with_scans(75), T)                     # 75 x 16 Mpx = 1.2e9
    err = fails(images.check_structure, with_scans(76), T)
    assert err.message == ("The JPEG has 76 scans of 4000x4000 pixels; at that size at most 75 "
                           "are accepted, as each is a pass over the picture (progressive encoders "
                           "write up to ~20); re-encode it."), err.message


def test_jpeg_structures_that_cost_pillow_time_are_refused():
    """Pillow reads what precedes a JPEG's first scan in Python: bytes outside segments one at a
    time (8 MiB of fill bytes: 6.4 s), and each frame header (SOF) adds a layer per 3 of its
    bytes (127 of them: 1.9 s; review h_cpu1)."""
    src = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    clean = images.image_to_pixel_values(data_url(src, "jpeg"), SETTINGS, 0)
    app0 = 2 + 2 + int.from_bytes(src[4:6], "big")
    for stray in (b"\xff" * 4096, b"\x00" * 4096, b"\xff\x00" * 2048):
        ok = src[:app0] + stray + src[app0:]
        np.testing.assert_array_equal(images.image_to_pixel_values(data_url(ok, "jpeg"), SETTINGS, 0),
                                      clean)
        err = fails(images.image_to_pixel_values, data_url(ok[:app0] + b"\xff\xff" + ok[app0:],
                                                            "jpeg"), SETTINGS, 0)
        assert err.message == ("The JPEG has more than 4,096 bytes outside its segments and "
                               "picture data (fill or stray bytes); re-encode it."), err.message
    sof = src.index(b"\xff\xc0")
    frame = src[sof:sof + 2 + int.from_bytes(src[sof + 2:sof + 4], "big")]
    for bad in (src[:sof] + frame + src[sof:],                              # two frame headers
                src[:sof + 3] + bytes([src[sof + 3] + 3]) + src[sof + 4:sof + len(frame)]
                + b"\0\0\0" + src[sof + len(frame):]):                     # one too long
        err = fails(images.image_to_pixel_values, data_url(bad, "jpeg"), SETTINGS, 0)
        assert "more than one frame header (SOF), or a malformed one" in err.message
    # Markers without a length count as segments: Pillow reads each pair in Python (8 MiB of
    # restart markers before the first scan: 7.4 s; review h_review17).
    assert images.jpeg_structure(src[:app0] + b"\xff\xd0" * 900 + src[app0:]).segments < 1000
    err = fails(images.image_to_pixel_values,
                data_url(src[:app0] + b"\xff\xd0" * 1000 + src[app0:], "jpeg"), SETTINGS, 0)
    assert "more than 1,000 segments" in err.message
    # A JPEG that ends inside a scan header is unreadable, not a server error.
    for cut in (b"\xff\xd8\xff\xda\x00\x08", src[:src.index(b"\xff\xda") + 4]):
        fails(images.image_to_pixel_values, data_url(cut, "jpeg"), SETTINGS, 0)


def test_jpeg_markers_that_decoders_do_not_process_are_refused():
    """libjpeg drops a marker it cannot process in place of a restart marker and reads on, and
    Pillow reads no length after JPG and JPGn markers: what a count by segment lengths skips
    there, they read (951 scans hidden behind FF 02 in 63 KB: 29 s; review h_review17)."""
    src = encode(Image.open(IMAGES / "chelsea.jpg"), "JPEG", progressive=True)
    head, scans = _jpeg_parts(src)
    hidden = b"".join(scans[1:])
    for marker in (0x02, 0xBF, 0xC8, 0xDE, 0xF0, 0xFD, 0xD8):
        cloak = bytes((0xFF, marker)) + (2 + len(hidden)).to_bytes(2, "big")
        bad = b"\xff\xd8" + head + scans[0] + cloak + hidden + b"\xff\xd9"
        err = fails(images.image_to_pixel_values, data_url(bad, "jpeg"), SETTINGS, 0)
        assert err.message == (f"The JPEG holds a marker that decoders do not process "
                               f"(0xFF{marker:02X}); it is corrupt or uses a process JPEG decoders "
                               "do not implement. Re-encode it."), err.message
    assert images.jpeg_structure(src).unprocessed is None


def test_pngs_that_inflate_many_chunks_when_opened_are_refused():
    """Pillow inflates every iCCP, zTXt and iTXt chunk (up to 1 MiB each) when it opens a PNG:
    8 MiB of them took 22 s (review h_cpu1). One iCCP (the format allows no more) and 64
    compressed texts are read."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    src = encode(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG")
    at = src.index(b"IDAT") - 4
    profile = chunk(b"iCCP", b"p\0\0" + zlib.compress(b"\0" * 4096))
    text = chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 4096))
    itext = chunk(b"iTXt", b"k\0\1\0\0\0" + zlib.compress(b"a" * 4096))

    def with_chunks(extra: bytes) -> bytes:
        return src[:at] + extra + src[at:]

    clean = images.image_to_pixel_values(data_url(src, "png"), SETTINGS, 0)
    ok = with_chunks(profile + text * 32 + itext * 32)
    np.testing.assert_array_equal(images.image_to_pixel_values(data_url(ok, "png"), SETTINGS, 0),
                                  clean)
    err = fails(images.image_to_pixel_values, data_url(with_chunks(profile * 2), "png"), SETTINGS, 0)
    assert err.message == ("The PNG has 2 colour profiles (iCCP chunks; the format allows one); "
                           "re-encode it."), err.message
    err = fails(images.image_to_pixel_values,
                data_url(with_chunks(profile + text * 33 + itext * 32), "png"), SETTINGS, 0)
    assert err.message == ("The PNG has more than 64 compressed text chunks (zTXt, iTXt), which "
                           "are not embedded; remove them and send the picture again."), err.message
    plain = chunk(b"iTXt", b"k\0\0\0\0\0" + b"a" * 64)          # uncompressed: not inflated
    assert images.png_structure(with_chunks(text * 64 + plain * 100)).compressed == 64


def test_a_jpeg_of_many_segments_is_refused():
    src = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    for marker in (b"\xff\xfe", b"\xff\xe5"):  # empty comments, empty APP5 segments
        ok = src[:2] + (marker + b"\x00\x02") * 900 + src[2:]
        assert images.image_to_pixel_values(data_url(ok, "jpeg"), SETTINGS, 0).shape == (3, 224, 224)
        bad = src[:2] + (marker + b"\x00\x02") * 1000 + src[2:]
        err = fails(images.image_to_pixel_values, data_url(bad, "jpeg"), SETTINGS, 0)
        assert "more than 1,000 segments" in err.message


def rle_bmp(rows: list[int], width: int, bits: int = 8) -> bytes:
    """A BMP compressed with RLE8 (or RLE4), as old Windows tools write them: row y (from the
    top) is palette index ``rows[y]`` throughout, in runs of up to 255 pixels; grey palette."""
    import struct
    colours = 1 << bits
    code = (lambda i: i) if bits == 8 else (lambda i: i << 4 | i)   # RLE4: 2 pixels a byte

    def row(i: int) -> bytes:
        runs = b"".join(bytes((n, code(i))) for n in [255] * (width // 255) + [width % 255] if n)
        return runs + b"\0\0"                                    # end of line

    data = b"".join(row(i) for i in reversed(rows)) + b"\0\1"  # bottom-up; end of bitmap
    palette = b"".join(bytes((g, g, g, 0)) for g in range(0, 256, 256 // colours))
    dib = struct.pack("<IiiHHIIiiII", 40, width, len(rows), 1, bits, 1 if bits == 8 else 2,
                      len(data), 2835, 2835, colours, 0)
    offset = 14 + len(dib) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + palette + data


def imagemagick_rle8(index: np.ndarray) -> bytes:
    """RLE8 as ImageMagick writes it (coders/bmp.c, EncodeImage): runs only, so 2 bytes for each
    pixel unlike its neighbour, over each row's bytes including the padding to 4 bytes."""
    import struct
    height, width = index.shape
    line = -(-width // 4) * 4
    data = bytearray()
    for row in index[::-1]:                                         # bottom-up
        row = row.tobytes() + bytes(line - width)
        x = 0
        while x < line:
            n = 1
            while x + n < line and n < 255 and row[x + n] == row[x]:
                n += 1
            data += bytes((n, row[x]))
            x += n
        data += b"\0\0"
    data += b"\0\1"
    palette = b"".join(bytes((g, g, g, 0)) for g in range(256))
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    offset = 14 + len(dib) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + palette + data


@pytest.mark.parametrize("bits", [8, 4])
def test_rle_bmps_are_decoded_up_to_their_own_pixel_limit(bits):
    """Pillow decodes RLE BMPs in Python (a 21 KB RLE8 BMP of 8000x5000 took 6.3 s of CPU): they
    are limited to 1024 x 1024 pixels, other BMPs are not."""
    assert images.MAX_RLE_BMP_PIXELS == 1024 * 1024
    step = 256 >> bits
    rows = [(y * 7 % (1 << bits)) for y in range(1024)]
    grey = Image.fromarray(np.repeat(np.array(rows, np.uint8)[:, None] * step, 1024, axis=1))
    assert Image.open(io.BytesIO(rle_bmp(rows, 1024, bits))).tile[0][0] == "bmp_rle"
    np.testing.assert_array_equal(pixels_of(rle_bmp(rows, 1024, bits)),
                                  pixels_of(encode(grey, "BMP")))
    err = fails(pixels_of, rle_bmp(rows + [0], 1024, bits))
    assert err.message.startswith("The BMP is RLE-compressed and has 1024x1025 = 1,049,600 "
                                  "pixels; RLE BMPs are decoded slowly and are limited to "
                                  "1,048,576 pixels. Save it as PNG"), err.message
    tall = Image.new("L", (1024, 1025), 9)
    assert Image.open(io.BytesIO(encode(tall, "BMP"))).tile[0][0] == "raw"
    assert pixels_of(encode(tall, "BMP")).shape == (3, 224, 224)    # uncompressed: no such limit


def test_rle_bmps_hold_at_most_the_data_an_encoder_writes():
    """Each RLE code costs Pillow 0.25-1.4 us, whatever pixels it adds: 8 MiB of codes that add
    none to a 1x2 picture took 2.5 s (review h_review16). An RLE BMP is refused if it has more
    than 2 bytes a pixel (+ 4 a row + 1 KiB), which ImageMagick's runs-only RLE8 reaches."""
    y, x = np.mgrid[:1024, :1022]
    noisy = ((x * 7 + y * 13) % 251).astype(np.uint8)   # no pixel like its neighbour in the row
    worst = imagemagick_rle8(noisy)                   # every pixel a run of 1, rows padded to 1024
    assert len(worst) - Image.open(io.BytesIO(worst)).tile[0][2] > 2 * noisy.size  # + padding
    np.testing.assert_array_equal(pixels_of(worst), pixels_of(encode(Image.fromarray(noisy), "BMP")))
    # 1x2 pixels, then codes that add none (the row is full): refused before any is decoded.
    tiny = rle_bmp([1, 2], 1)
    no_ops = tiny[:-2] + b"\xff\x03" * 600 + b"\0\1"
    assert len(no_ops) - len(tiny) == 1200
    err = fails(pixels_of, no_ops)
    assert err.message == ("The BMP's RLE data is 1,210 bytes, more than RLE takes for 1x2 pixels "
                           "(at most 1,036); re-encode it, e.g. as PNG."), err.message
    assert pixels_of(tiny[:-2] + b"\xff\x03" * 400 + b"\0\1").shape == (3, 224, 224)


def test_a_png_of_many_chunks_is_refused():
    import zlib

    src = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")
    chunk = b"\x00\x00\x00\x00prVt" + zlib.crc32(b"prVt").to_bytes(4, "big")  # empty, private
    at = src.index(b"IDAT") - 4

    def with_chunks(n: int) -> bytes:
        return src[:at] + chunk * n + src[at:]

    assert images.png_structure(with_chunks(0)).chunks == 3        # IHDR, IDAT, IEND
    assert images.image_to_pixel_values(data_url(with_chunks(9000), "png"), SETTINGS, 0).shape
    err = fails(images.image_to_pixel_values, data_url(with_chunks(10_000), "png"), SETTINGS, 0)
    assert "more than 10,000 chunks" in err.message


def _grey_png(w: int, h: int, depth: int, key: int, value: int) -> bytes:
    """A grey PNG whose left half is the tRNS key (transparent) and right half ``value``."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    fmt = ">H" if depth == 16 else ">B"
    row = b"\x00" + b"".join(struct.pack(fmt, key if x < w // 2 else value) for x in range(w))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
            + chunk(b"tRNS", struct.pack(">H", key))
            + chunk(b"IDAT", zlib.compress(row * h)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [64, 2048])   # whole, and a strip at a time (over STRIP_PIXELS)
def test_a_sixteen_bit_grey_png_keeps_its_transparent_colour_key(side):
    assert (side * side > images.STRIP_PIXELS) == (side == 2048)
    eight = images.image_to_pixel_values(data_url(_grey_png(side, side, 8, 0, 0x80), "png"),
                                         SETTINGS, 0)
    sixteen = images.image_to_pixel_values(
        data_url(_grey_png(side, side, 16, 0, 0x8080), "png"), SETTINGS, 0)
    assert eight[:, 112, 10].tolist() == [1.0, 1.0, 1.0]    # (255 - 127) / 128: white
    np.testing.assert_allclose(sixteen, eight, atol=1 / 128)
