"""Shared fixtures: the real registry and text backend, services built from explicit settings,
and live local hosts (tools/local_host.py in a subprocess, loopback only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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
from jwt_factory import REGISTERED_APP_ID  # noqa: E402,F401 - tests import it from here
from live_server import LiveServer  # noqa: E402,F401 - tests import it from here

# tests/clients/ is its own suite, run in .venv-clients (see its pytest.ini and the Makefile).
collect_ignore = ["clients"]

API_VERSION = "2024-05-01-preview"
KEY = "test-key-0123456789"


@pytest.fixture(scope="session", autouse=True)
def large_instance_memory() -> Iterator[None]:
    """The app lowers its image limits by default where the process may use less than 1,536
    MiB (settings.SMALL_MEMORY_MB). Tests in this process see no memory limit, so the defaults
    they check are the same on every machine; the tests of that choice patch
    ``settings.usable_memory`` themselves."""
    from embedding_core import settings as settings_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings_module, "usable_memory", lambda: None)
        yield


@pytest.fixture(autouse=True)
def stop_the_test_s_own_workers() -> Iterator[None]:
    """After each test, stop the inference workers of the services it built itself
    (``make_service``, ``EmbeddingService(...)``): idle, they and their queues stayed for the
    rest of the process (87 threads at the end of the suite; the services themselves were
    freed). Queues that outlive the test are left: those of wider-scoped fixtures (set up before
    this one) and the process-wide service's (``reset_service`` stops it)."""
    from embedding_core import inference_queue
    from embedding_core import service as service_module

    before = set(inference_queue._queues)
    yield
    process_wide = service_module._service
    for queue in set(inference_queue._queues) - before:
        if process_wide is None or queue is not process_wide.queue:
            queue.stop()


# -- the default deployment's long inputs on OpenVINO (embedding_core/openvino_session.py) --------
# The service runs them there only on CPUs with AMX. Elsewhere, on CPUs with avx512_bf16 (AMD
# Zen 4 and 5, Intel Cooper Lake), OpenVINO runs the same bf16 model with other kernels, and the
# tests of that path claim AMX (CLAIM_AMX) so that the path runs and is tested there too: without
# it, a CI machine without AMX skipped all 11 of them. Measured on an AMD EPYC (Zen 5): long
# inputs within cosine 0.9999 of sentence-transformers and bitwise the same alone and in any
# batch, as on AMX. Not tested there: AMX's own kernels, their speed, and the need for the
# padding to 16 tokens (rows unpadded were the same in any batch there; test_openvino_runs_are_
# padded_to_multiples_of_16_tokens checks the padding itself).
CLAIM_AMX = ("import embedding_core.openvino_session as _ov\n"
             "_cpu_flags = _ov.cpu_flags\n"
             "_ov.cpu_flags = lambda path='/proc/cpuinfo': _cpu_flags(path) | {_ov.AMX_FLAG}\n")


def _long_inputs_here() -> tuple[str | None, str]:
    """("amx", "") where the service runs long inputs on OpenVINO here, ("claimed", "") where
    the tests may claim AMX for it, or (None, why neither)."""
    import importlib.util

    from embedding_core import openvino_session

    if importlib.util.find_spec("openvino") is None:
        return None, "openvino is not installed"
    if openvino_session.why_not_here() is None:
        return "amx", ""
    if "avx512_bf16" not in openvino_session.cpu_flags():
        return None, "neither AMX nor avx512_bf16 on this CPU: OpenVINO has no bf16 kernels here"
    with _claiming_amx():
        reason = openvino_session.why_not_here()
    return (None, reason) if reason else ("claimed", "")


@contextmanager
def _claiming_amx() -> Iterator[None]:
    from embedding_core import openvino_session

    real = openvino_session.cpu_flags
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino_session, "cpu_flags", lambda path="/proc/cpuinfo":
                   real(path) | {openvino_session.AMX_FLAG})
        yield


LONG_INPUTS, WHY_NO_LONG_INPUTS = _long_inputs_here()
# A child process's first lines: AMX claimed where the tests claim it.
LONG_INPUTS_PREAMBLE = CLAIM_AMX if LONG_INPUTS == "claimed" else ""
needs_long_inputs = pytest.mark.skipif(
    LONG_INPUTS is None, reason=f"the long-input path cannot run here: {WHY_NO_LONG_INPUTS}")


@contextmanager
def long_inputs_on_openvino() -> Iterator[None]:
    """Backends built in this block run the default deployment's long inputs on OpenVINO, AMX
    claimed where the CPU has only avx512_bf16; the test is skipped where neither."""
    if LONG_INPUTS is None:
        pytest.skip(f"the long-input path cannot run here: {WHY_NO_LONG_INPUTS}")
    if LONG_INPUTS == "amx":
        yield
        return
    with _claiming_amx():
        yield


def shipped_deployments() -> list[dict[str, Any]]:
    """A copy of the shipped registry's deployments, their file paths made absolute, for a
    registry parsed or written elsewhere (a test that changes an option or a flag)."""
    from embedding_core.registry import DEFAULT_REGISTRY

    deployments = json.loads(DEFAULT_REGISTRY.read_text())["deployments"]
    for dep in deployments:
        refs = [*dep["files"].values()]
        if isinstance(dep.get("calibration"), dict):
            refs.append(dep["calibration"])
        for ref in refs:
            ref["path"] = str(DEFAULT_REGISTRY.parent / ref["path"])
    return deployments


def registry_of(deployments: list[dict[str, Any]]) -> Registry:
    """A registry of ``deployments`` (see :func:`shipped_deployments`) with the default settings."""
    from embedding_core.registry import DEFAULT_REGISTRY, parse_registry

    return Registry(parse_registry({"deployments": deployments}, DEFAULT_REGISTRY.parent),
                    Settings.from_env({}))


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.from_settings(Settings.from_env({}))


@pytest.fixture(scope="session")
def text_backend(registry):
    return registry.backend(registry.default_for("text"))


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    return json.loads((DATA / "minilm_reference.json").read_text(encoding="utf-8"))


@contextmanager
def process_service(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """function_app's process-wide service, built (lazily) from a clean environment: no
    ``EMBEDDINGS_*`` setting but the test key; dropped again afterwards."""
    from embedding_core import service as service_module

    for name in list(os.environ):
        if name.startswith("EMBEDDINGS_"):
            mp.delenv(name)
    mp.setenv("EMBEDDINGS_API_KEYS", KEY)
    service_module.reset_service()
    try:
        yield
    finally:
        service_module.reset_service()


def git_repo(path: Path, files: dict[str, str]) -> Path:
    """A git repository at ``path`` whose one commit holds ``files`` (name -> text)."""
    path.mkdir()
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "data"], check=True)
    return path


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


@pytest.fixture(scope="session")
def live_server():
    server = LiveServer({"EMBEDDINGS_API_KEYS": f"{KEY},second-key-abcdef"})
    yield server
    server.stop()


@contextmanager
def entra_live_server(api_keys: str | None,
                      app_id: str | None = None) -> Iterator[tuple[Any, LiveServer]]:
    """A local identity provider serving its signing keys on loopback, and a local host that
    trusts it and also accepts ``api_keys`` (None: tokens only): yields (the token factory, the
    server). With ``app_id``, as deploy.md's registration script leaves it: tokens for
    ``api://<app_id>`` carry ``aud`` ``<app_id>``, and the audiences are
    ``api://<app_id>,<app_id>``."""
    from jwt_factory import TokenFactory, registered_app_audiences

    idp = TokenFactory(audience=app_id) if app_id else TokenFactory()
    with idp.serve_http():
        env = idp.env(**({"EMBEDDINGS_ENTRA_AUDIENCES": registered_app_audiences(app_id)}
                         if app_id else {}))
        server = LiveServer(env if api_keys is None else {"EMBEDDINGS_API_KEYS": api_keys, **env})
        try:
            yield idp, server
        finally:
            server.stop()


def refuse_thread_start(mp: pytest.MonkeyPatch, refused) -> None:
    """Make ``Thread.start`` fail as under a thread limit ("can't start new thread") for the
    threads whose name ``refused(name)`` is true; the others start."""
    import threading

    real_start = threading.Thread.start

    def start(thread):
        if refused(thread.name):
            raise RuntimeError("can't start new thread")
        real_start(thread)
    mp.setattr(threading.Thread, "start", start)
