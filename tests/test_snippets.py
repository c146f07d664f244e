"""README "Use it from…": the README shows exactly the files in docs/snippets/, and the snippets
of the clients in this virtualenv (azure-ai-inference sync and aio, openai, AzureOpenAI) run
against the local host with only the endpoint and key replaced, giving the Azure route's vectors.
The frameworks' snippets run in the client suite (tests/clients)."""

from __future__ import annotations

import os

import httpx2
import pytest

from clientkit import (SNIPPET_ENDPOINT, SNIPPET_KEY, SNIPPET_SUFFIXES, SNIPPETS, SNIPPETS_DIR,
                       check_snippet_vectors, loopback_only, node_missing, readme_snippets,
                       run_node, run_node_snippet, run_snippet, snippet_source)
from conftest import KEY, ROOT
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


# -- docs/deploy.md's code, as a user pastes it after exporting URL and KEY or APP_ID ---------------

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
    """"Call the API with a key": the Azure AI Inference SDK and the openai SDK snippets, with
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
    assert printed == ["384\n", ""]          # "# 384 for all-MiniLM-L6-v2"


APP_ID = "6c1f0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
APP_SCOPE = 'api://${appId}/.default'         # as the JavaScript block writes it
OTHER_SCOPE = "https://ml.azure.com/.default"   # the Azure AI Inference SDK's default


@pytest.fixture
def entra_only_server():
    """A server configured as deploy.md's registration script leaves it (audiences
    ``api://<APP_ID>,<APP_ID>``; Entra ID only, no key), and the managed identity environment
    that makes an unchanged ``DefaultAzureCredential`` get its tenant's tokens: the v2 tokens
    Entra ID issues (``api://<APP_ID>/.default`` -> ``aud`` the app's id, another resource's
    scope -> a token the server refuses)."""
    from jwt_factory import TokenFactory
    from live_server import LiveServer

    idp = TokenFactory(audience=APP_ID)
    with idp.serve_http():
        server = LiveServer(idp.env(EMBEDDINGS_ENTRA_AUDIENCES=f"api://{APP_ID},{APP_ID}"))
        try:
            yield server, idp
        finally:
            server.stop()


def test_the_deploy_guide_s_entra_snippets_ask_for_the_api_s_scope_and_are_accepted(
        entra_only_server, text_backend, monkeypatch, capsys):
    """"Call the API with Microsoft Entra ID": the Azure AI Inference SDK snippet (Option A) and
    the OpenAI-style clients' token provider, DefaultAzureCredential included, as pasted: it
    finds a managed identity, as on Azure. Asking for the SDK's default scope is refused."""
    import ast

    import numpy as np
    import openai
    from azure.core.pipeline.policies import _authentication

    server, idp = entra_only_server
    blocks = deploy_guide_blocks("python", "APP_ID")
    assert len(blocks) == 2
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name)
    for name, value in {**idp.managed_identity_env(), "URL": server.url, "APP_ID": APP_ID}.items():
        monkeypatch.setenv(name, value)
    # The Azure SDK sends a bearer token over https only; the server here is plain http on
    # loopback (the openai SDK has no such check).
    real_enforce = _authentication._enforce_https

    def enforce_https(request):
        if not request.http_request.url.startswith("http://127.0.0.1:"):
            real_enforce(request)
    monkeypatch.setattr(_authentication, "_enforce_https", enforce_https)
    want = text_backend.encode(["hello world"]).vectors[0]
    inference, openai_style = blocks
    _, out = run_guide_block(inference, capsys)
    np.testing.assert_allclose(ast.literal_eval(out.strip()), want[:3], atol=1e-6)
    namespace, _ = run_guide_block(openai_style, capsys)
    for result in (namespace["result"], namespace["azure_result"]):
        np.testing.assert_allclose(result.data[0].embedding, want, atol=1e-6)
    assert set(idp.resources) == {f"api://{APP_ID}"}
    asked = 'f"api://{APP_ID}/.default"'
    assert openai_style.count(asked) == 1
    with pytest.raises(openai.AuthenticationError) as refused:
        run_guide_block(openai_style.replace(asked, repr(OTHER_SCOPE)), capsys)
    assert refused.value.status_code == 401
    assert idp.resources[-1] == OTHER_SCOPE.removesuffix("/.default")


def test_the_deploy_guide_s_javascript_entra_snippet_is_accepted(entra_only_server,
                                                                  text_backend):
    """The Node.js block of "OpenAI-style clients with Entra ID" (openai's OpenAI and
    AzureOpenAI, LangChain.js), @azure/identity's DefaultAzureCredential included, as pasted: it
    finds a managed identity, as on Azure; each client gets the model's vector. Asking for
    another scope gets a 401."""
    import json

    import numpy as np

    why = node_missing()
    if why:
        pytest.skip(why)
    server, idp = entra_only_server
    (block,) = deploy_guide_blocks("js", "APP_ID")
    env = {**idp.managed_identity_env(), "URL": server.url, "APP_ID": APP_ID}
    show = ("\nprocess.stdout.write(JSON.stringify([result.data[0].embedding, "
            "azureResult.data[0].embedding, vectors[0]]));\n")
    proc = run_node(block + show, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = text_backend.encode(["hello world"]).vectors[0]
    for vector in json.loads(proc.stdout):
        np.testing.assert_allclose(vector, want, atol=1e-6)
    assert idp.resources == [f"api://{APP_ID}"]       # one token, reused by the three clients
    assert block.count(APP_SCOPE) == 1
    proc = run_node(block.replace(APP_SCOPE, OTHER_SCOPE) + show, env)
    assert proc.returncode != 0 and "AuthenticationError: 401" in proc.stderr, proc.stderr[-3000:]
    assert idp.resources[-1] == OTHER_SCOPE.removesuffix("/.default")
