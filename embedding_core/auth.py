"""Who may call: API keys (``api-key`` or ``Authorization: Bearer``) and Entra ID tokens.

A request is authorized when any credential it presents is valid. Keys come from
``EMBEDDINGS_API_KEYS`` (parsed by :func:`settings.parse_api_keys`: plain keys, ``name:key``
entries or a JSON object; unresolved Key Vault references and keys under 16 characters are not
keys) and are compared in constant time. A bearer value that looks like a JWT is validated as an
Entra ID access token when Entra ID is configured; otherwise a bearer value is treated as an API
key. Every accepted request has a :class:`Caller` whose ``id`` names it without any secret.
Failures say only "missing" or "invalid", never which key or claim failed, and no secret is
logged.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from . import errors
from .settings import (DEVELOPMENT_KEY_PROBLEM, DEVELOPMENT_KEYS, ApiKey, Settings,
                       key_fingerprint, key_problem)

__all__ = ["ANONYMOUS", "Authenticator", "Caller", "key_fingerprint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who a request came from: a name for usage accounting, never a secret.

    ``id`` is ``key:<name>`` for a named key, ``key:<8 hex of the key's sha256>`` for a plain
    key, ``entra:<azp or appid>`` (the calling application, lower-cased) for an Entra ID token,
    and ``anonymous`` when authentication is disabled."""

    kind: str                       # "key", "entra" or "anonymous"
    id: str                         # e.g. "key:alice", "key:3f2a9c1e", "entra:<client app id>"
    object_id: str | None = None    # Entra: the token's oid (user or service principal)


ANONYMOUS = Caller("anonymous", "anonymous")
# A header sent more than once reaches the app as one value, its values joined with commas (the
# Functions host's and the local host's way): e.g. a gateway adding its api-key to a client's.
# Any of them may be the valid one; a few are tried, not an unbounded list of guesses.
MAX_REPEATED_CREDENTIALS = 4


def _repeated(value: str) -> list[str]:
    """A credential header's value: itself, then, if it holds commas, its comma-separated parts
    (at most MAX_REPEATED_CREDENTIALS; the whole value first, as a key may hold a comma)."""
    whole = value.strip()
    if "," not in whole:
        return [whole] if whole else []
    parts = [p.strip() for p in whole.split(",") if p.strip()]
    return [whole] + parts[:MAX_REPEATED_CREDENTIALS]


MAX_LISTED_CALLERS = 20


_QUOTED = re.compile(r"('(?:[^'\\]|\\.)*')")


def _as_template(problem: str) -> tuple[str, ...]:
    """A key problem as a log template and its arguments: the text quoted in it (a key's name,
    which for a plain key with ':' in it may be the key's first part) becomes an argument, so
    the exported copy (the template, arguments dropped) still says what is wrong without it.
    The messages never hold a key or a vault's name."""
    parts = _QUOTED.split(problem)
    template = "".join(p.replace("%", "%%") if i % 2 == 0 else "%s" for i, p in enumerate(parts))
    return (template, *parts[1::2])


# Refused or unchecked bearer tokens are logged per request at DEBUG only, and at INFO or
# WARNING at most this often per kind (with how many were left out): the Functions worker
# forwards INFO records to the host, billed per row, and anyone can send tokens.
REFUSAL_LOG_EVERY_S = 60.0
# A refusal's reason up to the value it quotes ("unknown signing key 'x'", "wrong issuer 'x'",
# "algorithm not allowed: x", "malformed token (x)"; repr() quotes a value holding "'" with '"'):
# what is throttled together. The reasons are the code's own words, a few dozen; past
# REFUSAL_KINDS_MAX kinds (a reason that let a token's text through: a bug) they share one.
_REASON_WORDS = re.compile(r"[^'\"(:]*")
REFUSAL_KINDS_MAX = 64


def _microsoft_resource(audience: str) -> bool:
    """An audience that is a Microsoft service's resource URI (``https://ml.azure.com``,
    ``https://cognitiveservices.azure.com``, …), whose tokens any identity of the tenant can get
    and other services accept, not an app registration of the operator's (``api://…``, a GUID)."""
    host = audience.lower().split("://", 1)[-1].split("/")[0].rsplit(":", 1)[0]
    return host.endswith(_MICROSOFT_RESOURCE_DOMAINS)


# The public cloud's and the sovereign clouds' (US Government, China) service domains.
_MICROSOFT_RESOURCE_DOMAINS = (
    ".azure.com", ".azure.net", ".windows.net", ".microsoft.com", ".azure.us", ".azure.cn",
    ".usgovcloudapi.net", ".chinacloudapi.cn", ".sharepoint.com", ".dynamics.com",
    ".loganalytics.io", ".applicationinsights.io")


def _looks_like_jwt(value: str) -> bool:
    """A JSON Web Token's shape (a JSON header in base64url, two dots), for a log line only: the
    Entra ID path checks tokens with entra.looks_like_jwt, which loads PyJWT."""
    return value.startswith("eyJ") and value.count(".") == 2


class Authenticator:
    def __init__(self, settings: Settings, entra_validator: Any = None):
        self.retry_after_s = settings.retry_after_s
        problems = list(settings.api_key_problems)
        keys: list[ApiKey] = []
        for i, k in enumerate(settings.api_keys):  # Settings made by hand skip parse_api_keys
            k = k if isinstance(k, ApiKey) else ApiKey(None, k)
            problem = key_problem(k.secret, f"api_keys[{i}]", hosted=settings.hosted_on_azure)
            if problem:
                problems.append(problem)
            else:
                keys.append(k)
        # (key, caller, "name:key") per key; the last is only there to explain a 401 (below).
        self._keys = tuple(
            (k.secret.encode("utf-8"), Caller("key", k.caller_id),
             f"{k.name}:{k.secret}".encode("utf-8") if k.name else None) for k in keys)
        self._warned: set[str] = set()
        self._refusals: dict[str, tuple[float, int]] = {}   # kind: (last logged, left out since)
        self._refusals_lock = threading.Lock()
        self.disabled = settings.auth_disabled
        self.entra = entra_validator
        if entra_validator is None and settings.env.get("EMBEDDINGS_ENTRA_TENANT_ID", "").strip():
            from .entra import EntraConfig, EntraValidator  # PyJWT only when Entra is configured

            config = EntraConfig.from_env(settings.env)
            self.entra = EntraValidator(config) if config else None
            shared = [a for a in config.audiences if _microsoft_resource(a)] if config else []
            if shared and not config.allowed_client_ids:
                # Roles in such tokens are the resource's, not the operator's (docs/deploy.md,
                # Option B): only the client ids say who calls.
                log.warning("Entra ID accepts tokens for a Microsoft resource (%s) without "
                            "EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS: any user or application of the "
                            "tenant that can get a token for it can call the API, whatever "
                            "EMBEDDINGS_ENTRA_REQUIRED_ROLES says (docs/deploy.md, Option B)",
                            ", ".join(shared))
            elif config and not config.required_roles and not config.allowed_client_ids:
                # An Entra app is open to its whole tenant by default (Microsoft Learn, "Restrict
                # a Microsoft Entra app to a set of users").
                log.warning("Entra ID is on without EMBEDDINGS_ENTRA_REQUIRED_ROLES or "
                            "EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS: any user or application of the "
                            "tenant that can get a token for the audience can call the API "
                            "(docs/deploy.md, 'Call the API with Microsoft Entra ID')")
        for problem in problems:  # once per process: the service is built once
            log.error(*_as_template(problem))
        self._keys_refused = bool(problems) and not keys
        # The README's key, refused on Azure (settings.key_problem): public, so said to callers.
        self.development_key_refused = any(DEVELOPMENT_KEY_PROBLEM in p for p in problems)
        if not self.disabled and not keys and self.entra is None and not problems:
            log.error("configuration error: no credentials are configured (EMBEDDINGS_API_KEYS "
                      "is empty or not set, and Entra ID is off): every request is refused with "
                      "401; set EMBEDDINGS_API_KEYS or the EMBEDDINGS_ENTRA_* settings (or "
                      "EMBEDDINGS_AUTH=disabled for local use)")
        if keys:
            per_caller: dict[str, int] = {}
            for k in keys:
                per_caller[k.caller_id] = per_caller.get(k.caller_id, 0) + 1
            ids = [f"{c} ({n} keys)" if n > 1 else c for c, n in per_caller.items()]
            shown = ", ".join(ids[:MAX_LISTED_CALLERS]) + (", …" if len(ids) > MAX_LISTED_CALLERS
                                                           else "")
            log.info("EMBEDDINGS_API_KEYS: %d key(s) accepted, callers %s", len(keys), shown)
        if self.disabled:
            log.warning("EMBEDDINGS_AUTH=disabled: the API accepts requests without credentials")

    @property
    def keys_unusable(self) -> bool:
        """EMBEDDINGS_API_KEYS is set and none of its entries is accepted as a key."""
        return self._keys_refused

    @property
    def configured(self) -> bool:
        return bool(self._keys) or self.entra is not None

    def _key_ok(self, value: str) -> Caller | None:
        candidate = value.encode("utf-8")
        found = whole = None
        for key, caller, entry in self._keys:  # no early exit: time does not depend on the match
            if hmac.compare_digest(candidate, key):
                found = caller
            if entry is not None and hmac.compare_digest(candidate, entry):
                whole = caller
        if found is None and whole is not None and whole.id not in self._warned:
            # Only the key's holder can send this: likely a plain key with ':' from before
            # named keys, now read as name:key. Refused, and said once per name.
            self._warned.add(whole.id)
            log.warning(
                "a client sent the whole EMBEDDINGS_API_KEYS entry of %s ('name:key') as its "
                "key and was refused: an entry 'name:key' names the caller, and only the part "
                "after the first ':' is the key. Give clients that part, or, if the whole entry "
                "is one key, use the JSON form {\"name\": \"key\"}", whole.id)
        return found

    def _token_ok(self, token: str) -> Caller | bool | None:
        """The caller if valid, False if refused, None if it could not be checked."""
        from .entra import InvalidToken, KeysUnavailable

        try:
            claims = self.entra.validate(token)
        except KeysUnavailable as exc:
            self._log_refusal(logging.WARNING, "bearer token not checked", exc.reason)
            return None
        except InvalidToken as exc:
            self._log_refusal(logging.INFO, "bearer token refused",
                              getattr(exc, "reason", "invalid"))
            return False
        from .entra import client_app_id

        oid = claims.get("oid")
        return Caller("entra", f"entra:{client_app_id(claims) or 'unknown'}",
                      oid if isinstance(oid, str) and 0 < len(oid) <= 64 else None)

    def _log_refusal(self, level: int, kind: str, reason: str) -> None:
        """``kind: reason`` at ``level`` once per ``REFUSAL_LOG_EVERY_S`` for each kind of
        reason (its words, without the value a token carried: ``wrong audience``, ``unknown
        signing key``; a few dozen at most), else at DEBUG: a flood of one kind (forged tokens:
        ``bad signature``) must not hide another (a client configured for the wrong audience;
        review h_diff9 F3)."""
        key = f"{kind}: {_REASON_WORDS.match(reason).group(0)}"
        now = time.monotonic()
        with self._refusals_lock:
            if key not in self._refusals and len(self._refusals) >= REFUSAL_KINDS_MAX:
                key = f"{kind}: (other)"
            last, left_out = self._refusals.get(key, (-math.inf, 0))
            if now - last < REFUSAL_LOG_EVERY_S:
                self._refusals[key] = (last, left_out + 1)
                level = logging.DEBUG
            else:
                self._refusals[key] = (now, 0)
        if level == logging.DEBUG:
            log.debug("%s: %s", kind, reason)
        else:
            log.log(level, "%s: %s (logged at most once a minute; %d more since the last)",
                    kind, reason, left_out)

    def check(self, headers: Mapping[str, str]) -> Caller:
        """The caller, or 401 unless the request carries a valid credential (headers:
        lower-case keys)."""
        if self.disabled:
            return ANONYMOUS
        if not self.configured:
            if self._keys_refused:
                raise errors.unauthorized(
                    "The server has no usable credentials: EMBEDDINGS_API_KEYS is set, but none "
                    "of its entries is accepted as a key" + (
                        " (the README's development key is not accepted on Azure)"
                        if self.development_key_refused else "") + "; the server log says why.")
            raise errors.unauthorized(
                "The server has no credentials configured: set EMBEDDINGS_API_KEYS or the "
                "EMBEDDINGS_ENTRA_* settings (or EMBEDDINGS_AUTH=disabled for local use).")
        presented: list[tuple[str, str]] = []
        api_key = headers.get("api-key")
        if api_key:
            presented += [("key", v) for v in _repeated(api_key)]
        authz = headers.get("authorization")
        if authz:
            for credential in _repeated(authz):
                scheme, _, value = credential.partition(" ")
                if scheme.lower() == "bearer" and value.strip():
                    presented.append(("bearer", value.strip()))
        if not presented:
            if authz and authz.strip():        # a credential, in another scheme or none
                if authz.strip().partition(" ")[0].lower() == "bearer":
                    raise errors.unauthorized(
                        "The Authorization header has no credential after 'Bearer': send "
                        "'Authorization: Bearer <key or token>' (or the key as 'api-key: <key>').")
                raise errors.unauthorized(
                    "The Authorization header must use the Bearer scheme: send "
                    "'Authorization: Bearer <key or token>' (or the key as 'api-key: <key>').")
            raise errors.unauthorized(
                "Missing credentials: send 'api-key: <key>' or 'Authorization: Bearer <key or "
                "token>'.")
        unchecked = keys_tried = False
        for kind, value in presented:
            if kind == "bearer" and self.entra is not None:
                from .entra import looks_like_jwt

                if looks_like_jwt(value):
                    ok = self._token_ok(value)
                    if isinstance(ok, Caller):
                        return ok
                    unchecked |= ok is None
                    continue
            keys_tried = True
            caller = self._key_ok(value) if self._keys else None
            if caller is not None:
                return caller
        if unchecked:
            raise errors.auth_unavailable(self.retry_after_s)
        if self.development_key_refused and any(v in DEVELOPMENT_KEYS for _, v in presented):
            self._log_refusal(logging.INFO, "api key refused",
                              "the README's development key, refused on Azure")
            raise errors.unauthorized(
                "This is the development key printed in the project's README, which is not "
                "accepted on Azure: use the deployment's own key (docs/deploy.md).",
                invalid_token=True)
        if keys_tried:
            # As refused tokens are: at most a line a minute, naming nothing a client sent, so
            # that "a caller gets 401 since yesterday" leaves a trace (a retired key, or a key
            # in the wrong header, against a token refused for its audience).
            if self.entra is None and any(kind == "bearer" and _looks_like_jwt(v)
                                          for kind, v in presented):
                # An operator who turned Entra ID on in azd without `azd provision` sees why.
                self._log_refusal(logging.INFO, "bearer token refused",
                                  "Entra ID is not configured (EMBEDDINGS_ENTRA_TENANT_ID is "
                                  "unset), so tokens are taken as keys, and no configured key "
                                  "matches")
            else:
                self._log_refusal(logging.INFO, "api key refused", "no configured key matches")
        raise errors.unauthorized("Invalid credentials.", invalid_token=True)
