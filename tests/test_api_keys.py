"""EMBEDDINGS_API_KEYS: named callers, unresolved Key Vault references, keys too short to be
secret, configuration errors, and that no key reaches a log record or a caller id."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from embedding_core import service as service_module
from embedding_core.auth import ANONYMOUS, Authenticator, Caller
from embedding_core.errors import ApiError
from embedding_core.service import ApiRequest, EmbeddingService
from embedding_core.settings import MIN_KEY_CHARS, Settings, parse_api_keys
from jwt_factory import TokenFactory

ALICE = "alice-secret-7f3e9a1c"        # distinctive, so a leak would be found in any log text
PLAIN = "plain-secret-4b8d2e6f"
BOB = "bob-secret-with:colon,comma-1234"
Q = {"api-version": "2024-05-01-preview"}
REF_URI = "@Microsoft.KeyVault(SecretUri=https://kv-guessable.vault.azure.net/secrets/api-keys/)"
REF_NAMES = "@Microsoft.KeyVault(VaultName=kv-guessable;SecretName=api-keys)"


def fingerprint(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def authn(value: str, **env: str) -> Authenticator:
    return Authenticator(Settings.from_env({"EMBEDDINGS_API_KEYS": value, **env}))


def refused(a: Authenticator, headers: dict[str, str]) -> ApiError:
    with pytest.raises(ApiError) as e:
        a.check(headers)
    assert e.value.status == 401 and e.value.code == "Unauthorized"
    return e.value


def both_headers(key: str) -> list[dict[str, str]]:
    return [{"api-key": key}, {"authorization": f"Bearer {key}"}]


def config_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "configuration error" in r.getMessage()]


# --------------------------------------------------------------------------------------------
# Named callers


def test_named_and_plain_keys_identify_their_caller():
    a = authn(f"alice:{ALICE}, {PLAIN}")
    for headers in both_headers(ALICE):
        assert a.check(headers) == Caller("key", "key:alice")
    for headers in both_headers(PLAIN):
        assert a.check(headers) == Caller("key", fingerprint(PLAIN))
    assert fingerprint(PLAIN) != fingerprint(ALICE)


def test_json_form_names_keys_that_contain_colons_and_commas():
    a = authn(json.dumps({"alice": ALICE, "bob": BOB}))
    assert a.check({"api-key": ALICE}).id == "key:alice"
    assert a.check({"authorization": f"Bearer {BOB}"}).id == "key:bob"
    refused(a, {"api-key": "bob-secret-with"})   # the key is not cut at ':' or ','


def test_name_is_split_at_the_first_colon_and_whitespace_is_ignored():
    assert authn(f" svc.batch-1 : a:{ALICE} ").check({"api-key": f"a:{ALICE}"}).id == \
        "key:svc.batch-1"


def test_a_caller_may_have_two_keys_during_a_rotation(caplog):
    """infra/ and docs/deploy.md rotate a caller's key by listing the name twice."""
    new = "alice-new-secret-0c8e27d1"
    for value in (f"alice:{ALICE}, {PLAIN}, alice:{new}",
                  json.dumps({"alice": ALICE})[:-1] + f', "alice": "{new}"}}'):
        with caplog.at_level(logging.INFO):
            a = authn(value)
        assert a.check({"api-key": ALICE}).id == a.check({"api-key": new}).id == "key:alice"
    assert "callers key:alice (2 keys), " + fingerprint(PLAIN) in caplog.text


def test_whole_name_key_entry_is_refused_and_explained_once(caplog):
    """A plain key with ':' from before named keys is now read as name:key. Its clients,
    still sending the whole entry, are refused, and the log says why (once), without the key."""
    a = authn(f"team1:{ALICE}")
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            refused(a, {"api-key": f"team1:{ALICE}"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "key:team1" in warnings[0] and "JSON" in warnings[0]
    assert ALICE not in caplog.text
    # The JSON form keeps such a key whole (under a name of its own).
    b = authn(json.dumps({"team1": f"team1:{ALICE}"}))
    assert b.check({"api-key": f"team1:{ALICE}"}).id == "key:team1"


def test_entra_caller_is_the_client_application_and_oid():
    idp = TokenFactory()
    a = Authenticator(Settings.from_env({}), idp.validator())
    app, oid, v1_app = ("AAAAAAAA-1111-4222-8333-444455556666",
                        "0b0b0b0b-1111-4222-8333-444455556666",
                        "99999999-1111-4222-8333-444455556666")
    v2 = a.check({"authorization": f"Bearer {idp.mint(azp=app, oid=oid)}"})
    assert v2 == Caller("entra", f"entra:{app.lower()}", oid)
    v1 = a.check({"authorization": f"Bearer {idp.mint(version=1, appid=v1_app, oid=None)}"})
    assert v1 == Caller("entra", f"entra:{v1_app}", None)


def test_disabled_auth_is_anonymous():
    a = Authenticator(Settings.from_env({"EMBEDDINGS_AUTH": "disabled"}))
    assert a.check({}) is ANONYMOUS and ANONYMOUS.id == "anonymous"


def test_service_puts_the_caller_id_on_the_request_trace(monkeypatch):
    """What telemetry reads: ``trace.caller`` is the caller id, on success and not on a 401."""
    seen: list[tuple[int, object]] = []
    monkeypatch.setattr(service_module.telemetry, "record",
                        lambda trace, *, status, **_: seen.append((status, trace.caller)))
    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": f"alice:{ALICE},{PLAIN}"}))
    for key, expected in ((ALICE, "key:alice"), (PLAIN, fingerprint(PLAIN))):
        assert svc.info(ApiRequest("GET", "/info", {"api-key": key}, Q, b"")).status == 200
        assert seen[-1] == (200, expected)
    assert svc.info(ApiRequest("GET", "/info", {"api-key": "nope"}, Q, b"")).status == 401
    assert seen[-1][0] == 401 and seen[-1][1] in (None, "")


# --------------------------------------------------------------------------------------------
# Configuration errors: the bad entry is refused and logged, the others keep working; the
# message never shows a key

OTHER = "other-secret-9c1d5e7a"


@pytest.mark.parametrize("value, accepted, message", [
    (f"Alice:{ALICE},alice:{PLAIN}", ["key:Alice"],
     "entries 1 and 2 have names that differ only in case ('Alice', 'alice'); entry 2 is not"),
    (f"a:{ALICE},b:{ALICE},c:{OTHER}", ["key:c"],
     "entries 1, 2 hold the same key for different callers; none of them is accepted"),
    (f"{ALICE},b:{ALICE}", [], "entries 1, 2 hold the same key for different callers"),
    # a key shared with an entry refused for its name is refused too: never the other caller's
    (f"alice:{ALICE},Bob:{OTHER},bob:{ALICE}", ["key:Bob"], "entries 1, 3 hold the same key"),
    (f"alice:{ALICE},b@d:{ALICE}", [], "entries 1, 2 hold the same key"),
    (json.dumps({"alice": ALICE, "b d": ALICE}), [], "entries 1, 2 hold the same key"),
    # the same caller's key twice (a rotation pasted twice): the repeat is ignored
    (f"{ALICE},{ALICE},b:{OTHER}", [fingerprint(ALICE), "key:b"],
     "entry 2 repeats the key of entry 1 for the same caller and is ignored"),
    (f"a:{ALICE},b:{PLAIN},a:{ALICE}", ["key:a", "key:b"], "entry 3 repeats the key of entry 1"),
    # kept in the entry that is not refused otherwise (entry 3), not lost with entry 2
    (f"Alice:{OTHER},alice:{ALICE},Alice:{ALICE}", ["key:Alice", "key:Alice"],
     "entries 1 and 2 have names that differ only in case"),
    # past the json module's depth limit on every supported Python (3.13 parses 5,000 levels)
    ("{" + '"a":' + "[" * 100_000 + "]" * 100_000 + "}", [], "nested too deeply"),
    (f"my key:{ALICE},b:{OTHER}", ["key:b"], "entry 1 contains ':' but the part before it is not"),
    (f":{ALICE},b:{OTHER}", ["key:b"], "not a key name"),
    (f"{'n' * 65}:{ALICE},b:{OTHER}", ["key:b"], "not a key name"),
    ("{" + ALICE, [], "not a JSON object"),
    (json.dumps({"a": 12345678901234567890, "b": OTHER}), ["key:b"], "must be a string"),
    (json.dumps({"bad name": ALICE, "b": OTHER}), ["key:b"], "not a key name"),
    (f"{fingerprint(PLAIN)[4:]}:{ALICE},{PLAIN}", [f"key:{fingerprint(PLAIN)[4:]}"],
     "entries 1 and 2 would both be reported as caller"),
])
def test_a_bad_entry_is_refused_on_its_own(value, accepted, message):
    keys, problems = parse_api_keys(value)
    assert [k.caller_id for k in keys] == accepted
    assert any(message in p for p in problems), problems
    for problem in problems:
        assert problem.startswith("configuration error: ")
        assert ALICE not in problem and PLAIN not in problem and OTHER not in problem


def test_a_bad_entry_does_not_take_the_other_callers_down(monkeypatch, caplog):
    """One caller's typo (in the vault, or from a deployment) used to make every request a 500:
    the other keys keep working, the bad entry's key is a 401, the log says why, once."""
    monkeypatch.setenv("EMBEDDINGS_API_KEYS", f"a:{ALICE},b:{ALICE},Good:{OTHER},good:{PLAIN}")
    service_module.reset_service()
    try:
        with caplog.at_level(logging.DEBUG):
            ok = service_module.dispatch("info", ApiRequest("GET", "/info", {"api-key": OTHER},
                                                            Q, b""))
            bad = [service_module.dispatch("info", ApiRequest("GET", "/info", {"api-key": k},
                                                              Q, b"")) for k in (ALICE, PLAIN)]
            health = service_module.dispatch("health", ApiRequest("GET", "/health", {}, {}, b""))
    finally:
        service_module.reset_service()
    assert ok.status == 200 and health.status == 200
    assert [r.status for r in bad] == [401, 401]
    assert caplog.text.count("hold the same key") == 1
    assert caplog.text.count("differ only in case") == 1
    for key in (ALICE, PLAIN, OTHER):
        assert key not in caplog.text and all(key.encode() not in r.body for r in bad)


def test_valid_names_and_settings_repr_hide_keys():
    keys, problems = parse_api_keys(f"A-Z_a.z-09:{ALICE},{'n' * 64}:{PLAIN}")
    assert [k.name for k in keys] == ["A-Z_a.z-09", "n" * 64] and problems == ()
    settings = Settings.from_env({"EMBEDDINGS_API_KEYS": f"alice:{ALICE},{PLAIN}"})
    assert ALICE not in repr(settings) and PLAIN not in repr(settings)
    assert ALICE not in repr(settings.api_keys)


# --------------------------------------------------------------------------------------------
# Unresolved Key Vault references: no key, logged once as a configuration error


@pytest.mark.parametrize("literal", [
    REF_URI,
    REF_NAMES,
    REF_NAMES.replace("@Microsoft.KeyVault", "@microsoft.keyvault"),
    "@MICROSOFT.KEYVAULT(SecretUri=https://kv-guessable.vault.azure.net/secrets/api-keys/abc123)",
])
@pytest.mark.parametrize("setting", ["{}", ' "{}" ', "'{}'", "\t{}\n"])
def test_unresolved_reference_as_the_whole_setting_is_no_key(literal, setting, caplog):
    value = setting.format(literal)
    with caplog.at_level(logging.INFO):
        a = authn(value)
        for presented in {literal, value, value.strip()}:
            for headers in both_headers(presented):
                e = refused(a, headers)
                assert "no usable credentials: EMBEDDINGS_API_KEYS is set" in e.message
                assert "Key Vault" not in e.message and "KeyVault" not in e.message
    [message] = config_errors(caplog)
    assert "EMBEDDINGS_API_KEYS is an unresolved Key Vault reference" in message
    assert "@Microsoft.KeyVault(" in message
    assert "kv-guessable" not in caplog.text and "api-keys" not in caplog.text
    assert "abc123" not in caplog.text


@pytest.mark.parametrize("value, where", [
    (f"alice:{ALICE},{REF_URI}", "entry 2"),
    (f"{REF_NAMES} , alice:{ALICE}", "entry 1"),
    (f"alice:{ALICE},bob:{REF_URI}", "entry 2 (name 'bob')"),
    (json.dumps({"alice": ALICE, "bob": f" {REF_URI} "}), "entry 2 (name 'bob')"),
])
def test_unresolved_reference_among_keys_is_no_key_and_the_others_work(value, where, caplog):
    with caplog.at_level(logging.INFO):
        a = authn(value)
        for literal in (REF_URI, REF_NAMES, f"bob:{REF_URI}"):
            for headers in both_headers(literal):
                e = refused(a, headers)
                assert e.message == "Invalid credentials."
        assert a.check({"api-key": ALICE}).id == "key:alice"
    [message] = config_errors(caplog)
    assert f"EMBEDDINGS_API_KEYS {where} is an unresolved Key Vault reference" in message
    assert "kv-guessable" not in caplog.text and ALICE not in caplog.text


MISTYPED = [   # App Service resolves none of these and passes the text on (review h_sec F1)
    "@Microsoft.KeyVault(VaultName=kv-guessable,SecretName=api-keys)",     # ',' for ';'
    "@Microsoft.KeyVault (VaultName=kv-guessable;SecretName=api-keys)",    # a space before '('
    "Microsoft.KeyVault(VaultName=kv-guessable;SecretName=api-keys)",      # no '@'
    "@Microsoft.KeyVault[VaultName=kv-guessable;SecretName=api-keys]",     # the wrong bracket
    "@Microsoft.KeyVault(VaultName=kv-guessable,SecretName: api-keys)",    # and ':' for '='
]


@pytest.mark.parametrize("literal", MISTYPED)
@pytest.mark.parametrize("setting", ["{}", ' "{}" '])
def test_a_mistyped_reference_is_no_key_either(literal, setting, caplog):
    """Split at its ',', the first would give the key "SecretName=api-keys)", which anyone who
    knows the configuration could send; the others, the whole text as a key."""
    value = setting.format(literal)
    with caplog.at_level(logging.INFO):
        a = authn(value)
        pieces = [p.strip() for p in literal.split(",")]
        pieces += [p.partition(":")[2].strip() for p in pieces if ":" in p]   # name:key read
        for presented in {literal, value, value.strip(), *pieces}:
            for headers in both_headers(presented):
                assert "no usable credentials" in refused(a, headers).message
    messages = config_errors(caplog)     # one, or one per piece of a reference split at ','
    assert len(messages) == 1 + ("," in literal), messages
    assert all("unresolved Key Vault reference (@Microsoft.KeyVault(" in m for m in messages)
    assert "kv-guessable" not in caplog.text and "api-keys" not in caplog.text


def test_a_mistyped_reference_among_keys_is_no_key_and_the_others_work(caplog):
    value = f"alice:{ALICE},@Microsoft.KeyVault(VaultName=kv-guessable,SecretName=api-keys)"
    with caplog.at_level(logging.INFO):
        a = authn(value)
        for presented in ("SecretName=api-keys)", "@Microsoft.KeyVault(VaultName=kv-guessable"):
            for headers in both_headers(presented):
                assert refused(a, headers).message == "Invalid credentials."
        assert a.check({"api-key": ALICE}).id == "key:alice"
    messages = config_errors(caplog)
    assert [m.split(" is ")[0] for m in messages] == [
        "configuration error: EMBEDDINGS_API_KEYS entry 2",
        "configuration error: EMBEDDINGS_API_KEYS entry 3"], messages
    assert all("unresolved Key Vault reference (@Microsoft.KeyVault(" in m for m in messages)
    assert "kv-guessable" not in caplog.text and ALICE not in caplog.text


def test_reference_shapes_in_the_log():
    _, (uri,) = parse_api_keys(REF_URI)
    _, (names,) = parse_api_keys(REF_NAMES)
    _, (versioned,) = parse_api_keys(
        "@Microsoft.KeyVault(VaultName=kv-guessable;SecretName=api-keys;SecretVersion=abc123)")
    assert "(@Microsoft.KeyVault(SecretUri=…))" in uri
    assert "(@Microsoft.KeyVault(VaultName=…;SecretName=…))" in names
    assert "(@Microsoft.KeyVault(VaultName=…;SecretName=…;SecretVersion=…))" in versioned
    _, (space,) = parse_api_keys(MISTYPED[1])
    _, (bracket,) = parse_api_keys(MISTYPED[3])
    _, (vault, secret) = parse_api_keys(MISTYPED[0])     # split at its ','
    assert "(@Microsoft.KeyVault(VaultName=…;SecretName=…))" in space
    assert "(@Microsoft.KeyVault(VaultName=…;SecretName=…))" in bracket
    assert "entry 1 is an unresolved Key Vault reference (@Microsoft.KeyVault(VaultName=…))" \
        in vault
    assert "entry 2 is an unresolved Key Vault reference (@Microsoft.KeyVault(SecretName=…))" \
        in secret


def test_unresolved_reference_with_entra_configured_is_still_refused():
    idp = TokenFactory()
    a = Authenticator(Settings.from_env({"EMBEDDINGS_API_KEYS": REF_URI, **idp.env()}),
                      idp.validator())
    for headers in both_headers(REF_URI):
        assert refused(a, headers).message == "Invalid credentials."
    assert a.check({"authorization": f"Bearer {idp.mint()}"}).kind == "entra"


def test_configuration_error_is_logged_once_per_process(caplog):
    with caplog.at_level(logging.INFO):
        svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": f"{REF_URI},short"}))
        for _ in range(5):
            svc.info(ApiRequest("GET", "/info", {"api-key": REF_URI}, Q, b""))
    assert len(config_errors(caplog)) == 2   # one per bad entry, not one per request


# --------------------------------------------------------------------------------------------
# Keys too short to be secret


def test_keys_shorter_than_16_characters_are_no_keys(caplog):
    assert MIN_KEY_CHARS == 16
    fifteen, sixteen = "k" * 14 + "5", "k" * 15 + "6"
    with caplog.at_level(logging.INFO):
        a = authn(f"{fifteen},short:{'s' * 15},{sixteen},ok:{'o' * 16}")
    for key in (fifteen, "s" * 15, f"short:{'s' * 15}"):
        for headers in both_headers(key):
            refused(a, headers)
    assert a.check({"api-key": sixteen}).id == fingerprint(sixteen)
    assert a.check({"api-key": "o" * 16}).id == "key:ok"
    errors = config_errors(caplog)
    assert len(errors) == 2
    assert "entry 1 is shorter than 16 characters" in errors[0]
    assert "entry 2 (name 'short') is shorter than 16 characters" in errors[1]
    assert fifteen not in caplog.text and "s" * 15 not in caplog.text


def test_keys_with_characters_clients_cannot_all_send_are_no_keys(caplog):
    """httpx (the openai SDK) refuses non-ASCII header values; other clients send UTF-8 or
    Latin-1 bytes, so such a key would work for some clients only."""
    accented, spaced, good = "pässwort-0123456789abc", "pass\tword-0123456789abc", "p" * 20
    with caplog.at_level(logging.INFO):
        a = authn(f"{accented},{spaced},{good}")
    for key in (accented, spaced, accented.encode().decode("latin-1")):
        for headers in both_headers(key):
            refused(a, headers)
    assert a.check({"api-key": good}).id == fingerprint(good)
    errors = config_errors(caplog)
    assert len(errors) == 2 and all("not printable ASCII" in e for e in errors)
    assert "entry 1" in errors[0] and "entry 2" in errors[1]
    assert accented not in caplog.text and spaced not in caplog.text


def test_only_short_keys_means_no_credentials():
    e = refused(authn("local-dev-key"), {"api-key": "local-dev-key"})
    assert "no usable credentials: EMBEDDINGS_API_KEYS is set" in e.message


DEV_KEY = "local-dev-key-0000"     # the README's, the Makefile's and local.settings.json.example's


def test_the_published_development_key_works_locally():
    for source in ("Makefile", "local.settings.json.example"):
        assert DEV_KEY in (Path(__file__).parent.parent / source).read_text()
    a = authn(DEV_KEY)           # make serve, func start: no Azure hosting setting
    assert a.check({"api-key": DEV_KEY}).id == fingerprint(DEV_KEY)


@pytest.mark.parametrize("hosting", [
    {"WEBSITE_SKU": "FlexConsumption"},             # Flex Consumption
    {"WEBSITE_INSTANCE_ID": "8f2b0c1e9d"},           # App Service plans
    {"WEBSITE_SKU": "Dynamic"},                      # Consumption
    {"WEBSITE_POD_NAME": "func-api-7d9f"},           # Flex, before specialisation
    {"CONTAINER_NAME": "SandboxHost-638f", "LEGION_SERVICE_HOST": "10.0.0.4"},
    {"MANAGED_ENVIRONMENT": "true"},                 # Functions on Container Apps
])
def test_the_published_development_key_is_refused_on_azure(hosting, caplog):
    """Published local settings, or `make serve`'s environment copied into app settings, must not
    open the deployed API to anyone who read the README; the other keys keep working."""
    with caplog.at_level(logging.INFO):
        a = authn(f"{DEV_KEY},ok:{ALICE}", **hosting)
    for headers in both_headers(DEV_KEY):     # the key is public: the 401 may say which it is
        assert "development key printed in the project's README" in refused(a, headers).message
    assert a.check({"api-key": ALICE}).id == "key:ok"
    assert refused(a, {"api-key": PLAIN}).message == "Invalid credentials."
    (error,) = config_errors(caplog)
    assert "entry 1 is the development key printed in this project's README" in error
    assert "not accepted on Azure" in error and DEV_KEY not in caplog.text
    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": f"{DEV_KEY},ok:{ALICE}",
                                              **hosting}))
    health = json.loads(svc.health(ApiRequest("GET", "/health", {}, {}, b"")).body)
    assert health["status"] == "degraded" and "README's development key" in health["problems"][0]
    # Alone, it leaves no usable credentials: every call a 401 and /health a 503 that says so
    # (what a probe and scripts/smoke_deployed.py check after deploying).
    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": DEV_KEY, **hosting}))
    res = svc.health(ApiRequest("GET", "/health", {}, {}, b""))
    assert res.status == 503 and b"no usable credentials" in res.body
    assert b"development key is not accepted on Azure" in res.body
    res = svc.info(ApiRequest("GET", "/info", {"api-key": DEV_KEY}, Q, b""))
    assert res.status == 401 and b"none of its entries is accepted" in res.body
    assert b"development key is not accepted on Azure" in res.body
    # With Entra ID on it leaves no usable key: /health's problem names it, so the post-deploy
    # check (scripts/smoke_deployed.py) does not blame Key Vault (review h_review32 F4).
    from jwt_factory import TokenFactory
    svc = EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": DEV_KEY,
                                              **TokenFactory().env(), **hosting}))
    health = json.loads(svc.health(ApiRequest("GET", "/health", {}, {}, b"")).body)
    assert health["status"] == "degraded" and health["problems"] == [
        "no key of EMBEDDINGS_API_KEYS is usable (Entra ID tokens are); the README's "
        "development key is not accepted on Azure"]
    # Settings made by hand follow the same rule.
    hand = Authenticator(Settings(api_keys=(DEV_KEY, PLAIN), hosted_on_azure=True))
    refused(hand, {"api-key": DEV_KEY})
    assert hand.check({"api-key": PLAIN}).id == fingerprint(PLAIN)


def test_blank_hosting_settings_and_other_platforms_are_not_azure():
    a = authn(DEV_KEY, WEBSITE_SKU=" ", WEBSITE_INSTANCE_ID="", LEGION_SERVICE_HOST="")
    assert a.check({"api-key": DEV_KEY}).id == fingerprint(DEV_KEY)
    a = authn(DEV_KEY, CONTAINER_NAME="api")     # Docker Compose, CI runners, sandboxes
    assert a.check({"api-key": DEV_KEY}).id == fingerprint(DEV_KEY)
    a = authn(DEV_KEY, LEGION_SERVICE_HOST="10.0.0.9")   # a Kubernetes Service named "legion"
    assert a.check({"api-key": DEV_KEY}).id == fingerprint(DEV_KEY)


# --------------------------------------------------------------------------------------------
# No secret in any log record


def test_no_key_in_any_log_record(caplog, monkeypatch):
    distinctive = "zz-DISTINCTIVE-9c41e7-key"
    env = {"EMBEDDINGS_API_KEYS": f"alice:{distinctive},{PLAIN},tiny,{REF_URI}"}
    with caplog.at_level(logging.DEBUG):
        svc = EmbeddingService(Settings.from_env(env))
        for headers in ({"api-key": distinctive}, {"authorization": f"Bearer {distinctive}"},
                        {"api-key": distinctive + "x"}, {"api-key": f"alice:{distinctive}"},
                        {"api-key": "tiny"}, {}):
            svc.info(ApiRequest("GET", "/info", headers, Q, b""))
    assert caplog.records  # the summary, the configuration errors, the request lines, a warning
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert "DISTINCTIVE" not in text and PLAIN not in text, text
        assert "tiny" not in text, text


def test_settings_made_by_hand_get_the_same_key_rules(caplog):
    with caplog.at_level(logging.INFO):
        a = Authenticator(Settings(api_keys=("short", REF_URI, PLAIN)))
    refused(a, {"api-key": "short"})
    refused(a, {"api-key": REF_URI})
    assert a.check({"api-key": PLAIN}).id == fingerprint(PLAIN)
    assert len(config_errors(caplog)) == 2 and "kv-guessable" not in caplog.text


def test_a_key_with_an_inner_space_is_a_key_and_json_keys_are_trimmed():
    """Printable ASCII includes the space (only the ends are trimmed); in the JSON form the
    whitespace around a key is ignored as in the comma form."""
    keys, problems = parse_api_keys("alice:correct horse battery staple")
    assert [(k.name, k.secret) for k in keys] == [("alice", "correct horse battery staple")]
    assert problems == ()
    keys, problems = parse_api_keys('{"bob": "  bob-secret-0123456789 \\t"}')
    assert [(k.name, k.secret) for k in keys] == [("bob", "bob-secret-0123456789")]
    assert problems == ()
