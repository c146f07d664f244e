"""The azure-ai-inference ImageEmbeddingsClient against a live local host (loopback only)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from azure.ai.inference import EmbeddingsClient, ImageEmbeddingsClient
from azure.ai.inference.models import EmbeddingEncodingFormat, ImageEmbeddingInput
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from conftest import KEY

IMAGES = Path(__file__).resolve().parent / "data" / "images"
CONSE = "minilm-conse-efficientnet-lite0"
EFF = "efficientnet-lite0"


@pytest.fixture(scope="module")
def client(live_server):
    assert live_server.url.startswith("http://127.0.0.1:")
    with ImageEmbeddingsClient(endpoint=live_server.url, credential=AzureKeyCredential(KEY),
                               retry_total=0) as c:
        yield c


def inputs():
    return [ImageEmbeddingInput.load(image_file=str(IMAGES / "chelsea.jpg"), image_format="jpeg"),
            ImageEmbeddingInput.load(image_file=str(IMAGES / "horse.png"), image_format="png")]


@pytest.fixture(scope="module")
def floats(client):
    out = {}
    for model, dims in ((CONSE, 384), (EFF, 1280)):
        res = client.embed(input=inputs(), model=model)
        assert res.model == model and len(res.data) == 2
        v = np.asarray([d.embedding for d in res.data], dtype=np.float32)
        assert v.shape == (2, dims) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
        assert res.usage.prompt_tokens == res.usage.total_tokens == 2 * 49
        out[model] = v
    return out


@pytest.mark.parametrize("model", [CONSE, EFF])
@pytest.mark.parametrize("fmt", list(EmbeddingEncodingFormat))
def test_every_encoding_format(client, floats, model, fmt):
    res = client.embed(input=inputs(), model=model, encoding_format=fmt)
    f = floats[model]
    values = [d.embedding for d in res.data]
    if fmt == EmbeddingEncodingFormat.FLOAT:
        assert np.allclose(np.asarray(values, dtype=np.float32), f, atol=1e-6)
    elif fmt == EmbeddingEncodingFormat.BASE64:
        decoded = np.stack([np.frombuffer(base64.b64decode(s), "<f4") for s in values])
        assert np.allclose(decoded, f, atol=1e-6)
    elif fmt in (EmbeddingEncodingFormat.UBINARY, EmbeddingEncodingFormat.BINARY):
        packed = np.packbits(f > 0, axis=1)
        offset = 0 if fmt == EmbeddingEncodingFormat.UBINARY else 128
        assert np.array_equal(np.asarray(values) + offset, packed)
    else:
        ints = np.asarray(values)
        offset = 0 if fmt == EmbeddingEncodingFormat.UINT8 else 128
        assert ints.shape == f.shape and (ints + offset).min() >= 0 and (ints + offset).max() <= 255


def test_image_with_text_and_default_deployment(client, floats):
    cat = ImageEmbeddingInput.load(image_file=str(IMAGES / "chelsea.jpg"), image_format="jpg")
    res = client.embed(input=[cat, ImageEmbeddingInput(image=cat.image, text="a tabby cat")])
    assert res.model == CONSE
    alone, joint = (np.asarray(d.embedding) for d in res.data)
    assert np.allclose(alone, floats[CONSE][0], atol=1e-6)
    assert 0.5 < float(alone @ joint) < 0.999
    assert res.usage.prompt_tokens == 2 * 49 + 6


def test_text_and_image_are_comparable(live_server, client):
    photos = ["chelsea.jpg", "coffee.jpg", "camera.jpg"]
    res = client.embed(input=[ImageEmbeddingInput.load(image_file=str(IMAGES / p),
                                                       image_format="jpeg") for p in photos])
    img = np.asarray([d.embedding for d in res.data])
    with EmbeddingsClient(endpoint=live_server.url, credential=AzureKeyCredential(KEY)) as text:
        q = text.embed(input=["a cat", "a cup of coffee", "a photographer with a tripod"])
    sims = np.asarray([d.embedding for d in q.data]) @ img.T
    assert list(np.argmax(sims, axis=1)) == [0, 1, 2]


def test_errors_reach_the_client(client):
    with pytest.raises(HttpResponseError) as info:
        client.embed(input=[ImageEmbeddingInput(image="https://example.com/cat.jpg")])
    assert info.value.status_code == 422
    assert info.value.response.headers["x-ms-error-code"] == "InvalidParameter"
    assert info.value.error.code == "InvalidParameter" and info.value.error.target == "input[0].image"
    with pytest.raises(HttpResponseError) as info:
        client.embed(input=[ImageEmbeddingInput(image=inputs()[0].image, text="a cat")], model=EFF)
    assert info.value.status_code == 422 and info.value.error.code == "UnsupportedParameter"


@pytest.mark.parametrize("name", [CONSE, EFF])
def test_model_info(live_server, name):
    # Both clients call the same GET /info; without a deployment it describes the text default.
    # (The client caches the answer, hence one client per deployment.)
    with ImageEmbeddingsClient(endpoint=live_server.url, credential=AzureKeyCredential(KEY)) as c:
        info = c.get_model_info(headers={"azureml-model-deployment": name})
    assert info.model_name == name and info.model_type == "image_embeddings"


def test_a_mime_type_as_image_format_gets_a_message_that_says_what_to_pass(client):
    # The SDK's docstring calls image_format "the MIME type format"; given one it builds
    # data:image/image/jpeg.
    cat = ImageEmbeddingInput.load(image_file=str(IMAGES / "chelsea.jpg"), image_format="image/jpeg")
    assert cat.image.startswith("data:image/image/jpeg;base64,")
    with pytest.raises(HttpResponseError) as e:
        client.embed(input=[cat])
    assert e.value.status_code == 422
    assert 'ImageEmbeddingInput.load(image_format="jpeg")' in e.value.error.message


def docs_python_blocks() -> list[str]:
    """docs/images.md's Python examples at the top of the page, before its first section."""
    import re

    text = (IMAGES.parents[2] / "docs" / "images.md").read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```\n", head, re.S)


def test_the_docs_python_examples_run_as_written(live_server, monkeypatch, capsys):
    """Each runs from the repository's root with only the address and key replaced, prints what
    its comment says, and the standard-library one gets the SDK's vector for the same picture."""
    from clientkit import SNIPPET_ENDPOINT, SNIPPET_KEY, loopback_only

    blocks = docs_python_blocks()
    assert len(blocks) == 2
    assert "urllib.request" in blocks[0] and "ImageEmbeddingsClient" in blocks[1]
    monkeypatch.chdir(IMAGES.parents[2])
    namespaces = []
    for code in blocks:
        assert SNIPPET_ENDPOINT in code and SNIPPET_KEY in code
        namespace: dict = {"__name__": "docs_images"}
        with loopback_only("docs/images.md"):
            exec(compile(code.replace(SNIPPET_ENDPOINT, live_server.url)  # noqa: S102
                         .replace(SNIPPET_KEY, KEY), "docs/images.md", "exec"), namespace)
        printed = capsys.readouterr().out.strip()
        assert printed == code.rsplit("# ", 1)[1].strip(), printed
        namespaces.append(namespace)
    plain, sdk = namespaces
    np.testing.assert_array_equal(np.asarray(plain["vectors"][0], np.float32),
                                  np.asarray(sdk["res"].data[0].embedding, np.float32))
    # The second item carries text as well: a different vector.
    assert float(np.dot(plain["vectors"][0], plain["vectors"][1])) < 0.999
