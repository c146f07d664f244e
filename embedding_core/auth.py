"""Who may call: API keys (``api-key`` or ``Authorization: Bearer``) and Entra ID tokens.

A request is authorized when any credential it presents is valid. Keys come from
``EMBEDDINGS_API_KEYS`` (comma-separated, for rotation) and are compared in constant time. A
bearer value that looks like a JWT is validated as an Entra ID access token when Entra ID is
configured; otherwise a bearer value is treated as an API key. Failures say only "missing" or
"invalid", never which key or claim failed, and no secret is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from . import errors
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who a request came from: a name for usage accounting, never a secret."""

    kind: str                       # "key", "entra" or "anonymous"
    id: str                         # e.g. "key:3f2a9c1e", "entra:<client app id>"
    object_id: str | None = None    # Entra: the caller's oid


ANONYMOUS = Caller("anonymous", "anonymous")


def key_fingerprint(key: bytes) -> str:
    """A stable, non-secret name for an unnamed key: the first 8 hex digits of its sha256."""
    return "key:" + hashlib.sha256(key).hexdigest()[:8]


class Authenticator:
    def __init__(self, settings: Settings, entra_validator: Any = None):
        self.retry_after_s = settings.retry_after_s
        self.keys = tuple(k.encode("utf-8") for k in settings.api_keys)
        self.disabled = settings.auth_disabled
        self.entra = entra_validator
        if entra_validator is None and settings.env.get("EMBEDDINGS_ENTRA_TENANT_ID", "").strip():
            from .entra import EntraConfig, EntraValidator  # PyJWT only when Entra is configured

            config = EntraConfig.from_env(settings.env)
            self.entra = EntraValidator(config) if config else None
        if self.disabled:
            log.warning("EMBEDDINGS_AUTH=disabled: the API accepts requests without credentials")

    @property
    def configured(self) -> bool:
        return bool(self.keys) or self.entra is not None

    def _key_ok(self, value: str) -> Caller | None:
        candidate = value.encode("utf-8")
        found = None
        for key in self.keys:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(candidate, key):
                found = key
        return Caller("key", key_fingerprint(found)) if found is not None else None

    def _token_ok(self, token: str) -> Caller | bool | None:
        """The caller if valid, False if refused, None if it could not be checked."""
        from .entra import InvalidToken, KeysUnavailable

        try:
            claims = self.entra.validate(token)
        except KeysUnavailable as exc:
            log.warning("bearer token not checked: %s", exc.reason)
            return None
        except InvalidToken as exc:
            log.info("bearer token refused: %s", getattr(exc, "reason", "invalid"))
            return False
        app = claims.get("azp") or claims.get("appid") or "unknown"
        oid = claims.get("oid")
        return Caller("entra", f"entra:{app}", oid if isinstance(oid, str) else None)

    def check(self, headers: Mapping[str, str]) -> Caller:
        """The caller, or 401 unless the request carries a valid credential (headers:
        lower-case keys)."""
        if self.disabled:
            return ANONYMOUS
        if not self.configured:
            raise errors.unauthorized(
                "The server has no credentials configured: set EMBEDDINGS_API_KEYS or the "
                "EMBEDDINGS_ENTRA_* settings (or EMBEDDINGS_AUTH=disabled for local use).")
        presented: list[tuple[str, str]] = []
        api_key = headers.get("api-key")
        if api_key:
            presented.append(("key", api_key.strip()))
        authz = headers.get("authorization")
        if authz:
            scheme, _, value = authz.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                presented.append(("bearer", value.strip()))
        if not presented:
            raise errors.unauthorized(
                "Missing credentials: send 'api-key: <key>' or 'Authorization: Bearer <key or "
                "token>'.")
        unchecked = False
        for kind, value in presented:
            if kind == "bearer" and self.entra is not None:
                from .entra import looks_like_jwt

                if looks_like_jwt(value):
                    ok = self._token_ok(value)
                    if isinstance(ok, Caller):
                        return ok
                    unchecked |= ok is None
                    continue
            caller = self._key_ok(value) if self.keys else None
            if caller is not None:
                return caller
        if unchecked:
            raise errors.auth_unavailable(self.retry_after_s)
        raise errors.unauthorized("Invalid credentials.", invalid_token=True)
