"""README "Use it from…": the README shows exactly the files in docs/snippets/, and the snippets
of the clients in this virtualenv (azure-ai-inference sync and aio, openai, AzureOpenAI) run
against the local host with only the endpoint and key replaced, giving the Azure route's vectors.
The frameworks' snippets run in the client suite (tests/clients)."""

from __future__ import annotations

import os

import httpx2
import pytest

from clientkit import (SNIPPET_ENDPOINT, SNIPPET_KEY, SNIPPET_SUFFIXES, SNIPPETS, SNIPPETS_DIR,
                       allow_bearer_over_http, check_snippet_vectors, loopback_only, node_missing,
                       readme_snippets, run_node, run_node_snippet, run_snippet, snippet_source,
                       use_managed_identity)
from conftest import KEY, REGISTERED_APP_ID, ROOT, entra_live_server
from function_host import NEEDS_TEMPLATES, FunctionTransport

MAIN = sorted(f for f, s in SNIPPETS.items() if s.suite == "main")
NODE = sorted(f for f, s in SNIPPETS.items() if s.suite == "node")


@pytest.fixture(autouse=True)
def no_network_but_loopback():
    with loopback_only("a snippet"):
        yield


def test_snippets_use_the_key_and_address_make_serve_prints():
    import re

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve: export EMBEDDINGS_API_KEYS \?= (\S+)$", makefile,
                     re.M).group(1) == SNIPPET_KEY
    from tools.local_host import LOCAL_DEV_KEY        # the key it prints in full

    assert LOCAL_DEV_KEY == SNIPPET_KEY
    assert re.search(r"^PORT \?= (\d+)$", makefile, re.M).group(1) == SNIPPET_ENDPOINT.rsplit(":", 1)[1]
    assert len(SNIPPET_KEY) >= 16                      # the service refuses shorter keys


def test_the_readme_shows_exactly_the_snippet_files():
    files = sorted(p.name for suffix in SNIPPET_SUFFIXES for p in SNIPPETS_DIR.glob(suffix))
    assert files == sorted(SNIPPETS), "every snippet file is declared in tests/clientkit.py"
    assert readme_snippets() == {f: snippet_source(f) for f in files}


@pytest.mark.parametrize("file", [f for f in MAIN if f != "azure_openai_sdk.py"])
def test_snippet_runs_against_the_local_host(live_server, file):
    namespace = run_snippet(file, live_server.url, KEY)
    check_snippet_vectors(file, namespace, live_server.url, KEY)


@pytest.mark.parametrize("file", NODE)
def test_javascript_snippet_runs_against_the_local_host(live_server, file):
    why = node_missing()
    if why:
        pytest.skip(why)
    check_snippet_vectors(file, run_node_snippet(file, live_server.url, KEY), live_server.url,
                          KEY)


def test_azure_openai_snippet_at_the_function_level(live_server, monkeypatch):
    """Until the local host routes templates: the snippet's own client, with every request its
    HTTP transport would send handed to function_app's functions instead."""
    from embedding_core import service

    for name in list(os.environ):
        if name.startswith("EMBEDDINGS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EMBEDDINGS_API_KEYS", KEY)
    service.reset_service()
    transport = FunctionTransport()
    monkeypatch.setattr(httpx2.HTTPTransport, "handle_request",
                        lambda self, request: transport.handle_request(request))
    try:
        namespace = run_snippet("azure_openai_sdk.py", "http://localhost", KEY)
    finally:
        monkeypatch.undo()
        service.reset_service()
    assert [r.url.path for r in transport.requests] == \
        ["/openai/deployments/all-MiniLM-L6-v2/embeddings"]
    check_snippet_vectors("azure_openai_sdk.py", namespace, live_server.url, KEY)


@NEEDS_TEMPLATES
def test_azure_openai_snippet_over_http(live_server):
    namespace = run_snippet("azure_openai_sdk.py", live_server.url, KEY)
    check_snippet_vectors("azure_openai_sdk.py", namespace, live_server.url, KEY)


# -- docs/deploy.md's code, as a user pastes it after exporting URL and KEY or APP_ID ------------

def deploy_guide_blocks(language: str, reads: str) -> list[str]:
    """docs/deploy.md's ```python or ```js blocks that read the environment variable ``reads``."""
    import re

    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    marker = {"python": f'os.environ["{reads}"]', "js": f"process.env.{reads}"}[language]
    return [b for b in re.findall(rf"```{language}\n(.*?)```", text, re.S) if marker in b]


def run_guide_block(block: str, capsys) -> tuple[dict, str]:
    namespace: dict = {"__name__": "__main__"}
    capsys.readouterr()
    exec(compile(block, "docs/deploy.md", "exec"), namespace)   # noqa: S102 - the guide's code
    return namespace, capsys.readouterr().out


def test_the_deploy_guide_s_key_snippets_get_the_model_s_vector(live_server, text_backend,
                                                                 monkeypatch, capsys):
    """"Call the API with a key": the openai SDK and the Azure AI Inference SDK snippets, with
    URL and KEY exported as the guide says."""
    import numpy as np

    blocks = deploy_guide_blocks("python", "KEY")
    assert len(blocks) == 2
    monkeypatch.setenv("URL", live_server.url)
    monkeypatch.setenv("KEY", KEY)
    want = text_backend.encode(["hello world"]).vectors[0]
    printed = []
    for block in blocks:
        namespace, out = run_guide_block(block, capsys)
        np.testing.assert_allclose(namespace["result"].data[0].embedding, want, atol=1e-6)
        assert namespace["result"].model == "all-MiniLM-L6-v2"
        printed.append(out)
    assert printed == ["", "384\n"]          # "# 384 for all-MiniLM-L6-v2"


APP_SCOPE = 'api://${appId}/.default'         # as the JavaScript block writes it
OTHER_SCOPE = "https://ml.azure.com/.default"   # the Azure AI Inference SDK's default


@pytest.fixture
def entra_only_server(monkeypatch):
    """A server configured as deploy.md's registration script leaves it (Entra ID only, no key)
    and, in this process's environment, the managed identity that makes an unchanged
    ``DefaultAzureCredential`` get its tenant's tokens (v2, as Entra ID issues them:
    ``api://<APP_ID>/.default`` -> ``aud`` the app's id; another resource's scope -> a token
    the server refuses). Yields (the token factory, the server)."""
    with entra_live_server(None, REGISTERED_APP_ID) as (idp, server):
        use_managed_identity(monkeypatch, idp.managed_identity_env())
        yield idp, server


def test_the_deploy_guide_s_entra_snippets_ask_for_the_api_s_scope_and_are_accepted(
        entra_only_server, text_backend, monkeypatch, capsys):
    """"Call the API with Microsoft Entra ID": the Azure AI Inference SDK snippet (Option A) and
    the OpenAI-style clients' token provider, DefaultAzureCredential included, as pasted: it
    finds a managed identity, as on Azure. Asking for the SDK's default scope is refused."""
    import ast

    import numpy as np
    import openai

    idp, server = entra_only_server
    blocks = deploy_guide_blocks("python", "APP_ID")
    assert len(blocks) == 2
    monkeypatch.setenv("URL", server.url)
    monkeypatch.setenv("APP_ID", REGISTERED_APP_ID)
    allow_bearer_over_http(monkeypatch, server.url)     # the openai SDK has no such check
    want = text_backend.encode(["hello world"]).vectors[0]
    inference, openai_style = blocks
    _, out = run_guide_block(inference, capsys)
    np.testing.assert_allclose(ast.literal_eval(out.strip()), want[:3], atol=1e-6)
    namespace, _ = run_guide_block(openai_style, capsys)
    for result in (namespace["result"], namespace["azure_result"]):
        np.testing.assert_allclose(result.data[0].embedding, want, atol=1e-6)
    assert set(idp.resources) == {f"api://{REGISTERED_APP_ID}"}
    asked = 'f"api://{APP_ID}/.default"'
    assert openai_style.count(asked) == 1
    with pytest.raises(openai.AuthenticationError) as refused:
        run_guide_block(openai_style.replace(asked, repr(OTHER_SCOPE)), capsys)
    assert refused.value.status_code == 401
    assert idp.resources[-1] == OTHER_SCOPE.removesuffix("/.default")


# Each client of the JavaScript block with a token the API refuses, counting the requests it
# sends (a fetch of its own): what the guide says of a refused token.
REFUSED_JS = """
import { createOpenAI } from "@ai-sdk/openai";
import { DefaultAzureCredential, getBearerTokenProvider } from "@azure/identity";
import { OpenAIEmbeddings } from "@langchain/openai";
import { embedMany } from "ai";
import OpenAI, { AzureOpenAI } from "openai";

const url = process.env.URL;
const tokenProvider = getBearerTokenProvider(new DefaultAzureCredential(), "%s");
let sent = 0;
const fetch = (...args) => { sent += 1; return globalThis.fetch(...args); };
const clients = {
  OpenAI: () => new OpenAI({ baseURL: `${url}/v1`, apiKey: tokenProvider, fetch })
    .embeddings.create({ model: "all-MiniLM-L6-v2", input: ["hello world"] }),
  AzureOpenAI: () => new AzureOpenAI({ endpoint: url, azureADTokenProvider: tokenProvider,
                                       apiVersion: "2024-10-21", fetch })
    .embeddings.create({ model: "all-MiniLM-L6-v2", input: ["hello world"] }),
  OpenAIEmbeddings: () => new OpenAIEmbeddings({
    model: "all-MiniLM-L6-v2", apiKey: tokenProvider, configuration: { baseURL: `${url}/v1`, fetch },
  }).embedDocuments(["hello world"]),
  embedMany: () => embedMany({
    model: createOpenAI({ baseURL: `${url}/v1`, apiKey: tokenProvider, fetch })
      .embedding("all-MiniLM-L6-v2"), values: ["hello world"] }),
};
const outcome = {};
for (const [name, call] of Object.entries(clients)) {
  sent = 0;
  try { await call(); outcome[name] = { sent, error: null }; }
  catch (error) {
    const status = error.status ?? error.statusCode;
    outcome[name] = { sent, error: error.constructor.name, status };
  }
}
process.stdout.write(JSON.stringify(outcome));
""" % OTHER_SCOPE


def test_the_deploy_guide_s_javascript_entra_snippet_is_accepted(entra_only_server,
                                                                  text_backend):
    """The Node.js block of "OpenAI-style clients with Entra ID" (openai's OpenAI and
    AzureOpenAI, LangChain.js, the Vercel AI SDK), @azure/identity's DefaultAzureCredential
    included, as pasted: it finds a managed identity, as on Azure; each client gets the model's
    vector. With a token for another scope, each raises its 401 error after one request."""
    import json

    import numpy as np

    why = node_missing()
    if why:
        pytest.skip(why)
    idp, server = entra_only_server
    (block,) = deploy_guide_blocks("js", "APP_ID")
    env = {**idp.managed_identity_env(), "URL": server.url, "APP_ID": REGISTERED_APP_ID}
    proc = run_node(block + "\nprocess.stdout.write(JSON.stringify([result.data[0].embedding, "
                    "azureResult.data[0].embedding, vectors[0], aiVectors[0]]));\n", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = text_backend.encode(["hello world"]).vectors[0]
    for vector in json.loads(proc.stdout):
        np.testing.assert_allclose(vector, want, atol=1e-6)
    assert idp.resources == [f"api://{REGISTERED_APP_ID}"]   # one token, for the four clients
    assert block.count(APP_SCOPE) == 1 and block.count("getBearerTokenProvider(") == 1
    proc = run_node(REFUSED_JS, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = {"sent": 1, "error": "AuthenticationError", "status": 401}
    assert json.loads(proc.stdout) == {
        **dict.fromkeys(("OpenAI", "AzureOpenAI", "OpenAIEmbeddings"), refused),
        "embedMany": {**refused, "error": "APICallError"}}
    assert idp.resources[-1] == OTHER_SCOPE.removesuffix("/.default")


def test_the_readmes_image_example_runs_as_written_from_the_repository(live_server, monkeypatch,
                                                                       capsys):
    """The README's azure-ai-inference image block (not a docs/snippets file: it is the image
    route's) with only the endpoint and key replaced, run from the repository's folder as its
    picture's path assumes (a new user found the path of a file that did not exist, h_user6)."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
              if "ImageEmbeddingInput.load(" in b]
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace(SNIPPET_ENDPOINT, live_server.url).replace(SNIPPET_KEY, KEY),  # noqa: S102
                 "README.md", "exec"), {"__name__": "snippet"})
    assert capsys.readouterr().out.strip().startswith("1 384")
