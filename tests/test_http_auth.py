"""Auth over real HTTP through the local host (tools/local_host.py serving function_app.py):
named callers, an unresolved Key Vault reference, short keys, Entra ``iat``, and the server's
whole log output checked for secrets."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from conftest import API_VERSION, LiveServer, entra_live_server

INFO = f"/info?api-version={API_VERSION}"
ALICE = "alice-DISTINCTIVE-5e2c7b90"
PLAIN = "plain-DISTINCTIVE-a13f8d42"
REF = "@Microsoft.KeyVault(SecretUri=https://kv-guessable.vault.azure.net/secrets/api-keys/)"


def get(server: LiveServer, headers: dict[str, str]) -> tuple[int, dict]:
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", INFO, headers=headers)
    res = conn.getresponse()
    body = json.loads(res.read() or b"{}")
    conn.close()
    return res.status, body


def get_health(server: LiveServer) -> tuple[http.client.HTTPResponse, dict]:
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/health")
    res = conn.getresponse()
    body = json.loads(res.read())
    conn.close()
    return res, body


def output_of(server: LiveServer) -> str:
    """Everything the server process logged (stdout and stderr), after stopping it."""
    server.stop()
    return server.output()


@pytest.fixture
def keyed_server():
    server = LiveServer({"EMBEDDINGS_API_KEYS": f"alice:{ALICE}, {PLAIN}, tiny-key, {REF}",
                         "LOG_LEVEL": "DEBUG"})
    yield server
    server.stop()


def test_named_keys_reference_and_short_key_over_http(keyed_server):
    assert get(keyed_server, {"api-key": ALICE})[0] == 200
    assert get(keyed_server, {"Authorization": f"Bearer {PLAIN}"})[0] == 200
    for refused in (REF, "tiny-key", f"alice:{ALICE}", ALICE[:-1]):
        for headers in ({"api-key": refused}, {"Authorization": f"Bearer {refused}"}):
            status, body = get(keyed_server, headers)
            assert status == 401 and body["error"]["code"] == "Unauthorized", (refused, body)
            assert "Key Vault" not in json.dumps(body) and "KeyVault" not in json.dumps(body)
    log = output_of(keyed_server)
    fingerprint = "key:" + hashlib.sha256(PLAIN.encode()).hexdigest()[:8]
    assert f"2 key(s) accepted, callers key:alice, {fingerprint}" in log
    assert log.count("is an unresolved Key Vault reference") == 1          # once, not per request
    assert "EMBEDDINGS_API_KEYS entry 4 is an unresolved Key Vault reference " \
           "(@Microsoft.KeyVault(SecretUri=…))" in log
    assert log.count("is shorter than 16 characters") == 1
    assert log.count("sent the whole EMBEDDINGS_API_KEYS entry of key:alice") == 1
    assert "DISTINCTIVE" not in log and "tiny-key" not in log
    assert "kv-guessable" not in log and "api-keys/" not in log


def test_unresolved_reference_as_the_whole_setting_over_http():
    server = LiveServer({"EMBEDDINGS_API_KEYS": f' "{REF}" ', "LOG_LEVEL": "INFO"})
    try:
        for headers in ({"api-key": REF}, {"Authorization": f"Bearer {REF}"},
                        {"api-key": f'"{REF}"'}):
            status, body = get(server, headers)
            assert status == 401
            assert "no usable credentials" in body["error"]["message"]
            assert "Key Vault" not in body["error"]["message"]
    finally:
        log = output_of(server)
    assert "configuration error: EMBEDDINGS_API_KEYS is an unresolved Key Vault reference" in log
    assert "kv-guessable" not in log
    # the local host's line per call, as `func start` prints; the app's own is DEBUG
    assert log.count("GET /info -> 401 (info)") == 3
    assert "ms (request " not in log


def test_health_is_unavailable_while_every_call_would_be_refused():
    """An unresolved Key Vault reference makes every call a 401; /health said "ok", so neither a
    probe nor the post-deployment smoke test noticed (review h_ops F5)."""
    server = LiveServer({"EMBEDDINGS_API_KEYS": REF})
    try:
        res, body = get_health(server)
        assert res.status == 503 and body["error"]["code"] == "ServiceUnavailable"
        assert res.getheader("Retry-After") == "60"            # the OpenAPI document's 503
        assert "no usable credentials" in body["error"]["message"]
        assert "Key Vault" not in body["error"]["message"]
    finally:
        server.stop()
    healthy = LiveServer({"EMBEDDINGS_API_KEYS": f"{PLAIN}, {REF}"})   # one usable key
    try:
        res, body = get_health(healthy)
        assert res.status == 200 and body["status"] == "ok"
    finally:
        healthy.stop()


def test_entra_iat_over_http():
    with entra_live_server(PLAIN) as (idp, server):
        now = int(time.time())
        assert get(server, {"Authorization": f"Bearer {idp.mint()}"})[0] == 200
        for bad in (idp.mint(iat=now + 3600), idp.mint(iat=now + 10 * 365 * 86400),
                    idp.mint(iat=str(now)), idp.mint(iat=None)):
            status, body = get(server, {"Authorization": f"Bearer {bad}"})
            assert status == 401 and body["error"]["code"] == "Unauthorized"


def get_repeated(server: LiveServer, headers: list[tuple[str, str]]) -> int:
    """GET /info with headers that may repeat (a gateway adding its own api-key)."""
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("GET", INFO)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    res = conn.getresponse()
    res.read()
    conn.close()
    return res.status


def test_a_repeated_credential_header_is_accepted_when_one_of_its_values_is_valid(keyed_server):
    """The hosts join a repeated header's values with commas; any valid one authorises, as a
    single valid credential among others does (CONTRACT: any credential presented)."""
    wrong = "wrong-wrong-wrong-wrong"
    for headers in ([("api-key", wrong), ("api-key", ALICE)],
                    [("api-key", ALICE), ("api-key", ALICE)],
                    [("Authorization", f"Bearer {wrong}"), ("Authorization", f"Bearer {PLAIN}")],
                    [("api-key", f"{wrong}, {PLAIN}")]):
        assert get_repeated(keyed_server, headers) == 200, headers
    # Only a few values are tried: a valid key after four wrong ones is not looked for.
    assert get_repeated(keyed_server, [("api-key", f"{wrong}{i}") for i in range(4)]
                        + [("api-key", ALICE)]) == 401
    assert get_repeated(keyed_server, [("api-key", wrong), ("api-key", wrong + "2")]) == 401


def test_refused_api_keys_leave_a_line_a_minute_that_names_no_key():
    server = LiveServer({"EMBEDDINGS_API_KEYS": PLAIN, "LOG_LEVEL": "INFO"})
    try:
        for i in range(5):
            assert get(server, {"api-key": f"wrong-DISTINCTIVE-key-{i:04d}"})[0] == 401
        assert get(server, {"api-key": PLAIN})[0] == 200
    finally:
        log = output_of(server)
    lines = [line for line in log.splitlines() if "api key refused" in line]
    assert len(lines) == 1, lines
    assert "api key refused: no configured key matches (logged at most once a minute" in lines[0]
    assert "DISTINCTIVE" not in log


def test_health_is_degraded_when_no_key_is_usable_but_tokens_are():
    """Keys that are an unresolved Key Vault reference refuse every key caller while Entra ID
    callers get in: not the 503 of no credentials at all, but not "ok" either."""
    with entra_live_server(REF) as (_, server):
        res, body = get_health(server)
    assert res.status == 200 and body["status"] == "degraded", body
    assert body["problems"] == ["no key of EMBEDDINGS_API_KEYS is usable (Entra ID tokens are)"]
    assert "Key Vault" not in json.dumps(body) and "kv-guessable" not in json.dumps(body)


@pytest.mark.parametrize("on_azure", [False, True])
def test_the_post_deployment_check_fails_on_an_app_whose_authentication_is_off(on_azure):
    """EMBEDDINGS_AUTH=disabled stays possible (an app that only a gateway which authenticates
    can reach) and fails no call, so /health stays "ok"; but it says so, and the
    post-deployment check (`smoke_deployed.py --health-only`, azure.yaml's hook) fails on it
    unless told with --allow-unauthenticated."""
    import subprocess
    import sys

    from conftest import ROOT

    env = {"EMBEDDINGS_AUTH": "disabled"}
    if on_azure:
        env |= {"WEBSITE_INSTANCE_ID": "abc123", "WEBSITE_SKU": "FlexConsumption"}
    server = LiveServer(env)
    try:
        res, body = get_health(server)
        assert get(server, {})[0] == 200                 # no credentials needed
        checks = [subprocess.run([sys.executable, str(ROOT / "scripts" / "smoke_deployed.py"),
                                  "--url", server.url, "--health-only", *extra],
                                 capture_output=True, text=True, timeout=60)
                  for extra in ([], ["--allow-unauthenticated"])]
    finally:
        server.stop()
    assert res.status == 200 and body["status"] == "ok" and "problems" not in body, body
    assert body["authentication"] == "disabled"
    assert checks[0].returncode == 1
    assert checks[0].stderr.startswith("FAIL GET /health: authentication is disabled "
                                       "(EMBEDDINGS_AUTH=disabled): anyone who reaches the app "
                                       "can call it."), checks[0].stderr
    assert checks[1].returncode == 0, checks[1].stdout + checks[1].stderr
    assert "authentication=disabled (allowed)" in checks[1].stdout


def test_health_names_no_authentication_setting_while_it_is_on():
    server = LiveServer({"EMBEDDINGS_API_KEYS": PLAIN})
    try:
        body = get_health(server)[1]
    finally:
        server.stop()
    assert body["status"] == "ok" and "authentication" not in body, body


def test_health_says_degraded_once_entra_id_s_signing_keys_could_not_be_fetched():
    """An Entra-only app whose identity provider cannot be reached (a wrong tenant or authority
    answers 400/404 the same way) answers every token 503: once a token has made it try,
    /health says so; it never fetches the keys itself."""
    from jwt_factory import TokenFactory

    idp = TokenFactory()
    with idp.serve_http():
        token, env = idp.mint(), idp.env()
    server = LiveServer(env)                             # the identity provider is gone
    try:
        before = get_health(server)[1]
        status, body = get(server, {"Authorization": f"Bearer {token}"})
        after = get_health(server)[1]
    finally:
        server.stop()
    assert before["status"] == "ok", before
    assert status == 503 and body["error"]["code"] == "ServiceUnavailable", body
    assert after["status"] == "degraded", after
    assert after["problems"] == ["Entra ID tokens cannot be checked: the signing keys could not "
                                 "be fetched (each token gets a 503; the log says from where)"]
