"""Shared fixtures: the real registry and text backend, services built from explicit settings,
and live local hosts (tools/local_host.py in a subprocess, loopback only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from embedding_core.registry import Registry  # noqa: E402
from embedding_core.service import ApiRequest, EmbeddingService  # noqa: E402
from embedding_core.settings import Settings  # noqa: E402

API_VERSION = "2024-05-01-preview"
KEY = "test-key-0123456789"


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.from_settings(Settings.from_env({}))


@pytest.fixture(scope="session")
def text_backend(registry):
    return registry.backend(registry.default_for("text"))


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    return json.loads((DATA / "minilm_reference.json").read_text(encoding="utf-8"))


def make_service(**env: str) -> EmbeddingService:
    """A service with its own settings (models load only if a request reaches inference)."""
    return EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": KEY, **env}))


@pytest.fixture(scope="session")
def service(registry) -> EmbeddingService:
    return EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": KEY}), registry)


def post(service: EmbeddingService, body: Any, *, path: str = "/embeddings",
         headers: dict[str, str] | None = None, query: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"api-key": KEY, "Content-Type": "application/json", **(headers or {})}
    q = {"api-version": API_VERSION} if query is None else query
    handler = service.embeddings if path == "/embeddings" else service.image_embeddings
    return handler(ApiRequest("POST", path, h, q, raw))


class LiveServer:
    """tools/local_host.py serving function_app.py (or the one in ``app_dir``) on an ephemeral
    loopback port."""

    def __init__(self, env: dict[str, str], app_dir: Path | None = None):
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("EMBEDDINGS_", "LOCAL_HOST_"))}
        full_env.update(env)
        full_env.setdefault("LOG_LEVEL", "WARNING")
        app = ["--app-dir", str(app_dir)] if app_dir is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.local_host", "--host", "127.0.0.1", "--port", "0", *app],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"local host did not start: {line}{self.proc.stdout.read()}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        # Drain the server's output all along: a pipe nobody reads fills at 64 KB and then
        # stalls the server on its next log line.
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except urllib.error.HTTPError:  # an answer: the server is up (an app without /health)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def _drain(self) -> None:
        for out_line in self.proc.stdout:
            self._lines.append(out_line)

    def output(self) -> str:
        """Everything the server printed after its "Serving" line (complete once stopped)."""
        if self.proc.poll() is not None:
            self._reader.join(10)
        return "".join(self._lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)


@pytest.fixture(scope="session")
def live_server():
    server = LiveServer({"EMBEDDINGS_API_KEYS": f"{KEY},second-key-abcdef"})
    yield server
    server.stop()
