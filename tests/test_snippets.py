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
                       run_node_snippet, run_snippet, snippet_source)
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
