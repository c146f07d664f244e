"""The triggers' one call into the core (standard library only, so it always imports).

The service is imported on the first request. If the deployment's packages cannot be loaded, every
request, ``GET /health`` included, gets a 503 that says why, instead of an invocation failure
with no body: the commonest cause on Azure is a build for another Python version (a remote build
that ran another Python, or the app's Python version changed and the code not yet deployed
again), whose first symptom would otherwise be e.g. "No module named 'orjson.orjson'"."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

from . import errors

log = logging.getLogger(__name__)

# Packages with compiled extensions, and where those are (relative to site-packages).
_EXTENSION_DIRS = ("orjson", "numpy/_core", "onnxruntime/capi", "tokenizers", "PIL",
                   "pybase64", "cryptography/hazmat/bindings")
_ABI = re.compile(r"\.cpython-3(\d+)[a-z]*-")
_logged = False


def serve(route: str, method: str, url: str, headers: Mapping[str, str],
          query: Mapping[str, str], body: bytes, route_params: Mapping[str, str],
          invocation: Any = None) -> tuple[int, dict[str, str], bytes]:
    """One request to ``route``: its status, headers and body."""
    start = time.perf_counter()
    try:
        from .service import ApiRequest, dispatch
    except ImportError as exc:
        if _own_code(exc) and not _other_pythons():
            raise           # a bug in the app's own modules: the worker logs it as ever
        client_id = errors.safe_client_request_id(_header(headers, "x-ms-client-request-id"))
        return _unloadable(exc, _openai_route(route, url), client_id, start)
    res = dispatch(route, ApiRequest.from_url(method, url, headers, query, body, route_params,
                                              invocation=invocation))
    return res.status, res.headers, res.body


_ENCODED_SLASH = re.compile("%2[fF]")


def decode_path(raw: str) -> str:
    """A URL's path percent-decoded as the Functions host (ASP.NET Core) decodes it: every
    escape but an encoded '/' (``%2F``), which stays encoded, so that a name with a '/' sent as
    ``%2F`` stays one segment, as in the route values the host passes."""
    return "%2F".join(unquote(piece) for piece in _ENCODED_SLASH.split(raw))


def _openai_route(route: str, url: str) -> bool:
    """Whether the request is on the OpenAI dialect's routes (service.ROUTES, path_dialect):
    those under /v1 and /openai, matched or not."""
    try:
        path = route if route != "{*path}" else decode_path(urlsplit(url).path)  # as api.py does
    except ValueError:
        return False
    first = (path.strip("/").split("/") or [""])[0].lower()
    return first in ("v1", "openai")


def _own_code(exc: ImportError) -> bool:
    """Whether the import failed on a name in this package (``from .errors import x``), not on
    a dependency."""
    return (exc.name or "").split(".")[0] == __name__.split(".")[0]


def _other_pythons() -> list[str]:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [v for v in built_for() if v != running]


def built_for() -> list[str]:
    """The Python versions ("3.11") the installed compiled extensions were built for."""
    versions: set[str] = set()
    for entry in sys.path:
        for sub in _EXTENSION_DIRS:
            folder = Path(entry or ".") / sub
            try:
                names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
            except OSError:
                continue
            for name in names:
                m = _ABI.search(name)
                if m and name.endswith(".so"):
                    versions.add(f"3.{m.group(1)}")
    return sorted(versions, key=lambda v: int(v.split(".")[1]))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _unloadable(exc: ImportError, openai: bool, client_id: str | None,
                start: float) -> tuple[int, dict[str, str], bytes]:
    """The 503 of a request while the packages cannot load, in the route's dialect (OpenAI's
    error shape under /v1 and /openai, as service.run_request renders it), with a request id."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    other = _other_pythons()
    # The module's name only: the exception's text may hold the server's paths (logged below).
    module = f" (module {exc.name!r} did not load)" if exc.name else ""
    if other:
        why = (f"its packages were built for Python {' and '.join(other)}, and it runs on "
               f"Python {running}{module}. Deploy the code again, so that the build runs the "
               f"app's Python version (docs/deploy.md, \"Python version\").")
    else:
        why = (f"a package is missing or broken on Python {running}{module}. Deploy the code "
               f"again with a build of requirements.txt.")
    err = errors.ApiError(503, "ServiceUnavailable", "The app cannot load its packages: " + why,
                          headers=dict(errors.NO_RETRY))
    global _logged
    if not _logged:                 # once per process, not once per request
        _logged = True
        log.error("the app cannot load its packages: %s", why, exc_info=exc)
    request_id = uuid.uuid4().hex
    headers = {"Content-Type": "application/json", **err.response_headers(),
               "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
               "x-request-id": request_id,
               **({"x-ms-client-request-id": client_id} if client_id else {})}
    body = ({"error": {"message": err.message, "type": "server_error", "param": None,
                       "code": "service_unavailable"}} if openai else err.body())
    headers["x-total-time"] = f"{(time.perf_counter() - start) * 1000:.1f}"   # as every answer
    return err.status, headers, json.dumps(body).encode()
