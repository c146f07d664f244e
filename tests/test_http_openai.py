"""The OpenAI dialect with real clients, against the Azure route's vectors.

- The openai SDK on ``/v1`` over HTTP through the local host: no api-version, ``user`` accepted,
  its default base64 decoded, ``dimensions``, ``/v1/models``, OpenAI's model names.
- OpenAI token arrays (cl100k_base ids, what OpenAI clients send): the text's vector bit for bit,
  ``usage`` in the deployment's tokens, invalid ids as OpenAI-shaped 400s naming the JSON path;
  the Azure route keeps reading token ids as the deployment's WordPiece ids.
- ``AzureOpenAI`` on ``/openai/deployments/{deployment}/embeddings``: at the function level
  (func.HttpRequest with route parameters) until the local host routes templates; the same tests
  over HTTP are written and skipped until then (``function_host.HTTP_ROUTE_TEMPLATES``).

``clientkit.CL100K`` holds the texts' cl100k_base ids as tiktoken gives them, so that these tests
do not depend on the service's decoder.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import httpx2
import numpy as np
import openai
import pytest
from openai import AzureOpenAI, OpenAI

from clientkit import CL100K, TEXTS, as_float32, azure_embed, cosine, loopback_only
from conftest import KEY, process_service
from embedding_core.api import ApiRequest
from embedding_core.service import EmbeddingService
from embedding_core.settings import Settings
from live_server import LiveServer
from function_host import NEEDS_TEMPLATES, FunctionTransport

WORDPIECE_HELLO_WORLD = [101, 7592, 2088, 102]  # [CLS] hello world [SEP] in MiniLM's vocabulary
DEFAULT = "all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def no_network_but_loopback():
    with loopback_only("a client"):
        yield


@pytest.fixture(scope="module")
def ref(live_server):
    """The Azure route's float32 vectors and usage for ``texts`` (the same request shape)."""
    cache: dict[tuple, tuple[np.ndarray, dict]] = {}

    def get(texts, model=None):
        key = (tuple(texts), model)
        if key not in cache:
            cache[key] = azure_embed(live_server.url, KEY, list(texts), model=model)
        return cache[key]
    return get


@pytest.fixture(scope="module")
def client(live_server):
    return OpenAI(base_url=live_server.url + "/v1", api_key=KEY, max_retries=0)


def post_v1(server, body, headers=None, path="/v1/embeddings"):
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                          **(headers or {})})
    res = conn.getresponse()
    status, doc = res.status, json.loads(res.read())
    conn.close()
    return status, doc


def floats_of(doc):
    """float32 rows of an OpenAI response asked for as base64."""
    import base64
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                     for d in doc["data"]])


# -- the openai SDK on /v1 ------------------------------------------------------------------------

def test_openai_sdk_defaults_on_v1(live_server, ref):
    """No api-version, Bearer key, OpenAI's `user`, and the SDK's default base64, decoded."""
    sent = []
    with httpx2.Client(event_hooks={"request": [sent.append]}) as http:
        c = OpenAI(base_url=live_server.url + "/v1", api_key=KEY, max_retries=0, http_client=http)
        r = c.embeddings.create(input=TEXTS, model=DEFAULT, user="alice@example.com")
    body = json.loads(sent[0].read())
    assert "api-version" not in str(sent[0].url) and sent[0].headers["authorization"] == \
        f"Bearer {KEY}"
    assert body["encoding_format"] == "base64" and body["user"] == "alice@example.com"
    want, doc = ref(TEXTS)
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), want)
    assert [d.index for d in r.data] == [0, 1, 2] and r.object == "list"
    assert r.model == DEFAULT
    assert r.usage.prompt_tokens == r.usage.total_tokens == doc["usage"]["prompt_tokens"]


def test_float_encoding_and_dimensions(client, ref):
    r = client.embeddings.create(input=TEXTS, model=DEFAULT, encoding_format="float",
                                 dimensions=384)
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), ref(TEXTS)[0])
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(input=TEXTS, model=DEFAULT, dimensions=256)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == "dimensions" and "384" in err["message"]
    assert err["type"] == "invalid_request_error"


def test_single_string_input(client, ref):
    r = client.embeddings.create(input=TEXTS[2], model=DEFAULT)
    np.testing.assert_array_equal(as_float32([r.data[0].embedding]), ref(TEXTS[2:])[0])


def test_empty_and_whitespace_inputs_as_openai_takes_them(client, ref):
    """OpenAI embeds ``input=""`` alone (LangChain's ``OpenAIEmbeddings`` sends it for an empty
    document) and whitespace (a LangChain chunk can be just ``"\\n"``, token id 198), and
    refuses ``""`` inside an array (openai/openai-python#576)."""
    blank = ref(["\n"])[0]
    for single in ("", "   "):
        r = client.embeddings.create(input=single, model=DEFAULT)
        np.testing.assert_array_equal(as_float32([r.data[0].embedding]), blank)
        assert r.usage.prompt_tokens == 2
    r = client.embeddings.create(input=[TEXTS[0], "\n", " \t "], model=DEFAULT)
    got = as_float32([d.embedding for d in r.data])
    np.testing.assert_array_equal(got[0], ref(TEXTS[:1])[0][0])
    np.testing.assert_array_equal(got[1:], np.vstack([blank, blank]))
    r = client.embeddings.create(input=[CL100K[TEXTS[0]], [198]], model=DEFAULT)
    np.testing.assert_array_equal(as_float32([r.data[1].embedding]), blank)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(input=[TEXTS[0], ""], model=DEFAULT)
    assert e.value.body["param"] == "input[1]"
    # The SDK shows only the message: it names the item itself (a framework's batch of 2,048).
    assert str(e.value).endswith("input[1] is an empty string; each text must have at least "
                                 "one character.")


def test_models_lists_the_text_deployments(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-exact"]
    assert all(m.object == "model" for m in models.data)


def test_a_model_is_retrieved_by_name_or_alias(client, live_server):
    """The openai SDK's ``models.retrieve``: a text deployment by name or alias; the id is the
    deployment's name. Image deployments and unknown names are 404 ``model_not_found``."""
    listed = {m.id: m for m in client.models.list().data}
    for name in ("all-MiniLM-L6-v2-exact", "ALL-MINILM-L6-V2", "text-embedding-ada-002",
                 "sentence-transformers/all-MiniLM-L6-v2"):   # the SDK sends the '/' as %2F
        m = client.models.retrieve(name)
        want = "all-MiniLM-L6-v2-exact" if name.endswith("exact") else DEFAULT
        assert m.id == want and m.object == "model" and m == listed[want]
    for name in ("nope", "minilm-conse-efficientnet-lite0"):
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(name)
        assert e.value.body["code"] == "model_not_found" and name in e.value.body["message"]
        assert ("embeds images" in e.value.body["message"]) == name.startswith("minilm-conse")
    u = urlsplit(live_server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/v1/models/" + DEFAULT)            # no credentials
    res = conn.getresponse()
    assert res.status == 401 and json.loads(res.read())["error"]["code"] == "invalid_api_key"
    conn.close()


@pytest.mark.parametrize("name", ["text-embedding-ada-002", "text-embedding-3-small",
                                  "text-embedding-3-large"])
def test_openai_model_names_are_aliases_of_the_default_text_deployment(client, ref, live_server,
                                                                        name):
    """What client defaults send (LangChain and LlamaIndex: text-embedding-ada-002); `model` in
    the response names the deployment that answered."""
    r = client.embeddings.create(input=TEXTS, model=name)
    assert r.model == DEFAULT
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), ref(TEXTS)[0])
    # the registry's aliases serve the Azure route too
    rows, doc = azure_embed(live_server.url, KEY, TEXTS, model=name)
    assert doc["model"] == DEFAULT
    np.testing.assert_array_equal(rows, ref(TEXTS)[0])


def test_other_model_names_are_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(input=TEXTS, model="gpt-4o")
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "all-MiniLM-L6-v2" in err["message"]  # the answer lists what is served


def test_an_over_long_input_is_a_400_that_does_not_suggest_azure_s_truncation(live_server):
    long_text = "token " * 400  # 402 tokens with [CLS]/[SEP]
    for body in ({"input": [long_text]}, {"input": ["ok", long_text], "truncate": "END"}):
        status, doc = post_v1(live_server, body, headers={"extra-parameters": "pass-through"})
        err = doc["error"]
        assert status == 400 and err["code"] == "input_too_long", doc
        assert err["param"] == f"input[{len(body['input']) - 1}]"
        # OpenAI's wording, which clients match (litellm: ContextWindowExceededError), with no
        # double quote, which would make the str() of the body escape "model's".
        assert err["message"].startswith("This model's maximum context length is 256 tokens, "
                                         "however you requested 402 tokens"), err["message"]
        assert '"' not in err["message"]
        assert "does not truncate unless the server sets EMBEDDINGS_OPENAI_TRUNCATE" in err["message"]
    # The message's recipe for the Azure route, followed as written, works.
    assert ("POST /embeddings?api-version=2024-05-01-preview with the header "
            "'extra-parameters: pass-through' and the body field truncate set to END") \
        in err["message"]
    status, doc = post_v1(live_server, {"input": [long_text], "truncate": "END"},
                          headers={"extra-parameters": "pass-through"},
                          path="/embeddings?api-version=2024-05-01-preview")
    assert status == 200 and doc["usage"]["prompt_tokens"] == 256, doc


def test_the_server_can_truncate_over_long_inputs_on_v1(live_server):
    """EMBEDDINGS_OPENAI_TRUNCATE=END: LangChain's defaults (a long text as one array of cl100k
    ids) and the openai SDK get the vectors the Azure route gives with "truncate": "END"."""
    long_text = "Markdown | table | cell |\n" * 60  # ~780 WordPiece tokens
    texts = [long_text, TEXTS[0]]
    want, azure_doc = azure_embed(live_server.url, KEY, texts, extras={"truncate": "END"})
    usage = azure_doc["usage"]
    status, doc = post_v1(live_server, {"input": texts})  # the default server refuses it
    assert status == 400 and doc["error"]["code"] == "input_too_long", doc
    server = LiveServer({"EMBEDDINGS_API_KEYS": KEY, "EMBEDDINGS_OPENAI_TRUNCATE": "end"})
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        got = client.embeddings.create(input=texts, model=DEFAULT)
        np.testing.assert_array_equal(as_float32([d.embedding for d in got.data]), want)
        assert got.usage.prompt_tokens == usage["prompt_tokens"]
        status, doc = post_v1(server, {"input": [CL100K[TEXTS[0]], long_text],
                                       "encoding_format": "base64"})
        assert status == 200, doc
        np.testing.assert_array_equal(floats_of(doc), want[::-1])
    finally:
        server.stop()


@pytest.mark.parametrize("setting, calls", [
    ({"EMBEDDINGS_MAX_INPUTS": "many"}, 1),
    # a registry file that cannot be read may be there on the next try (a share mounting):
    # retried as before
    ({"EMBEDDINGS_REGISTRY": "/nonexistent/registry.json"}, 3)])
def test_the_openai_sdk_does_not_retry_what_a_retry_cannot_fix(setting, calls):
    """A misconfigured deployment's 500 says ``x-should-retry: false``: the openai SDK at its
    defaults (two retries, 0.5-8 s apart) fails at once with the server's message, instead of
    three billed calls."""
    server = LiveServer({"EMBEDDINGS_API_KEYS": KEY, **setting})
    sent = []
    try:
        with httpx2.Client(event_hooks={"request": [sent.append]}) as http:
            client = OpenAI(base_url=server.url + "/v1", api_key=KEY, http_client=http)
            assert client.max_retries == 2
            with pytest.raises(openai.InternalServerError) as failure:
                client.embeddings.create(input=["hello"], model=DEFAULT)
    finally:
        server.stop()
    assert len(sent) == calls
    assert failure.value.response.headers.get("x-should-retry") == (
        "false" if calls == 1 else None)
    assert "The server's configuration is invalid" in failure.value.message


def test_start_truncation_on_v1_keeps_the_end(registry):
    long_text = "first words are dropped " + "filler " * 300 + "the end is kept"
    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": KEY,
                                              "EMBEDDINGS_OPENAI_TRUNCATE": "START"}), registry)
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    def call(template, path, body, extra=None, query=None):
        res = svc.handle(template, ApiRequest("POST", path, {**headers, **(extra or {})},
                                              query or {}, json.dumps(body).encode()))
        assert res.status == 200, res.body
        return json.loads(res.body)

    v1 = call("v1/embeddings", "/v1/embeddings", {"input": [long_text], "encoding_format": "base64"})
    azure = call("embeddings", "/embeddings", {"input": [long_text], "truncate": "START",
                                               "encoding_format": "base64"},
                 {"extra-parameters": "pass-through"}, {"api-version": "2024-05-01-preview"})
    np.testing.assert_array_equal(floats_of(v1), floats_of(azure))
    assert v1["usage"]["prompt_tokens"] == 256


def test_an_invalid_openai_truncate_setting_is_refused():
    with pytest.raises(ValueError, match="EMBEDDINGS_OPENAI_TRUNCATE must be NONE, END or START"):
        Settings.from_env({"EMBEDDINGS_OPENAI_TRUNCATE": "yes"})


# -- OpenAI token arrays --------------------------------------------------------------------------

def test_token_ids_that_decode_to_more_text_than_a_body_may_carry_are_a_413(live_server):
    from embedding_core import openai_tokens

    spaces = 58040
    assert openai_tokens._load()[spaces] == b" " * 128  # the longest cl100k token
    # ~0.4 MB of ids that would decode to ~8.4 MB of text, over the 8 MiB body limit
    many = [spaces] * (8 * 1024 * 1024 // 128 + 1)
    status, doc = post_v1(live_server, {"input": [CL100K[TEXTS[0]], many]})
    err = doc["error"]
    assert status == 413 and err["code"] == "payload_too_large" and err["param"] == "input[1]"
    assert "EMBEDDINGS_MAX_BODY_BYTES" in err["message"] and "8,388,608 bytes" in err["message"]
    assert "up to input[1] decode" in err["message"]
    # the same ids as the lone input: its path is `input`, in the message too
    status, doc = post_v1(live_server, {"input": many})
    assert status == 413 and doc["error"]["param"] == "input"
    assert "up to input decode" in doc["error"]["message"], doc
    # one id less than the limit is within it (and then refused for what it is: ~8 MB of
    # spaces, far more characters per token than a request may have)
    status, doc = post_v1(live_server, {"input": [many[:-1]]})
    assert status == 400 and "EMBEDDINGS_MAX_INPUT_CHARS" in doc["error"]["message"], doc


def test_token_arrays_are_cl100k_ids_and_give_the_texts_vectors_bit_for_bit(live_server, ref):
    status, doc = post_v1(live_server, {"input": [CL100K[t] for t in TEXTS], "model": DEFAULT,
                                        "encoding_format": "base64"})
    assert status == 200, doc
    want, azure_doc = ref(TEXTS)
    np.testing.assert_array_equal(floats_of(doc), want)
    # usage counts the deployment's WordPiece tokens, not the ids sent
    assert doc["usage"] == azure_doc["usage"]
    assert doc["usage"]["prompt_tokens"] != sum(len(CL100K[t]) for t in TEXTS)


def test_token_arrays_through_the_sdk_and_a_single_flat_array(client, ref):
    r = client.embeddings.create(input=[CL100K[t] for t in TEXTS], model=DEFAULT)
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), ref(TEXTS)[0])
    r = client.embeddings.create(input=CL100K["hello world"], model=DEFAULT)
    assert len(r.data) == 1 and r.usage.prompt_tokens == 4  # [CLS] hello world [SEP]
    np.testing.assert_array_equal(as_float32([r.data[0].embedding]), ref(["hello world"])[0])


@pytest.mark.parametrize("ids, text", [([100257], "<|endoftext|>"),
                                       ([15339, 100276], "hello<|endofprompt|>")])
def test_special_token_ids_decode_to_their_text_as_tiktoken_does(live_server, ref, ids, text):
    status, doc = post_v1(live_server, {"input": [ids], "encoding_format": "base64"})
    assert status == 200, doc
    np.testing.assert_array_equal(floats_of(doc), ref([text])[0])


def test_the_azure_route_keeps_reading_token_ids_as_wordpiece_ids(live_server, ref):
    hello = ref(["hello world"])[0][0]
    # the deployment's own ids: the text's vector
    rows, doc = azure_embed(live_server.url, KEY, [WORDPIECE_HELLO_WORLD])
    np.testing.assert_array_equal(rows[0], hello)
    assert doc["usage"]["prompt_tokens"] == 4
    # OpenAI's ids on the Azure route are other WordPiece tokens: not "hello world" (the
    # silent wrong answer the OpenAI route exists to avoid)
    rows, _ = azure_embed(live_server.url, KEY, [CL100K["hello world"]])
    assert cosine(rows[0], hello) < 0.5
    # and the WordPiece ids on the OpenAI route are read as cl100k ids: another text again
    status, doc = post_v1(live_server, {"input": [WORDPIECE_HELLO_WORLD],
                                        "encoding_format": "base64"})
    assert status == 200 and cosine(floats_of(doc)[0], hello) < 0.5


@pytest.mark.parametrize("inputs, param", [
    ([[15339, -1]], "input[0][1]"),
    ([[100256]], "input[0][0]"),            # first id after the 100,256 ranks: no token
    ([[15339, 100261]], "input[0][1]"),     # between the special tokens: no token
    ([[100275]], "input[0][0]"),
    ([[100277]], "input[0][0]"),            # past <|endofprompt|>, the last id
    ([[2 ** 63]], "input[0][0]"),
    ([[15339, 1.5]], "input[0][1]"),
    ([[15339, 1917.0]], "input[0][1]"),     # an integral float is still not an id
    ([[15339, "1917"]], "input[0][1]"),
    ([[15339, True]], "input[0][1]"),
    ([[15339, None]], "input[0][1]"),
    ([[15339, [1917]]], "input[0][1]"),
    (["fine", [15339, -5]], "input[1][1]"),
    ([15339, -1], "input[1]"),              # one flat array: the path in the request
    ([15339, 100256, 1917], "input[1]"),
    ([[]], "input[0]"),
])
def test_invalid_token_ids_are_openai_400s_naming_the_json_path(live_server, inputs, param):
    status, doc = post_v1(live_server, {"input": inputs, "model": DEFAULT})
    assert status == 400, doc
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}
    err = doc["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert err["code"] == "invalid_parameter" and err["message"]
    # Both checks of an id state the same ranges (the integers' bound and cl100k_base's).
    if "Token id" in err["message"]:
        assert "0..100255, or a special token id" in err["message"], err["message"]


def test_invalid_token_ids_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(input=[CL100K["hello world"], [15339, 100261]], model=DEFAULT)
    assert e.value.body["param"] == "input[1][1]"
    assert "100261" in e.value.body["message"] and "cl100k_base" in e.value.body["message"]


# -- AzureOpenAI on /openai/deployments/{deployment}/embeddings ------------------------------------

@pytest.fixture
def function_level(monkeypatch):
    """The process-wide service of function_app, built from this environment."""
    with process_service(monkeypatch):
        yield


@pytest.fixture(params=["function", pytest.param("http", marks=NEEDS_TEMPLATES)])
def azure_openai(request, live_server):
    """``make(**kwargs)`` -> an AzureOpenAI client, and the Azure route's vectors from the same
    place (in-process through the functions, or the local host over HTTP)."""
    if request.param == "function":
        request.getfixturevalue("function_level")
        http = httpx2.Client(transport=FunctionTransport())
        endpoint = "http://localhost"

        def reference(texts, model=None):
            body = {"input": texts, "encoding_format": "base64"}
            if model:
                body["model"] = model
            res = http.post(endpoint + "/embeddings", params={"api-version": "2024-05-01-preview"},
                            headers={"api-key": KEY}, json=body)
            assert res.status_code == 200, res.text
            return floats_of(res.json())
    else:
        http, endpoint = None, live_server.url

        def reference(texts, model=None):
            return azure_embed(live_server.url, KEY, texts, model=model)[0]

    def make(**kwargs):
        return AzureOpenAI(azure_endpoint=endpoint, api_key=KEY, api_version="2024-10-21",
                           max_retries=0, http_client=http, **kwargs)
    yield make, reference
    if http is not None:
        http.close()


def test_azure_openai_client_on_the_deployment_path(azure_openai):
    make, reference = azure_openai
    r = make(azure_deployment=DEFAULT).embeddings.create(input=TEXTS, model=DEFAULT)
    assert r.model == DEFAULT
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), reference(TEXTS))
    # token arrays on this path are OpenAI ids too
    r = make(azure_deployment=DEFAULT).embeddings.create(input=[CL100K[t] for t in TEXTS],
                                                         model=DEFAULT)
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), reference(TEXTS))


def test_the_path_names_the_deployment_whatever_the_body_model_says(azure_openai):
    """As on Azure OpenAI: LangChain's AzureOpenAIEmbeddings sends text-embedding-ada-002 in the
    body whatever the deployment."""
    make, reference = azure_openai
    exact = reference(TEXTS, model="all-MiniLM-L6-v2-exact")
    assert not np.array_equal(exact, reference(TEXTS))     # another deployment, other vectors
    r = make(azure_deployment="minilm-exact").embeddings.create(input=TEXTS,
                                                                 model="text-embedding-ada-002")
    assert r.model == "all-MiniLM-L6-v2-exact"
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), exact)
    # without azure_deployment the SDK puts the body's model in the path
    r = make().embeddings.create(input=TEXTS, model="all-MiniLM-L6-v2-exact")
    assert r.model == "all-MiniLM-L6-v2-exact"
    np.testing.assert_array_equal(as_float32([d.embedding for d in r.data]), exact)


def test_an_unknown_deployment_in_the_path_is_404_model_not_found(azure_openai):
    make, _ = azure_openai
    with pytest.raises(openai.NotFoundError) as e:
        make(azure_deployment="gpt-4o").embeddings.create(input=TEXTS, model=DEFAULT)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "deployment"


def test_azure_openai_v1_path_serves_what_v1_serves(live_server, ref):
    """Azure OpenAI's v1 API (OpenAI(base_url=".../openai/v1/"), which Microsoft documents for
    new clients; litellm's azure/ with api_version "v1", "latest" or "preview", which adds
    ?api-version=preview): the same answers as /v1."""
    texts = ["first text", "Ünïcödé — naïve café 東京 🚀"]
    want, doc = ref(texts)
    for query in ({}, {"api-version": "preview"}):
        c = OpenAI(base_url=live_server.url + "/openai/v1/", api_key=KEY, max_retries=0,
                   default_query=query)
        res = c.embeddings.create(input=texts, model="text-embedding-3-small")
        assert res.model == "all-MiniLM-L6-v2" and res.usage.prompt_tokens == doc["usage"]["prompt_tokens"]
        np.testing.assert_array_equal(np.asarray([d.embedding for d in res.data], np.float32), want)
        assert [m.id for m in c.models.list().data] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-exact"]
        assert c.models.retrieve("minilm-exact").id == "all-MiniLM-L6-v2-exact"
    status, body = post_v1(live_server, {"input": ["a"], "model": "gpt-4"},
                           path="/openai/v1/embeddings")
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    for path in ("/openai/v1/embeddings", "/v1/embeddings"):   # errors name the path called
        status, body = post_v1(live_server, {"input": ["a"],
                                             "model": "minilm-conse-efficientnet-lite0"}, path=path)
        assert status == 404 and body["error"]["message"].endswith(
            f"cannot be used on {path}."), body
