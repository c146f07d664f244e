"""What an image request costs with photo-sized pictures, in-process through ``function_app``
(a ``func.HttpRequest``, as the Functions host hands it over): one client, one request at a time,
the process's CPU per image and the request's wall time, split by the ``x-inference-time``
header into the model and everything before it (parsing, base64, decoding, preprocessing).
``make bench``'s image workload sends 224-pixel JPEGs, whose decoding costs little; phones and
cameras send 2-12 Mpx. Pictures are the committed test photos scaled up with a little noise (a
fixed seed), so their files are about as large as a camera's. Not part of ``make bench``.
Usage: .venv/bin/python bench/image_cost.py [--repeats N] [--out FILE]"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    parser.add_argument("--note", default="", help="recorded in --out (e.g. what code ran)")
    args = parser.parse_args()
    os.environ.setdefault("EMBEDDINGS_API_KEYS", KEY)
    import azure.functions as func

    import bench
    import function_app

    def request(body: bytes):
        return func.HttpRequest(
            "POST", "http://127.0.0.1:7071/images/embeddings?api-version=2024-05-01-preview",
            params={"api-version": "2024-05-01-preview"}, body=body,
            headers={"api-key": os.environ["EMBEDDINGS_API_KEYS"].split(",")[0],
                     "content-type": "application/json"})

    results = {}
    for name, fmt, width, height, n in CASES:
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
        print(f"{name}, {n} per request ({len(body) / 2**20:.1f} MiB body): "
              f"{med['cpu_ms_per_image']:.1f} ms of CPU per image; a request "
              f"{med['wall_ms']:.0f} ms ({med['before_inference_ms']:.0f} before inference, "
              f"{med['inference_ms']:.0f} inference) (medians of {args.repeats})")
    if args.out:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        out = {"machine": bench.machine(), "commit": commit, "note": args.note,
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cases": results}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
