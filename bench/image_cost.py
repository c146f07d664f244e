"""What an image request costs with photo-sized pictures, in-process through ``function_app``
(a ``func.HttpRequest``, as the Functions host hands it over): one client, one request at a time,
the process's CPU per image and the request's wall time, split by the ``x-inference-time``
header into the model and everything before it (parsing, base64, decoding, preprocessing).
``make bench``'s image workload sends 224-pixel JPEGs, whose decoding costs little; phones and
cameras send 2-12 Mpx. Pictures are the committed test photos scaled up with a little noise (a
fixed seed), so their files are about as large as a camera's. Not part of ``make bench``.
Usage: .venv/bin/python bench/image_cost.py [--repeats N] [--out FILE] [--largest [--images N]]"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import zlib
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEY = "local-dev-key-0000"
# (name, format, width, height, images per request): a phone's 12 Mpx JPEGs (8 fit in the 32 MiB
# body), 2 Mpx JPEGs and 1 Mpx PNGs (screenshots, exports) by 16.
CASES = (("JPEG 4000x3000", "JPEG", 4000, 3000, 8), ("JPEG 1600x1200", "JPEG", 1600, 1200, 16),
         ("PNG 1000x800", "PNG", 1000, 800, 16))


def photos(fmt: str, width: int, height: int, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
    urls = []
    for i in range(n):
        im = Image.open(files[i % len(files)]).convert("RGB").resize((width, height),
                                                                     Image.BICUBIC)
        noisy = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        urls.append(f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


def png(width: int, height: int, depth: int, colour_type: int, pixel: bytes,
        interlaced: bool) -> bytes:
    """A PNG whose every row is Paeth-filtered (the dearest filter to undo), each row's filtered
    bytes ``pixel`` repeated (so the decoded picture is not of one colour: ``pixel`` is the
    residual), written directly (Pillow writes no 16-bit colour PNGs and no interlaced ones)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    passes = ([(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
               (0, 1, 1, 2)] if interlaced else [(0, 0, 1, 1)])
    z = zlib.compressobj(9)
    out = []
    for x0, y0, dx, dy in passes:
        cols, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if cols <= 0 or rows <= 0:
            continue
        row = b"\x04" + pixel * cols
        for y in range(0, rows, 64):
            out.append(z.compress(row * min(64, rows - y)))
    out.append(z.flush())
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(out))
            + chunk(b"IEND", b""))


def costliest(width: int = 8000, height: int = 5000) -> tuple[dict, str]:
    """CPU of one picture at the per-image pixel limit, decoded and preprocessed as a request
    does, for the kinds found dearest per pixel (review h_review21): the data URL of the dearest."""
    from PIL import Image

    from embedding_core import images
    from embedding_core.settings import Settings

    def pillow(mode: str, colour) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (width, height), colour).save(buf, "PNG")
        return buf.getvalue()

    rgba16 = bytes([10, 0, 200, 0, 30, 0, 128, 0])
    kinds = {
        "RGBA 16-bit PNG, Paeth, interlaced": png(width, height, 16, 6, rgba16, True),
        "RGBA 16-bit PNG, Paeth": png(width, height, 16, 6, rgba16, False),
        "RGBA PNG, half transparent (Pillow)": pillow("RGBA", (10, 200, 30, 128)),
        "RGB PNG (Pillow)": pillow("RGB", (10, 200, 30)),
        "16-bit grey PNG (Pillow)": pillow("I;16", 1000),
    }
    settings = Settings.from_env({})
    table, urls = {}, {}
    for name, data in kinds.items():
        urls[name] = "data:image/png;base64," + base64.b64encode(data).decode()
        cpu = []
        for _ in range(2):
            c0 = time.process_time()
            images.image_to_pixel_values(urls[name], settings, 0)
            cpu.append(time.process_time() - c0)
        table[name] = {"file_bytes": len(data), "cpu_s": min(cpu)}
        print(f"  {name}: {len(data) / 1e3:.0f} KB, {min(cpu):.2f} s of CPU")
    dearest = max(table, key=lambda k: table[k]["cpu_s"])
    return {"kinds": table, "dearest": dearest}, urls[dearest]


def no_caller_telemetry() -> None:
    """The caller's telemetry (an APPLICATIONINSIGHTS_CONNECTION_STRING, OTEL_*) out of this
    process's environment: it would export from the process measured. Its EMBEDDINGS_* limits
    apply on purpose (--images says which to raise)."""
    for name in [k for k in os.environ if k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))]:
        del os.environ[name]


def one_image(request) -> tuple[bytes, list[float]]:
    """The probe's body (one 451x300 JPEG) and 11 timings of it alone, in seconds."""
    import function_app

    photo = (ROOT / "tests" / "data" / "images" / "chelsea.jpg").read_bytes()
    small = json.dumps({"input": [{"image": "data:image/jpeg;base64,"
                                   + base64.b64encode(photo).decode()}]}).encode()
    alone = []
    for _ in range(11):
        t0 = time.perf_counter()
        status = function_app.image_embeddings(request(small)).status_code
        alone.append(time.perf_counter() - t0)
        if status != 200:                   # not the time of a one-image request served
            raise RuntimeError(f"the one-image request alone: {status}")
    return small, alone


def largest(request, images: int | None = None, probe_every_s: float = 0.5) -> dict:
    """The largest image request the limits allow (or of ``images`` pictures), of the dearest
    pictures to decode (:func:`costliest`), with a one-image request (a 451x300 JPEG) every
    ``probe_every_s`` while it runs; then as many of them as the body holds (the pixel cap
    refuses them at the defaults). Run in a process of its own (peak RSS is the process's)."""
    import resource
    import threading

    import bench
    from embedding_core.settings import Settings

    s = Settings.from_env(os.environ)
    kinds, url = costliest()
    item = {"image": url}
    n = images or s.max_request_pixels // (8000 * 5000)
    import function_app

    small, alone = one_image(request)
    big: dict = {}

    def run_big() -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            res = function_app.image_embeddings(request(json.dumps({"input": [item] * n}).encode()))
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
            big["error"] = exc
            return
        big.update(status=res.status_code, wall_s=time.perf_counter() - t0,
                   process_cpu_s=time.process_time() - c0)

    thread = threading.Thread(target=run_big)
    thread.start()
    probes, statuses = [], set()
    for _ in bench.while_running(thread, probe_every_s):
        t0 = time.perf_counter()
        statuses.add(function_app.image_embeddings(request(small)).status_code)
        probes.append(time.perf_counter() - t0)
    thread.join()
    if "error" in big:
        raise big["error"]
    if big["status"] != 200:    # its time, CPU and peak RSS would be those of a refusal
        raise RuntimeError(f"the largest request ({n} images) was answered {big['status']}")
    if not probes:
        raise RuntimeError(f"no one-image request went out while the largest request ran "
                           f"({big['wall_s']:.2f} s; one every {probe_every_s} s)")
    t0 = time.perf_counter()
    fit = min(s.max_image_inputs, (s.max_image_body_bytes - 64) // (len(url) + 16))
    refused = function_app.image_embeddings(request(json.dumps({"input": [item] * fit}).encode()))
    return {**kinds, "images": n, "max_request_pixels": s.max_request_pixels, **big,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "one_image_alone_p50_ms": 1e3 * statistics.median(alone),
            "one_image_during": {"n": len(probes), "p50_ms": 1e3 * statistics.median(probes),
                                 "max_ms": 1e3 * max(probes), "statuses": sorted(statuses)},
            "as_many_as_fit": {"images": fit, "status": refused.status_code,
                          "ms": 1e3 * (time.perf_counter() - t0)}}


def probed(request, body: bytes, repeats: int, every_s: float = 0.1) -> dict:
    """A one-image request (a 451x300 JPEG), each ``every_s`` after the last one's answer, while
    ``body`` is sent ``repeats`` times back to back: how long the small one waits for a large
    one's decoding."""
    import threading

    import bench
    import function_app

    small, alone = one_image(request)
    answers: list = []          # the large requests' statuses (or what one raised)

    def run_large() -> None:
        try:
            for _ in range(repeats):
                answers.append(function_app.image_embeddings(request(body)).status_code)
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
            answers.append(exc)
    thread = threading.Thread(target=run_large)
    thread.start()
    probes = []
    for _ in bench.while_running(thread, every_s):
        t0 = time.perf_counter()
        if function_app.image_embeddings(request(small)).status_code != 200:
            raise RuntimeError("a one-image probe failed")
        probes.append(time.perf_counter() - t0)
    thread.join()
    # The probes waited for the large request's decoding only if it was served: a refused one
    # (413, 429) is answered before decoding, and the probes' times were those of no wait.
    if failed := [a for a in answers if a != 200]:
        if isinstance(failed[0], Exception):
            raise failed[0]
        raise RuntimeError(f"the large request probed was answered {failed[0]} "
                           f"({len(failed)} of {repeats})")
    if not probes:
        raise RuntimeError(f"no one-image request went out while the large request probed ran "
                           f"({repeats} times; one every {every_s} s)")
    return {"n": len(probes), "alone_p50_ms": round(1e3 * statistics.median(alone), 1),
            "p50_ms": round(1e3 * statistics.median(probes), 1),
            "max_ms": round(1e3 * max(probes), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    parser.add_argument("--note", default="", help="recorded in --out (e.g. what code ran)")
    parser.add_argument("--largest", action="store_true",
                        help="only the largest request the limits allow, with one-image probes")
    parser.add_argument("--images", type=int,
                        help="with --largest: this many pictures (raise EMBEDDINGS_MAX_REQUEST_PIXELS)")
    parser.add_argument("--probes", action="store_true",
                        help="also time a one-image request, 0.1 s after the last one, while "
                             "each case's request runs --repeats times back to back")
    args = parser.parse_args()
    import bench
    no_caller_telemetry()
    os.environ.setdefault("EMBEDDINGS_API_KEYS", KEY)
    import azure.functions as func

    import function_app

    def request(body: bytes):
        return func.HttpRequest(
            "POST", "http://127.0.0.1:7071/images/embeddings?api-version=2024-05-01-preview",
            params={"api-version": "2024-05-01-preview"}, body=body,
            headers={"api-key": os.environ["EMBEDDINGS_API_KEYS"].split(",")[0],
                     "content-type": "application/json"})

    results: dict = {}
    if args.largest:
        results["largest"] = r = largest(request, args.images)
        print(f"largest: {r['images']} x {r['dearest']}: {r['status']} in {r['wall_s']:.1f} s "
              f"({r['process_cpu_s']:.1f} s CPU), peak RSS {r['peak_rss_mb']:.0f} MiB; a one-image "
              f"request meanwhile p50 {r['one_image_during']['p50_ms']:.0f} ms (alone "
              f"{r['one_image_alone_p50_ms']:.0f}), max {r['one_image_during']['max_ms']:.0f} ms, "
              f"{r['one_image_during']['n']} requests, status {r['one_image_during']['statuses']}; "
              f"{r['as_many_as_fit']['images']} of them (as many as the body holds): "
              f"{r['as_many_as_fit']['status']} in {r['as_many_as_fit']['ms']:.0f} ms")
    for name, fmt, width, height, n in CASES if not args.largest else ():
        urls = photos(fmt, width, height, n)
        body = json.dumps({"input": [{"image": u} for u in urls],
                           "encoding_format": "base64"}).encode()
        function_app.image_embeddings(request(body))          # warm: models, first decode
        rows = []
        for _ in range(args.repeats):
            req = request(body)
            c0, t0 = time.process_time(), time.perf_counter()
            res = function_app.image_embeddings(req)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if res.status_code != 200:
                raise RuntimeError(f"{name}: {res.status_code} {res.get_body()[:300]!r}")
            inference = float(res.headers["x-inference-time"]) / 1e3
            rows.append({"cpu_ms_per_image": 1e3 * cpu / n, "wall_ms": 1e3 * wall,
                         "before_inference_ms": 1e3 * (wall - inference),
                         "inference_ms": 1e3 * inference})
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        results[name] = {"images_per_request": n, "body_bytes": len(body),
                         "mean_file_bytes": int(sum(len(u) for u in urls) * 3 / 4 / n),
                         "medians": med, "runs": rows}
        if args.probes:
            results[name]["one_image_during"] = probed(request, body, args.repeats)
            print(f"  a one-image request meanwhile: {results[name]['one_image_during']}")
        print(f"{name}, {n} per request ({len(body) / 2**20:.1f} MiB body): "
              f"{med['cpu_ms_per_image']:.1f} ms of CPU per image; a request "
              f"{med['wall_ms']:.0f} ms ({med['before_inference_ms']:.0f} before inference, "
              f"{med['inference_ms']:.0f} inference) (medians of {args.repeats})")
    if args.out:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        if subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "embedding_core",
                           "function_app.py", "requirements.txt", "bench/image_cost.py"]).returncode:
            commit += " with uncommitted changes to the code measured"
        out = {"machine": bench.machine(), "commit": commit, "note": args.note,
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cases": results}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
