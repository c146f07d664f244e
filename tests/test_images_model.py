"""The image backends on real photos: EfficientNet-Lite0 outputs against a PyTorch reference,
format variants, batching, and the ConSE vectors (tests/data/images, reference.json)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import registry_of, shipped_deployments
from embedding_core import images
from embedding_core.errors import ApiError
from embedding_core.image_backend import (ConseBackend, ImageFeatureBackend, combine, conse_vectors,
                                          softmax)
from embedding_core.schema import ImageInput
from embedding_core.settings import Settings

IMAGES = Path(__file__).resolve().parent / "data" / "images"
SYN = IMAGES / "synthetic"
REFERENCE = json.loads((IMAGES / "reference.json").read_text(encoding="utf-8"))
PHOTOS = sorted(REFERENCE["photos"])
FMT = {"jpg": "jpeg", "png": "png", "gif": "gif", "bmp": "bmp", "webp": "webp"}
VARIANTS = sorted(p.name for p in SYN.iterdir() if p.name.startswith("cat"))


def item(path: Path, text: str | None = None) -> ImageInput:
    data = base64.b64encode(path.read_bytes()).decode()
    return ImageInput(f"data:image/{FMT[path.suffix[1:]]};base64,{data}", text)


@pytest.fixture(scope="module")
def eff(registry) -> ImageFeatureBackend:
    return registry.backend(registry.find("efficientnet-lite0"))


@pytest.fixture(scope="module")
def conse(registry) -> ConseBackend:
    return registry.backend(registry.default_for("image"))


@pytest.fixture(scope="module")
def photo_pixels(eff) -> np.ndarray:
    return np.stack(eff.model.pixel_values([item(IMAGES / n) for n in PHOTOS]))


# -- EfficientNet-Lite0 against the PyTorch reference ------------------------------------------

def test_preprocessing_matches_reference(photo_pixels):
    for name, x in zip(PHOTOS, photo_pixels):
        ref = REFERENCE["photos"][name]
        assert np.allclose(x.mean(axis=(1, 2)), ref["pixel_mean"], atol=1e-5), name
        assert np.allclose(x.std(axis=(1, 2)), ref["pixel_std"], atol=1e-5), name


def test_embeddings_match_torch_reference(eff):
    got = eff.encode([item(IMAGES / n) for n in PHOTOS]).vectors
    assert got.shape == (len(PHOTOS), 1280) and got.dtype == np.float32
    for name, v in zip(PHOTOS, got):
        ref = np.frombuffer(base64.b64decode(REFERENCE["photos"][name]["embedding"]), "<f4")
        assert float(v @ ref) >= 0.99999, name                     # measured 1 - 1e-7
        assert np.abs(v - ref).max() <= 1e-4, name


def test_top_classes_match_reference(eff, photo_pixels):
    probs = softmax(eff.model.outputs(list(photo_pixels), "logits"))
    for name, p in zip(PHOTOS, probs):
        ref = REFERENCE["photos"][name]["top5"]
        assert int(np.argmax(p)) == ref[0]["index"], name
        assert np.allclose([p[r["index"]] for r in ref], [r["p"] for r in ref], atol=1e-4), name


@pytest.mark.parametrize("photo, classes", [
    ("camera.jpg", {"tripod"}), ("coffee.jpg", {"espresso"}), ("ascent.jpg", {"bannister"}),
    ("chelsea.jpg", {"tiger cat", "Egyptian cat", "tabby"}),
])
def test_top1_class_is_sensible(photo, classes):
    assert REFERENCE["photos"][photo]["top5"][0]["name"] in classes


# -- variants, batching, draft --------------------------------------------------------------------

# Cosine of each variant to the original cat, measured: EfficientNet >= 0.90 (greyscale and the
# 16-bit greyscale PNG lose the colour; colour variants >= 0.97), ConSE >= 0.927. The closest
# *other* photo is at 0.25 (EfficientNet) and 0.69 (ConSE).
FLOOR = {"efficientnet-lite0": (0.96, 0.88), "minilm-conse-efficientnet-lite0": (0.97, 0.90)}


@pytest.mark.parametrize("backend_name", ["eff", "conse"])
def test_every_variant_gives_the_cat(request, backend_name):
    backend = request.getfixturevalue(backend_name)
    colour, grey = FLOOR[backend.deployment.name]
    cat = backend.encode([item(IMAGES / "chelsea.jpg")]).vectors[0]
    others = backend.encode([item(IMAGES / n) for n in PHOTOS if n != "chelsea.jpg"]).vectors
    variants = backend.encode([item(SYN / n) for n in VARIANTS]).vectors
    nearest_other = float((others @ cat).max())
    for name, v in zip(VARIANTS, variants):
        cos = float(v @ cat)
        floor = grey if name in ("cat_grey.jpg", "cat_16bit.png") else colour
        assert cos >= floor and cos > nearest_other + 0.2, (name, cos, nearest_other)


def test_animation_embeds_its_first_frame(eff):
    gif, cat, coffee = eff.encode([item(SYN / "cat_anim.gif"), item(IMAGES / "chelsea.jpg"),
                                   item(IMAGES / "coffee.jpg")]).vectors
    assert gif @ cat > 0.95 > 0.5 > gif @ coffee


@pytest.mark.parametrize("backend_name", ["eff", "conse"])
def test_batch_does_not_change_an_embedding(request, backend_name):
    backend = request.getfixturevalue(backend_name)
    items = [item(IMAGES / n, "a photo" if backend_name == "conse" and i % 2 else None)
             for i, n in enumerate(PHOTOS[:7])]
    together = backend.encode(items).vectors
    alone = np.stack([backend.encode([x]).vectors[0] for x in items])
    assert np.abs(together - alone).max() <= 1e-5


def test_micro_batches_restore_order(registry, eff):
    small = ImageFeatureBackend(eff.deployment, Settings.from_env({"EMBEDDINGS_MAX_BATCH_SIZE": "2"}),
                                registry)
    assert small.model.batch_size == 2 and small.model.session is eff.model.session  # shared
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(eff.model.session, name)

        def run(self, outputs, feeds):
            calls.append(len(feeds["pixel_values"]))
            return eff.model.session.run(outputs, feeds)

    small.model.session = Spy()
    items = [item(IMAGES / n) for n in PHOTOS[:5]]
    assert np.abs(small.encode(items).vectors - eff.encode(items).vectors).max() <= 1e-5
    assert calls == [2, 2, 1]


def test_jpeg_draft_does_not_change_the_result_materially(eff):
    big = Image.open(IMAGES / "chelsea.jpg").resize((1804, 1200), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    settings = Settings.from_env({})
    x = np.stack([images.image_to_pixel_values(url, settings, 0, draft=d) for d in (True, False)])
    drafted, exact = eff.model.outputs(list(x), "embedding")
    assert float(drafted @ exact) >= 0.998                          # measured 0.9994


def test_one_resample_preprocessing_matches_the_two_step_reference(eff):
    im = images.to_rgb(Image.open(IMAGES / "chelsea.jpg"))       # 451x300: the least exact case
    x = np.stack([images.preprocess(im),
                  images.to_pixel_values(images.center_crop(images.resize_shorter(im)))])
    a, b = eff.model.outputs(list(x), "embedding")
    assert float(a @ b) >= 0.997                                  # measured 0.9979 (half-pixel shift)


# -- ConSE ----------------------------------------------------------------------------------------

def test_class_matrix(conse):
    m = conse.class_matrix
    assert m.shape == (1000, 384) and m.dtype == np.float32
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    assert conse.top_t == conse.deployment.options["top_t"]


def test_conse_is_the_weighted_mean_of_the_top_classes(conse, eff, photo_pixels):
    logits = eff.model.outputs(list(photo_pixels), "logits")
    got = conse.encode([item(IMAGES / n) for n in PHOTOS]).vectors
    expected = np.empty_like(got)
    for k, row in enumerate(logits.astype(np.float64)):
        p = np.exp(row - row.max())
        p /= p.sum()
        top = np.argsort(-p)[: conse.top_t]
        v = (p[top] / p[top].sum()) @ conse.class_matrix[top].astype(np.float64)
        expected[k] = v / np.linalg.norm(v)
    assert np.abs(got - expected).max() <= 1e-5
    one = conse_vectors(logits, conse.class_matrix, 1)
    assert np.allclose(one, conse.class_matrix[np.argmax(logits, axis=1)], atol=1e-6)


def test_text_is_combined_with_equal_weight(conse):
    text = "a tabby cat sitting on a table"
    img, joint = conse.encode([item(IMAGES / "chelsea.jpg"),
                               item(IMAGES / "chelsea.jpg", text)]).vectors
    t = conse.text_backend.encode([text]).vectors[0]
    assert conse.text_weight == 0.5
    expected = (img + t) / np.linalg.norm(img + t)
    assert np.abs(joint - expected).max() <= 1e-5
    assert np.allclose(combine(img[None], t[None], 0.5)[0], expected, atol=1e-6)
    assert joint @ t > img @ t and joint @ img > t @ img


def conse_with(text_weight=None, text_prompts=None):
    """The shipped joint deployment with another ``text_weight``, or its text deployment with
    ``prompts``: the shipped values (0.5, none) are the ones that cannot tell sides apart."""
    deps = shipped_deployments()
    joint = next(d for d in deps if d["backend"] == "image-conse")
    if text_weight is not None:
        joint["options"]["text_weight"] = text_weight
    if text_prompts is not None:
        next(d for d in deps if d["name"] == "all-MiniLM-L6-v2")["prompts"] = text_prompts
    reg = registry_of(deps)
    return reg, reg.find(joint["name"])


def test_text_weight_is_the_weight_of_the_text():
    reg, dep = conse_with(text_weight=0.25)
    joint_backend = reg.backend(dep)
    text = "a tabby cat sitting on a table"
    img, joint = joint_backend.encode([item(IMAGES / "chelsea.jpg"),
                                       item(IMAGES / "chelsea.jpg", text)]).vectors
    t = joint_backend.text_backend.encode([text]).vectors[0]
    expected = 0.75 * img.astype(np.float64) + 0.25 * t
    assert np.abs(joint - expected / np.linalg.norm(expected)).max() <= 1e-5


def test_a_text_weight_outside_0_to_1_fails_the_load(caplog):
    reg, dep = conse_with(text_weight=1.5)             # the picture would weigh -0.5
    with pytest.raises(ApiError) as refused:
        reg.backend(dep)
    assert (refused.value.status, refused.value.code) == (503, "ModelUnavailable")
    assert "text_weight must be in [0, 1]" in caplog.text


def test_an_items_text_gets_the_text_deployments_prompt_for_the_input_type():
    """The joint vector's text is the text route's for the same input_type (an e5-style
    deployment's 'query: '), so both live in one space."""
    reg, dep = conse_with(text_prompts={"query": "query: "})
    joint_backend = reg.backend(dep)
    text = "a tabby cat"
    img, joint = joint_backend.encode([item(IMAGES / "chelsea.jpg"),
                                       item(IMAGES / "chelsea.jpg", text)],
                                      input_type="query").vectors
    texts = joint_backend.text_backend
    prompted = combine(img[None], texts.encode([text], input_type="query").vectors, 0.5)[0]
    plain = combine(img[None], texts.encode([text]).vectors, 0.5)[0]
    assert np.abs(joint - prompted).max() <= 1e-5 and np.abs(joint - plain).max() > 1e-3


def test_image_vectors_are_unit_vectors_whatever_output_is_served():
    """The shipped 'embedding' output is normalised in the graph; a deployment serving another
    output (here the 1,000 logits) is normalised by the backend, as int8 calibration and dot
    products assume."""
    eff_dep = next(d for d in shipped_deployments() if d["backend"] == "image-onnx")
    eff_dep.update(name="efficientnet-logits", aliases=[], default=False, dimensions=1000,
                   matryoshka_dimensions=[], calibration=None)
    eff_dep["options"]["output"] = "logits"
    reg = registry_of([eff_dep])
    vecs = reg.backend(reg.find("efficientnet-logits")).encode(
        [item(IMAGES / "chelsea.jpg"), item(IMAGES / "coffee.jpg")]).vectors
    assert vecs.shape == (2, 1000)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_usage_counts_image_tokens_plus_text_tokens(conse, eff):
    per_image = conse.deployment.options["image_tokens"]
    assert per_image == eff.deployment.options["image_tokens"] == 49
    text = "a tabby cat"
    n_text = len(conse.text_backend.tokenize([text])[0])           # [CLS] a tab ##by cat [SEP]
    enc = conse.encode([item(IMAGES / "chelsea.jpg"), item(IMAGES / "coffee.jpg", text)])
    assert enc.prompt_tokens == 2 * per_image + n_text
    assert eff.encode([item(IMAGES / "chelsea.jpg")] * 3).prompt_tokens == 3 * per_image


def test_backends_report_loaded(eff, conse, registry):
    assert eff.loaded() and conse.loaded()
    assert registry.is_loaded(registry.find("all-MiniLM-L6-v2"))   # ConSE loads its text model


def test_registry_matches_the_matrix_provenance(conse, registry):
    root = Path(__file__).resolve().parent.parent / "embedding_core" / "models" / "imagenet"
    prov = json.loads((root / "class_embeddings.json").read_text(encoding="utf-8"))
    opts = conse.deployment.options
    assert (opts["top_t"], opts["prompt"], opts["class_names"]) == (
        prov["top_t"], prov["prompt"], prov["names"])
    assert conse.deployment.files["class_matrix"].sha256 == prov["npy_sha256"]
    assert prov["text_model_sha256"] == registry.find(opts["text_deployment"]).files["model"].sha256
    # int8/uint8 codes of images and texts are comparable: one set of ranges for both.
    assert conse.deployment.calibration == registry.find(opts["text_deployment"]).calibration
