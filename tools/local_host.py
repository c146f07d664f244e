"""A small local host for machines without Azure Functions Core Tools.

It serves the functions registered in ``function_app.py`` over real HTTP: every request is turned
into a ``func.HttpRequest`` and handed to the function whose route and methods match, exactly as
the Functions host would (``routePrefix`` is empty in host.json). It has no routing rules,
validation or auth of its own; like the Functions host it refuses bodies over 100 MB.

    python -m tools.local_host --host 127.0.0.1 --port 7071
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

MAX_BODY = 100 * 1024 * 1024  # the Functions host's default maxRequestBodySize

log = logging.getLogger("local_host")


def load_routes(app) -> dict[str, dict[str, object]]:
    """``{route: {METHOD: user_function}}`` from a FunctionApp's registered functions."""
    routes: dict[str, dict[str, object]] = {}
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        route = (getattr(trigger, "route", None) or fn.get_function_name()).strip("/")
        methods = [getattr(m, "value", str(m)).upper() for m in (trigger.methods or [])] or \
            ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
        for method in methods:
            routes.setdefault(route, {})[method] = fn.get_user_function()
    return routes


def make_handler(routes: dict[str, dict[str, object]]):
    import azure.functions as func

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "embeddings-local-host"
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            target = routes.get(url.path.strip("/"), {}).get(self.command)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"Content-Type": "text/plain"}, b"Request body too large")
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            if target is None:
                self._send(404, {}, b"")
                return
            req = func.HttpRequest(
                method=self.command,
                url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                headers={k: v for k, v in self.headers.items()},
                params=dict(parse_qsl(url.query, keep_blank_values=True)),
                body=body,
            )
            res = target(req)
            self._send(res.status_code, dict(res.headers), res.get_body() or b"")

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

        def log_message(self, fmt: str, *args) -> None:  # access log through logging
            log.debug("%s - %s", self.address_string(), fmt % args)

    return Handler


def serve(host: str, port: int, app_dir: Path) -> ThreadingHTTPServer:
    sys.path.insert(0, str(app_dir))
    import function_app

    server = ThreadingHTTPServer((host, port), make_handler(load_routes(function_app.app)))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7071")))
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = serve(args.host, args.port, args.app_dir)
    print(f"Serving function_app on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
