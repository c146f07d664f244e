#!/usr/bin/env python3
"""Post-deployment smoke test for the embeddings API.

Calls GET /health, GET /info and POST /embeddings on a deployed endpoint and
checks the response shapes of the Azure AI Model Inference contract. It also
checks that /embeddings rejects a request without credentials.

Authentication (pick one):
  * API key (default): read from the environment variable named by --key-env
    (default EMBEDDINGS_API_KEY). The key is never accepted on the command line
    (it would show up in the process list) and never printed.
  * --entra: a Microsoft Entra ID token from azure-identity's
    DefaultAzureCredential (optional dependency: pip install azure-identity),
    for --scope, which --entra requires: the API's own scope,
    api://<app-client-id>/.default (docs/deploy.md, Option A), or
    https://ml.azure.com/.default (Option B). There is no default: a token for a
    scope the app does not accept is still sent, and for a Microsoft resource it
    is a token that resource accepts.

Examples:
  export EMBEDDINGS_API_KEY="$(az keyvault secret show --vault-name "$KV" \\
      --name embeddings-api-key --query value -o tsv | tr ',' '\\n' | sed -n 's/^ *primary://p' | head -n 1)"
  python scripts/smoke_deployed.py --url "$(azd env get-value AZURE_FUNCTION_URL)"
  python scripts/smoke_deployed.py --url https://func-api-xyz.azurewebsites.net \\
      --entra --scope api://<app-client-id>/.default

Only the standard library is used for the API-key path. Plain http:// URLs are
refused unless the host is a loopback address (local testing). Redirects are not
followed: the key or token goes only to --url, and a 3xx answer fails the check
naming where it points.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import re
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

DEFAULT_API_VERSION = "2024-05-01-preview"
DEFAULT_KEY_ENV = "EMBEDDINGS_API_KEY"
URL_ENV = "AZURE_FUNCTION_URL"
SETTLE_PAUSE = 2.0      # seconds between the answers of --settle
# /health answers --wait waits out besides 5xx: 404 while the functions are not indexed yet,
# 408 and 429 from the platform's front end while instances restart or scale out.
WAITED_OUT = frozenset({404, 408, 429})
NO_CREDENTIALS_HINT = (
    "\nRight after a first deployment the identity's Key Vault role may still have been "
    "propagating when the app read its key: see docs/deploy.md, \"Key Vault reference not "
    "resolved\" (read the reference's status, refresh it or restart the app, then run this "
    "check again: azd hooks run postdeploy).")


class SmokeError(Exception):
    """A smoke check failed."""


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_base_url(url: str) -> str:
    """Return the normalised base URL or raise ValueError.

    https is required, except for loopback hosts where http is allowed.
    """
    if not url:
        raise ValueError(f"no endpoint: pass --url or set {URL_ENV}")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parsed.username or parsed.password:
        raise ValueError("credentials in the URL are not allowed")
    if parsed.query or parsed.fragment:
        raise ValueError("pass the base URL without query string or fragment")
    if parsed.scheme == "http" and not is_loopback_host(parsed.hostname):
        raise ValueError("plain http is only allowed for loopback hosts; use https")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoke_deployed.py",
        description="Smoke-test a deployed embeddings API (GET /health, GET /info, POST /embeddings).",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, ""),
        help=f"base URL of the Function App (default: ${URL_ENV})",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--key-env",
        default=DEFAULT_KEY_ENV,
        metavar="NAME",
        help=f"environment variable holding the API key (default: {DEFAULT_KEY_ENV})",
    )
    auth.add_argument(
        "--entra",
        action="store_true",
        help="authenticate with DefaultAzureCredential (needs azure-identity) instead of an API key",
    )
    parser.add_argument(
        "--scope",
        default="",
        help="token scope, required with --entra: api://<app-client-id>/.default (Option A) or "
             "https://ml.azure.com/.default (Option B)",
    )
    parser.add_argument(
        "--key-header",
        choices=("api-key", "bearer"),
        default="api-key",
        help="send the API key as an 'api-key' header (default) or as 'Authorization: Bearer'",
    )
    parser.add_argument(
        "--api-version",
        default=DEFAULT_API_VERSION,
        help=f"api-version query parameter (default: {DEFAULT_API_VERSION}; empty to omit)",
    )
    parser.add_argument("--model", default="", help="optional 'model' field for /embeddings")
    parser.add_argument("--input", default="hello world", help="text to embed (default: 'hello world')")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default: 60; allow for cold starts)")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept an app whose authentication is off (/health says so: EMBEDDINGS_AUTH="
             "disabled), for one reachable only through a gateway that authenticates; without "
             "it the check fails on such an app",
    )
    parser.add_argument(
        "--skip-unauthenticated-check",
        action="store_true",
        help="do not check that /embeddings rejects a request without credentials",
    )
    parser.add_argument(
        "--health-only",
        action="store_true",
        help="only GET /health (no credentials needed): what azure.yaml's postdeploy hook runs",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="retry GET /health this long while the app is unreachable, not found, answers 408, "
             "429 or 5xx (a deployment restarting, the platform busy) or a status other than ok "
             "(degraded); default: 0, no retry",
    )
    parser.add_argument(
        "--expect-build",
        default="",
        metavar="BUILD",
        help="GET /health must name this build (12 hex digits), or with 'local' this folder's, "
             "or the one --record-build kept when azd packaged it: with --wait, an answer from "
             "another build (an instance still running the previous deployment) is waited out "
             "like a 5xx",
    )
    parser.add_argument(
        "--record-build",
        action="store_true",
        help="only keep this folder's build for the azd environment (AZURE_ENV_NAME), for a "
             "later --expect-build local: what azure.yaml's prepackage hook runs",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="GET /health counts once it has answered well for this long (asked "
             f"every {SETTLE_PAUSE:.0f} s), as a deployment's restarts can follow its first "
             "good answer (default: 0)",
    )
    return parser


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = re.compile(r"[0-9a-f]{12}")


def folder_build() -> str:
    """The build of the app in the folder this script is in (embedding_core/build.py)."""
    sys.path.insert(0, ROOT)
    try:
        from embedding_core import build   # standard library only
        return build.digest(build.Path(ROOT))
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError, ...
        raise ValueError(f"cannot read the app's code in {ROOT} ({exc})") from None
    finally:
        sys.path.remove(ROOT)


def record_path(environ: Mapping[str, str]) -> Optional[str]:
    """Where --record-build keeps the build azd packaged for the azd environment (.azure/ is
    neither committed nor shipped: azd leaves out every .azure folder), or None outside azd."""
    name = environ.get("AZURE_ENV_NAME", "")
    if not name or name in (".", "..") or any(c in name for c in "/\\:\0"):
        return None
    return os.path.join(ROOT, ".azure", name, "embeddings-build")


def record_build(environ: Mapping[str, str], out=sys.stdout) -> None:
    """--record-build (azure.yaml's prepackage hook): keep the folder's build as azd packages it,
    for --expect-build local after the deployment; files edited meanwhile (azd up provisions
    between the two) then do not count. Never fails the packaging."""
    path = record_path(environ)
    try:
        if path is None:
            raise ValueError("AZURE_ENV_NAME is not set (not run by azd)")
        try:       # a record of an earlier packaging (kept by a check that failed) goes first
            os.remove(path)
        except FileNotFoundError:
            pass
        build = folder_build()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="ascii") as f:
            f.write(build + "\n")
    except Exception as exc:  # noqa: BLE001 - never fails the packaging
        print(f"note: no build recorded ({exc}); --expect-build local will read the folder as "
              "it is after the deployment", file=out)
        return
    print(f"recorded build {build}, as packaged, in {os.path.relpath(path, ROOT)}", file=out)


def expected_build(value: str, environ: Mapping[str, str] = os.environ,
                   out=sys.stdout) -> Tuple[str, ...]:
    """The builds ``--expect-build`` accepts: none (no check), its 12 hex digits, or for 'local'
    the folder's as it is now and the one --record-build kept when azd packaged it, if any (used
    once: :func:`forget_record` removes it when the check passes, so that a later check does not
    expect it; a check that fails keeps it for ``azd hooks run postdeploy``)."""
    value = value.strip().lower()
    if value != "local":
        if value and not BUILD.fullmatch(value):
            raise ValueError(f"--expect-build must be 'local' or 12 hex digits, not {value!r}")
        return (value,) if value else ()
    try:
        builds = (folder_build(),)
    except ValueError as exc:
        raise ValueError(f"--expect-build local: {exc}") from None
    path = record_path(environ)
    recorded = ""
    if path:
        try:
            with open(path, encoding="ascii") as f:
                recorded = f.read().strip()
        except (OSError, UnicodeDecodeError):
            pass
    if BUILD.fullmatch(recorded) and recorded not in builds:
        print(f"expect build {recorded}, as azd packaged it, or {builds[0]}, this folder's now",
              file=out)
        builds = (recorded, *builds)
    return builds


def auth_headers(args: argparse.Namespace, environ: Mapping[str, str]) -> Dict[str, str]:
    if args.entra:
        try:
            from azure.identity import DefaultAzureCredential  # optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise SmokeError("--entra needs azure-identity: pip install azure-identity") from exc
        token = DefaultAzureCredential().get_token(args.scope).token
        return {"Authorization": f"Bearer {token}"}
    key = environ.get(args.key_env, "").strip()
    if not key:
        raise SmokeError(f"no API key: set {args.key_env} (or use --entra)")
    if "," in key:
        key = key.split(",", 1)[0].strip()  # EMBEDDINGS_API_KEYS may hold several keys
    name, sep, secret = key.partition(":")
    if sep and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        key = secret.strip()                  # a `name:key` entry: send only the key
    if args.key_header == "bearer":
        return {"Authorization": f"Bearer {key}"}
    return {"api-key": key}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would send the request's headers, the key or token among
    them, to whatever host (and scheme) a 3xx names."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None     # urllib then raises HTTPError for the 3xx


OPENER = urllib.request.build_opener(NoRedirect())


def shown(value: Any) -> str:
    """Text for the terminal, which may hold what the server answered (a build, problems, a
    model name, a status line): its control characters escaped, so that an answer cannot
    write control sequences; the rest as it is."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(value))


def request_json(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: Optional[Dict[str, Any]],
    timeout: float,
) -> Tuple[int, Any, float]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        req.add_header(name, value)
    started = time.monotonic()
    try:
        try:
            with OPENER.open(req, timeout=timeout) as resp:  # noqa: S310 - scheme validated
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            if 300 <= status < 400:
                where = exc.headers.get("Location", "") if exc.headers else ""
                return (status, f"a redirect to {shown(where) or 'nowhere'}, not followed: "
                        "credentials go only to --url", time.monotonic() - started)
    # HTTPException: an answer cut off (IncompleteRead) or garbled, e.g. an instance recycled
    # while it answers: waited out like a refused connection.
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise SmokeError(f"{method} {url}: {exc!r}" if not str(exc) else
                         f"{method} {url}: {exc}") from exc
    elapsed = time.monotonic() - started
    try:
        payload = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        payload = raw[:200].decode("utf-8", "replace")
    return status, payload, elapsed


def with_api_version(url: str, api_version: str) -> str:
    if not api_version:
        return url
    return f"{url}?{urllib.parse.urlencode({'api-version': api_version})}"


def check_embeddings_payload(payload: Any) -> int:
    """Validate an embeddings response; return the vector dimension."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list) or not payload["data"]:
        raise SmokeError(f"/embeddings: unexpected body {str(payload)[:200]!r}")
    vector = payload["data"][0].get("embedding") if isinstance(payload["data"][0], dict) else None
    if not isinstance(vector, list) or not vector:
        raise SmokeError("/embeddings: data[0].embedding is not a non-empty list")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vector):
        raise SmokeError("/embeddings: data[0].embedding holds non-finite or non-numeric values")
    return len(vector)


def other_build(payload: Any, expected: Sequence[str]) -> Optional[str]:
    """Why a 200 from /health is not from one of the builds ``expected`` (None if it is, or if
    none is expected)."""
    if not expected:
        return None
    wanted = " or ".join(expected)
    if isinstance(payload, dict) and "build" in payload and payload["build"] is None:
        return f"it could not compute its build (expected {wanted}; its log says why)"
    found = payload.get("build") if isinstance(payload, dict) else None
    if found in expected:
        return None
    return (f"it answers from build {found}, not {wanted}" if found else
            f"it names no build (code older than build {wanted})")


def forget_record(value: str, environ: Mapping[str, str]) -> None:
    """After a check that passed with --expect-build local: remove --record-build's record."""
    path = record_path(environ) if value.strip().lower() == "local" else None
    if path:
        try:
            os.remove(path)
        except OSError:
            pass


def degraded(payload: Any) -> Optional[str]:
    """Why a 200 from /health is not healthy: its ``status`` is not "ok" ("degraded": some calls
    fail for the server's reasons, e.g. no API key usable while Entra ID tokens are, or a
    deployment that failed to load), or None."""
    if not isinstance(payload, dict) or payload.get("status", "ok") == "ok":
        return None
    problems = payload.get("problems")
    return f"its status is {payload.get('status')!r}" + (
        ": " + "; ".join(map(str, problems)) if isinstance(problems, list) and problems else "")


def credentials_hint(status: Optional[int], payload: Any) -> str:
    """NO_CREDENTIALS_HINT where the answer says the app's API keys are unusable (an unresolved
    Key Vault reference looks like that), not where it names another cause (the README's
    development key, refused on Azure)."""
    text = str(payload)
    if "development key" in text:
        return ""
    if (status == 503 and "no usable credentials" in text) or (
            status == 200 and "no key of EMBEDDINGS_API_KEYS is usable" in text):
        return NO_CREDENTIALS_HINT
    return ""


def health(base: str, timeout: float, wait: float, out=sys.stdout,
           build: Sequence[str] = (), settle: float = 0.0) -> Tuple[int, Any, float]:
    """GET /health; for ``wait`` seconds, again while the app is unreachable, answers 404 (not
    indexed yet), 408 or 429 (the platform's front end busy or throttling: transient by HTTP's
    definition) or 5xx (starting, or a deployment that cannot load its packages: the last
    answer is then the error), answers 200 from a build not in ``build`` (an instance
    still running the previous deployment), or 200 with a status other than "ok" (the last
    answer is then that reason). With ``settle``, a good answer counts once every
    answer for that long (asked every ``SETTLE_PAUSE`` seconds) has been good: a deployment's
    restarts can follow the first one."""
    if not math.isfinite(wait) or wait < 0:
        raise ValueError(f"--wait must be a number of seconds, 0 or more, not {wait}")
    if not math.isfinite(settle) or settle < 0:
        raise ValueError(f"--settle must be a number of seconds, 0 or more, not {settle}")
    deadline = time.monotonic() + wait
    pause = 1.0
    answered = ""       # the app's last answer, if any, for an error that follows it
    good_since: Optional[float] = None
    while True:
        try:
            status, payload, elapsed = request_json("GET", f"{base}/health", {}, None, timeout)
            last = answered = f"{status}: {payload!r}"
            stale = other_build(payload, build) if status == 200 else None
            unwell = degraded(payload) if status == 200 else None
            good = status not in WAITED_OUT and status < 500 and not stale and not unwell
            if stale or unwell:
                last = f"200, but {stale or unwell}"
        except SmokeError as exc:
            last, status, stale, unwell, good = str(exc), None, None, None, False
        now = time.monotonic()
        if good:
            if good_since is None:
                good_since = now
            if now - good_since >= settle or status != 200:
                return status, payload, elapsed
            time.sleep(min(SETTLE_PAUSE, good_since + settle - now))
            continue
        if good_since is not None:
            print(f"wait GET /health        answered, then {shown(last[:200])} (settling again)",
                  file=out)
            good_since = None
        left = deadline - now
        if left <= 0:
            if status is None:
                raise SmokeError(last + (f" (before that, GET /health returned {answered})"
                                         if answered else ""))
            if stale:
                raise SmokeError(
                    f"GET /health answered 200, but {stale}: instances still run the previous "
                    "deployment, or the package was not made from this folder (docs/deploy.md, "
                    "\"Deploy with azd up\")")
            if unwell:
                raise SmokeError(f"GET /health answered 200, but {unwell}"
                                 + credentials_hint(status, payload))
            return status, payload, elapsed
        print(f"wait GET /health        {shown(last[:200])} (retrying for {left:.0f} s more)",
              file=out)
        time.sleep(min(pause, left))
        pause = min(2 * pause, 10.0)


def run(args: argparse.Namespace, environ: Mapping[str, str], out=sys.stdout) -> None:
    base = validate_base_url(args.url)

    status, payload, elapsed = health(base, args.timeout, args.wait, out,
                                      expected_build(args.expect_build, environ, out),
                                      args.settle)
    if status != 200:
        raise SmokeError(f"GET /health returned {status}: {payload!r}"
                         + credentials_hint(status, payload))
    build = payload.get("build") if isinstance(payload, dict) else None
    anonymous = isinstance(payload, dict) and payload.get("authentication") == "disabled"
    if anonymous and not args.allow_unauthenticated:
        raise SmokeError("GET /health: authentication is disabled (EMBEDDINGS_AUTH=disabled): "
                         "anyone who reaches the app can call it. Remove the setting, or, for an "
                         "app reachable only through a gateway that authenticates its callers, "
                         "pass --allow-unauthenticated (azure.yaml's postdeploy hook).")
    print(f"ok   GET /health        {status} {elapsed * 1000:.0f} ms build={shown(build)}"
          + (" authentication=disabled (allowed)" if anonymous else ""), file=out)
    if args.health_only:
        return
    headers = auth_headers(args, environ)

    status, payload, elapsed = request_json("GET", with_api_version(f"{base}/info", args.api_version), headers, None, args.timeout)
    if status != 200 or not isinstance(payload, dict):
        raise SmokeError(f"GET /info returned {status}: {str(payload)[:200]!r}")
    model_name = shown(payload.get("model_name", "?"))
    print(f"ok   GET /info          {status} {elapsed * 1000:.0f} ms model_name={model_name}", file=out)

    body: Dict[str, Any] = {"input": [args.input]}
    if args.model:
        body["model"] = args.model
    embeddings_url = with_api_version(f"{base}/embeddings", args.api_version)

    if not args.skip_unauthenticated_check and not anonymous:
        status, _, elapsed = request_json("POST", embeddings_url, {}, body, args.timeout)
        if status not in (401, 403):
            raise SmokeError(f"POST /embeddings without credentials returned {status}, expected 401/403")
        print(f"ok   POST /embeddings   {status} without credentials (rejected)", file=out)

    status, payload, elapsed = request_json("POST", embeddings_url, headers, body, args.timeout)
    if status != 200:
        raise SmokeError(f"POST /embeddings returned {status}: {str(payload)[:300]!r}")
    dims = check_embeddings_payload(payload)
    print(f"ok   POST /embeddings   {status} {elapsed * 1000:.0f} ms dims={dims} model={shown(payload.get('model', '?'))}", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.entra and not args.scope and not args.health_only:
        parser.error("--entra needs --scope: the API's, api://<app-client-id>/.default "
                     "(docs/deploy.md, Option A), or https://ml.azure.com/.default (Option B)")
    if args.record_build:
        record_build(os.environ)
        return 0
    try:
        run(args, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    except SmokeError as exc:
        print(f"FAIL {shown(exc)}", file=sys.stderr)
        return 1
    forget_record(args.expect_build, os.environ)
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
