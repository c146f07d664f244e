"""One-time job: reference outputs of EfficientNet-Lite0 on the committed photos.

Runs in the tools env (needs torch; the served path uses onnxruntime):

    .venv-tools/bin/python scripts/make_image_reference.py

Each photo in ``tests/data/images`` goes through the service's own preprocessing
(``embedding_core.images``: data URL -> decode -> RGB -> resize 256 bicubic -> centre crop 224
-> ``(x - 127) / 128``) and then through the *PyTorch* network (``efficientnet-lite-pytorch``,
the model the ONNX file was exported from), so the test
``tests/test_images_model.py`` compares the served onnxruntime outputs with an independent
runtime. Writes ``tests/data/images/reference.json``: per photo, the 1280-d embedding (base64 of
little-endian float32), the top-5 ImageNet classes with probabilities, and per-channel mean/std
of the preprocessed tensor (to notice a preprocessing change separately from a model change).
"""

from __future__ import annotations

import base64
import importlib.metadata as md
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from embedding_core import images  # noqa: E402
from embedding_core.settings import Settings  # noqa: E402
from export_efficientnet_lite0 import build, sha256_of  # noqa: E402

PHOTOS = ROOT / "tests" / "data" / "images"
OUT = PHOTOS / "reference.json"
MODEL = ROOT / "embedding_core" / "models" / "efficientnet-lite0" / "model.onnx"


def main() -> None:
    torch.set_num_threads(1)
    settings = Settings.from_env({})
    classes = (ROOT / "embedding_core" / "models" / "imagenet" / "classes.txt").read_text().splitlines()
    model = build()
    files = sorted(p.name for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
    out: dict = {
        "_provenance": {
            "producer": ".venv-tools/bin/python scripts/make_image_reference.py",
            "preprocessing": "embedding_core.images.image_to_pixel_values (this commit)",
            "runtime": f"torch {md.version('torch')} float32, efficientnet-lite-pytorch "
                       f"{md.version('efficientnet-lite-pytorch')}, pillow {md.version('pillow')}",
            "onnx_model_sha256": sha256_of(MODEL),
            "embedding": "base64 of little-endian float32 [1280], L2-normalised",
        },
        "photos": {},
    }
    for i, name in enumerate(files):
        fmt = "png" if name.endswith(".png") else "jpeg"
        url = f"data:image/{fmt};base64," + base64.b64encode((PHOTOS / name).read_bytes()).decode()
        x = images.image_to_pixel_values(url, settings, i)
        with torch.no_grad():
            emb, logits = model(torch.from_numpy(x[None]))
        emb = emb[0].numpy().astype("<f4")
        p = torch.softmax(logits[0].double(), 0).numpy()
        top = np.argsort(-p)[:5]
        out["photos"][name] = {
            "embedding": base64.b64encode(emb.tobytes()).decode(),
            "top5": [{"index": int(k), "name": classes[k], "p": round(float(p[k]), 6)} for k in top],
            "pixel_mean": [round(float(v), 6) for v in x.mean(axis=(1, 2))],
            "pixel_std": [round(float(v), 6) for v in x.std(axis=(1, 2))],
        }
        print(f"{name}: {classes[top[0]]} ({p[top[0]]:.3f})", file=sys.stderr)
    OUT.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
