"""Authentication: keys in either header, rotation, Entra ID tokens, and what a 401 reveals."""

from __future__ import annotations

import logging
import time

import pytest

from embedding_core.auth import Authenticator
from embedding_core.errors import ApiError
from embedding_core.settings import Settings
from jwt_factory import TokenFactory


def auth(env: dict[str, str], validator=None) -> Authenticator:
    return Authenticator(Settings.from_env(env), validator)


def refused(a: Authenticator, headers: dict[str, str]) -> ApiError:
    with pytest.raises(ApiError) as e:
        a.check(headers)
    assert e.value.status == 401 and e.value.code == "Unauthorized"
    return e.value


OLD, NEW, K1 = "old-key-0123456789", "new-key-0123456789", "k1-key-0123456789a"


def test_keys_in_either_header_and_rotation():
    a = auth({"EMBEDDINGS_API_KEYS": f" {OLD} , {NEW} "})
    for key in (OLD, NEW):
        a.check({"api-key": key})
        a.check({"authorization": f"Bearer {key}"})
        a.check({"authorization": f"bearer {key}"})
    assert refused(a, {"api-key": OLD + "-but-longer"}).headers["WWW-Authenticate"] == \
        'Bearer error="invalid_token"'
    assert refused(a, {"authorization": f"Basic {OLD}"}).headers["WWW-Authenticate"] == "Bearer"


def test_any_valid_credential_is_enough():
    a = auth({"EMBEDDINGS_API_KEYS": K1})
    a.check({"api-key": K1, "authorization": "Bearer wrong"})
    a.check({"api-key": "wrong", "authorization": f"Bearer {K1}"})


def test_missing_versus_invalid_and_no_secret_in_message_or_log(caplog):
    a = auth({"EMBEDDINGS_API_KEYS": "s3cret-key-0123456789"})
    with caplog.at_level(logging.DEBUG):
        missing = refused(a, {})
        invalid = refused(a, {"api-key": "s3cret-key-012345678z"})
    assert "Missing" in missing.message and "Invalid" in invalid.message
    assert "s3cret" not in missing.message + invalid.message + caplog.text



@pytest.mark.parametrize("authorization, says", [
    (K1, "must use the Bearer scheme"), (f"Basic {K1}", "must use the Bearer scheme"),
    (f"Token {K1}", "must use the Bearer scheme"), ("Bearer", "has no credential after 'Bearer'"),
    ("bearer   ", "has no credential after 'Bearer'")])
def test_an_authorization_header_without_a_bearer_credential_is_named_not_called_missing(
        authorization, says):
    """A key sent as `Authorization: <key>` (or in another scheme) is a credential the client
    did send: the 401 says what is wrong with the header, not that credentials are missing."""
    a = auth({"EMBEDDINGS_API_KEYS": K1})
    e = refused(a, {"authorization": authorization})
    assert e.message == (f"The Authorization header {says}: send 'Authorization: Bearer <key or "
                         "token>' (or the key as 'api-key: <key>').")
    assert e.headers["WWW-Authenticate"] == "Bearer" and K1 not in e.message


def test_a_token_sent_to_a_server_without_entra_id_is_logged_as_such(caplog):
    """An operator who turned Entra ID on in azd but did not provision sees why tokens fail."""
    a = auth({"EMBEDDINGS_API_KEYS": K1})
    token = TokenFactory().mint()
    with caplog.at_level(logging.INFO, logger="embedding_core.auth"):
        refused(a, {"authorization": f"Bearer {token}"})
    assert "bearer token refused: Entra ID is not configured (EMBEDDINGS_ENTRA_TENANT_ID is " \
        "unset), so tokens are taken as keys" in caplog.text
    assert "api key refused" not in caplog.text and token not in caplog.text

def test_no_credentials_configured():
    e = refused(auth({}), {"api-key": "anything"})
    assert "no credentials configured" in e.message


def test_auth_disabled_explicitly(caplog):
    with caplog.at_level(logging.WARNING):
        a = auth({"EMBEDDINGS_AUTH": "disabled"})
    a.check({})
    assert "disabled" in caplog.text


def test_entra_token_or_key():
    idp = TokenFactory()
    a = auth({"EMBEDDINGS_API_KEYS": K1}, idp.validator(required_roles=("Embeddings.Invoke",)))
    a.check({"authorization": f"Bearer {idp.mint()}"})
    a.check({"authorization": f"Bearer {idp.mint(version=1)}"})
    a.check({"api-key": K1})
    a.check({"authorization": f"Bearer {K1}"})  # not a JWT: still an API key
    now = int(time.time())
    for bad in (idp.mint(aud="api://other"), idp.mint(exp=1), idp.mint(key=idp.new_key()),
                idp.mint(roles=None), idp.mint(iat=now + 3600), idp.mint(iat=now + 10 * 365 * 86400),
                idp.mint(iat=str(now)), idp.mint(iat=None)):
        e = refused(a, {"authorization": f"Bearer {bad}"})
        assert e.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert "Invalid credentials." == e.message


def test_entra_only_server_refuses_keys():
    idp = TokenFactory()
    a = auth({}, idp.validator())
    a.check({"authorization": f"Bearer {idp.mint()}"})
    refused(a, {"api-key": "anything"})


def test_entra_from_settings(monkeypatch):
    idp = TokenFactory()
    a = Authenticator(Settings.from_env(idp.env()))
    assert a.entra is not None and a.configured


def test_entra_open_to_the_whole_tenant_is_warned_about(caplog):
    idp = TokenFactory()
    warning = "without EMBEDDINGS_ENTRA_REQUIRED_ROLES or EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS"
    with caplog.at_level(logging.WARNING, logger="embedding_core.auth"):
        Authenticator(Settings.from_env(idp.env()))
    assert caplog.text.count(warning) == 1
    for restricted in ({"EMBEDDINGS_ENTRA_REQUIRED_ROLES": "Embeddings.Invoke"},
                       {"EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS": "aaaaaaaa-0000-4000-8000-000000000000"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embedding_core.auth"):
            Authenticator(Settings.from_env(idp.env(**restricted)))
        assert warning not in caplog.text


@pytest.mark.parametrize("audience", ["https://ml.azure.com", "https://cognitiveservices.azure.com/",
                                      "https://ml.azure.us", "https://ml.azure.cn:443",
                                      "https://management.usgovcloudapi.net/"])
def test_a_microsoft_resource_audience_without_a_client_allow_list_is_warned_about(audience,
                                                                                   caplog):
    """docs/deploy.md's Option B: any identity of the tenant gets such tokens, with roles that are
    the resource's; required roles alone do not restrict who calls (review h_sec1 L4)."""
    idp = TokenFactory()
    warning = "without EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS: any user or application of the tenant"
    audiences = f"api://my-app,{audience}"
    for extra in ({}, {"EMBEDDINGS_ENTRA_REQUIRED_ROLES": "Embeddings.Invoke"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embedding_core.auth"):
            Authenticator(Settings.from_env(idp.env(EMBEDDINGS_ENTRA_AUDIENCES=audiences,
                                                    **extra)))
        assert caplog.text.count(warning) == 1 and audience in caplog.text
        assert "whatever EMBEDDINGS_ENTRA_REQUIRED_ROLES says" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embedding_core.auth"):
        Authenticator(Settings.from_env(idp.env(
            EMBEDDINGS_ENTRA_AUDIENCES=audiences,
            EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS="aaaaaaaa-0000-4000-8000-000000000000")))
    assert "can call the API" not in caplog.text
    caplog.clear()
    for own in ("api://my-app", "https://contoso.onmicrosoft.com/embeddings",
                "https://ml.azure.com.contoso.example", "00000000-1111-4222-8333-444444444444"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embedding_core.auth"):   # the app's own
            Authenticator(Settings.from_env(idp.env(EMBEDDINGS_ENTRA_AUDIENCES=own,
                                                    EMBEDDINGS_ENTRA_REQUIRED_ROLES="Embeddings.X")))
        assert "can call the API" not in caplog.text, own


def test_refused_tokens_are_logged_once_a_minute_not_once_per_request(caplog, monkeypatch):
    """Anyone can send tokens, and the Functions worker forwards INFO records to the host,
    billed per row: one line a minute per kind, with how many were left out (review h_sec F2)."""
    idp = TokenFactory()
    now = [1000.0]
    monkeypatch.setattr("embedding_core.auth.time.monotonic", lambda: now[0])
    forged = TokenFactory()                      # signed with another key
    a = auth({"EMBEDDINGS_API_KEYS": K1, **idp.env()}, idp.validator())

    def lines(level):
        return [r.getMessage() for r in caplog.records
                if r.levelno == level and r.getMessage().startswith("bearer token refused")]

    with caplog.at_level(logging.DEBUG, logger="embedding_core.auth"):
        for _ in range(5):
            refused(a, {"authorization": f"Bearer {forged.mint()}"})
        assert len(lines(logging.INFO)) == 1 and len(lines(logging.DEBUG)) == 4
        assert "bad signature" in lines(logging.INFO)[0]
        # another kind of refusal is not hidden by a flood of the first (h_diff9 F3)
        wrong = idp.mint(aud="api://someone-else")
        for _ in range(3):
            refused(a, {"authorization": f"Bearer {wrong}"})
        assert len(lines(logging.INFO)) == 2 and "wrong audience" in lines(logging.INFO)[1]
        now[0] += 61
        refused(a, {"authorization": f"Bearer {forged.mint()}"})
        assert len(lines(logging.INFO)) == 3
        assert "bad signature" in lines(logging.INFO)[2]
        assert "4 more since the last" in lines(logging.INFO)[2]


@pytest.mark.parametrize("env", [{}, {"EMBEDDINGS_API_KEYS": " "}])
def test_no_credentials_at_all_is_logged_as_a_configuration_error(env, caplog):
    """GET /health's 503 says the server log says why: it must (found by h_user)."""
    with caplog.at_level(logging.INFO, logger="embedding_core.auth"):
        a = auth(env)
    assert "The server has no credentials configured" in refused(a, {"api-key": K1}).message
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert error.startswith("configuration error: no credentials are configured"), error
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedding_core.auth"):
        auth({"EMBEDDINGS_API_KEYS": K1})
        auth({"EMBEDDINGS_AUTH": "disabled"})
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]


def test_a_token_cannot_make_its_own_kind_of_refusal(caplog):
    """A kid with a "'" is quoted with '"' by repr(): its text must not reach the throttle's key
    (review h_diff10 N1: 20,000 such tokens made 20,000 keys and INFO lines)."""
    idp = TokenFactory()
    a = auth({"EMBEDDINGS_API_KEYS": K1, **idp.env()}, idp.validator())
    with caplog.at_level(logging.INFO, logger="embedding_core.auth"):
        for i in range(200):
            token = TokenFactory.forge({"alg": "RS256", "kid": f"{i} it's"}, {"sub": "x"},
                                       b"sig")
            refused(a, {"authorization": f"Bearer {token}"})
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and len(a._refusals) == 1, (len(infos), list(a._refusals)[:5])
    for i in range(200):                  # and whatever a reason may let through, bounded
        a._log_refusal(logging.INFO, "bearer token refused", f"made-up reason {i}")
    assert len(a._refusals) <= 65


def test_unreachable_signing_keys_are_a_retryable_503_not_a_401():
    idp = TokenFactory()
    token = idp.mint()

    def down(url, timeout):
        raise OSError("network unreachable")

    a = auth({"EMBEDDINGS_API_KEYS": K1, "EMBEDDINGS_RETRY_AFTER_SECONDS": "5"},
             idp.validator(fetch_json=down))
    with pytest.raises(ApiError) as e:
        a.check({"authorization": f"Bearer {token}"})
    assert e.value.status == 503 and e.value.code == "ServiceUnavailable"
    assert e.value.headers["Retry-After"] == "5"
    a.check({"authorization": f"Bearer {token}", "api-key": K1})  # a valid key still works


def test_unchecked_tokens_are_warned_about_once_a_minute(caplog):
    idp = TokenFactory()

    def down(url, timeout):
        raise OSError("network unreachable")

    a = auth({"EMBEDDINGS_API_KEYS": K1}, idp.validator(fetch_json=down))
    with caplog.at_level(logging.WARNING, logger="embedding_core.auth"):
        for _ in range(5):
            with pytest.raises(ApiError):
                a.check({"authorization": f"Bearer {idp.mint()}"})
    assert caplog.text.count("bearer token not checked") == 1, caplog.text
