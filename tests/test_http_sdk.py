"""Real clients through the local host over HTTP: azure-ai-inference (sync and aio) and openai
on the Azure route."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from azure.ai.inference import EmbeddingsClient
from azure.ai.inference.models import EmbeddingEncodingFormat, EmbeddingInputType
from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from conftest import API_VERSION, KEY, entra_live_server

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings turn text into vectors."]


@pytest.fixture(scope="module")
def client(live_server):
    with EmbeddingsClient(endpoint=live_server.url, credential=AzureKeyCredential(KEY),
                          retry_total=0) as c:
        yield c


@pytest.fixture(scope="module")
def expected(text_backend):
    return text_backend.encode(TEXTS).vectors


def test_float_is_the_default(client, expected):
    r = client.embed(input=TEXTS)
    got = np.asarray([d.embedding for d in r.data], dtype=np.float32)
    assert np.abs(got - expected).max() < 1e-6
    assert r.model == "all-MiniLM-L6-v2" and r.usage.prompt_tokens == r.usage.total_tokens > 0
    assert [d.index for d in r.data] == [0, 1]


def test_base64_decodes_to_the_float_vector(client, expected):
    r = client.embed(input=TEXTS, encoding_format=EmbeddingEncodingFormat.BASE64)
    got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in r.data])
    assert np.abs(got - expected).max() < 1e-7


@pytest.mark.parametrize("fmt, length, lo, hi", [
    (EmbeddingEncodingFormat.INT8, 384, -128, 127), (EmbeddingEncodingFormat.UINT8, 384, 0, 255),
    (EmbeddingEncodingFormat.BINARY, 48, -128, 127), (EmbeddingEncodingFormat.UBINARY, 48, 0, 255)])
def test_integer_encodings(client, expected, fmt, length, lo, hi):
    """Computed here from the float vector and the shipped calibration file, independently of
    the service's encoder."""
    import json

    from conftest import ROOT

    cal = json.loads((ROOT / "embedding_core/models/all-MiniLM-L6-v2/calibration.json").read_text())
    c_lo, c_hi = (np.asarray(cal["ranges"]["384"][k], dtype=np.float64) for k in ("lo", "hi"))
    r = client.embed(input=TEXTS, encoding_format=fmt)
    for d, v in zip(r.data, expected):
        assert len(d.embedding) == length and all(lo <= x <= hi for x in d.embedding)
        u8 = [int(x) for x in np.clip(np.rint((v - c_lo) / (c_hi - c_lo) * 255), 0, 255)]
        bits = "".join("1" if x > 0 else "0" for x in v)
        ub = [int(bits[k:k + 8], 2) for k in range(0, 384, 8)]
        want = {"uint8": u8, "int8": [x - 128 for x in u8],
                "ubinary": ub, "binary": [x - 128 for x in ub]}[str(fmt.value)]
        assert d.embedding == want


def test_dimensions_native_size_is_accepted_and_others_refused(client):
    assert len(client.embed(input=TEXTS[:1], dimensions=384).data[0].embedding) == 384
    with pytest.raises(HttpResponseError) as e:
        client.embed(input=TEXTS[:1], dimensions=256)
    assert e.value.status_code == 422 and e.value.error.code == "InvalidParameter"
    assert "384" in e.value.error.message


def test_input_type_is_accepted(client, expected):
    for t in (EmbeddingInputType.TEXT, EmbeddingInputType.QUERY, EmbeddingInputType.DOCUMENT):
        r = client.embed(input=TEXTS, input_type=t)
        # MiniLM declares no prompts, so the vectors are the same for every input_type
        assert np.abs(np.asarray(r.data[0].embedding) - expected[0]).max() < 1e-6


def test_truncate_end_via_model_extras(client, text_backend):
    long_text = "token " * 400
    with pytest.raises(HttpResponseError) as e:
        client.embed(input=[long_text])
    assert e.value.status_code == 422 and e.value.error.code == "InputTooLong"
    r = client.embed(input=[long_text], model_extras={"truncate": "END"})
    assert r.usage.prompt_tokens == 256
    want = text_backend.encode([long_text], extras={"truncate": "END"}).vectors[0]
    assert np.abs(np.asarray(r.data[0].embedding) - want).max() < 1e-6


def test_unknown_model_extra_is_refused(client):
    with pytest.raises(HttpResponseError) as e:
        client.embed(input=TEXTS, model_extras={"temperature": 0.5})
    assert e.value.status_code == 422 and e.value.error.code == "UnsupportedParameter"


def test_get_model_info(client):
    info = client.get_model_info()
    assert info.model_name == "all-MiniLM-L6-v2"
    assert info.model_type == "embeddings"
    assert info.model_provider_name == "sentence-transformers"


def test_model_selection_by_name_and_unknown_model(client):
    assert client.embed(input=TEXTS[:1], model="minilm").model == "all-MiniLM-L6-v2"
    with pytest.raises(HttpResponseError) as e:
        client.embed(input=TEXTS[:1], model="no-such-model")
    assert e.value.status_code == 404 and e.value.error.code == "ModelNotFound"


def test_wrong_key_maps_to_client_authentication_error(live_server):
    with EmbeddingsClient(endpoint=live_server.url, credential=AzureKeyCredential("nope"),
                          retry_total=0) as c:
        with pytest.raises(ClientAuthenticationError) as e:
            c.embed(input=TEXTS)
    assert e.value.status_code == 401 and e.value.error.code == "Unauthorized"


def test_second_rotated_key_works(live_server):
    with EmbeddingsClient(endpoint=live_server.url,
                          credential=AzureKeyCredential("second-key-abcdef")) as c:
        assert len(c.embed(input=TEXTS).data) == 2


def test_every_supported_api_version(live_server):
    for version in ("2024-05-01-preview", "2024-04-01-preview", "2025-04-01"):
        with EmbeddingsClient(endpoint=live_server.url, credential=AzureKeyCredential(KEY),
                              api_version=version) as c:
            assert len(c.embed(input=TEXTS[:1]).data) == 1


def test_aio_client_gives_the_same_floats_and_integers(client, live_server):
    """azure.ai.inference.aio (on aiohttp): the sync client's answers, exactly."""
    import asyncio

    from azure.ai.inference.aio import EmbeddingsClient as AsyncEmbeddingsClient

    async def run():
        async with AsyncEmbeddingsClient(endpoint=live_server.url, retry_total=0,
                                         credential=AzureKeyCredential(KEY)) as c:
            return (await c.embed(input=TEXTS),
                    await c.embed(input=TEXTS, encoding_format=EmbeddingEncodingFormat.INT8),
                    await c.get_model_info())
    floats, ints, info = asyncio.run(run())
    assert [d.embedding for d in floats.data] == \
        [d.embedding for d in client.embed(input=TEXTS).data]
    assert [d.embedding for d in ints.data] == \
        [d.embedding for d in client.embed(input=TEXTS, encoding_format="int8").data]
    assert info.model_name == "all-MiniLM-L6-v2"


# -- openai ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openai_client(live_server):
    from openai import OpenAI

    return OpenAI(base_url=live_server.url, api_key=KEY, max_retries=0,
                  default_query={"api-version": API_VERSION})


def test_openai_default_base64_decodes_to_the_float_vector(openai_client, expected):
    r = openai_client.embeddings.create(input=TEXTS, model="all-MiniLM-L6-v2")
    got = np.asarray([d.embedding for d in r.data], dtype=np.float32)
    assert got.shape == (2, 384) and np.abs(got - expected).max() < 1e-7
    assert r.usage.prompt_tokens > 0 and r.model == "all-MiniLM-L6-v2"


def test_openai_float_and_single_string(openai_client, expected):
    r = openai_client.embeddings.create(input=TEXTS[0], model="minilm", encoding_format="float")
    assert len(r.data) == 1 and np.abs(np.asarray(r.data[0].embedding) - expected[0]).max() < 1e-6


def test_openai_errors(openai_client, live_server):
    import openai

    with pytest.raises(openai.UnprocessableEntityError) as e:
        openai_client.embeddings.create(input=[], model="minilm")
    assert e.value.status_code == 422
    bad = openai.OpenAI(base_url=live_server.url, api_key="nope", max_retries=0,
                        default_query={"api-version": API_VERSION})
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(input=TEXTS, model="minilm")


# -- Entra ID through the SDK's TokenCredential ---------------------------------------------------

class StaticTokenCredential:
    """A TokenCredential returning a locally signed token (no network, no Azure)."""

    def __init__(self, token: str):
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        return AccessToken(self.token, 2_000_000_000)


def test_entra_token_via_token_credential_and_key_on_the_same_server():
    with entra_live_server(KEY) as (idp, server):
        cred = StaticTokenCredential(idp.mint())
        with EmbeddingsClient(endpoint=server.url, credential=cred, retry_total=0) as c:
            r = c.embed(input=TEXTS, enforce_https=False)
            assert len(r.data) == 2
        assert cred.scopes[0] == ("https://ml.azure.com/.default",)

        bad = StaticTokenCredential(idp.mint(aud="api://someone-else"))
        with EmbeddingsClient(endpoint=server.url, credential=bad, retry_total=0) as c:
            with pytest.raises(ClientAuthenticationError) as e:
                c.embed(input=TEXTS, enforce_https=False)
        assert e.value.response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

        with EmbeddingsClient(endpoint=server.url, credential=AzureKeyCredential(KEY)) as c:
            assert len(c.embed(input=TEXTS).data) == 2
