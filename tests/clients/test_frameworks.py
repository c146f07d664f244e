"""Frameworks, unmodified, over HTTP through the local host: each one's vectors equal the Azure
route's for the same texts in the same request (bit for bit; the same integers for int8).

The texts include "hello world", whose cl100k_base ids all fall under 30,522 (read as WordPiece
ids they once gave a wrong vector with a 200), and a non-ASCII text whose emoji spans three ids.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings

import chromadb
import litellm
import numpy as np
import openai
import pytest
from azure.ai.inference.aio import EmbeddingsClient
from azure.core.credentials import AzureKeyCredential
from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction
from haystack import Document
from haystack.components.embedders import (AzureOpenAIDocumentEmbedder, AzureOpenAITextEmbedder,
                                           OpenAIDocumentEmbedder, OpenAITextEmbedder)
from haystack.utils import Secret
from langchain_azure_ai.embeddings import AzureAIOpenAIApiEmbeddingsModel
from langchain_azure_ai.embeddings.inference import AzureAIEmbeddingsModel as LangChainAzureAI
from langchain_openai import AzureOpenAIEmbeddings, OpenAIEmbeddings
from llama_index.embeddings.azure_inference import AzureAIEmbeddingsModel as LlamaAzureAI
from llama_index.embeddings.openai import OpenAIEmbedding
from semantic_kernel.connectors.ai.azure_ai_inference import (
    AzureAIInferenceEmbeddingPromptExecutionSettings, AzureAIInferenceTextEmbedding)
from semantic_kernel.exceptions import ServiceInitializationError

from clientkit import (CL100K, TEXTS, allow_bearer_over_http, as_float32, azure_embed, cosine,
                       use_managed_identity)
from conftest import KEY, server_python
from live_server import LiveServer

DEFAULT = "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def ref(server):
    """The Azure route's rows for ``texts`` as one request: float32, or int8 integers."""
    cache: dict = {}

    def get(texts, encoding="float", model=None):
        key = (tuple(texts), encoding, model)
        if key not in cache:
            cache[key] = azure_embed(server.url, KEY, list(texts), encoding, model)[0]
        return cache[key]
    return get


def assert_same(got, want):
    np.testing.assert_array_equal(as_float32(got), want)


@pytest.fixture
def sent(monkeypatch):
    """What the openai SDK is asked to send: ``[(model, input)]`` (sync and async)."""
    calls = []
    for cls in (openai.resources.embeddings.Embeddings,
                openai.resources.embeddings.AsyncEmbeddings):
        real = cls.create

        def create(self, *args, _real=real, **kwargs):
            calls.append((kwargs.get("model"), kwargs.get("input")))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "create", create)
    return calls


def test_importing_the_clients_reached_no_network(network_attempts_at_import):
    assert not network_attempts_at_import, "\n".join(network_attempts_at_import)


# -- LangChain ------------------------------------------------------------------------------------

def test_langchain_openai_defaults_send_cl100k_ids_and_get_the_texts_vectors(server, ref, sent):
    """OpenAIEmbeddings with its defaults: tiktoken's cl100k_base ids and text-embedding-ada-002
    (an alias of the default deployment). Decoded by the service, they give each text's vector
    bit for bit: cosine 1, above the 0.999 the issue asks."""
    embeddings = OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY)
    got = embeddings.embed_documents(TEXTS)
    assert sent == [("text-embedding-ada-002", [CL100K[t] for t in TEXTS])]
    assert_same(got, ref(TEXTS))
    assert min(cosine(g, w) for g, w in zip(got, ref(TEXTS))) >= 0.999
    assert_same([embeddings.embed_query(TEXTS[0])], ref(TEXTS[:1]))
    assert_same(asyncio.run(embeddings.aembed_documents(TEXTS)), ref(TEXTS))


def test_langchain_openai_splits_long_texts_when_asked(server, sent):
    """Over the deployment's 256 tokens the route answers 400 (it does not truncate); with
    embedding_ctx_length under the limit LangChain splits a text into pieces of that many cl100k
    ids and averages their vectors, weighted by length: the Azure route's vectors of the pieces'
    texts, averaged the same way."""
    import tiktoken

    long_text = "The history of the city spans many centuries of war, trade and art. " * 30
    with pytest.raises(openai.BadRequestError) as e:
        OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY,
                         max_retries=0).embed_documents([long_text])
    assert e.value.body["code"] == "input_too_long"
    sent.clear()
    embeddings = OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY,
                                  embedding_ctx_length=128)
    got = np.asarray(embeddings.embed_documents([long_text])[0])
    ids = tiktoken.get_encoding("cl100k_base").encode_ordinary(long_text)
    pieces = [ids[i:i + 128] for i in range(0, len(ids), 128)]
    assert len(pieces) > 2 and sent == [("text-embedding-ada-002", pieces)]
    texts = [tiktoken.get_encoding("cl100k_base").decode(p) for p in pieces]
    rows = azure_embed(server.url, KEY, texts)[0].astype(np.float64)
    mean = np.average(rows, axis=0, weights=[len(p) for p in pieces])
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), rtol=0, atol=1e-6)


def test_langchain_openai_piece_can_still_be_too_long_and_the_server_can_truncate(server, sent):
    """No embedding_ctx_length makes every piece fit: a cl100k token can be many WordPiece tokens
    (each punctuation character is one), so 128 ids of a table of contents with a Markdown table
    are ~750 tokens and the call fails. With EMBEDDINGS_OPENAI_TRUNCATE=END the defaults work and each text gets the
    vector the Azure route gives it with "truncate": "END"."""
    import tiktoken
    table = ("| Name | Value |\n|------|-------|\n" + "Chapter 1 " + "." * 40 + " 5\n"
             + "=" * 58 + "\n") * 8
    with pytest.raises(openai.BadRequestError) as e:
        OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                         embedding_ctx_length=128).embed_documents([table])
    assert e.value.body["code"] == "input_too_long"
    texts = [table, TEXTS[0]]
    want = azure_embed(server.url, KEY, texts, extras={"truncate": "END"})[0]
    truncating = LiveServer({"EMBEDDINGS_API_KEYS": KEY, "EMBEDDINGS_OPENAI_TRUNCATE": "END"},
                            python=server_python())
    try:
        sent.clear()
        got = OpenAIEmbeddings(base_url=truncating.url + "/v1", api_key=KEY).embed_documents(texts)
        enc = tiktoken.get_encoding("cl100k_base")
        assert sent == [("text-embedding-ada-002", [enc.encode_ordinary(t) for t in texts])]
        assert_same(got, want)
    finally:
        truncating.stop()


def test_langchain_openai_embeds_empty_and_blank_documents(server, ref, sent):
    """A blank document (or a blank last chunk) is sent as its cl100k ids, and an empty one as a
    separate ``input=""`` call (LangChain's fallback, which OpenAI answers): both embed, instead
    of failing the whole ``embed_documents`` call."""
    import tiktoken
    docs = [TEXTS[0], "", "\n\n"]
    got = OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY,
                           max_retries=0).embed_documents(docs)
    blank_ids = tiktoken.get_encoding("cl100k_base").encode_ordinary("\n\n")
    assert sent == [("text-embedding-ada-002", [CL100K[TEXTS[0]], blank_ids]),
                    ("text-embedding-ada-002", "")]
    want = ref([TEXTS[0], "\n\n"])
    assert_same([got[0], got[2]], want)
    assert_same([got[1]], want[1:])       # "" and "\n\n" both give [CLS] [SEP]


def test_langchain_openai_with_a_deployment_name(server, ref, sent):
    embeddings = OpenAIEmbeddings(base_url=server.url + "/v1", api_key=KEY,
                                  model="all-MiniLM-L6-v2-exact")
    got = embeddings.embed_documents(TEXTS)
    assert sent == [("all-MiniLM-L6-v2-exact", [CL100K[t] for t in TEXTS])]
    assert_same(got, ref(TEXTS, model="all-MiniLM-L6-v2-exact"))


def test_langchain_azure_ai_documented_import_fails_in_this_release():
    """langchain-azure-ai 1.2.12 lists AzureAIEmbeddingsModel in langchain_azure_ai.embeddings'
    __all__ but imports it only for type checkers. When this fails, the fix has shipped: use the
    documented import in the README snippet."""
    with pytest.raises(ImportError):
        from langchain_azure_ai.embeddings import AzureAIEmbeddingsModel  # noqa: F401


def test_langchain_azure_ai_inference(server, ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated upstream, still shipped
        embeddings = LangChainAzureAI(endpoint=server.url, credential=KEY)
    assert_same(embeddings.embed_documents(TEXTS), ref(TEXTS))
    assert_same([embeddings.embed_query(TEXTS[1])], ref(TEXTS[1:2]))
    assert_same(asyncio.run(embeddings.aembed_documents(TEXTS)), ref(TEXTS))


def test_langchain_azure_ai_openai_api_model_on_v1(server, ref, sent):
    """Its recommended replacement: OpenAIEmbeddings underneath, so cl100k ids by default."""
    embeddings = AzureAIOpenAIApiEmbeddingsModel(endpoint=server.url + "/v1", credential=KEY)
    assert_same(embeddings.embed_documents(TEXTS), ref(TEXTS))
    assert sent == [("text-embedding-ada-002", [CL100K[t] for t in TEXTS])]


# -- LlamaIndex -----------------------------------------------------------------------------------

def test_llama_index_azure_inference(server, ref):
    embed_model = LlamaAzureAI(endpoint=server.url, credential=KEY)
    assert embed_model.model_name == DEFAULT  # read from GET /info
    assert_same(embed_model.get_text_embedding_batch(TEXTS), ref(TEXTS))
    assert_same([embed_model.get_query_embedding(TEXTS[0])], ref(TEXTS[:1]))
    assert_same(asyncio.run(embed_model.aget_text_embedding_batch(TEXTS)), ref(TEXTS))


def test_llama_index_openai_with_model_name(server, ref, sent):
    embed_model = OpenAIEmbedding(api_base=server.url + "/v1", api_key=KEY, model_name=DEFAULT)
    assert_same(embed_model.get_text_embedding_batch(TEXTS), ref(TEXTS))
    assert sent == [(DEFAULT, TEXTS)]
    assert_same(asyncio.run(embed_model.aget_text_embedding_batch(TEXTS)), ref(TEXTS))


def test_llama_index_openai_defaults_and_its_model_name_check(server, ref, sent):
    embed_model = OpenAIEmbedding(api_base=server.url + "/v1", api_key=KEY)
    assert_same(embed_model.get_text_embedding_batch(TEXTS), ref(TEXTS))
    assert sent == [("text-embedding-ada-002", TEXTS)]
    with pytest.raises(ValueError):  # `model=` takes OpenAI's names only: hence model_name=
        OpenAIEmbedding(api_base=server.url + "/v1", api_key=KEY, model=DEFAULT)


# -- Semantic Kernel ------------------------------------------------------------------------------

def test_semantic_kernel_with_a_client(server, ref):
    async def run():
        async with EmbeddingsClient(endpoint=server.url,
                                    credential=AzureKeyCredential(KEY)) as client:
            service = AzureAIInferenceTextEmbedding(ai_model_id=DEFAULT, client=client)
            floats = await service.generate_embeddings(TEXTS)
            ints = await service.generate_embeddings(
                TEXTS, settings=AzureAIInferenceEmbeddingPromptExecutionSettings(
                    encoding_format="int8", dimensions=384))
            return floats, ints
    floats, ints = asyncio.run(run())
    assert_same(floats, ref(TEXTS))
    assert ints.tolist() == ref(TEXTS, "int8").tolist()


def test_semantic_kernel_without_a_client():
    """Pins what the README says: http:// endpoints are refused, and its own client sends an
    api-version this service refuses unless told otherwise (no request is made here)."""
    with pytest.raises(ServiceInitializationError):
        AzureAIInferenceTextEmbedding(ai_model_id=DEFAULT, endpoint="http://127.0.0.1:7071",
                                      api_key=KEY)
    https = "https://example.invalid"
    service = AzureAIInferenceTextEmbedding(ai_model_id=DEFAULT, endpoint=https, api_key=KEY)
    assert service.client._config.api_version == "2025-08-28"
    service = AzureAIInferenceTextEmbedding(ai_model_id=DEFAULT, endpoint=https, api_key=KEY,
                                            api_version="2024-05-01-preview")
    assert service.client._config.api_version == "2024-05-01-preview"


# -- LiteLLM --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["openai/all-MiniLM-L6-v2", "openai/text-embedding-ada-002"])
def test_litellm_openai_provider_on_v1(server, ref, model):
    r = litellm.embedding(model=model, api_base=server.url + "/v1", api_key=KEY, input=TEXTS)
    assert_same([d["embedding"] for d in r.data], ref(TEXTS))
    assert r.model == DEFAULT
    usage = azure_embed(server.url, KEY, TEXTS)[1]["usage"]
    assert r.usage.prompt_tokens == usage["prompt_tokens"]


def test_litellm_sees_an_over_long_input_as_a_context_window_error(server):
    """OpenAI's wording of the 400, which litellm maps to ContextWindowExceededError (what its
    context_window_fallbacks and callers' truncate-and-retry handlers catch)."""
    with pytest.raises(litellm.ContextWindowExceededError, match="maximum context length is 256"):
        litellm.embedding(model="openai/all-MiniLM-L6-v2", api_base=server.url + "/v1",
                          api_key=KEY, input=["word " * 400], max_retries=0)


def test_litellm_azure_provider_on_azure_openai_s_v1_path(server, ref):
    """litellm's azure/ with api_version "v1", "latest" or "preview" calls
    {api_base}/openai/v1/embeddings, Azure OpenAI's v1 API."""
    want = ref(TEXTS)
    for version in ("v1", "preview"):
        r = litellm.embedding(model="azure/all-MiniLM-L6-v2", api_base=server.url, api_key=KEY,
                              api_version=version, input=TEXTS)
        assert_same([d["embedding"] for d in r.data], want)


def test_entra_id_tokens_through_the_frameworks_token_providers(entra_server, ref, monkeypatch):
    """docs/deploy.md's "OpenAI-style clients with Entra ID": LangChain's OpenAIEmbeddings
    (the provider as api_key) and AzureOpenAIEmbeddings, litellm's azure/ provider and
    Haystack's AzureOpenAIDocumentEmbedder, with azure_ad_token_provider, and Chroma's
    OpenAIEmbeddingFunction (api_key) send the provider's token and get the vectors a key gets;
    a token for another audience is refused with a 401 that each, at its default retries, sends
    once."""
    entra, tokens = entra_server
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)   # Haystack's default key

    def clients(token_provider):
        """Each client, as deploy.md shows it, embedding TEXTS with ``token_provider``."""
        return {
            "OpenAIEmbeddings": lambda: OpenAIEmbeddings(
                base_url=entra.url + "/v1", api_key=token_provider).embed_documents(TEXTS),
            "AzureOpenAIEmbeddings": lambda: AzureOpenAIEmbeddings(
                azure_endpoint=entra.url, azure_ad_token_provider=token_provider,
                api_version="2024-10-21", azure_deployment=DEFAULT,
                chunk_size=1000).embed_documents(TEXTS),
            "litellm azure/": lambda: [d["embedding"] for d in litellm.embedding(
                model=f"azure/{DEFAULT}", api_base=entra.url, api_version="v1",
                azure_ad_token_provider=token_provider, input=TEXTS).data],
            "Haystack AzureOpenAIDocumentEmbedder": lambda: [
                d.embedding for d in AzureOpenAIDocumentEmbedder(
                    azure_endpoint=entra.url, azure_deployment=DEFAULT,
                    azure_ad_token_provider=token_provider, raise_on_failure=True,
                    progress_bar=False).run([Document(content=t) for t in TEXTS])["documents"]],
            "Chroma OpenAIEmbeddingFunction": lambda: OpenAIEmbeddingFunction(
                api_key=token_provider, api_base=entra.url + "/v1", model_name=DEFAULT)(TEXTS)}

    class TokenProvider:
        def __init__(self, token: str):
            self.token, self.calls = token, 0

        def __call__(self) -> str:
            self.calls += 1
            return self.token

    want = ref(TEXTS)
    for name in clients(None):
        provider = TokenProvider(tokens["token"])
        assert_same(clients(provider)[name](), want)
        assert provider.calls == 1, name              # the token came from the provider
        provider = TokenProvider(tokens["refused"])
        with pytest.raises(openai.AuthenticationError) as caught:   # litellm's subclasses it
            clients(provider)[name]()
        assert caught.value.status_code == 401 and provider.calls == 1, (name, provider.calls)
        assert caught.value.response.headers["www-authenticate"] == \
            'Bearer error="invalid_token"', name


def test_chroma_with_a_token_provider_is_given_its_function_again_when_reopened(
        entra_server, ref, tmp_path):
    """deploy.md: Chroma's OpenAIEmbeddingFunction with a token provider as api_key stores no
    settings with the collection, so a PersistentClient reopening it is given the function
    again, and then embeds queries through the service (the provider asked again)."""
    entra, tokens = entra_server
    calls = []

    def token_provider():
        calls.append(1)
        return tokens["token"]
    embed = OpenAIEmbeddingFunction(api_key=token_provider, api_base=entra.url + "/v1",
                                    model_name=DEFAULT)
    collection = chromadb.PersistentClient(path=str(tmp_path)).create_collection(
        "entra-test", embedding_function=embed)
    ids = [str(i) for i in range(len(TEXTS))]
    collection.add(ids=ids, documents=TEXTS)
    stored = collection.get(ids=ids, include=["embeddings"])["embeddings"]
    np.testing.assert_allclose(np.asarray(stored, dtype=np.float32), ref(TEXTS), rtol=1e-6, atol=0)
    asked = len(calls)
    reopened = chromadb.PersistentClient(path=str(tmp_path)).get_collection(
        "entra-test", embedding_function=embed)
    found = reopened.query(query_texts=[TEXTS[1]], n_results=1, include=["distances"])
    assert found["ids"] == [["1"]] and found["distances"][0][0] < 1e-6
    assert len(calls) == asked + 1


def test_entra_id_through_the_azure_ai_inference_frameworks_with_the_api_s_scope(
        entra_server, ref, monkeypatch):
    """docs/deploy.md's Entra ID Option A, the frameworks built on the SDK: LangChain's and
    LlamaIndex's AzureAIEmbeddingsModel (the scope in client_kwargs) and Semantic Kernel (an
    EmbeddingsClient of its own) with DefaultAzureCredential, unchanged (it finds a managed
    identity, as on Azure), ask for the API's scope and get the vectors a key gets. Without the
    scope they ask for https://ml.azure.com/.default, whose token the API refuses: a 401, raised
    as deploy.md says. LangChain's AzureAIOpenAIApiEmbeddingsModel given a credential asks for
    https://ai.azure.com/.default; given a token provider as api_key, it works."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential, get_bearer_token_provider
    from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential

    entra, tokens = entra_server
    use_managed_identity(monkeypatch, tokens["managed_identity"])
    allow_bearer_over_http(monkeypatch, entra.url)
    scope, default_scope = f"api://{tokens['app_id']}/.default", "https://ml.azure.com/.default"
    asked: list[str] = []            # the scopes the credentials are asked for, in this process
    for cls in (DefaultAzureCredential, AsyncDefaultAzureCredential):
        for method in ("get_token", "get_token_info"):
            real = getattr(cls, method)
            if inspect.iscoroutinefunction(real):
                async def spy(self, *scopes, _real=real, **kwargs):
                    asked.extend(scopes)
                    return await _real(self, *scopes, **kwargs)
            else:
                def spy(self, *scopes, _real=real, **kwargs):
                    asked.extend(scopes)
                    return _real(self, *scopes, **kwargs)
            monkeypatch.setattr(cls, method, spy)

    def scopes_of(call):
        """The scopes asked for while ``call()`` runs, and what it returned or raised."""
        asked.clear()
        try:
            outcome = call()
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        return set(asked), outcome

    def langchain(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated upstream, still shipped
            return LangChainAzureAI(endpoint=entra.url, credential=DefaultAzureCredential(),
                                    **kwargs).embed_documents(TEXTS)

    def llama_index(**kwargs):
        model = LlamaAzureAI(endpoint=entra.url, credential=DefaultAzureCredential(), **kwargs)
        return model.get_text_embedding_batch(TEXTS), asyncio.run(    # the same credential
            model.aget_text_embedding_batch(TEXTS))

    def semantic_kernel(**kwargs):
        async def run():
            async with AsyncDefaultAzureCredential() as credential, EmbeddingsClient(
                    endpoint=entra.url, credential=credential, **kwargs) as client:
                service = AzureAIInferenceTextEmbedding(ai_model_id=DEFAULT, client=client)
                return await service.generate_embeddings(TEXTS)
        return asyncio.run(run())

    def refused(outcome, error=ClientAuthenticationError) -> bool:
        return isinstance(outcome, error) and outcome.status_code == 401

    def with_scope():              # a dict of its own for each: LangChain adds to the one it gets
        return {"credential_scopes": [scope]}

    want = ref(TEXTS)
    asked_for, vectors = scopes_of(lambda: langchain(client_kwargs=with_scope()))
    assert asked_for == {scope}
    assert_same(vectors, want)
    asked_for, outcome = scopes_of(langchain)                  # constructed; refused at embedding
    assert asked_for == {default_scope} and refused(outcome), outcome
    asked_for, (sync_vectors, async_vectors) = scopes_of(lambda: llama_index(
        client_kwargs=with_scope()))
    assert asked_for == {scope}
    assert_same(sync_vectors, want)
    assert_same(async_vectors, want)
    asked_for, outcome = scopes_of(lambda: llama_index(model_name=DEFAULT))
    assert asked_for == {default_scope} and refused(outcome), outcome
    # Without model_name LlamaIndex asks GET /info for it while it is constructed, and its error
    # path there raises an AttributeError of its own (llama-index-embeddings-azure-inference
    # 0.6.0), chained to the 401: deploy.md says so.
    asked_for, outcome = scopes_of(llama_index)
    assert isinstance(outcome, AttributeError) and "__pydantic_private__" in str(outcome)
    assert asked_for == {default_scope} and refused(outcome.__context__)
    asked_for, vectors = scopes_of(lambda: semantic_kernel(**with_scope()))
    assert asked_for == {scope}
    assert_same(vectors, want)
    asked_for, outcome = scopes_of(semantic_kernel)
    assert asked_for == {default_scope} and refused(outcome), outcome
    asked_for, outcome = scopes_of(lambda: AzureAIOpenAIApiEmbeddingsModel(
        endpoint=entra.url + "/v1", credential=DefaultAzureCredential()).embed_documents(TEXTS))
    assert asked_for == {"https://ai.azure.com/.default"}
    assert refused(outcome, openai.AuthenticationError), outcome
    asked_for, vectors = scopes_of(lambda: AzureAIOpenAIApiEmbeddingsModel(
        endpoint=entra.url + "/v1", api_key=get_bearer_token_provider(DefaultAzureCredential(),
                                                                      scope)
    ).embed_documents(TEXTS))
    assert asked_for == {scope}
    assert_same(vectors, want)


def test_litellm_azure_ai_provider_reaches_the_openai_route_only(server, ref):
    """LiteLLM's `azure_ai` provider sends no api-version (as the README says): text works with
    an api_base ending in /v1; images go to {api_base}/images/embeddings without one and fail."""
    r = litellm.embedding(model="azure_ai/all-MiniLM-L6-v2", api_base=server.url + "/v1",
                          api_key=KEY, input=TEXTS)
    assert_same([d["embedding"] for d in r.data], ref(TEXTS))
    png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8"
           "DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
    with pytest.raises(litellm.BadRequestError, match="MissingApiVersionParameter"):
        litellm.embedding(model="azure_ai/efficientnet-lite0", api_base=server.url,
                          api_key=KEY, input=[png])


def test_litellm_async_float_and_dimensions(server, ref):
    r = asyncio.run(litellm.aembedding(model="openai/all-MiniLM-L6-v2",
                                       api_base=server.url + "/v1", api_key=KEY, input=TEXTS,
                                       encoding_format="float"))
    assert_same([d["embedding"] for d in r.data], ref(TEXTS))
    # litellm itself refuses `dimensions` for models other than OpenAI's text-embedding-3 family;
    # those names are aliases here
    with pytest.raises(litellm.UnsupportedParamsError):
        litellm.embedding(model="openai/all-MiniLM-L6-v2", api_base=server.url + "/v1",
                          api_key=KEY, input=TEXTS, dimensions=384)
    r = litellm.embedding(model="openai/text-embedding-3-small", api_base=server.url + "/v1",
                          api_key=KEY, input=TEXTS, dimensions=384)
    assert_same([d["embedding"] for d in r.data], ref(TEXTS))


# -- Haystack -------------------------------------------------------------------------------------

def test_haystack_openai_embedders(server, ref, sent):
    """OpenAIDocumentEmbedder with its default model (text-embedding-3-small, an alias) sends the
    texts as strings; OpenAITextEmbedder with a deployment name; sync and async."""
    documents = [Document(content=t) for t in TEXTS]
    embedder = OpenAIDocumentEmbedder(api_base_url=server.url + "/v1",
                                      api_key=Secret.from_token(KEY), progress_bar=False)
    got = embedder.run(documents)
    assert_same([d.embedding for d in got["documents"]], ref(TEXTS))
    assert sent == [("text-embedding-3-small", TEXTS)]
    assert got["meta"]["model"] == DEFAULT
    got = asyncio.run(embedder.run_async([Document(content=t) for t in TEXTS]))
    assert_same([d.embedding for d in got["documents"]], ref(TEXTS))
    query = OpenAITextEmbedder(api_base_url=server.url + "/v1", api_key=Secret.from_token(KEY),
                               model=DEFAULT)
    assert_same([query.run(TEXTS[1])["embedding"]], ref(TEXTS[1:2]))


def test_haystack_azure_openai_embedders_with_a_deployment(server, ref):
    """The deployment in the path decides (the body says text-embedding-ada-002); the
    api_version the client requires is ignored."""
    settings = dict(azure_endpoint=server.url, azure_deployment=DEFAULT,
                    api_key=Secret.from_token(KEY), api_version="2024-10-21")
    assert_same([AzureOpenAITextEmbedder(**settings).run(TEXTS[0])["embedding"]], ref(TEXTS[:1]))
    got = AzureOpenAIDocumentEmbedder(**settings, progress_bar=False).run(
        [Document(content=t) for t in TEXTS])
    assert_same([d.embedding for d in got["documents"]], ref(TEXTS))


# -- Chroma ---------------------------------------------------------------------------------------

def test_chroma_collection_embeds_through_the_service_and_still_does_when_reopened(
        server, ref, sent, tmp_path, monkeypatch):
    """Chroma stores the Azure route's vectors; a query finds the document with its own
    text; and a PersistentClient reopening the collection rebuilds the function from what Chroma
    stored (endpoint and model; the key from CHROMA_OPENAI_API_KEY) and calls the service again.
    (Given api_key= instead, Chroma stores no settings and the reopened collection would use its
    default model, downloading it: the guard would fail this test.)"""
    monkeypatch.setenv("CHROMA_OPENAI_API_KEY", KEY)
    embed = OpenAIEmbeddingFunction(api_base=server.url + "/v1", model_name=DEFAULT)
    collection = chromadb.PersistentClient(path=str(tmp_path)).create_collection(
        "frameworks-test", embedding_function=embed)
    ids = [str(i) for i in range(len(TEXTS))]
    collection.add(ids=ids, documents=TEXTS)
    assert sent == [(DEFAULT, TEXTS)]
    stored = collection.get(ids=ids, include=["embeddings"])["embeddings"]
    # Chroma renormalises vectors stored in a cosine space (its default for this function): the
    # service's unit vectors, within an ulp or two
    np.testing.assert_allclose(np.asarray(stored, dtype=np.float32), ref(TEXTS), rtol=1e-6, atol=0)
    found = collection.query(query_texts=[TEXTS[2]], n_results=1)
    assert found["ids"] == [["2"]] and found["distances"][0][0] < 1e-6

    sent.clear()
    reopened = chromadb.PersistentClient(path=str(tmp_path)).get_collection("frameworks-test")
    found = reopened.query(query_texts=[TEXTS[1]], n_results=1, include=["distances"])
    assert sent == [(DEFAULT, [TEXTS[1]])]
    assert found["ids"] == [["1"]] and found["distances"][0][0] < 1e-6


def test_chroma_reads_openai_api_key_over_its_own_variable_as_the_readme_warns(
        server, monkeypatch):
    """Where OPENAI_API_KEY is set (as for OpenAI's own clients), Chroma's OpenAIEmbeddingFunction
    reads that variable, not CHROMA_OPENAI_API_KEY (whatever api_key_env_var says), and stores its
    name with the collection: the README's snippet then sends the OpenAI key and gets a 401. The
    README says so; this test fails once Chroma changes, so that the warning can go."""
    from clientkit import ROOT

    monkeypatch.setenv("CHROMA_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-an-openai-key-not-this-services")
    embed = OpenAIEmbeddingFunction(api_base=server.url + "/v1", model_name=DEFAULT)
    assert embed.api_key_env_var == "OPENAI_API_KEY"
    collection = chromadb.EphemeralClient().get_or_create_collection(
        "openai-key-test", embedding_function=embed)
    with pytest.raises(Exception, match="401"):
        collection.upsert(ids=["1"], documents=["first text"])
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    chroma = readme.split("\n### Chroma\n", 1)[1].split("\n### ", 1)[0]
    assert "OPENAI_API_KEY" in chroma.replace("CHROMA_OPENAI_API_KEY", ""), \
        "the README's Chroma section warns that OPENAI_API_KEY takes precedence"
