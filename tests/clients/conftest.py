"""The framework suite: the clients people use, unmodified, against the local host on loopback.

It runs in .venv-clients (requirements-clients.txt), which holds the clients and not the app; the
server is tools/local_host.py run by the app's interpreter (``EMBEDDINGS_SERVER_PYTHON``, by
default .venv/bin/python). Before any client is imported, this file switches off the clients'
telemetry and downloads, points tiktoken at the cl100k_base file the service ships (the file
tiktoken would download), removes settings that could send a client elsewhere, and installs a
guard that refuses every connection not to loopback at once: a test whose client tried the
network fails, even if the client swallowed the error.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from clientkit import NetworkGuard  # noqa: E402
from live_server import LiveServer  # noqa: E402

KEY = "test-key-0123456789"

# tiktoken caches https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken under
# the sha1 of that URL, and checks the file's sha256 (the one PROVENANCE.md records).
_TIKTOKEN_CACHE = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
shutil.copyfile(ROOT / "embedding_core/models/cl100k_base/cl100k_base.tiktoken",
                _TIKTOKEN_CACHE / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4")

for name in list(os.environ):
    if name.startswith(("OPENAI_", "AZURE_OPENAI_", "AZURE_INFERENCE_", "AZURE_AI_",
                        "LANGCHAIN_", "LANGSMITH_", "LITELLM_", "SEMANTICKERNEL_", "LLAMA_",
                        "HAYSTACK_", "CHROMA_")):
        del os.environ[name]
os.environ.update({
    "TIKTOKEN_CACHE_DIR": str(_TIKTOKEN_CACHE),
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else litellm fetches prices from GitHub on import
    "LANGCHAIN_TRACING_V2": "false", "LANGSMITH_TRACING": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "HAYSTACK_TELEMETRY_ENABLED": "False", "ANONYMIZED_TELEMETRY": "False",
    "DO_NOT_TRACK": "1", "OTEL_SDK_DISABLED": "true", "AZURE_TELEMETRY_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
})

GUARD = NetworkGuard().install()


_AT_IMPORT: list[str] = []


def pytest_collection_finish(session):
    _AT_IMPORT.extend(GUARD.take())  # the test modules have imported every client


def pytest_sessionfinish(session, exitstatus):
    GUARD.uninstall()
    shutil.rmtree(_TIKTOKEN_CACHE, ignore_errors=True)


@pytest.fixture
def network_attempts_at_import() -> list[str]:
    return list(_AT_IMPORT)


@pytest.fixture(autouse=True)
def no_network_but_loopback():
    yield
    attempts = GUARD.take()
    assert not attempts, "a client tried to reach the network:\n" + "\n".join(attempts)


def server_python() -> str:
    """The interpreter the service runs with (the app's .venv, not this one)."""
    python = os.environ.get("EMBEDDINGS_SERVER_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        pytest.exit(f"no server interpreter at {python}: run `make test` (it builds .venv), or "
                    "set EMBEDDINGS_SERVER_PYTHON", returncode=2)
    return python


@pytest.fixture(scope="session")
def server():
    live = LiveServer({"EMBEDDINGS_API_KEYS": KEY}, python=server_python())
    yield live
    live.stop()


# tests/jwt_factory.py's identity provider, run by the server's interpreter (it needs the app's
# token validator, which this virtualenv does not have): serves its signing keys on loopback,
# prints the server's EMBEDDINGS_ENTRA_* settings and two tokens, and stops when stdin closes.
_IDENTITY_PROVIDER = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from jwt_factory import REGISTERED_APP_ID as APP_ID, TokenFactory, registered_app_audiences
idp = TokenFactory(audience=APP_ID)
with idp.serve_http():
    print(json.dumps({"env": idp.env(EMBEDDINGS_ENTRA_AUDIENCES=registered_app_audiences()),
                      "token": idp.mint(lifetime=4 * 3600),
                      "refused": idp.mint(aud="api://someone-else", lifetime=4 * 3600),
                      "app_id": APP_ID, "managed_identity": idp.managed_identity_env()}),
          flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def entra_server():
    """A local host accepting Entra ID tokens from a local identity provider (and ``KEY``),
    configured as deploy.md's app registration leaves it: yields (the server, {"token":
    accepted, "refused": for another audience, "app_id": the registration's APP_ID,
    "managed_identity": the variables that make DefaultAzureCredential get the provider's
    tokens})."""
    import json
    import subprocess
    import threading

    idp = subprocess.Popen([server_python(), "-c", _IDENTITY_PROVIDER, str(ROOT), str(TESTS)],
                           cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    live = None
    try:
        first: list[str] = []                # its first line, read within a minute
        reader = threading.Thread(target=lambda: first.append(idp.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(60)
        started = json.loads(first[0]) if first and first[0] else None
        assert started, "the identity provider did not start within a minute"
        live = LiveServer({"EMBEDDINGS_API_KEYS": KEY, **started["env"]}, python=server_python())
        yield live, {name: started[name]
                     for name in ("token", "refused", "app_id", "managed_identity")}
    finally:
        if live is not None:
            live.stop()
        idp.stdin.close()
        try:
            idp.wait(10)
        except subprocess.TimeoutExpired:
            idp.kill()
            idp.wait(10)
