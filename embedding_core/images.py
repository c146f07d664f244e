"""Images on the wire: data URLs in, model-ready pixel tensors out.

The image route accepts inline images only: ``data:image/<format>;base64,<data>``. Nothing is
ever fetched; any other scheme (``http:``, ``https:``, ``file:``, ...) is refused. The pipeline is
a chain of small functions, each raising :class:`~embedding_core.errors.ApiError` with the
JSON path of the offending field as ``target``:

1. :func:`parse_data_url` - scheme and media type, size checked on the base64 *length* (before
   decoding) and again on the decoded bytes (413 over ``max_image_bytes``), strict base64.
2. :func:`open_image` - Pillow reads the *header only*; the real format must be one of
   :data:`SUPPORTED` and match the declared one (``jpg`` = ``jpeg``); the pixel count is checked
   against ``max_image_pixels`` before any pixel is decoded (Pillow's own decompression-bomb
   error is mapped to the same message).
3. :func:`load_first_frame` - JPEGs are decoded at a reduced DCT scale when they are much larger
   than needed (``draft``; the shorter side stays >= the resize target); the first frame of an
   animation is decoded; truncated or corrupt data is a 422 (``LOAD_TRUNCATED_IMAGES`` is off).
   Before that, :func:`decode_bytes` estimates the memory decoding and preprocessing need (WebP
   and multi-scan JPEG need far more than the picture, a palette picture its RGB copy) and a
   picture over ``max_image_decode_bytes`` is a 422.
4. :func:`to_resizable` - palette, 1-bit, CMYK, YCbCr and 16/32-bit/float modes become 8-bit
   L, LA, RGB or RGBA, keeping transparency (16-bit is scaled, not clipped).
5. :func:`resize_center_crop` - bicubic; the shorter side to 256 then the centre 224x224, in one
   resample (alpha is premultiplied while resizing). :func:`resize_center_crop_any` is 4 + 5 for
   any mode, a strip at a time for large pictures (same result, no full-size copies).
6. :func:`flatten` - alpha is composited on white, grey becomes RGB (on the 224x224 crop:
   compositing is linear, so this equals compositing first, without touching the full picture);
   :func:`to_rgb` is 4 + 6 for a whole image.
7. :func:`exif_transpose` - the EXIF orientation tag is applied (to the crop, which is the same
   as applying it first because the crop is a centred square).
8. :func:`to_pixel_values` - ``(x - 127) / 128``, CHW float32.

:func:`decode_image` runs 2-3, :func:`preprocess` runs 4-8; :func:`image_to_pixel_values` is
the whole chain for one wire item.
"""

from __future__ import annotations

import binascii
import io
import math
import re
import threading
import time
import warnings
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import pybase64
from PIL import Image, ImageFile, PngImagePlugin

from . import errors
from .settings import Settings

# Never decode a truncated file as if it were whole (Pillow's default; set explicitly so an
# import elsewhere cannot have flipped it for us).
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PNG text chunks (tEXt, zTXt, iTXt) are unpacked when the file is opened, before any check or the
# decode budget: Pillow allows 64 MiB of them, which 65 KB of zTXt can hold (review h_diff15 H2).
# The app never reads them; more than this is refused (422).
MAX_PNG_TEXT_BYTES = 4 << 20
PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_TEXT_BYTES

RESIZE_TO = 256          # shorter side after resizing
CROP_TO = 224            # model input size
MEAN = 127.0             # pixel_values = (x - MEAN) / STD, x in 0..255
STD = 128.0

# Wire format name -> Pillow format id. Declared names may also be these aliases.
SUPPORTED = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
ALIASES = {"jpg": "jpeg", "pjpeg": "jpeg", "x-png": "png", "apng": "png",
           "vnd.mozilla.apng": "png", "x-ms-bmp": "bmp", "x-bmp": "bmp"}
# Pillow format id of an opened file -> wire name (an MPO is a JPEG with extra pictures).
REAL_FORMAT = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "GIF": "gif",
               "BMP": "bmp"}
SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF, BMP"
DATA_URL_HINT = "data:image/<format>;base64,<data>"

# Formats people try that we do not decode, recognised by their first bytes (for the message).
_SIGNATURES = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]{0,31}):")
_NOT_B64 = re.compile(r"[^A-Za-z0-9+/=]")
_STANDARD_ONLY = re.compile(r"[+/]")
_WHITESPACE = "\t\n\f\r "                         # ASCII whitespace (WHATWG)
_C0_OR_SPACE = "".join(map(chr, range(0x21)))   # stripped from both ends of a URL (WHATWG)
# How the base64 of a PNG, JPEG, GIF or WebP file begins: an 'image' sent without its
# "data:image/...;base64," prefix.
_BARE_BASE64_IMAGES = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")
_DROP_WHITESPACE = str.maketrans("", "", _WHITESPACE)
# The percent-escapes of the characters base64 in a data URL can hold (either case of hex).
_BASE64_ESCAPES = tuple(dict.fromkeys((f"%{ord(c):02{case}}", c)
                                      for c in "+/=\t\n\f\r " for case in "Xx"))

# EXIF Orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class DataUrl:
    declared: str        # normalised wire format name ("jpeg", "png", ...)
    data: bytes


def _target(index: int) -> str:
    return f"input[{index}].image"


# -- 1. data URL ---------------------------------------------------------------------------------

def parse_data_url(url: str, *, max_bytes: int, target: str) -> DataUrl:
    """Split a ``data:image/<format>;base64,<data>`` URL and decode its payload, as browsers
    do (WHATWG URL and Fetch): leading and trailing C0 controls and spaces are ignored, and the
    payload is percent-decoded, then base64-decoded with ASCII whitespace removed."""
    url = url.strip(_C0_OR_SPACE)
    comma = url.find(",", 0, 512)
    header = url[:comma] if comma >= 0 else url[:512]
    scheme = _SCHEME.match(header)
    if scheme is None or scheme.group(1).lower() != "data":
        if scheme is not None:
            what = f"URL scheme '{errors.clip(scheme.group(1).lower(), 32)}' is not supported"
        elif url.startswith(_BARE_BASE64_IMAGES):
            raise errors.validation(
                "'image' looks like base64 without its data URL prefix: send "
                f"{DATA_URL_HINT}, i.e. put 'data:image/<format>;base64,' before the data.",
                target)
        else:
            what = "'image' is not a URL"
        raise errors.validation(
            f"{what}: send the image inline as a data URL ({DATA_URL_HINT}). "
            "The service does not fetch images from URLs.", target)
    if comma < 0:
        raise errors.validation(f"The data URL has no ',' before its data; expected {DATA_URL_HINT}.",
                                target)
    parts = [p.strip() for p in header[len("data:"):].split(";")]
    media = parts[0].lower()
    if not media.startswith("image/"):
        raise errors.validation(
            f"The data URL's media type is '{errors.clip(media or '(none)', 40)}'; expected "
            f"image/<format> with format one of {SUPPORTED_TEXT}.", target)
    fmt = media[len("image/"):]
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in SUPPORTED:
        # azure-ai-inference's ImageEmbeddingInput.load(image_format=...) wants the format
        # ("jpeg"); given a MIME type it builds data:image/image/jpeg.
        doubled = (" (the media type says image/ twice: with azure-ai-inference, pass "
                   "ImageEmbeddingInput.load(image_format=\"jpeg\"), not \"image/jpeg\")"
                   if fmt.startswith("image/") else "")
        raise errors.validation(
            f"Image format '{errors.clip(media, 40)}' is not supported{doubled}; supported "
            f"formats: {SUPPORTED_TEXT}.", target)
    if not parts[-1].lower() == "base64" or len(parts) < 2:
        raise errors.validation(
            f"The data URL must be base64-encoded ({DATA_URL_HINT}).", target)
    payload = url[comma + 1:]
    transformed = False     # positions in the payload are no longer those of what was sent
    if "%" in payload:
        # Percent-decoded as browsers do, but only the escapes valid base64 can carry (%2B, %2F,
        # %3D and whitespace), each with one linear str.replace: a general unquote makes an
        # object per escape (a 32 MB body of '%' took 34 s and 6 GB). Any other '%' stays and
        # is refused below as a character base64 does not have.
        for escape, char in _BASE64_ESCAPES:
            if escape in payload:
                payload, transformed = payload.replace(escape, char), True
    # Five substring searches (memchr), not one regex over a character class: 0.12 against
    # 6.4 ms for a 12 Mpx photo's 2.3 MB of base64, 13 % of all its decoding costs.
    if any(c in payload for c in _WHITESPACE):
        # As browsers decode data URLs (WHATWG "forgiving-base64 decode"): ASCII whitespace is
        # removed first, so base64 wrapped at 76 columns (`base64`, MIME encoders) is accepted.
        payload, transformed = payload.translate(_DROP_WHITESPACE), True
    if not payload:
        raise errors.validation("The data URL holds no image data.", target)
    # Size first, from the base64 length (exact for valid base64), so a huge payload is refused
    # without being decoded.
    unpadded = len(payload) - (2 if payload.endswith("==") else 1 if payload.endswith("=") else 0)
    estimate = unpadded * 3 // 4
    if estimate > max_bytes:
        raise image_too_large(estimate, max_bytes, target)
    if len(payload) % 4:
        payload += "=" * (-len(payload) % 4)   # tolerate missing padding
    try:
        data = _b64decode(payload)
    except (binascii.Error, ValueError):
        bad = _NOT_B64.search(payload)
        if bad is None:
            where = " (wrong length or padding)"
        elif not transformed:
            where = f" (unexpected character at position {bad.start()} of the data)"
        else:   # the position would be in the decoded text, not in what was sent
            where = f" (unexpected character {errors.clip(repr(bad.group()), 12)} in the data)"
        if bad and bad.group() in "-_" and not _STANDARD_ONLY.search(payload):
            where += ("; it looks like URL-safe base64 ('-' and '_'): send standard base64 "
                      "('+' and '/', RFC 4648 section 4)")
        raise errors.validation("The image data is not valid base64" + where + ".",
                                target) from None
    if len(data) > max_bytes:
        raise image_too_large(len(data), max_bytes, target)
    if not data:
        raise errors.validation("The data URL holds no image data.", target)
    return DataUrl(fmt, data)


def _b64decode(payload: str) -> bytes:
    """Strict base64 (binascii.Error or ValueError if invalid). pybase64 (SIMD, libbase64) takes
    0.14 against 7.2 ms for a 12 Mpx photo's 2.3 MB of base64 with the standard library, ~13 % of
    all its decoding costs, and gives the same bytes and refusals except for padding after a whole
    group ('aGVs====', what 'aGVs=' becomes once padded): it refuses that, as browsers do, where
    Python 3.11's and 3.12's standard library accepts it (3.13's refuses it too). Such a payload
    has always been accepted here on Azure's 3.11 and 3.12, so it is decoded again by the standard
    library before it is refused."""
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return binascii.a2b_base64(payload, strict_mode=True)


def image_too_large(size: int, limit: int, target: str) -> errors.ApiError:
    return errors.ApiError(413, "PayloadTooLarge",
                           f"The image is {size} bytes after base64 decoding; the limit is "
                           f"{limit} bytes.", target=target)


# -- 2. header ----------------------------------------------------------------------------------

def _sniff(data: bytes) -> str | None:
    head = data[:32]
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "HEIC/AVIF"
    if head.lstrip().startswith((b"<?xml", b"<svg")):
        return "SVG"
    return None


def _too_many_pixels(width: int | None, height: int | None, pixels: int | None, limit: int,
                     target: str) -> errors.ApiError:
    size = f"{width}x{height} = {pixels:,} pixels" if width else f"{pixels:,} pixels"
    return errors.validation(
        f"The image is too large: {size}; the limit is {limit:,} pixels. Resize it before "
        "sending.", target)


# Decoding time is bounded by the pixels for most files, but not by these structures, which
# cost time without adding pixels (review h_cpu1 measured each, 2026-11-24):
# * Each scan of a progressive JPEG is a pass over every block of the picture in libjpeg, draft
#   or not: ~29 ms a refinement scan at 40 Mpx, so 100 scans of a 40 Mpx picture took 2.9 s
#   (1.4 KB arithmetic-coded, 163 KB with Huffman codes). Scans x pixels is bounded by
#   MAX_JPEG_SCAN_PIXELS (30 scans at 40 Mpx, ~0.9 s; 100 up to 12 Mpx); encoders write 1-20.
# * Pillow reads a JPEG's segments before its first scan, and a PNG's chunks, in Python (~4 us
#   each: 2 million empty segments in 8 MB took 8 s), and any bytes between those segments one at
#   a time (8 MiB of 0xFF fill bytes: 6.4 s). Encoders write a few dozen segments or chunks (a
#   PNG's picture data is often cut in chunks of 8-64 KB: ~1,000 in 8 MB) and no stray bytes.
# * A second frame header (SOF) adds a layer per 3 of its bytes in Pillow, in Python (127 of
#   them: 1.9 s); libjpeg refuses such a file anyway.
# * Markers that libjpeg cannot process (0x02-0xBF, JPG and JPGn, DHP, EXP, the differential and
#   lossless SOFs it does not decode, a second SOI) are refused: after one in place of a restart
#   marker libjpeg drops it and reads on, and Pillow reads no length after JPG and JPGn, so what
#   a count by segment lengths skips there, they read (951 hidden scans in 63 KB: 29 s; 8 MiB of
#   hidden Exif segments, which Pillow concatenates: 27 s; review h_review17).
# * Pillow inflates each PNG iCCP, zTXt and iTXt chunk (up to 1 MiB each: 2.75 ms) when it opens
#   the file: 8 MiB of them took 22 s. A PNG has at most one iCCP; encoders write a few texts.
MAX_JPEG_SCANS = 100
MAX_JPEG_SCAN_PIXELS = 1_200_000_000
MAX_JPEG_SEGMENTS = 1000
MAX_JPEG_STRAY_BYTES = 4096     # fill and other bytes outside segments and scan data
MAX_PNG_CHUNKS = 10000
MAX_PNG_COMPRESSED_CHUNKS = 64  # zTXt and iTXt (inflated when opened), besides one iCCP
# Pillow decodes RLE-compressed BMPs in Python, one 2-byte code at a time, at 0.25-0.6 us a code
# and up to ~0.35 us a byte of data (an RLE4 code of 3 pixels in absolute mode, 4 bytes, costs
# ~1.4 us), and pads the end of a row one byte at a time (~0.16 us a pixel). A 21 KB RLE8 BMP of
# 8000x5000 took 6.3 s of CPU, and 8 MiB of codes that add no pixels to a 1x2 picture 2.5 s
# (review h_review16), against 0.4-1.0 s for the slowest 40 Mpx PNGs and GIFs. So both what
# costs per pixel and what costs per byte are bounded: at most MAX_RLE_BMP_PIXELS pixels and
# RLE_BMP_BYTES_PER_PIXEL bytes of data a pixel (ImageMagick writes RLE8 in runs only, 2 bytes
# for a pixel that differs from its neighbour; other encoders less), plus 4 a row and 1 KiB.
MAX_RLE_BMP_PIXELS = 1_048_576   # 1024 x 1024
RLE_BMP_BYTES_PER_PIXEL = 2
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


_FILL = re.compile(rb"\xff+")
_SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")   # a marker after entropy-coded data
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # frame headers (0xC4 DHT, 0xCC DAC)
# Markers libjpeg cannot process (it stops at them, or drops them at a restart point and reads
# on): reserved, JPG/JPGn, DHP, EXP, and the frame headers of processes it does not decode.
_UNPROCESSED = frozenset(range(0x02, 0xC0)) | {0xC5, 0xC6, 0xC7, 0xC8, 0xCD, 0xCE, 0xCF, 0xDE,
                                               0xDF} | frozenset(range(0xF0, 0xFE))


@dataclass
class JpegStructure:
    """What :func:`jpeg_structure` found in a JPEG's first picture."""

    scans: int = 0
    segments: int = 0
    frames: int = 0                 # frame headers (SOF)
    bad_frame: bool = False         # an SOF whose length is not 8 + 3 per component
    width: int = 0                  # from the first SOF
    height: int = 0
    stray: int = 0                  # bytes outside segments and scan data
    unprocessed: int | None = None  # the first marker libjpeg cannot process (_UNPROCESSED)
    first_scan_components: int | None = None


def jpeg_structure(data: bytes) -> JpegStructure:
    """The scans, segments and frame headers of a JPEG's first picture, counted up to one over the
    limits; the entropy-coded data after each scan header is skipped (a 0xFF there is followed by
    0x00, a restart marker or fill bytes). Bytes that are not a marker where one should be are
    skipped to the next 0xFF, as libjpeg and Pillow do, and counted as stray, so that the count
    stays in step with theirs; markers without a length count as segments (Pillow reads each in
    Python before the first scan); an end of image before any scan is read past, as Pillow does;
    a segment length under 2 counts as 2, as in libjpeg. Stops at the first marker libjpeg
    cannot process (``unprocessed``)."""
    found = JpegStructure()
    pos, n = 2, len(data)
    while (pos + 4 <= n and found.scans <= MAX_JPEG_SCANS and found.segments <= MAX_JPEG_SEGMENTS
           and found.stray <= MAX_JPEG_STRAY_BYTES):
        if data[pos] != 0xFF:
            following = data.find(b"\xff", pos)
            if following < 0:
                break
            found.stray += following - pos
            pos = following
            continue
        fill = _FILL.match(data, pos).end() - 1      # the last 0xFF of a run is the marker's
        if fill > pos:
            found.stray += fill - pos
            pos = fill
            continue
        marker = data[pos + 1]
        if marker == 0xD9 and found.scans:           # end of the (first) picture
            break
        if marker in _UNPROCESSED or marker == 0xD8:
            found.unprocessed = marker
            break
        if marker in (0x00, 0x01, 0xD9) or 0xD0 <= marker <= 0xD7:
            if marker == 0x00:                       # an escaped 0xFF: not a marker
                found.stray += 2
            else:
                found.segments += 1
            pos += 2                                 # no length
            continue
        length = max(2, int.from_bytes(data[pos + 2:pos + 4], "big"))
        found.segments += 1
        if marker in _SOF:
            found.frames += 1
            if found.frames == 1 and pos + 10 <= n:
                found.height = int.from_bytes(data[pos + 5:pos + 7], "big")
                found.width = int.from_bytes(data[pos + 7:pos + 9], "big")
                found.bad_frame = length != 8 + 3 * data[pos + 9]
        if marker == 0xDA and found.first_scan_components is None and pos + 5 <= n:
            found.first_scan_components = data[pos + 4]
        pos += 2 + length
        if marker != 0xDA:
            continue
        found.scans += 1
        end = _SCAN_END.search(data, pos)            # skip the scan's entropy-coded data
        if end is None:
            break
        pos = end.start()
    return found


@dataclass
class PngStructure:
    chunks: int = 0
    iccp: int = 0
    compressed: int = 0             # zTXt and compressed iTXt


def png_structure(data: bytes) -> PngStructure:
    """A PNG's chunks up to IEND, counted up to one over the limits (stops early at a malformed
    one)."""
    found = PngStructure()
    pos, n = len(_PNG_MAGIC), len(data)
    while pos + 8 <= n and found.chunks <= MAX_PNG_CHUNKS:
        found.chunks += 1
        kind = data[pos + 4:pos + 8]
        if kind == b"IEND":
            break
        if kind == b"iCCP":
            found.iccp += 1
        elif kind == b"zTXt":
            found.compressed += 1
        elif kind == b"iTXt":                    # keyword, 0, then its compression flag
            keyword_end = data.find(b"\0", pos + 8, pos + 8 + 80)
            if keyword_end >= 0 and keyword_end + 1 < n and data[keyword_end + 1]:
                found.compressed += 1
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return found


def check_structure(data: bytes, target: str) -> None:
    """Refuse (422) a JPEG or PNG built to cost decoding time out of proportion to its pixels,
    before any of it is read."""
    if data.startswith(b"\xff\xd8"):
        jpeg = jpeg_structure(data)
        if jpeg.scans > MAX_JPEG_SCANS:
            raise errors.validation(
                f"The JPEG has more than {MAX_JPEG_SCANS} scans (progressive encoders write up "
                f"to ~20); re-encode it.", target)
        if jpeg.scans * jpeg.width * jpeg.height > MAX_JPEG_SCAN_PIXELS:
            most = MAX_JPEG_SCAN_PIXELS // (jpeg.width * jpeg.height)
            raise errors.validation(
                f"The JPEG has {jpeg.scans} scans of {jpeg.width}x{jpeg.height} pixels; at that "
                f"size at most {most} are accepted, as each is a pass over the picture "
                f"(progressive encoders write up to ~20); re-encode it.", target)
        if jpeg.segments > MAX_JPEG_SEGMENTS:
            raise errors.validation(
                f"The JPEG has more than {MAX_JPEG_SEGMENTS:,} segments (markers); re-encode it.",
                target)
        if jpeg.unprocessed is not None:
            raise errors.validation(
                f"The JPEG holds a marker that decoders do not process (0xFF{jpeg.unprocessed:02X})"
                "; it is corrupt or uses a process JPEG decoders do not implement. Re-encode it.",
                target)
        if jpeg.frames > 1 or jpeg.bad_frame:
            raise errors.validation(
                "The JPEG has more than one frame header (SOF), or a malformed one; re-encode "
                "it.", target)
        if jpeg.stray > MAX_JPEG_STRAY_BYTES:
            raise errors.validation(
                f"The JPEG has more than {MAX_JPEG_STRAY_BYTES:,} bytes outside its segments "
                f"and picture data (fill or stray bytes); re-encode it.", target)
    elif data.startswith(_PNG_MAGIC):
        png = png_structure(data)
        if png.chunks > MAX_PNG_CHUNKS:
            raise errors.validation(
                f"The PNG has more than {MAX_PNG_CHUNKS:,} chunks; re-encode it.", target)
        if png.iccp > 1:
            raise errors.validation(
                f"The PNG has {png.iccp} colour profiles (iCCP chunks; the format allows one); "
                "re-encode it.", target)
        if png.compressed > MAX_PNG_COMPRESSED_CHUNKS:
            raise errors.validation(
                f"The PNG has more than {MAX_PNG_COMPRESSED_CHUNKS} compressed text chunks "
                "(zTXt, iTXt), which are not embedded; remove them and send the picture again.",
                target)


def _is_rle_bmp(im: Image.Image) -> bool:
    return im.format == "BMP" and bool(im.tile) and im.tile[0][0] == "bmp_rle"


def _too_much_png_text(target: str) -> errors.ApiError:
    return errors.validation(
        f"The PNG holds more than {MAX_PNG_TEXT_BYTES >> 20} MiB of text metadata (tEXt, zTXt or "
        "iTXt chunks), which is not embedded; remove it and send the picture again.", target)


def open_image(data: bytes, declared: str, *, max_pixels: int, target: str) -> Image.Image:
    """Read the header only: format and size are checked before any pixel is decoded."""
    check_structure(data, target)
    try:
        im = Image.open(io.BytesIO(data), formats=list(SUPPORTED.values()))
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(None, None, int(found.group(1)) if found else max_pixels + 1,
                               max_pixels, target) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for unreadable headers
        if isinstance(exc, ValueError) and "text chunks" in str(exc):
            raise _too_much_png_text(target) from None
        other = _sniff(data)
        if other:
            raise errors.validation(f"{other} images are not supported; supported formats: "
                                    f"{SUPPORTED_TEXT}.", target) from None
        raise errors.validation(f"The data is not a readable image (supported formats: "
                                f"{SUPPORTED_TEXT}).", target) from None
    real = REAL_FORMAT.get(im.format or "")
    if real is None:   # defensive: `formats=` already restricts the plugins tried
        raise errors.validation(f"Image format {im.format} is not supported; supported formats: "
                                f"{SUPPORTED_TEXT}.", target)
    if real != declared:
        raise errors.validation(
            f"The data URL declares image/{declared} but the data is a {real.upper()} image; "
            "declare the real format.", target)
    width, height = im.size
    if width < 1 or height < 1:
        raise errors.validation("The image has no pixels.", target)
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, width * height, max_pixels, target)
    if _is_rle_bmp(im):
        check_rle_bmp(im, len(data) - im.tile[0][2], target)
    return im


def check_rle_bmp(im: Image.Image, data_bytes: int, target: str) -> None:
    """Refuse (422) an RLE BMP over :data:`MAX_RLE_BMP_PIXELS`, or whose ``data_bytes`` of RLE
    data (from the pixel data's offset to the end of the file) are more than any encoder writes
    for its size: Pillow would spend seconds on either."""
    width, height = im.size
    pixels = width * height
    if pixels > MAX_RLE_BMP_PIXELS:
        raise errors.validation(
            f"The BMP is RLE-compressed and has {width}x{height} = {pixels:,} pixels; RLE BMPs "
            f"are decoded slowly and are limited to {MAX_RLE_BMP_PIXELS:,} pixels. Save it as "
            "PNG (or as an uncompressed BMP) and send it again.", target)
    allowed = RLE_BMP_BYTES_PER_PIXEL * pixels + 4 * height + 1024
    if data_bytes > allowed:
        raise errors.validation(
            f"The BMP's RLE data is {data_bytes:,} bytes, more than RLE takes for "
            f"{width}x{height} pixels (at most {allowed:,}); re-encode it, e.g. as PNG.", target)


# -- 3. pixels ----------------------------------------------------------------------------------

def load_first_frame(im: Image.Image, *, target: str, draft_to: int | None = RESIZE_TO,
                     before_load: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Decode the first frame. JPEGs much larger than ``draft_to`` decode at a reduced scale.
    ``before_load(im)`` runs after the draft and before any pixel is decoded (it may raise)."""
    try:
        if draft_to and im.format in ("JPEG", "MPO"):
            # Chooses a DCT scale 1/2, 1/4 or 1/8 keeping both sides >= draft_to.
            im.draft("RGB", (draft_to, draft_to))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001
        raise errors.validation("The image data is truncated or corrupt and cannot be decoded.",
                                target) from None
    if before_load is not None:
        before_load(im)
    try:
        # A freshly opened file is at frame 0; n_frames/is_animated are not consulted because
        # they walk every frame of a GIF.
        im.load()
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - truncated/corrupt data surfaces as OSError, ValueError, ...
        raise errors.validation("The image data is truncated or corrupt and cannot be decoded.",
                                target) from None
    return im


# -- decoding memory ----------------------------------------------------------------------------
# What decoding and preprocessing need, per pixel, beyond the encoded bytes (measured with
# bench/image_memory.py, which prints each case's estimate beside its growth):
# * Pillow keeps 1 byte per pixel for modes 1, L and P, 2 for I;16, 4 for everything else, and
#   a pointer (8 bytes) per row: a 1x40,000,000 grey PNG grew the process by 345 MiB, 305 of them
#   row pointers (review h_cpu1; measured 7.6-8.0 bytes a row from 10 to 40 million rows), and
#   so does each full-size copy preprocessing makes (a 1x25,000,000 1-bit PNG: 429 MiB; h_review17).
# * Preprocessing then holds the picture and, at the same time, what resize_center_crop_any
#   makes of it: for 1-bit and palette pictures without transparency a whole converted copy
#   (L: 1 byte per pixel, RGB: 4; a 40 Mpx GIF or palette PNG holds 200 MB, not 40), for large
#   pictures in other modes a few strips, for small ones a converted and a premultiplied copy.
# * WebP: Pillow's only WebP decoder is libwebp's animation decoder, for still pictures too: two
#   RGBA canvases, a bytes copy of the frame and the image, ~16 bytes per pixel (+610 MB for
#   40 Mpx). Nothing in Pillow decodes a WebP at a reduced size.
# * JPEG in several scans (progressive, or one scan per component): libjpeg keeps every DCT
#   coefficient of the whole picture, 2 bytes each, however small the draft (CMYK 4:4:4: 8 bytes
#   per pixel). A single-scan JPEG decodes a row of blocks at a time into the drafted picture.
WEBP_BYTES_PER_PIXEL = 16
ROW_POINTER_BYTES = 8
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def jpeg_coefficient_bytes(im: Image.Image, data: bytes) -> int:
    """Bytes of DCT coefficients libjpeg keeps for a JPEG decoded from several scans (0 for a
    single-scan JPEG or another format). Call before ``draft`` (it needs the full size)."""
    layers = getattr(im, "layer", None)
    if im.format not in ("JPEG", "MPO") or not layers:
        return 0
    layers = layers[:im.layers]    # Pillow adds one per 3 bytes of an oversized SOF
    if not im.info.get("progressive") and \
            jpeg_structure(data).first_scan_components == len(layers):
        return 0
    w, h = im.size
    hmax = max(layer[1] for layer in layers) or 1
    vmax = max(layer[2] for layer in layers) or 1
    blocks = sum(math.ceil(math.ceil(w * layer[1] / hmax) / 8) *
                 math.ceil(math.ceil(h * layer[2] / vmax) / 8) for layer in layers)
    return blocks * 64 * 2


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}   # IHDR colour type -> samples per pixel


def decoder_buffer_bytes(im: Image.Image, data: bytes) -> int:
    """What the decoder holds beside the picture (review h_diff15): a PNG's zlib decoder keeps two
    rows of file pixels, which the pixel limit does not bound (a 40,000,000x1 16-bit RGB PNG:
    2 x 240 MB); Pillow's RLE BMP decoder (Python) builds the picture in a bytearray and copies
    it to bytes while the picture exists (2 bytes per pixel)."""
    w, h = im.size
    if im.format == "PNG" and data[12:16] == b"IHDR":
        depth, colour = data[24], data[25]
        return 2 * (math.ceil(w * depth * _PNG_CHANNELS.get(colour, 4) / 8) + 1)
    if _is_rle_bmp(im):
        return 2 * w * h
    return 0


def decode_bytes(im: Image.Image, decoder_extra: int = 0) -> int:
    """Estimated peak memory of decoding and preprocessing ``im`` (opened and drafted, not
    loaded), in bytes: the larger of what decoding holds and what the picture and its
    preprocessing (:func:`preprocess_bytes`) hold together. ``decoder_extra``: what its decoder
    holds beside the picture (:func:`jpeg_coefficient_bytes`, :func:`decoder_buffer_bytes`)."""
    w, h = im.size
    stored = _BYTES_PER_PIXEL.get(im.mode, 4) * w * h + ROW_POINTER_BYTES * h
    decoding = WEBP_BYTES_PER_PIXEL * w * h if im.format == "WEBP" else stored + decoder_extra
    return max(decoding, stored + preprocess_bytes(im))


STRIP_WORK_BYTES = 6 * (8 << 20)   # strips of STRIP_BYTES converted, resampled and stacked
_RESIZABLE_BYTES = {"L": 1}        # bytes per pixel Pillow keeps for L, LA, RGB and RGBA


def preprocess_bytes(im: Image.Image) -> int:
    """What :func:`resize_center_crop_any` holds besides ``im`` itself, in bytes."""
    w, h = im.size
    mode = resizable_mode(im)
    if not whole_picture_path(im, mode):
        return STRIP_WORK_BYTES
    extra = 0
    if mode != im.mode:                               # to_resizable's converted copy
        high_bit_depth = im.mode.startswith("I") or im.mode == "F"
        extra += (_RESIZABLE_BYTES.get(mode, 4) + (13 if high_bit_depth else 0)) * w * h
        extra += ROW_POINTER_BYTES * h
    if mode in ("LA", "RGBA"):                        # Pillow premultiplies alpha into a copy
        extra += 4 * w * h + ROW_POINTER_BYTES * h
    return extra


def check_decode_bytes(im: Image.Image, decoder_extra: int, limit: int, target: str,
                       full_size: tuple[int, int]) -> None:
    need = decode_bytes(im, decoder_extra)
    if need <= limit:
        return
    w, h = full_size
    what = ("a WebP needs about 16 bytes per pixel to decode" if im.format == "WEBP" else
            "a JPEG in several scans (progressive) is decoded whole"
            if decoder_extra and im.format in ("JPEG", "MPO") else
            "decoding and preprocessing it need that much")
    raise errors.validation(
        f"The image is too large to decode: {w}x{h} = {w * h:,} pixels need about "
        f"{need / 2**20:,.0f} MiB ({what}); the limit is {limit / 2**20:,.0f} MiB "
        f"(EMBEDDINGS_MAX_IMAGE_DECODE_BYTES). Resize it before sending"
        + (", or send it as PNG or JPEG." if im.format == "WEBP" else "."), target)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag (1 when absent or unreadable)."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if value in _ORIENTATION else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, not an error
        return 1


def exif_transpose(im: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION.get(orientation)
    return im.transpose(method) if method is not None else im


def _high_bit_depth_to_l(im: Image.Image, peak: float | None = None) -> Image.Image:
    """I;16*, I and F modes -> 8-bit L by scaling (Pillow's convert("L") would clip at 255).

    ``peak``: the whole picture's :func:`_high_bit_depth_peak` when ``im`` is one strip of it
    (F and I are scaled by what the whole picture holds)."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        a8 = a.astype(np.float32) / 257.0
    elif im.mode == "F":
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        top = peak if peak is not None else (a.max() if a.size else 0.0)
        a8 = a * 255.0 if a.size and top <= 1.0 else a
    else:  # "I": 32-bit ints; PNG/TIFF-style 16-bit data when above 255
        top = peak if peak is not None else (a.max() if a.size else 0)
        a8 = a.astype(np.float32) / 257.0 if a.size and top > 255 else a.astype(np.float32)
    return Image.fromarray(np.clip(np.rint(a8), 0, 255).astype(np.uint8))


def _grey_key(im: Image.Image) -> int | None:
    """The grey value a high-bit-depth picture declares transparent (PNG tRNS), if any."""
    key = im.info.get("transparency")
    return key if isinstance(key, int) and not isinstance(key, bool) else None


def _high_bit_depth_peak(im: Image.Image, rows: int) -> float | None:
    """The largest value of an I or F picture as :func:`_high_bit_depth_to_l` sees it, read a
    strip of ``rows`` rows at a time (None for other modes, which do not need it)."""
    if im.mode not in ("I", "F"):
        return None
    top = None
    for y in range(0, im.height, rows):
        a = np.asarray(im.crop((0, y, im.width, min(im.height, y + rows))))
        if im.mode == "F":
            a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size:
            top = a.max() if top is None else max(top, a.max())
    return top


def resizable_mode(im: Image.Image) -> str:
    """The mode :func:`to_resizable` gives ``im`` (without converting anything)."""
    mode, transparent = im.mode, im.info.get("transparency") is not None
    if mode.startswith("I") or mode == "F":
        return "LA" if _grey_key(im) is not None else "L"
    if mode in ("RGBA", "LA") or (mode in ("RGB", "L") and not transparent):
        return mode
    if mode in ("1", "L", "La"):
        return "LA" if transparent or mode == "La" else "L"
    if mode in ("RGB", "RGBa", "P", "PA"):
        return "RGBA" if transparent or mode != "P" else "RGB"
    return "RGB"


def to_resizable(im: Image.Image, peak: float | None = None) -> Image.Image:
    """One of L, LA, RGB, RGBA (8-bit), keeping transparency, so resizing can come before the
    composite on white: Pillow resizes LA/RGBA with premultiplied alpha, and compositing is
    linear, so resize-then-composite equals composite-then-resize (up to rounding) while the
    full-size picture is never composited or expanded to RGB. ``peak``: see
    :func:`_high_bit_depth_to_l`."""
    if im.mode.startswith("I") or im.mode == "F":
        key = _grey_key(im)
        grey = _high_bit_depth_to_l(im, peak)
        if key is not None:   # a 16-bit grey PNG's tRNS: that one value is transparent
            grey.putalpha(Image.fromarray(((np.asarray(im) != key) * 255).astype(np.uint8)))
        im = grey
    mode, transparent = im.mode, im.info.get("transparency") is not None
    if mode in ("RGBA", "LA") or (mode in ("RGB", "L") and not transparent):
        return im
    if mode in ("1", "L", "La"):
        return im.convert("LA" if transparent or mode == "La" else "L")
    if mode in ("RGB", "RGBa", "P", "PA"):
        return im.convert("RGBA" if transparent or mode != "P" else "RGB")
    return im.convert("RGB")           # CMYK, YCbCr, LAB, HSV


def flatten(im: Image.Image) -> Image.Image:
    """Resizable mode -> 8-bit RGB, transparent pixels composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB; transparent pixels are composited on white."""
    return flatten(to_resizable(im))


# -- 4. model input -----------------------------------------------------------------------------
# The model's preprocessing is "resize the shorter side to 256 (bicubic), centre-crop 224".
# resize_shorter + center_crop spell it out; the served path, resize_center_crop, computes the
# same picture in one resample: the centred square of side shorter * 224/256 of the source,
# resized to 224x224. It never materialises the 256-px intermediate (so a 40000x1 image cannot
# blow up to 10^10 pixels), and it is the same for every EXIF orientation (a centred square is
# symmetric), so the orientation is applied to the 224x224 result.

def resize_shorter(im: Image.Image, size: int = RESIZE_TO) -> Image.Image:
    """Bicubic resize so the shorter side is ``size`` (aspect ratio kept)."""
    w, h = im.size
    if w <= h:
        new = (size, max(1, round(h * size / w)))
    else:
        new = (max(1, round(w * size / h)), size)
    return im if new == im.size else im.resize(new, Image.Resampling.BICUBIC)


def center_crop(im: Image.Image, size: int = CROP_TO) -> Image.Image:
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def center_crop_box(size: tuple[int, int], resize_to: int = RESIZE_TO,
                    crop_to: int = CROP_TO) -> tuple[float, float, float, float]:
    """The source region that ends up in the crop: a centred square (float coordinates)."""
    w, h = size
    side = min(w, h) * crop_to / resize_to
    x0, y0 = (w - side) / 2, (h - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def resize_center_crop(im: Image.Image, resize_to: int = RESIZE_TO,
                       crop_to: int = CROP_TO) -> Image.Image:
    """resize_shorter(resize_to) then center_crop(crop_to), in one bicubic resample."""
    return im.resize((crop_to, crop_to), Image.Resampling.BICUBIC,
                     box=center_crop_box(im.size, resize_to, crop_to))


# Large pictures are converted and resampled a strip at a time: converting a 40 Mpx RGBA,
# palette or 16-bit picture whole made one or two more full-size copies (Pillow premultiplies
# alpha into a copy before resizing; 16-bit became float32 arrays), +300 to +600 MB per image.
STRIP_PIXELS = 4_000_000     # up to this many pixels: to_resizable + resize_center_crop, whole
STRIP_BYTES = 8 << 20        # about this much converted picture per strip


def whole_picture_path(im: Image.Image, mode: str) -> bool:
    """Whether :func:`resize_center_crop_any` converts ``im`` (whose :func:`resizable_mode` is
    ``mode``) whole rather than a strip at a time."""
    return im.width * im.height <= STRIP_PIXELS or (im.mode in ("1", "L", "RGB", "P")
                                                    and mode in ("L", "RGB"))


def resize_center_crop_any(im: Image.Image, resize_to: int = RESIZE_TO,
                           crop_to: int = CROP_TO) -> Image.Image:
    """``resize_center_crop(to_resizable(im))`` for a picture in any mode, without ever holding
    more than one full-size converted copy of a large picture.

    1-bit, grey, RGB and palette pictures without transparency take that path as it is (at most
    one 1-to-4-byte copy). Other modes above :data:`STRIP_PIXELS` (alpha, which Pillow
    premultiplies into a copy before resizing; 16/32-bit and float; CMYK) are read a strip at a
    time, only the rows and columns the bicubic filter reaches: each strip is converted (and
    premultiplied) and resampled horizontally to ``crop_to`` columns, and the stacked strips are
    resampled vertically. That is Pillow's own two-pass resampling, except that Pillow does the
    vertical pass first for some shapes; the 8-bit rounding between the passes then differs
    (tests: under 0.25 grey levels on average, up to 16 at hard alpha edges, after compositing)."""
    mode = resizable_mode(im)
    if whole_picture_path(im, mode):
        return resize_center_crop(to_resizable(im), resize_to, crop_to)
    work = {"LA": "La", "RGBA": "RGBa"}.get(mode, mode)
    x0, y0, x1, y1 = center_crop_box(im.size, resize_to, crop_to)
    # The bicubic filter reaches 2 output pixels (2 * scale input pixels) around the box.
    mx, my = 2 * (x1 - x0) / crop_to + 2, 2 * (y1 - y0) / crop_to + 2
    xlo, xhi = max(0, int(x0 - mx)), min(im.width, math.ceil(x1 + mx))
    ylo, yhi = max(0, int(y0 - my)), min(im.height, math.ceil(y1 + my))
    rows = max(1, STRIP_BYTES // (4 * (xhi - xlo)))
    peak = _high_bit_depth_peak(im, rows)
    passed = Image.new(work, (crop_to, yhi - ylo))
    for y in range(ylo, yhi, rows):
        h = min(yhi, y + rows) - y
        strip = to_resizable(im.crop((xlo, y, xhi, y + h)), peak)
        if strip.mode != work:
            strip = strip.convert(work)
        passed.paste(strip.resize((crop_to, h), Image.Resampling.BICUBIC,
                                  box=(x0 - xlo, 0, x1 - xlo, h)), (0, y - ylo))
    out = passed.resize((crop_to, crop_to), Image.Resampling.BICUBIC,
                        box=(0, y0 - ylo, crop_to, y1 - ylo))
    return out.convert(mode) if out.mode != mode else out


def to_pixel_values(im: Image.Image) -> np.ndarray:
    """RGB image -> float32 [3, H, W] in the model's range ``(x - 127) / 128``."""
    a = np.asarray(im, dtype=np.float32)
    return np.ascontiguousarray(((a - MEAN) / STD).transpose(2, 0, 1))


def preprocess(im: Image.Image, orientation: int = 1) -> np.ndarray:
    """Decoded image (as stored, any mode) + EXIF orientation -> model input [3, 224, 224]."""
    crop = flatten(resize_center_crop_any(im))
    return to_pixel_values(exif_transpose(crop, orientation))


# -- the whole chain ----------------------------------------------------------------------------

GATE_WAIT_S = 60.0     # the longest a picture waits for room before it looks again


class DecodeGate:
    """A process-wide bound on the memory of images being decoded at once: a picture waits until
    the estimates (:func:`decode_bytes`) of those in progress plus its own fit in ``limit``; one
    picture alone always may. Requests that decode in their own threads therefore never hold
    more than ``EMBEDDINGS_MAX_IMAGE_DECODE_BYTES`` of pictures between them (plus one).

    Pictures go in the order they came: one that waits for room is not overtaken by smaller
    ones arriving after it (a 40 Mpx picture under a stream of 8 Mpx ones had waited 133 s;
    review h_chaos1 F2). ``deadline`` (``time.perf_counter()``): a picture still waiting then
    gives up (``errors.DeadlinePassed``). ``give_up``: called before a picture first waits and
    each time it is woken, under the gate's lock (so it must be quick and take no lock), it
    raises to leave the line (the checkpoint of a picture whose request has failed: it would
    otherwise keep its place, holding up those behind it, until it had room); whoever makes it
    raise calls :meth:`wake`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.in_use = 0
        self._line: deque[object] = deque()     # the pictures waiting, first come first

    @contextmanager
    def hold(self, need: int, limit: int, deadline: float | None = None,
             give_up: Callable[[], None] | None = None) -> Iterator[None]:
        with self._cond:
            me = object()
            self._line.append(me)
            try:
                while self._line[0] is not me or (self.in_use and self.in_use + need > limit):
                    if give_up is not None:
                        give_up()
                    left = GATE_WAIT_S if deadline is None else deadline - time.perf_counter()
                    if left <= 0:
                        raise errors.DeadlinePassed()
                    # at most a minute at a time: a deadline ~1e10 s away overflows wait()
                    self._cond.wait(min(left, GATE_WAIT_S))
            finally:
                self._line.remove(me)
                self._cond.notify_all()         # the next in line may fit as well
            self.in_use += need
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= need
                self._cond.notify_all()

    def wake(self) -> None:
        """Wake the pictures waiting, to call their ``give_up`` again."""
        with self._cond:
            self._cond.notify_all()


DECODE_GATE = DecodeGate()


class Checkpoint(Protocol):
    """What a caller decoding several pictures at once passes in (``decode_helpers``)."""

    # When the request stops waiting for its pictures (``time.perf_counter()``), or None: a
    # picture waiting for room in DECODE_GATE gives up then.
    deadline: float | None

    def __call__(self) -> None:
        """Called once the picture has room to decode, and each time it is woken while it
        waits for room: raises to give it up (its result would not be used;
        ``errors.DeadlinePassed`` once ``deadline`` has passed)."""

    def failed(self) -> None:
        """The picture has failed: called before its share of :data:`DECODE_GATE` is given
        back, so a picture waiting for that room can be given up."""


def decode_image(data: bytes, declared: str, *, max_pixels: int, target: str,
                 draft: bool = True, max_decode_bytes: int | None = None,
                 hold: ExitStack | None = None,
                 checkpoint: Checkpoint | None = None) -> tuple[Image.Image, int]:
    """Bytes -> (first frame as decoded, in any mode; EXIF orientation to apply).
    :func:`preprocess` converts it (a strip at a time when it is large).

    ``max_decode_bytes``: refuse (422) a picture whose decoding would need more memory
    (:func:`decode_bytes`), before any pixel is decoded; with ``hold``, also wait for room in
    :data:`DECODE_GATE` and keep it until ``hold`` closes; then ``checkpoint()``, which may
    raise to give the picture up before its pixels are decoded. The orientation is read after the
    pixels are loaded (a PNG's EXIF may follow its pixels, and reading it first would decode
    outside the error handling)."""
    im = open_image(data, declared, max_pixels=max_pixels, target=target)
    full_size = im.size
    check = None
    if max_decode_bytes is not None:
        decoder_extra = jpeg_coefficient_bytes(im, data) + decoder_buffer_bytes(im, data)

        def check(drafted: Image.Image) -> None:
            check_decode_bytes(drafted, decoder_extra, max_decode_bytes, target, full_size)
            if hold is not None:
                hold.enter_context(DECODE_GATE.hold(
                    decode_bytes(drafted, decoder_extra), max_decode_bytes,
                    checkpoint.deadline if checkpoint is not None else None, checkpoint))
            if checkpoint is not None:
                checkpoint()
    had_transparency = "transparency" in im.info
    im = load_first_frame(im, target=target, draft_to=RESIZE_TO if draft else None,
                          before_load=check)
    if im.format == "PNG" and not had_transparency:
        # A tRNS chunk after the pixel data: libpng (and so browsers) ignore it as out of place.
        # Pillow applies it after loading, which would change the preprocessing the estimate
        # counted (a premultiplied copy or strips; review h_diff15 M2).
        im.info.pop("transparency", None)
    if im.format == "BMP" and im.mode == "RGBA" and im.getextrema()[3] == (0, 0):
        # A 32-bit BMP whose alpha bytes are all 0: written by tools that store BGRA but never
        # fill the alpha (Windows DIBv5 exports). Browsers show it opaque; composited on white it
        # would be a blank picture. Filled in place, no copy.
        im.putalpha(255)
    return im, exif_orientation(im)


def image_to_pixel_values(url: str, settings: Settings, index: int, *, draft: bool = True,
                          checkpoint: Checkpoint | None = None) -> np.ndarray:
    """One wire ``image`` string -> float32 [3, 224, 224] (or an ApiError for ``input[index]``).
    ``checkpoint``: :class:`Checkpoint` (``decode_helpers`` gives up pictures after a bad one).
    A failure leaves without its frames' locals (the picture, the bytes), and is told to
    ``checkpoint.failed()``, before the picture's share of :data:`DECODE_GATE` is released: it
    may be kept while the request's other pictures decode."""
    target = _target(index)
    with ExitStack() as hold:      # DECODE_GATE, from the estimate until the picture is freed
        try:
            parsed = parse_data_url(url, max_bytes=settings.max_image_bytes, target=target)
            im, orientation = decode_image(
                parsed.data, parsed.declared, max_pixels=settings.max_image_pixels,
                target=target, draft=draft, max_decode_bytes=settings.max_image_decode_bytes,
                hold=hold, checkpoint=checkpoint)
            del parsed
            try:
                return preprocess(im, orientation)
            except (MemoryError, errors.ApiError):
                raise
            except Exception:  # noqa: BLE001 - a mode Pillow cannot convert
                raise errors.validation("The image data cannot be converted to RGB.",
                                        target) from None
            finally:
                im.close()   # frees the decoded picture (and an animation's decoder) now
        except BaseException as exc:
            parsed = None              # noqa: F841 - this frame's bytes go with the others'
            errors.free_frames(exc)
            if checkpoint is not None:
                checkpoint.failed()
                # any later picture of the request waiting for room leaves the line (cheap
                # when none is waiting)
                DECODE_GATE.wake()
            raise


def header_pixels(url: str, settings: Settings, index: int) -> int | None:
    """Width x height of a wire ``image`` from its header (no pixel decoded); None if it cannot
    be read (decoding reports why, in request order)."""
    target = _target(index)
    try:
        parsed = parse_data_url(url, max_bytes=settings.max_image_bytes, target=target)
        with open_image(parsed.data, parsed.declared, max_pixels=settings.max_image_pixels,
                        target=target) as im:
            return im.width * im.height
    except errors.ApiError:
        return None


def check_request_pixels(urls: Sequence[str], settings: Settings) -> None:
    """Refuse (422) a request whose pictures have more pixels in all than
    ``EMBEDDINGS_MAX_REQUEST_PIXELS``, from their headers, before any is decoded: a request's
    pictures are decoded one after another, at up to ~30 ns a pixel here (a 40 Mpx 16-bit RGBA
    PNG: ~1.2 s), so the 52 of those a body holds took 71 s (docs/images.md#performance). Not
    even the headers are read when the request cannot be over the cap at the per-image limit
    (16 images at the defaults); above that each header is read twice, here and when the
    picture is decoded."""
    cap = settings.max_request_pixels
    if len(urls) * settings.max_image_pixels <= cap:
        return
    total = sum(header_pixels(url, settings, i) or 0 for i, url in enumerate(urls))
    if total > cap:
        raise errors.validation(
            f"The request's images have {total:,} pixels in all; the limit per request is "
            f"{cap:,} (EMBEDDINGS_MAX_REQUEST_PIXELS; each image may have up to "
            f"{settings.max_image_pixels:,}). Split the images over several requests.", "input")


def ensure_pillow_limit(max_pixels: int) -> None:
    """Keep Pillow's decompression-bomb warning threshold at or above our own limit, so our
    check (with its clearer message) is the one that fires. Only ever raised, never lowered."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    # Opening a header that claims more than Pillow's threshold (our limit refuses it right
    # after, with a 422) would also print Pillow's "possible decompression bomb DOS attack"
    # warning to the log for every such request: noise in the Functions log, not a signal.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
