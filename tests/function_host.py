"""An httpx transport that hands each request to the function registered in function_app.py, as
a ``func.HttpRequest`` with its route parameters: real SDKs at the function level, without HTTP.

Routes are matched as the Functions host matches them (``{name}`` is one segment, ``{*path}`` the
rest; the most specific route wins). Used for the routes the local host cannot serve until it
routes templates (``openai/deployments/{deployment}/embeddings``).
"""

from __future__ import annotations

import functools
from urllib.parse import parse_qsl, unquote

import azure.functions as func
import httpx2 as httpx  # what the openai SDK (3.x) is built on
import pytest

import function_app

# Set to True when tools/local_host.py routes templates ({deployment}, {*path}) as the Functions
# host does: the tests marked NEEDS_TEMPLATES then run the same clients over HTTP.
HTTP_ROUTE_TEMPLATES = True
NEEDS_TEMPLATES = pytest.mark.skipif(
    not HTTP_ROUTE_TEMPLATES,
    reason="the local host matches routes exactly until its rewrite (route templates) merges; "
           "the function-level variant runs meanwhile")


@functools.cache
def _routes() -> list[tuple[list[str], dict[str, object]]]:
    """``[(template segments, {METHOD: user function})]``, most specific first."""
    table: dict[str, dict[str, object]] = {}
    app = function_app.app
    # get_functions() refuses to run twice on one app (it remembers the names it has seen), and
    # tests/test_function_app.py calls it too: let this call see a fresh set of names.
    seen, app.functions_bindings = app.functions_bindings, {}
    try:
        functions = app.get_functions()
    finally:
        app.functions_bindings = seen
    for fn in functions:
        trigger = fn.get_trigger()
        for m in trigger.methods:
            table.setdefault(trigger.route.strip("/"), {})[getattr(m, "value", str(m))] = \
                fn.get_user_function()

    def specificity(route: str) -> tuple[int, int]:
        segs = route.split("/")
        return (-sum(not s.startswith("{") for s in segs), any(s.startswith("{*") for s in segs))
    return [(r.split("/"), table[r]) for r in sorted(table, key=specificity)]


def match(path: str, method: str):
    """``(user function, route params)`` for a request, or ``(None, {})``."""
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    for template, methods in _routes():
        params: dict[str, str] = {}
        ok = True
        for i, seg in enumerate(template):
            if seg.startswith("{*"):
                params[seg[2:-1]] = "/".join(parts[i:])
                break
            if i >= len(parts):
                ok = False
                break
            if seg.startswith("{"):
                params[seg[1:-1]] = parts[i]
            elif seg.lower() != parts[i].lower():
                ok = False
                break
        else:
            ok = ok and len(parts) == len(template)
        if ok and method in methods:
            return methods[method], params
    return None, {}


class FunctionTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = request.read()
        target, params = match(request.url.path, request.method)
        if target is None:
            return httpx.Response(404, content=b"")
        res = target(func.HttpRequest(
            method=request.method, url=str(request.url), headers=dict(request.headers),
            params=dict(parse_qsl(request.url.query.decode(), keep_blank_values=True)),
            body=body, route_params=params))
        return httpx.Response(res.status_code, headers=dict(res.headers),
                              content=res.get_body() or b"")
