"""What the client tests of both suites share: the Azure route's vectors as the reference, the
README snippets, and a guard that makes any connection off loopback fail at once.

Standard library and numpy only: the framework suite (tests/clients, in .venv-clients) imports it
too, and that virtualenv has the clients, not the app.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import traceback
import urllib.request
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS_DIR = ROOT / "docs" / "snippets"
README = ROOT / "README.md"

# What the snippets say, and what a test puts in their place.
SNIPPET_ENDPOINT = "http://127.0.0.1:7071"
SNIPPET_KEY = "local-dev-key-0000"   # the Makefile's default local key (make serve)
SNIPPET_TEXTS = ["first text", "second text"]

# Texts every client embeds, and their cl100k_base token ids: tiktoken 0.14.0's
# encode_ordinary, which is what LangChain's OpenAIEmbeddings sends by default.
TEXTS = ["hello world", "Ünïcödé — naïve café 東京 🚀",
         "The quick brown fox jumps over the lazy dog."]
CL100K = {
    "hello world": [15339, 1917],  # every id < 30,522: once read as WordPiece ids, cosine 0.17
    "Ünïcödé — naïve café 東京 🚀": [53591, 77, 38672, 66, 3029, 67, 978, 2001, 95980, 588,
                                     53050, 61696, 109, 47653, 11410, 248, 222],  # 🚀 = 3 ids
    "The quick brown fox jumps over the lazy dog.": [791, 4062, 14198, 39935, 35308, 927, 279,
                                                     16053, 5679, 13],
}


# -- the reference: the Azure route over HTTP --------------------------------------------------

def azure_embed(url: str, key: str, inputs: list[Any], encoding: str = "float",
                model: str | None = None,
                extras: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """``POST /embeddings`` (the Azure dialect): float32 rows (from base64, so bit-exact) or the
    integers of a quantised encoding, and the response document. ``extras`` (e.g. ``truncate``)
    are sent with ``extra-parameters: pass-through``."""
    body: dict[str, Any] = {"input": inputs,
                            "encoding_format": "base64" if encoding == "float" else encoding,
                            **(extras or {})}
    if model is not None:
        body["model"] = model
    headers = {"api-key": key, "Content-Type": "application/json"}
    if extras:
        headers["extra-parameters"] = "pass-through"
    req = urllib.request.Request(
        f"{url}/embeddings?api-version=2024-05-01-preview", data=json.dumps(body).encode(),
        headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as res:
        doc = json.loads(res.read())
    if encoding == "float":
        rows = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                         for d in doc["data"]])
    else:
        rows = np.asarray([d["embedding"] for d in doc["data"]], dtype=np.int64)
    return rows, doc


def as_float32(vectors: Any) -> np.ndarray:
    """A client's vectors (lists of Python floats, float64 arrays…) as float32 rows.

    The service sends float32 values: as bytes (base64), which clients widen to float64 exactly,
    or as JSON numbers in the shortest form that reads back as the same float32. Either way
    rounding the client's float64 to float32 recovers the value sent, so comparing the result
    with the Azure route's float32 bytes is bit-for-bit."""
    return np.asarray(vectors, dtype=np.float64).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- README snippets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snippet:
    file: str          # under docs/snippets/
    suite: str         # "main" (.venv), "clients" (.venv-clients) or "node" (JS_DIR) runs it
    encoding: str = "float"   # what its `vectors` hold
    rtol: float = 0.0         # float vectors: 0 = bit for bit


SNIPPETS = {s.file: s for s in (
    Snippet("azure_ai_inference_sync.py", "main", "int8"),
    Snippet("azure_ai_inference_async.py", "main"),
    Snippet("openai_sdk.py", "main"),
    Snippet("azure_openai_sdk.py", "main"),
    Snippet("langchain_openai_embeddings.py", "clients"),
    Snippet("langchain_azure_ai_inference.py", "clients"),
    Snippet("langchain_azure_ai_openai.py", "clients"),
    Snippet("llama_index_azure_inference.py", "clients"),
    Snippet("llama_index_openai.py", "clients"),
    Snippet("semantic_kernel_embeddings.py", "clients"),
    Snippet("litellm_embedding.py", "clients"),
    Snippet("haystack_embedders.py", "clients"),
    # Chroma renormalises what it stores in a cosine space (its default for OpenAI's function):
    # the service's unit vectors, each value within an ulp or two
    Snippet("chroma_openai.py", "clients", rtol=1e-6),
    Snippet("openai_node.mjs", "node"),
    Snippet("azure_rest_ai_inference.mjs", "node"),
    Snippet("langchain_openai_node.mjs", "node"),
    Snippet("vercel_ai_sdk.mjs", "node"),
)}
SNIPPET_SUFFIXES = ("*.py", "*.mjs")
JS_DIR = ROOT / "tests" / "clients" / "js"      # package.json + lock of the JavaScript clients

_README_BLOCK = re.compile(
    r"<!-- snippet: docs/snippets/(?P<file>[\w.-]+) -->\n```(?:python|js)\n(?P<code>.*?)```\n", re.S)


def readme_snippets() -> dict[str, str]:
    """``{file: code}`` of the snippet blocks in README.md."""
    text = README.read_text(encoding="utf-8")
    blocks = {m["file"]: m["code"] for m in _README_BLOCK.finditer(text)}
    assert text.count("<!-- snippet:") == len(blocks), "a snippet marker without its code block"
    return blocks


def snippet_source(file: str) -> str:
    return (SNIPPETS_DIR / file).read_text(encoding="utf-8")


def snippet_code(file: str, url: str, key: str) -> str:
    """A snippet's exact text with only the endpoint and key replaced."""
    code = snippet_source(file)
    assert SNIPPET_ENDPOINT in code and SNIPPET_KEY in code, file
    return code.replace(SNIPPET_ENDPOINT, url).replace(SNIPPET_KEY, key)


def run_snippet(file: str, url: str, key: str) -> dict[str, Any]:
    """Execute a Python snippet (endpoint and key replaced); its namespace, with what it printed
    as ``printed``."""
    namespace: dict[str, Any] = {"__name__": "snippet"}
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(snippet_code(file, url, key), str(SNIPPETS_DIR / file), "exec"),  # noqa: S102
             namespace)
    namespace["printed"] = out.getvalue()
    return namespace


def node_missing() -> str | None:
    """Why the JavaScript snippets cannot run here, or None (`make test` installs JS_DIR's
    packages with npm where npm exists; .ci/run installs Node.js where it is missing)."""
    if shutil.which("node") is None:
        return "Node.js is not installed"
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    major = re.match(r"v(\d+)\.", version.stdout)
    if major is None or int(major.group(1)) < 22:
        return f"Node.js 22 or later is needed (found {version.stdout.strip() or 'none'})"
    if not (JS_DIR / "node_modules").is_dir():
        return f"the JavaScript clients are not installed (npm ci --prefix {JS_DIR})"
    wanted = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    missing = [name for name in wanted if not (JS_DIR / "node_modules" / name).is_dir()]
    if missing:
        return (f"the JavaScript clients are out of date, {', '.join(missing)} missing "
                f"(npm ci --prefix {JS_DIR})")
    return None


def run_node(code: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the ES module ``code`` with Node.js in JS_DIR (its packages), every connection off
    loopback refused (loopback_only.mjs; checked here), in an environment of PATH, HOME, LANG,
    TMPDIR, SYSTEMROOT and ``env`` only; the finished process (the caller reads its exit code)."""
    env = {**{k: v for k, v in os.environ.items()
              if k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")}, **(env or {})}
    proc = subprocess.run(["node", "--import", "./loopback_only.mjs", "--input-type=module"],
                          input=code, cwd=JS_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert "loopback_only: refused" not in proc.stderr, proc.stderr
    return proc


def run_node_snippet(file: str, url: str, key: str, timeout: float = 60) -> dict[str, Any]:
    """Run a JavaScript snippet (endpoint and key replaced); ``{"vectors", "printed"}``: its
    ``vectors`` (written after what it printed, on a line of their own) and what it printed."""
    proc = run_node(snippet_code(file, url, key)
                    + "\nprocess.stdout.write('\\n' + JSON.stringify(vectors));\n",
                    timeout=timeout)
    assert proc.returncode == 0, f"{file} failed:\n{proc.stderr[-3000:]}"
    printed, _, vectors = proc.stdout.rpartition("\n")
    return {"vectors": json.loads(vectors), "printed": printed}


def use_managed_identity(mp: Any, env: dict[str, str]) -> None:
    """Make this process's ``DefaultAzureCredential`` use the managed identity whose variables
    are ``env`` (a test tenant's ``TokenFactory.managed_identity_env()``) and nothing of the
    developer's Azure settings (``mp``: pytest's monkeypatch)."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")):
            mp.delenv(name)
    for name, value in env.items():
        mp.setenv(name, value)


def allow_bearer_over_http(mp: Any, url: str) -> None:
    """azure-core sends a bearer token over https only (sync and async pipelines); let it send
    one to the plain-http loopback server at ``url`` (``mp``: pytest's monkeypatch)."""
    from azure.core.pipeline.policies import _authentication, _authentication_async

    real_enforce = _authentication._enforce_https

    def enforce_https(request: Any) -> None:
        if not request.http_request.url.startswith(url):
            real_enforce(request)
    for module in (_authentication, _authentication_async):
        mp.setattr(module, "_enforce_https", enforce_https)


def check_snippet_vectors(file: str, namespace: dict[str, Any], url: str, key: str) -> None:
    """The snippet's ``vectors`` are the Azure route's for SNIPPET_TEXTS, exactly, and it printed
    what its last line's comment says it prints: how many vectors, and their size."""
    spec = SNIPPETS[file]
    comment = re.search(r"(?:#|//) (.*)\n\Z", snippet_source(file))
    assert comment and namespace["printed"] == comment.group(1) + "\n", (file, namespace["printed"])
    assert comment.group(1) == f"{len(SNIPPET_TEXTS)} 384", file
    want, _ = azure_embed(url, key, SNIPPET_TEXTS, spec.encoding)
    got = namespace["vectors"]
    if spec.encoding == "float":
        np.testing.assert_allclose(as_float32(got), want, rtol=spec.rtol, atol=0)
    else:
        assert [list(map(int, v)) for v in got] == want.tolist()


# -- no network but loopback -----------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class NetworkGuard:
    """Refuses, at once, every DNS lookup and connection that is not loopback (or a Unix socket),
    and remembers them: a client that swallows the error (telemetry, a model-price download)
    still fails the test that triggered it."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def _refuse(self, what: str) -> OSError:
        self.attempts.append(what + "\n" + "".join(traceback.format_stack(limit=12)[:-2]))
        return OSError(f"tests allow loopback only; refused {what}")

    def install(self) -> "NetworkGuard":
        guard = self
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection

        def allowed(address: Any) -> bool:
            return isinstance(address, (str, bytes)) or (
                isinstance(address, tuple) and str(address[0]).lower() in LOOPBACK)

        def connect(self: socket.socket, address: Any) -> None:
            if not allowed(address):
                raise guard._refuse(f"connect to {address!r}")
            return real_connect(self, address)

        def connect_ex(self: socket.socket, address: Any) -> int:
            if not allowed(address):
                raise guard._refuse(f"connect to {address!r}")
            return real_connect_ex(self, address)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name is not None and str(name).lower() not in LOOPBACK:
                raise socket.gaierror(socket.EAI_NONAME, str(guard._refuse(f"DNS lookup {name!r}")))
            return real_getaddrinfo(host, *args, **kwargs)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            if not allowed(address):
                raise guard._refuse(f"connect to {address!r}")
            return real_create_connection(address, *args, **kwargs)

        for owner, name, value in ((socket.socket, "connect", connect),
                                   (socket.socket, "connect_ex", connect_ex),
                                   (socket, "getaddrinfo", getaddrinfo),
                                   (socket, "create_connection", create_connection)):
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
        return self

    def uninstall(self) -> None:
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved.clear()

    def take(self) -> list[str]:
        """The refused attempts since the last call."""
        out, self.attempts = self.attempts, []
        return out


@contextmanager
def loopback_only(who: str) -> Iterator[NetworkGuard]:
    """Run the block with a :class:`NetworkGuard` installed; fail if ``who`` tried to go
    beyond loopback, even where the error was swallowed."""
    guard = NetworkGuard().install()
    try:
        yield guard
    finally:
        guard.uninstall()
    assert not guard.take(), f"{who} tried to reach the network"
