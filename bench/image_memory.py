"""Peak memory of decoding and preprocessing one image, per format and mode, at the limits.

    .venv/bin/python bench/image_memory.py            # every case (images cached in $TMPDIR)
    .venv/bin/python bench/image_memory.py --quick    # the two known worst cases

Every image is at most EMBEDDINGS_MAX_IMAGE_PIXELS (40 Mpx) and EMBEDDINGS_MAX_IMAGE_BYTES
(8 MiB) encoded. Each case runs in a fresh child process: the data URL is built, the kernel's
peak-RSS mark is reset (``/proc/self/clear_refs``), ``images.image_to_pixel_values`` runs (what
a request does per image), and the growth of the peak over the RSS before the call is reported.
RSS covers every allocator (Pillow's image blocks, libwebp/libjpeg/zlib buffers, numpy), which
tracemalloc would not.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_BYTES = 8 * 1024 * 1024
W, H = 8000, 5000            # 40,000,000 pixels: the default pixel limit
CACHE = Path(os.environ.get("IMAGE_MEMORY_CACHE", Path(tempfile.gettempdir()) / "image-memory-cases"))


def _gradient(mode: str, w: int | None = None, h: int | None = None):
    """A smooth picture (compresses to well under 8 MiB at 40 Mpx) in ``mode``."""
    import numpy as np
    from PIL import Image

    w, h = w or W, h or H
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    r = (x + 0 * y).astype(np.uint8)
    g = (y + 0 * x).astype(np.uint8)
    b = ((x + y) / 2).astype(np.uint8)
    if mode == "I;16":
        im = Image.fromarray(r.astype(np.uint16) * 257 + (g.astype(np.uint16) & 1))
        if im.mode != "I;16":
            raise RuntimeError(f"a 16-bit picture came out {im.mode}")
        return im
    if mode in ("L", "1"):
        return Image.fromarray(b).convert(mode) if mode == "1" else Image.fromarray(b)
    rgb = Image.merge("RGB", [Image.fromarray(c) for c in (r, g, b)])
    if mode == "RGB":
        return rgb
    a = Image.fromarray(((x * 0 + y) > 128).astype(np.uint8) * 200 + 55)
    if mode == "RGBA":
        return Image.merge("RGBA", [*rgb.split(), a])
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(b), a])
    if mode == "P":
        return rgb.quantize(64)
    if mode == "CMYK":
        return rgb.convert("CMYK")
    raise ValueError(mode)


def _bmp_rle8(w: int, h: int) -> bytes:
    """An 8-bit RLE BMP (Pillow reads RLE8 but cannot write it): horizontal colour bands."""
    rows = []
    for yy in range(h):
        colour = (yy * 64 // h) & 0xFF
        row = bytearray()
        left = w
        while left:
            n = min(255, left)
            row += bytes((n, colour))
            left -= n
        row += b"\x00\x00"                     # end of line
        rows.append(bytes(row))
    data = b"".join(rows) + b"\x00\x01"        # end of bitmap
    palette = b"".join(bytes((i * 4 % 256, i * 2 % 256, 255 - i, 0)) for i in range(256))
    header_size = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    file_header = struct.pack("<2sIHHI", b"BM", header_size + len(data), 0, 0, header_size)
    return file_header + info + palette + data


def build(name: str) -> tuple[bytes, str]:
    """(encoded bytes, wire format) for case ``name``."""
    from PIL import Image

    def save(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    name, _, pixels = name.partition(" @ ")
    global W, H
    W, H = {"16.7 Mpx": (4096, 4096), "32.5 Mpx": (6500, 5000),
            "1 Mpx": (1024, 1024)}.get(pixels, (8000, 5000))
    fmt, _, variant = name.partition(" ")
    if fmt == "png":
        mode = {"16-bit grey": "I;16", "palette+tRNS": "P", "1-bit": "1"}.get(variant, variant.split()[0])
        im = _gradient(mode)
        kw = {"transparency": 0} if variant == "palette+tRNS" else {}
        if variant.endswith("interlaced"):
            kw["interlace"] = True   # Pillow writes Adam7 since 11.? (ignored otherwise)
        return save(im, "PNG", optimize=False, **kw), "png"
    if fmt == "jpeg":
        mode = "CMYK" if "CMYK" in variant else "L" if "grey" in variant else "RGB"
        kw = {"quality": 50, "progressive": "progressive" in variant}
        if "4:4:4" in variant:
            kw["subsampling"] = 0
        return save(_gradient(mode), "JPEG", **kw), "jpeg"
    if fmt == "webp":
        mode = "RGBA" if "RGBA" in variant else "RGB"
        w, h = (W, H)
        if "animated" in variant:
            frames = [_gradient(mode, w, h), _gradient(mode, w, h).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
            return save(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                        lossless=True, quality=0, method=0), "webp"
        return save(_gradient(mode, w, h), "WEBP", lossless="lossless" in variant,
                    quality=0 if "lossless" in variant else 30, method=0), "webp"
    if fmt == "gif":
        im = _gradient("P")
        kw = {"transparency": 0} if "tRNS" in variant else {}
        if "animated" in variant:
            return save(im, "GIF", save_all=True, append_images=[im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)],
                        **kw), "gif"
        return save(im, "GIF", **kw), "gif"
    if fmt == "bmp":
        if variant == "RLE8":
            return _bmp_rle8(W, H), "bmp"
        return save(_gradient("1"), "BMP"), "bmp"
    raise ValueError(name)


CASES = [
    "png RGB", "png RGBA", "png LA", "png L", "png 1-bit", "png P", "png palette+tRNS",
    "png 16-bit grey",
    "jpeg RGB 4:2:0", "jpeg RGB 4:4:4 progressive", "jpeg grey", "jpeg CMYK",
    "jpeg CMYK progressive",
    "webp RGB lossless", "webp RGBA lossless", "webp RGB lossy", "webp RGBA lossy",
    "webp RGB animated",
    "webp RGB lossless @ 16.7 Mpx", "webp RGBA lossy @ 16.7 Mpx", "jpeg CMYK progressive @ 32.5 Mpx",
    "gif P", "gif P tRNS", "gif P animated",
    "bmp 1-bit", "bmp RLE8", "bmp RLE8 @ 1 Mpx",
]
QUICK = ["png 16-bit grey", "webp RGB lossless"]


def cache_dir() -> Path:
    """Where generated pictures are kept between runs: under a key of this script's text and the
    versions of Pillow and numpy that build them, so that a change to how a case is built never
    measures a picture built the old way."""
    import hashlib

    import numpy
    import PIL

    key = hashlib.sha256(Path(__file__).read_bytes() + f"|{PIL.__version__}|{numpy.__version__}"
                         .encode()).hexdigest()[:16]
    return CACHE / key


def cached(name: str) -> tuple[Path, str]:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name.replace(" ", "_").replace(":", "") + ".bin")
    meta = path.with_suffix(".fmt")
    if not path.exists():
        data, fmt = build(name)
        path.write_bytes(data)
        meta.write_text(fmt)
    return path, meta.read_text()


def _rss_kb(field: str) -> int:
    """A field of /proc/self/status (KiB); an error if it is not there (it read as 0: a missing
    VmRSS gave the whole peak as the growth, a missing VmHWM a negative growth)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str, fmt: str) -> None:
    import base64

    from PIL import Image

    from embedding_core import errors, images
    from embedding_core.settings import Settings

    settings = Settings()   # the default limits, whatever memory this machine has
    images.ensure_pillow_limit(settings.max_image_pixels)
    data = Path(path).read_bytes()
    url = f"data:image/{fmt};base64," + base64.b64encode(data).decode()
    del data
    # Warm up the code paths (imports, Pillow plugins) on a small image of the same format.
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, {"jpeg": "JPEG"}.get(fmt, fmt.upper()))
    images.image_to_pixel_values(f"data:image/{fmt};base64," + base64.b64encode(small.getvalue()).decode(),
                                 settings, 0)
    with open("/proc/self/clear_refs", "w") as fh:   # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    estimates = []                                   # what the decode gate counted
    counted = images.decode_bytes
    images.decode_bytes = lambda *a, **k: estimates.append(counted(*a, **k)) or estimates[-1]
    before = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    try:
        images.image_to_pixel_values(url, settings, 0)
        outcome = "ok"
    except errors.ApiError as exc:
        outcome = f"{exc.status} {exc.code}: {exc.message[:90]}"
    seconds = time.perf_counter() - t0
    peak = _rss_kb("VmHWM")
    encoded = base64.b64decode(url.split(",", 1)[1])
    im = Image.open(io.BytesIO(encoded))
    print(json.dumps({"size": im.size, "mode": im.mode, "bytes": len(encoded),
                      "growth_mb": (peak - before) / 1024, "seconds": seconds,
                      "estimate_mb": estimates[-1] / 2**20 if estimates else None,
                      "outcome": outcome}))


def run(names: list[str]) -> tuple[list[dict], list[str]]:
    """The rows of the cases that ran, and the names of those that failed."""
    rows, failed = [], []
    print("| image | size | mode | encoded | peak growth MiB | estimate MiB | s | outcome |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        path, fmt = cached(name)
        if path.stat().st_size > MAX_BYTES:
            raise RuntimeError(f"{name}: {path.stat().st_size} bytes, over the limit")
        res = subprocess.run([sys.executable, __file__, "--child", str(path), fmt], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        if res.returncode:
            print(f"| {name} | failed: {res.stderr.strip().splitlines()[-1:]} |", flush=True)
            failed.append(name)
            continue
        r = {"case": name, **json.loads(res.stdout.strip().splitlines()[-1])}
        rows.append(r)
        w, h = r["size"]
        estimate = "-" if r["estimate_mb"] is None else f"{r['estimate_mb']:.0f}"
        print(f"| {name} | {w}x{h} | {r['mode']} | {r['bytes'] / 1024:,.0f} KB | "
              f"{r['growth_mb']:.0f} | {estimate} | {r['seconds']:.2f} | {r['outcome']} |",
              flush=True)
    return rows, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    names = QUICK if args.quick else CASES
    if args.only:
        valid, names = names, [n for n in names if any(o in n for o in args.only)]
        if not names:       # nothing run: an empty table and file, and the step passed
            ap.error(f"no case matches --only {' '.join(map(repr, args.only))}; the cases"
                     f"{' (--quick)' if args.quick else ''}: {', '.join(valid)}")
    rows, failed = run(names)
    failure = f"{len(failed)} of {len(names)} cases failed: {', '.join(failed)}" if failed else None
    if args.out:
        # A list of rows is a run whose every case ran; a failed run's file says so at the top,
        # with the rows of the cases that did run.
        Path(args.out).write_text(json.dumps({"failed": failure, "cases": rows} if failure
                                             else rows, indent=1) + "\n")
    if failure:    # make bench-smoke (CI) must not pass with a case that did not run
        sys.exit(failure)


if __name__ == "__main__":
    main()
