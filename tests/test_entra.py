"""Entra ID token validation: every acceptance rule and every refusal, offline.

Keys are generated locally, metadata/JWKS come from ``TokenFactory.fetch_json`` (a stub) or, for
the default urllib fetcher, from a loopback HTTP server. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import secrets
import socket
import threading
import time

import jwt
import pytest

from embedding_core import entra
from embedding_core.entra import (
    EntraConfig,
    EntraValidator,
    InvalidToken,
    KeysUnavailable,
    default_fetch_json,
    looks_like_jwt,
    require_secure_url,
)

try:
    from jwt_factory import DEFAULT_TENANT_ID, SigningKey, TokenFactory, b64url
except ImportError:  # tests/ imported as a package
    from tests.jwt_factory import DEFAULT_TENANT_ID, SigningKey, TokenFactory, b64url

T0 = 1_700_000_000.0
OTHER_TENANT = "0b9a8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d"
_KEY = SigningKey.generate("test-key-1")  # RSA generation is slow-ish; share the default key


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def idp(clock: Clock) -> TokenFactory:
    return TokenFactory(clock=clock, key=_KEY)


@pytest.fixture
def validator(idp: TokenFactory) -> EntraValidator:
    return idp.validator()


def refused(validator: EntraValidator, token, reason_part: str = "") -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        validator.validate(token)
    assert reason_part in info.value.reason, info.value.reason
    return info.value


# --------------------------------------------------------------------------------------------
# Accepted tokens


def test_valid_v2_token_returns_claims(idp, validator):
    claims = validator.validate(idp.mint())
    assert claims["iss"] == f"https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/v2.0"
    assert claims["aud"] == idp.audience
    assert claims["tid"] == DEFAULT_TENANT_ID
    assert claims["azp"] == idp.client_id


def test_valid_v1_token_with_sts_issuer(idp, validator):
    token = idp.mint(version=1)
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == (
        f"https://sts.windows.net/{DEFAULT_TENANT_ID}/")
    assert validator.validate(token)["appid"] == idp.client_id


def test_any_configured_audience_is_accepted(idp):
    v = idp.validator(audiences=("api://embeddings-test", "11111111-2222-4333-8444-555555555555"))
    assert v.validate(idp.mint(aud="11111111-2222-4333-8444-555555555555"))
    assert v.validate(idp.mint())


def test_token_without_tid_is_accepted_on_issuer_alone(idp, validator):
    assert "tid" not in validator.validate(idp.mint(tid=None))


def test_leeway_tolerates_small_clock_skew(idp, validator, clock):
    assert validator.validate(idp.mint(exp=int(clock.now) - 30))
    assert validator.validate(idp.mint(nbf=int(clock.now) + 30))
    assert validator.validate(idp.mint(iat=int(clock.now) + 60, nbf=None))


def test_numeric_dates_may_be_fractions_or_huge_integers(idp, validator, clock):
    """RFC 7519 NumericDate is any JSON number: fractions are fine, and an integer too large for
    a float is compared exactly instead of crashing the check (it used to raise OverflowError)."""
    assert validator.validate(idp.mint(iat=clock.now - 0.5, nbf=clock.now - 0.25,
                                       exp=clock.now + 600.5))
    assert validator.validate(idp.mint(exp=10 ** 400))
    refused(validator, idp.mint(iat=10 ** 400), "issued in the future")


# --------------------------------------------------------------------------------------------
# Refusals


def test_unsigned_alg_none_is_refused(idp, validator):
    token = idp.forge({"alg": "none", "typ": "JWT", "kid": idp.key.kid}, idp.claims())
    assert looks_like_jwt(token)  # routed to Entra validation, then refused
    refused(validator, token, "algorithm not allowed")
    refused(validator, idp.forge({"alg": "None", "kid": idp.key.kid}, idp.claims()),
            "algorithm not allowed")


def test_hs256_signed_with_public_key_is_refused(idp, validator):
    header = {"alg": "HS256", "typ": "JWT", "kid": idp.key.kid}
    for secret in (idp.key.public_pem, json.dumps(idp.key.public_jwk()).encode()):
        unsigned = f"{b64url(header)}.{b64url(idp.claims())}"
        signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        refused(validator, f"{unsigned}.{b64url(signature)}", "algorithm not allowed")
    assert idp.fetches() == 0  # refused before any key lookup


def test_other_asymmetric_algorithms_are_refused(idp, validator):
    token = jwt.encode(idp.claims(), idp.key.private_key, algorithm="PS256",
                       headers={"kid": idp.key.kid})
    refused(validator, token, "algorithm not allowed")


def test_rs256_signature_relabelled_as_rs512_is_refused(idp, validator):
    """A RS256 signature relabelled as RS512 fails the header check, never reaches PyJWT."""
    header, payload, sig = idp.mint().split(".")
    relabelled = b64url({"alg": "RS512", "kid": idp.key.kid, "typ": "JWT"})
    refused(validator, f"{relabelled}.{payload}.{sig}", "algorithm not allowed")


@pytest.mark.parametrize("iss", [
    f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0",
    f"https://sts.windows.net/{OTHER_TENANT}/",
    f"https://evil.example/{DEFAULT_TENANT_ID}/v2.0",
    f"https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/v2.0/",
    f"https://login.microsoftonline.com/{DEFAULT_TENANT_ID}",
    "https://login.microsoftonline.com/common/v2.0",
])
def test_wrong_issuer_is_refused(idp, validator, iss):
    refused(validator, idp.mint(iss=iss), "wrong issuer")


def test_missing_issuer_is_refused(idp, validator):
    refused(validator, idp.mint(iss=None), "missing claim iss")


def test_wrong_tenant_is_refused(idp, validator):
    refused(validator, idp.mint(tid=OTHER_TENANT), "wrong tenant")
    refused(validator, idp.mint(tid=12), "wrong tenant")


@pytest.mark.parametrize("aud", ["api://other", ["api://other", "api://x"], "API://EMBEDDINGS-TEST"])
def test_wrong_audience_is_refused(idp, validator, aud):
    refused(validator, idp.mint(aud=aud), "wrong audience")


def test_missing_audience_is_refused(idp, validator):
    refused(validator, idp.mint(aud=None), "missing claim aud")


def test_expired_is_refused(idp, validator, clock):
    refused(validator, idp.mint(exp=int(clock.now) - 61), "expired")
    token = idp.mint(lifetime=600)
    assert validator.validate(token)
    clock.advance(600 + 60)
    refused(validator, token, "expired")


def test_missing_or_non_numeric_exp_is_refused(idp, validator, clock):
    refused(validator, idp.mint(exp=None), "missing claim exp")
    refused(validator, idp.mint(exp=str(int(clock.now) + 600)), "exp is not a number")
    refused(validator, idp.mint(exp=True), "exp is not a number")


def test_not_yet_valid_is_refused(idp, validator, clock):
    refused(validator, idp.mint(nbf=int(clock.now) + 120), "not yet valid")
    refused(validator, idp.mint(nbf="soon"), "nbf is not a number")


@pytest.mark.parametrize("ahead", [61, 3600, 10 * 365 * 86400])
def test_issued_in_the_future_is_refused(idp, validator, clock, ahead):
    """``iat`` beyond the leeway (60 s, as for exp/nbf) is refused, even with a valid nbf."""
    now = int(clock.now)
    refused(validator, idp.mint(iat=now + ahead, nbf=now, exp=now + ahead + 3600),
            "issued in the future")
    refused(validator, idp.mint(iat=now + ahead, nbf=None, exp=now + ahead + 3600),
            "issued in the future")


def test_missing_iat_is_refused(idp, validator):
    """Entra ID puts ``iat`` in every access token, so a signed token without it is refused."""
    refused(validator, idp.mint(iat=None), "missing claim iat")


def _signed(idp: TokenFactory, claims: dict) -> str:
    """Sign claims as they are (``None`` stays a JSON null; mint() would drop the claim)."""
    return jwt.encode(claims, idp.key.private_key, algorithm="RS256",
                      headers={"kid": idp.key.kid, "typ": "JWT"})


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
@pytest.mark.parametrize("bad", [
    "1700000000", "", True, False, None, float("nan"), float("inf"), float("-inf"),
    [1_700_000_000], {"t": 1_700_000_000}], ids=repr)
def test_lifetime_claims_must_be_numeric_dates(idp, validator, clock, claim, bad):
    """RFC 7519 NumericDate is a JSON number: strings (even of digits), booleans, null, NaN and
    infinities (Python's json accepts those literals), arrays and objects are all refused."""
    claims = idp.claims()
    assert validator.validate(_signed(idp, claims))  # the same token with good values passes
    claims[claim] = bad
    token = _signed(idp, claims)
    assert f'"{claim}":' in jwt.api_jws.base64url_decode(token.split(".")[1]).decode()
    reason = refused(validator, token).reason
    assert claim in reason, reason


def test_unknown_key_is_refused_even_after_refresh(idp, validator, clock):
    token = idp.mint(key=idp.new_key("attacker-key"))
    refused(validator, token, "unknown signing key")  # cold load
    assert idp.fetches("jwks") == 1
    clock.advance(61)
    refused(validator, token, "unknown signing key")  # refreshed, still unknown
    assert idp.fetches("jwks") == 2


def test_right_kid_but_other_key_is_refused(idp, validator):
    impostor = SigningKey(idp.key.kid, idp.new_key().private_key)
    refused(validator, idp.mint(key=impostor), "bad signature")


def test_missing_kid_is_refused(idp, validator):
    refused(validator, idp.mint(headers={"kid": None}), "no kid")


def test_tampered_payload_is_refused(idp, validator):
    header, _, signature = idp.mint(roles=["Reader"]).split(".")
    forged = b64url(idp.claims(roles=["Embeddings.Invoke", "Admin"]))
    refused(validator, f"{header}.{forged}.{signature}", "bad signature")


def test_refusing_a_large_token_does_not_make_pyjwt_read_it(idp, validator, monkeypatch):
    """PyJWT checks every character of every segment in Python: a 32 KB token with a made-up
    kid cost 3 ms of CPU (35 times a short one), one with a real kid and a forged signature
    2.2 ms. The header is now read once here, the kid looked up and the signature checked with
    the key before PyJWT sees the token; oversized headers and signatures are refused unread."""
    calls = []
    for name in ("decode", "get_unverified_header"):
        real = getattr(jwt, name)
        monkeypatch.setattr(jwt, name, lambda *a, _real=real, _n=name, **k: (
            calls.append(_n), _real(*a, **k))[1])
    padding = {"pad": "x" * 20_000}          # a 27 KB token, under the 32 KB cap
    refused(validator, idp.mint(headers={"kid": "made-up"}, **padding), "unknown signing key")
    impostor = SigningKey(idp.key.kid, idp.new_key().private_key)
    refused(validator, idp.mint(key=impostor, **padding), "bad signature")
    header, payload, signature = idp.mint().split(".")
    refused(validator, f"{header}.{payload}.{signature * 5}", "malformed token")
    refused(validator, f"{b64url({'alg': 'RS256', 'kid': 'k' * 2000})}.{payload}.{signature}",
            "malformed token")
    assert calls == []
    assert validator.validate(idp.mint())["tid"] == DEFAULT_TENANT_ID
    assert calls == ["decode"]


def test_tampered_signature_is_refused(idp, validator):
    header, payload, signature = idp.mint().split(".")
    flipped = ("A" if signature[10] != "A" else "B")
    refused(validator, f"{header}.{payload}.{signature[:10]}{flipped}{signature[11:]}",
            "bad signature")


def test_required_roles_any_of(idp):
    v = idp.validator(required_roles=("Embeddings.Invoke", "Embeddings.Admin"))
    assert v.validate(idp.mint(roles=["Other", "Embeddings.Admin"]))
    assert v.validate(idp.mint(roles=["Embeddings.Invoke"]))
    refused(v, idp.mint(roles=["Other"]), "missing role")
    refused(v, idp.mint(roles=["embeddings.invoke"]), "missing role")  # case-sensitive
    refused(v, idp.mint(roles=None), "missing role")
    refused(v, idp.mint(roles="Embeddings.Invoke"), "missing role")  # must be a list


def test_no_required_roles_means_roles_ignored(idp, validator):
    assert validator.validate(idp.mint(roles=None))


def test_allowed_client_ids(idp):
    other = "99999999-8888-4777-8666-555555555555"
    v = idp.validator(allowed_client_ids=(idp.client_id.upper(), "ffffffff-0000-4000-8000-000000000000"))
    assert v.validate(idp.mint())                      # v2: azp
    assert v.validate(idp.mint(version=1))             # v1: appid
    refused(v, idp.mint(azp=other), "client application not allowed")
    refused(v, idp.mint(version=1, appid=other), "client application not allowed")
    refused(v, idp.mint(azp=None), "not an access token")
    # v2 token: appid is not consulted even if it would be allowed
    refused(v, idp.mint(azp=other, appid=idp.client_id), "client application not allowed")
    # no ver claim: azp, then appid
    assert v.validate(idp.mint(ver=None, azp=None, appid=idp.client_id))


def test_an_id_token_for_the_apis_own_app_is_not_an_access_token(idp, validator):
    """An ID token's aud is the client id of the app it signs a user into; for this API's own
    app registration that is an accepted audience, but it names no calling client (azp,
    appid), as every access token does, and is refused (review h_sec F3)."""
    for version in (1, 2):
        id_token = idp.mint(version=version, azp=None, appid=None, nonce="n-0S6_WzA2Mj",
                            roles=None)
        refused(validator, id_token, "not an access token")
        assert validator.validate(idp.mint(version=version, roles=None))   # the access token


GARBAGE = [
    "", " ", "abc", "a.b", "a.b.c", "....", "..", "Bearer x.y.z", "eyJ.eyJ.sig",
    "e30.e30.", "W10.e30.c2ln",  # header {} and header []
    b64url({"alg": "RS256", "kid": "test-key-1"}) + ".!!!.sig",
    b64url({"alg": "RS256", "kid": "test-key-1"}) + "." + b64url(b"not json") + ".c2ln",
    b64url({"alg": "RS256", "kid": "test-key-1"}) + "." + b64url(b"[1,2]") + ".c2ln",
    "x" * (entra.MAX_TOKEN_CHARS + 1),
    None, 42, b"a.b.c",
]


@pytest.mark.parametrize("token", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_is_refused(validator, token):
    refused(validator, token)


def test_non_object_payload_is_refused(idp, validator):
    header = b64url({"alg": "RS256", "kid": idp.key.kid, "typ": "JWT"})
    payload = b64url(b"[1,2,3]")
    signing_input = f"{header}.{payload}".encode()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    sig = idp.key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    refused(validator, f"{header}.{payload}.{b64url(sig)}", "malformed")


# --------------------------------------------------------------------------------------------
# Error surface


def test_invalid_token_message_is_generic_and_maps_to_401(idp, validator):
    token = idp.mint(aud="api://other")
    exc = refused(validator, token, "wrong audience")
    assert str(exc) == InvalidToken.MESSAGE
    assert "aud" not in str(exc) and token not in exc.reason
    api_error = exc.to_api_error()
    assert api_error.status == 401
    assert api_error.response_headers()["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert api_error.body()["error"]["message"] == InvalidToken.MESSAGE


# --------------------------------------------------------------------------------------------
# Key cache, refresh, rotation, failures


def test_jwks_is_cached(idp, validator, clock):
    for _ in range(5):
        validator.validate(idp.mint())
        clock.advance(120)
    assert idp.fetches("metadata") == 1
    assert idp.fetches("jwks") == 1
    assert all(timeout == 5.0 for _, timeout in idp.calls)


def test_nothing_is_fetched_until_first_validation(idp):
    idp.validator()
    assert idp.fetches() == 0


def test_key_rotation_refreshes_on_unknown_kid_rate_limited(idp, validator, clock):
    validator.validate(idp.mint())
    idp.rotate("test-key-2")
    token = idp.mint()
    clock.advance(10)
    refused(validator, token, "unknown signing key")  # within jwks_min_refresh_seconds
    assert idp.fetches("jwks") == 1
    clock.advance(51)
    assert validator.validate(token)["aud"] == idp.audience
    assert idp.fetches("jwks") == 2
    assert validator.validate(idp.mint(key=_KEY))  # old key still published


def test_retired_key_stops_working_after_refresh(idp, validator, clock):
    old = idp.mint()
    validator.validate(old)
    idp.rotate(retire_old=True)
    clock.advance(61)
    validator.validate(idp.mint())
    refused(validator, old, "unknown signing key")


def test_unknown_kid_spam_refreshes_at_most_once_per_interval(idp, validator, clock):
    validator.validate(idp.mint())
    stranger = idp.new_key()
    clock.advance(61)
    for i in range(20):
        refused(validator, idp.mint(key=SigningKey(f"random-{i}", stranger.private_key)),
                "unknown signing key")
        clock.advance(1)
    assert idp.fetches("jwks") == 2  # one refresh for the whole burst
    clock.advance(60)
    refused(validator, idp.mint(key=stranger), "unknown signing key")
    assert idp.fetches("jwks") == 3


def test_min_refresh_zero_always_refreshes(idp, clock):
    v = idp.validator(jwks_min_refresh_seconds=0)
    v.validate(idp.mint())
    idp.rotate()
    assert v.validate(idp.mint())
    assert idp.fetches("jwks") == 2


def test_stale_key_set_is_refreshed_after_max_age(idp, validator, clock):
    validator.validate(idp.mint())
    clock.advance(entra.JWKS_MAX_AGE_SECONDS + 1)
    validator.validate(idp.mint())
    assert idp.fetches("jwks") == 2


def test_stale_key_set_kept_when_refresh_fails(idp, validator, clock, caplog):
    validator.validate(idp.mint())
    clock.advance(entra.JWKS_MAX_AGE_SECONDS + 1)
    idp.fail_with = TimeoutError("timed out")
    with caplog.at_level(logging.WARNING, logger="embedding_core.entra"):
        assert validator.validate(idp.mint())
    assert "could not load signing keys" in caplog.text


def test_fetch_failure_is_invalid_token_and_logged_without_token(idp, validator, clock, caplog):
    idp.fail_with = TimeoutError("timed out")
    token = idp.mint()
    with caplog.at_level(logging.WARNING, logger="embedding_core.entra"):
        exc = refused(validator, token, "signing keys unavailable")
    assert exc.to_api_error().status == 401
    assert "TimeoutError" in caplog.text and idp.metadata_url in caplog.text
    assert token not in caplog.text and token.split(".")[1] not in caplog.text
    # cold retries are spaced, then recovery works
    refused(validator, token, "signing keys unavailable")
    assert idp.fetches() == 1
    idp.fail_with = None
    clock.advance(entra.COLD_RETRY_SECONDS)
    assert validator.validate(token)


def test_refresh_failure_keeps_existing_keys(idp, validator, clock):
    validator.validate(idp.mint())
    idp.fail_with = OSError("connection refused")
    clock.advance(61)
    rotated = idp.mint(key=idp.new_key())
    # A key the failed refresh could not fetch was not checked: 503 (retry), not 401.
    assert isinstance(refused(validator, rotated, "key refresh failed"), KeysUnavailable)
    clock.advance(10)  # no new attempt yet, and the last one failed: still not checked
    assert isinstance(refused(validator, rotated, "key refresh failed"), KeysUnavailable)
    assert idp.fetches() == 3
    assert validator.validate(idp.mint())



def test_keys_are_unavailable_only_while_none_was_ever_loaded_and_the_last_fetch_failed(
        idp, validator, clock):
    """What /health reports as "Entra ID tokens cannot be checked": not before any fetch, not
    after a failed refresh while the cached keys still validate, and no longer once a fetch
    succeeds."""
    assert not validator.keys_unavailable                  # never tried
    idp.fail_with = OSError("connection refused")
    refused(validator, idp.mint(), "signing keys unavailable")
    assert validator.keys_unavailable
    idp.fail_with = None
    clock.advance(entra.COLD_RETRY_SECONDS)
    assert validator.validate(idp.mint())
    assert not validator.keys_unavailable
    idp.fail_with = OSError("connection refused")
    clock.advance(61)
    refused(validator, idp.mint(key=idp.new_key()), "key refresh failed")
    assert not validator.keys_unavailable                  # the cached keys still work
    assert validator.validate(idp.mint())

def test_unknown_key_after_a_successful_refresh_is_invalid(idp, validator, clock):
    validator.validate(idp.mint())
    clock.advance(61)
    junk = idp.mint(key=idp.new_key())
    exc = refused(validator, junk, "unknown signing key")
    assert not isinstance(exc, KeysUnavailable) and "refresh failed" not in exc.reason
    clock.advance(10)  # rate-limited, the last refresh succeeded: still a 401
    assert not isinstance(refused(validator, junk, "unknown signing key"), KeysUnavailable)


def test_fetch_failure_log_names_the_error(idp, validator, caplog):
    idp.fail_with = OSError("HTTP 404 for the metadata document")
    with caplog.at_level(logging.WARNING, logger="embedding_core.entra"):
        refused(validator, idp.mint(), "signing keys unavailable")
    assert "OSError: HTTP 404 for the metadata document" in caplog.text


def test_requests_waiting_for_a_failed_cold_fetch_do_not_fetch_again(idp, clock):
    # Nothing cached and the identity provider unreachable: each attempt lasts its whole
    # time-out (here: the clock moves by it), as long as the cold retry interval. The requests
    # that queued behind the first attempt must not each make their own.
    started = threading.Event()

    def timing_out(url, timeout):
        idp.calls.append((url, timeout))
        started.set()
        time.sleep(0.2)  # real time, so that the other requests queue on the lock
        clock.advance(timeout)
        raise TimeoutError("timed out")

    v = idp.validator(fetch_json=timing_out)
    token = idp.mint()
    outcomes: list[object] = []

    def request():
        try:
            outcomes.append(v.validate(token))
        except InvalidToken as exc:
            outcomes.append(exc)

    first = threading.Thread(target=request)
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=request) for _ in range(7)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(30)
    assert len(outcomes) == 8 and all(isinstance(o, KeysUnavailable) for o in outcomes)
    assert idp.fetches() == 1


def test_a_cached_key_never_waits_for_a_refresh(idp, validator, clock):
    validator.validate(idp.mint())
    clock.advance(entra.JWKS_MAX_AGE_SECONDS + 1)  # the key set is due for a refresh
    token = idp.mint()
    entered, release = threading.Event(), threading.Event()
    original = idp.fetch_json

    def stalled(url, timeout):
        entered.set()
        release.wait(30)
        return original(url, timeout)

    validator._fetch = stalled
    refresher = threading.Thread(target=validator.validate, args=(token,))
    refresher.start()
    try:
        assert entered.wait(5)
        done: list[object] = []
        other = threading.Thread(target=lambda: done.append(validator.validate(token)))
        other.start()
        other.join(10)
        assert done and done[0]["aud"] == idp.audience  # answered while the refresh hangs
    finally:
        release.set()
        refresher.join(10)


def test_a_request_needing_keys_stops_waiting_for_a_hung_fetch(idp, clock):
    entered, release = threading.Event(), threading.Event()

    def hung(url, timeout):  # e.g. name resolution, which no socket time-out covers
        entered.set()
        release.wait(30)
        raise TimeoutError("timed out")

    v = idp.validator(fetch_json=hung, http_timeout=0.05)
    first = threading.Thread(target=lambda: refused(v, idp.mint(), "unavailable"))
    first.start()
    try:
        assert entered.wait(5)
        exc = refused(v, idp.mint(), "a fetch is still running")  # after ~1.1 s, not 30
        assert isinstance(exc, KeysUnavailable)
    finally:
        release.set()
        first.join(10)


def test_jwks_failure_after_metadata_success(idp, validator):
    original = idp.fetch_json

    def flaky(url, timeout):
        if url == idp.jwks_url:
            raise socket.timeout("read timed out")
        return original(url, timeout)

    v = idp.validator(fetch_json=flaky)
    refused(v, idp.mint(), "signing keys unavailable")


@pytest.mark.parametrize("overrides", [
    {"jwks_uri": None},
    {"jwks_uri": 42},
    {"jwks_uri": "http://login.microsoftonline.com/x/discovery/v2.0/keys"},  # not https
    {"jwks_uri": "file:///etc/passwd"},
])
def test_bad_metadata_is_invalid_token(idp, validator, overrides):
    idp.metadata_overrides = overrides
    refused(validator, idp.mint(), "signing keys unavailable")
    assert idp.fetches("jwks") == 0


def test_metadata_not_an_object_is_invalid_token(idp):
    v = idp.validator(fetch_json=lambda url, timeout: ["not", "a", "dict"])
    refused(v, idp.mint(), "signing keys unavailable")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_unusable_jwks_keys_are_ignored(idp, validator):
    weak = SigningKey.generate("weak", bits=1024)
    enc = SigningKey.generate("enc")
    ps = SigningKey.generate("ps")
    idp.published = [weak]
    idp.extra_jwks = [
        {**enc.public_jwk(), "use": "enc"},
        {**ps.public_jwk(), "alg": "PS256"},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a dict",
        {**_KEY.public_jwk()},
    ]
    for key in (weak, enc, ps):
        refused(validator, idp.mint(key=key), "unknown signing key")
    assert validator.validate(idp.mint(key=_KEY))


def test_jwks_without_usable_keys_is_a_fetch_failure(idp, validator):
    idp.published = []
    refused(validator, idp.mint(), "signing keys unavailable")


def test_concurrent_validation_refreshes_once(idp, clock):
    v = idp.validator()
    v.validate(idp.mint())
    idp.rotate()
    clock.advance(61)
    idp.delay = 0.05  # widen the race window
    token = idp.mint()
    barrier = threading.Barrier(16)
    results: list[object] = []

    def worker():
        barrier.wait()
        try:
            results.append(v.validate(token)["aud"])
        except Exception as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [idp.audience] * 16
    assert idp.fetches("jwks") == 2


# --------------------------------------------------------------------------------------------
# Issuers across clouds


def test_metadata_issuer_is_accepted_when_it_names_the_tenant(idp, validator):
    custom = f"https://login.custom-cloud.example/{DEFAULT_TENANT_ID}/v2.0"
    idp.metadata_overrides = {"issuer": custom}
    assert validator.validate(idp.mint(iss=custom))


def test_metadata_issuer_of_other_tenant_is_ignored(idp, validator):
    foreign = f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"
    idp.metadata_overrides = {"issuer": foreign}
    refused(validator, idp.mint(iss=foreign), "wrong issuer")


@pytest.mark.parametrize("authority,v1", [
    ("https://login.microsoftonline.com", "https://sts.windows.net/{t}/"),
    ("https://login.windows.net/", "https://sts.windows.net/{t}/"),
    ("https://login.chinacloudapi.cn", "https://sts.chinacloudapi.cn/{t}/"),
    ("https://login.partner.microsoftonline.cn", "https://sts.chinacloudapi.cn/{t}/"),
    ("https://login.microsoftonline.us", "https://login.microsoftonline.us/{t}/"),
    ("http://127.0.0.1:8123", "http://127.0.0.1:8123/{t}/"),
])
def test_v1_issuer_per_cloud(authority, v1):
    cfg = EntraConfig(DEFAULT_TENANT_ID, ("a",), authority=authority)
    assert cfg.v1_issuer == v1.format(t=DEFAULT_TENANT_ID)
    assert cfg.v2_issuer == f"{authority.rstrip('/')}/{DEFAULT_TENANT_ID}/v2.0"


def test_sovereign_cloud_refuses_public_cloud_v1_issuer(clock):
    idp = TokenFactory(clock=clock, key=_KEY, authority="https://login.chinacloudapi.cn")
    v = idp.validator()
    assert v.validate(idp.mint())
    assert v.validate(idp.mint(version=1))
    refused(v, idp.mint(iss=f"https://sts.windows.net/{DEFAULT_TENANT_ID}/"), "wrong issuer")


# --------------------------------------------------------------------------------------------
# Default fetcher over loopback HTTP (no external network)


def test_default_fetch_against_loopback_authority(clock):
    idp = TokenFactory(clock=clock, key=_KEY)
    with idp.serve_http() as authority:
        assert authority.startswith("http://127.0.0.1:")
        v = EntraValidator(idp.config(), clock=clock)  # default urllib fetcher
        claims = v.validate(idp.mint())
        assert claims["iss"] == f"{authority}/{DEFAULT_TENANT_ID}/v2.0"
        assert v.validate(idp.mint(version=1))
        idp.rotate()
        clock.advance(61)
        assert v.validate(idp.mint())
    assert idp.fetches("metadata") == 2 and idp.fetches("jwks") == 2
    assert idp.authority == "https://login.microsoftonline.com"  # restored


def test_the_test_tenant_s_managed_identity_endpoint_speaks_app_service_s_protocol(clock):
    """What the deploy guide's snippet tests rely on (``DefaultAzureCredential`` unchanged):
    ``GET <IDENTITY_ENDPOINT>?resource=…&api-version=2019-08-01`` with ``X-IDENTITY-HEADER``
    answers a token for that resource; a wrong header or query is refused, as App Service
    does; the variables exist only while the tenant is served."""
    import urllib.error
    import urllib.parse
    import urllib.request

    idp = TokenFactory(clock=clock, key=_KEY, audience="6c1f0e2a")
    with pytest.raises(RuntimeError, match="inside serve_http"):
        idp.managed_identity_env()

    def ask(query: dict, header: str | None) -> tuple[int, dict]:
        url = env["IDENTITY_ENDPOINT"] + "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"X-IDENTITY-HEADER": header} if header
                                         else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with idp.serve_http():
        env = idp.managed_identity_env()
        assert env["AZURE_TOKEN_CREDENTIALS"] == "ManagedIdentityCredential"
        secret = env["IDENTITY_HEADER"]
        good = {"resource": "api://6c1f0e2a", "api-version": "2019-08-01"}
        status, body = ask(good, secret)
        assert status == 200 and body["token_type"] == "Bearer"
        assert int(body["expires_on"]) == int(clock()) + 3600
        claims = idp.validator(clock=clock).validate(body["access_token"])
        assert claims["aud"] == "6c1f0e2a" and claims["ver"] == "2.0"
        status, body = ask({**good, "resource": "https://ml.azure.com"}, secret)
        assert status == 200 and jwt.decode(body["access_token"], options={
            "verify_signature": False})["aud"] == "https://ml.azure.com"
        assert ask(good, "wrong")[0] == ask(good, None)[0] == 401
        assert ask({**good, "api-version": "2017-09-01"}, secret)[0] == 400
        assert ask({"api-version": "2019-08-01"}, secret)[0] == 400
        assert idp.resources == ["api://6c1f0e2a", "https://ml.azure.com"]
    with pytest.raises(RuntimeError):
        idp.managed_identity_env()


def test_default_fetch_from_env_config(clock):
    idp = TokenFactory(clock=clock, key=_KEY)
    with idp.serve_http():
        cfg = EntraConfig.from_env(idp.env())
        assert EntraValidator(cfg, clock=clock).validate(idp.mint())


def test_default_fetch_timeout_is_invalid_token(clock, caplog):
    idp = TokenFactory(clock=clock, key=_KEY)
    idp.delay = 1.5
    with idp.serve_http():
        v = EntraValidator(idp.config(http_timeout=0.2), clock=clock)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="embedding_core.entra"):
            refused(v, idp.mint(), "signing keys unavailable")
        assert time.monotonic() - started < 1.2
        idp.delay = 0
    assert "could not load signing keys" in caplog.text


def test_default_fetch_http_error_is_invalid_token(clock):
    idp = TokenFactory(clock=clock, key=_KEY)
    idp.fail_with = 503
    with idp.serve_http():
        refused(EntraValidator(idp.config(), clock=clock), idp.mint(), "signing keys unavailable")


def test_default_fetch_refuses_redirects():
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(Exception) as info:
            default_fetch_json(f"http://127.0.0.1:{server.server_address[1]}/x", 2.0)
        assert "302" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("url", [
    "http://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration",
    "http://example.com/x",
    "http://10.0.0.1/x",
    "ftp://127.0.0.1/x",
    "file:///etc/passwd",
    "https:///nohost",
])
def test_default_fetch_refuses_insecure_urls_before_any_io(url, monkeypatch):
    def no_network(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("network used")

    monkeypatch.setattr(entra.urllib.request, "build_opener", no_network)
    with pytest.raises(ValueError):
        default_fetch_json(url, 1.0)


@pytest.mark.parametrize("url", [
    "https://login.microsoftonline.com/x",
    "http://127.0.0.1:8080/x",
    "http://127.1.2.3/x",
    "http://localhost:9/x",
    "http://[::1]:8080/x",
])
def test_secure_urls(url):
    assert require_secure_url(url) == url


# --------------------------------------------------------------------------------------------
# Configuration


def test_config_normalises_values():
    cfg = EntraConfig(DEFAULT_TENANT_ID.upper(), [" api://a ", "", "api://a", "b"],
                      required_roles=["R1", " R2 "], allowed_client_ids=["ABC"],
                      authority="https://login.microsoftonline.com/")
    assert cfg.tenant_id == DEFAULT_TENANT_ID
    assert cfg.audiences == ("api://a", "b")
    assert cfg.required_roles == ("R1", "R2")
    assert cfg.allowed_client_ids == ("abc",)
    assert cfg.authority == "https://login.microsoftonline.com"
    assert cfg.metadata_url == (
        f"https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/v2.0/.well-known/openid-configuration")
    assert EntraConfig(DEFAULT_TENANT_ID, "api://single").audiences == ("api://single",)


@pytest.mark.parametrize("kwargs,message", [
    ({"tenant_id": "contoso.onmicrosoft.com"}, "GUID"),
    ({"tenant_id": "common"}, "GUID"),
    ({"tenant_id": ""}, "GUID"),
    ({"audiences": ()}, "audience"),
    ({"audiences": (" ", "")}, "audience"),
    ({"authority": "http://login.microsoftonline.com"}, "https"),
    ({"authority": "http://example.com:8080"}, "https"),
    ({"authority": "ftp://127.0.0.1"}, "https"),
    ({"authority": "login.microsoftonline.com"}, "no host"),
    ({"authority": "https://login.microsoftonline.com?x=1"}, "plain base URL"),
    ({"authority": f"https://login.microsoftonline.com/{DEFAULT_TENANT_ID}"}, "without a path"),
    ({"authority": "https://login.microsoftonline.com/common/v2.0"}, "without a path"),
    ({"http_timeout": 0}, "http_timeout"),
    ({"leeway_seconds": -1}, "leeway"),
    ({"jwks_min_refresh_seconds": -1}, "jwks_min_refresh_seconds"),
])
def test_config_rejects_bad_values(kwargs, message):
    values = {"tenant_id": DEFAULT_TENANT_ID, "audiences": ("api://a",), **kwargs}
    with pytest.raises(ValueError, match=message):
        EntraConfig(**values)


@pytest.mark.parametrize("authority", ["http://127.0.0.1:8080", "http://localhost:7071",
                                       "http://[::1]:9000", "https://login.microsoftonline.us"])
def test_config_accepts_loopback_http_and_https(authority):
    assert EntraConfig(DEFAULT_TENANT_ID, ("a",), authority=authority).authority == authority


def test_from_env_unset_or_blank_tenant_is_none():
    assert EntraConfig.from_env({}) is None
    assert EntraConfig.from_env({"EMBEDDINGS_ENTRA_TENANT_ID": "  "}) is None
    assert EntraConfig.from_env({"EMBEDDINGS_ENTRA_AUDIENCES": "api://a"}) is None


def test_from_env_parses_lists():
    cfg = EntraConfig.from_env({
        "EMBEDDINGS_ENTRA_TENANT_ID": f" {DEFAULT_TENANT_ID} ",
        "EMBEDDINGS_ENTRA_AUDIENCES": "api://embeddings, 0d1e2f3a-4b5c-4d6e-8f70-81920a1b2c3d,,",
        "EMBEDDINGS_ENTRA_REQUIRED_ROLES": "Embeddings.Invoke , Embeddings.Admin",
        "EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS": "AAAAAAAA-0000-4000-8000-000000000000",
    })
    assert cfg == EntraConfig(
        tenant_id=DEFAULT_TENANT_ID,
        audiences=("api://embeddings", "0d1e2f3a-4b5c-4d6e-8f70-81920a1b2c3d"),
        required_roles=("Embeddings.Invoke", "Embeddings.Admin"),
        allowed_client_ids=("aaaaaaaa-0000-4000-8000-000000000000",),
    )
    assert cfg.authority == "https://login.microsoftonline.com"
    assert cfg.http_timeout == 5.0 and cfg.leeway_seconds == 60


def test_from_env_authority():
    cfg = EntraConfig.from_env({"EMBEDDINGS_ENTRA_TENANT_ID": DEFAULT_TENANT_ID,
                                "EMBEDDINGS_ENTRA_AUDIENCES": "api://a",
                                "EMBEDDINGS_ENTRA_AUTHORITY": "http://127.0.0.1:5555/"})
    assert cfg.authority == "http://127.0.0.1:5555"
    with pytest.raises(ValueError, match="https"):
        EntraConfig.from_env({"EMBEDDINGS_ENTRA_TENANT_ID": DEFAULT_TENANT_ID,
                              "EMBEDDINGS_ENTRA_AUDIENCES": "api://a",
                              "EMBEDDINGS_ENTRA_AUTHORITY": "http://login.example.com"})


@pytest.mark.parametrize("audiences", [None, "", " , ,"])
def test_from_env_tenant_without_audiences_is_misconfiguration(audiences):
    env = {"EMBEDDINGS_ENTRA_TENANT_ID": DEFAULT_TENANT_ID}
    if audiences is not None:
        env["EMBEDDINGS_ENTRA_AUDIENCES"] = audiences
    with pytest.raises(ValueError, match="EMBEDDINGS_ENTRA_AUDIENCES"):
        EntraConfig.from_env(env)


def test_from_env_bad_tenant_is_misconfiguration():
    with pytest.raises(ValueError, match="GUID"):
        EntraConfig.from_env({"EMBEDDINGS_ENTRA_TENANT_ID": "contoso.onmicrosoft.com",
                              "EMBEDDINGS_ENTRA_AUDIENCES": "api://a"})


# --------------------------------------------------------------------------------------------
# looks_like_jwt


def test_looks_like_jwt_true_for_tokens(idp):
    assert looks_like_jwt(idp.mint())
    assert looks_like_jwt(idp.mint(version=1))
    assert looks_like_jwt(idp.forge({"alg": "none"}, {"sub": "x"}))


@pytest.mark.parametrize("value", [
    secrets.token_urlsafe(32),                     # 43-char urlsafe API key
    "sk-" + secrets.token_urlsafe(32),
    "emb." + secrets.token_urlsafe(8) + "." + secrets.token_urlsafe(32),  # key with dots
    "key.with.dots",
    "abc.def.ghi",
    "eyJhbGciOiJSUzI1NiJ9",                         # header only
    b64url({"typ": "JWT"}) + ".e30.sig",           # no alg
    b64url({"alg": 5}) + ".e30.sig",               # alg not a string
    b64url(b"[1]") + ".e30.sig",
    b64url({"alg": "RS256"}) + "..sig",            # empty payload
    b64url({"alg": "RS256"}) + ".e30.sig.extra",
    b64url({"alg": "RS256"}) + ".e3+0.sig",        # not base64url
    " " + b64url({"alg": "RS256"}) + ".e30.sig",
    "",
    "\u00e9.\u00e9.\u00e9",
    "x" * 100_000,
    None,
    b"eyJ.eyJ.x",
    12345,
])
def test_looks_like_jwt_false_for_api_keys_and_junk(value):
    assert looks_like_jwt(value) is False
