"""Microsoft Entra ID (Azure AD) access-token validation.

Pure Python on top of PyJWT; never imports ``azure.functions``. The auth layer calls
:meth:`EntraValidator.validate` with the bearer token and turns :class:`InvalidToken` into a
401 (``InvalidToken.to_api_error()`` -> ``WWW-Authenticate: Bearer error="invalid_token"``), and a
:class:`KeysUnavailable` (the keys could not be fetched, so the token was not checked) into a 503.

Rules a token must satisfy (all of them):

* **Shape**: a compact JWS of at most ``MAX_TOKEN_CHARS`` characters whose header says
  ``alg: RS256`` and names a ``kid``. Any other algorithm is refused before a key is even looked
  up: ``none`` (unsigned), ``HS256`` signed with the public key as the HMAC secret (the classic
  key-confusion attack), ``PS256``, ``ES256``... PyJWT is additionally called with
  ``algorithms=["RS256"]`` and an RSA public-key object, so the check is made twice.
* **Signature**: by the RSA key with that ``kid`` in the tenant's JWKS. The JWKS location comes
  from the tenant's OpenID metadata ``{authority}/{tenant}/v2.0/.well-known/openid-configuration``
  (its ``jwks_uri``). Only RSA keys with ``use`` absent or ``sig``, ``alg`` absent or ``RS256``
  and at least 2048 bits are used.
* **Issuer** (``iss``) must be one issuer of the configured tenant. Accepted:

  - v2: ``{authority}/{tenant}/v2.0`` (e.g. ``https://login.microsoftonline.com/<tid>/v2.0``);
  - the ``issuer`` of the metadata document, if it contains the tenant id (in Entra it equals
    the v2 form; this covers clouds whose v2 issuer host differs from the authority host);
  - v1: ``https://sts.windows.net/{tenant}/`` for the public cloud (authority
    ``login.microsoftonline.com`` / ``login.windows.net``), ``https://sts.chinacloudapi.cn/{tenant}/``
    for Azure China (``login.chinacloudapi.cn`` / ``login.partner.microsoftonline.cn``), and
    ``{authority}/{tenant}/`` for any other authority (Azure US Government
    ``login.microsoftonline.us`` issues v1 tokens with that form; it is also what a loopback test
    authority uses). Another tenant's issuer, or ``sts.windows.net`` under a non-public authority,
    is refused.

  If the token carries ``tid`` it must equal the configured tenant too.
* **Audience** (``aud``) must be one of ``EntraConfig.audiences``. v1 tokens usually carry the
  Application ID URI (``api://...``) and v2 tokens the application (client) id, so configure both
  when both token versions are expected.
* **Lifetime**: ``exp`` and ``iat`` are required, ``nbf`` is optional, and each present one must
  be an RFC 7519 NumericDate: a JSON number (integer or finite fraction); a string, boolean,
  ``null``, array, object, ``NaN`` or infinity is refused. Against the injected clock, with
  ``leeway_seconds`` of tolerance for clock skew: ``exp`` must not have passed, ``nbf`` must not
  be in the future, and ``iat`` must not be in the future either (a token issued in the future
  was not issued by a correct clock). ``iat`` is required because Entra ID puts it in every
  access token, v1 and v2 ("Specifies when the authentication for this token occurred", payload
  claims table of https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference).
  That page also tells apps not to depend on optional claims being present; ``iat`` always has a
  value, so a signed token without it is refused (fail closed) rather than given a default.
* **Roles** (optional): when ``required_roles`` is set, the token's ``roles`` claim must contain
  *at least one* of them (any-of; roles are compared case-sensitively, as Entra emits them).
* **Client application**: the token must name the calling application (:func:`client_app_id`):
  ``azp`` for v2 tokens, ``appid`` for v1 tokens (by ``ver``; if ``ver`` is absent, ``azp`` then
  ``appid``). Every Entra ID access token does; an ID token, whose ``aud`` is the client id of
  the app it signs a user into, does not, so one issued for this API's own app registration
  (whose client id is an accepted audience) is not taken for an access token (review h_sec F3).
  When ``allowed_client_ids`` is set, that id must be in the list, compared case-insensitively
  (GUIDs). The same id names the caller (``entra:<id>``) for usage accounting.

Signing keys: fetched lazily on first use and cached. A token naming an unknown ``kid`` triggers
a refresh (metadata then JWKS), at most once per ``jwks_min_refresh_seconds`` so that tokens with
made-up ``kid`` values cannot turn the service into a traffic amplifier; while nothing is cached
(start-up, or every fetch so far failed) retries are spaced by
``min(COLD_RETRY_SECONDS, jwks_min_refresh_seconds)`` instead. A key set older than
``JWKS_MAX_AGE_SECONDS`` is refreshed on the next request so that retired keys stop being trusted;
if that refresh fails the old keys stay in use. Refreshes are serialised by a lock and every fetch
uses ``http_timeout``; a request whose key is cached never waits for another thread's refresh,
and one that must wait gives up after two fetches' time-outs. An attempt's retry interval counts
from its end, so requests that waited for a failed fetch do not each fetch again. A fetch failure
is logged as a warning that names the URL and the error, never the token, and raises
:class:`KeysUnavailable` (503, retryable) when the token's key could not be checked: nothing is
cached, or its ``kid`` is unknown and the last refresh failed. A ``kid`` missing from a key set
that was just fetched is an :class:`InvalidToken` (401).

Transport: the authority and ``jwks_uri`` must be ``https://`` URLs, except that plain
``http://`` is allowed for loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) so that tests
can serve the documents locally. The default fetcher refuses redirects and bodies over 1 MiB.
The urllib time-out applies to each socket operation (connect, each read), not to the whole fetch.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from . import errors
from .errors import clip

__all__ = [
    "EntraConfig",
    "EntraValidator",
    "InvalidToken",
    "client_app_id",
    "looks_like_jwt",
    "default_fetch_json",
    "require_secure_url",
]

logger = logging.getLogger(__name__)

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 32 * 1024
# A token's header is ~100-300 characters; an RS256 signature is the key's size in base64url
# (342 characters for 2,048 bits, 683 for 4,096; 1,366 for 8,192). Longer ones are refused
# before PyJWT reads the token: it checks every character of every segment in Python (~90 ns
# each), so a 32 KB token with a made-up kid cost 3 ms of CPU, ~35 times a short one.
MAX_HEADER_CHARS = 2048
MAX_SIGNATURE_CHARS = 1366
MAX_DOCUMENT_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
MAX_JWKS_KEYS = 100
COLD_RETRY_SECONDS = 5.0
JWKS_MAX_AGE_SECONDS = 24 * 3600.0

ENV_TENANT_ID = "EMBEDDINGS_ENTRA_TENANT_ID"
ENV_AUDIENCES = "EMBEDDINGS_ENTRA_AUDIENCES"
ENV_REQUIRED_ROLES = "EMBEDDINGS_ENTRA_REQUIRED_ROLES"
ENV_ALLOWED_CLIENT_IDS = "EMBEDDINGS_ENTRA_ALLOWED_CLIENT_IDS"
ENV_AUTHORITY = "EMBEDDINGS_ENTRA_AUTHORITY"

# v1 issuer host per authority host (sovereign clouds). Authorities not listed use
# "{authority}/{tenant}/" as their v1 issuer.
_V1_ISSUER_HOSTS = {
    "login.microsoftonline.com": "https://sts.windows.net",
    "login.windows.net": "https://sts.windows.net",
    "login.chinacloudapi.cn": "https://sts.chinacloudapi.cn",
    "login.partner.microsoftonline.cn": "https://sts.chinacloudapi.cn",
}

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# Configuration


def _split_csv(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _as_tuple(value: Any, *, lower: bool = False) -> tuple[str, ...]:
    """Normalise a str-or-iterable of strings: strip, drop empties, dedupe keeping order."""
    items = (value,) if isinstance(value, str) else tuple(value or ())
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if lower:
            text = text.lower()
        if text and text not in out:
            out.append(text)
    return tuple(out)


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_url(url: str) -> str:
    """Return ``url`` if it is ``https://host...`` or ``http://<loopback>...``; else ValueError."""
    if not isinstance(url, str):
        raise ValueError("URL must be a string")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {clip(url)}") from exc
    scheme = parts.scheme.lower()
    if not host:
        raise ValueError(f"URL has no host: {clip(url)}")
    if scheme == "https":
        return url
    if scheme == "http" and _is_loopback_host(host):
        return url
    raise ValueError(
        f"URL must use https (plain http is allowed only for loopback hosts): {clip(url)}")


@dataclass(frozen=True)
class EntraConfig:
    """What the validator accepts. Values are normalised and checked on construction.

    ``tenant_id`` must be the tenant's GUID (the ``tid`` claim and the issuers carry the GUID, so
    a domain name like ``contoso.onmicrosoft.com`` could never match); it is lower-cased.
    ``audiences`` must not be empty. ``allowed_client_ids`` are lower-cased; ``required_roles``
    keep their case. ``authority`` loses any trailing slash and must be https (or http on a
    loopback host). Invalid values raise ``ValueError``.
    """

    tenant_id: str
    audiences: tuple[str, ...]
    required_roles: tuple[str, ...] = ()
    allowed_client_ids: tuple[str, ...] = ()
    authority: str = PUBLIC_AUTHORITY
    http_timeout: float = 5.0
    leeway_seconds: int = 60
    jwks_min_refresh_seconds: float = 60.0  # don't refetch more often than this on unknown kid

    def __post_init__(self) -> None:
        tenant = str(self.tenant_id or "").strip().lower()
        if not _GUID.fullmatch(tenant):
            raise ValueError(
                f"Entra tenant id must be the tenant's GUID (directory id), got {clip(self.tenant_id)!r}")
        audiences = _as_tuple(self.audiences)
        if not audiences:
            raise ValueError("Entra configuration needs at least one accepted audience")
        authority = str(self.authority or "").strip().rstrip("/")
        require_secure_url(authority)
        parts = urlsplit(authority)
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"Entra authority must be a plain base URL, got {clip(authority)!r}")
        if parts.path:
            # MSAL's authorities end with the tenant (".../<tenant-id>"); here the tenant is a
            # setting of its own, and a path would put it twice in every metadata URL.
            raise ValueError(
                f"Entra authority must be the identity provider's base URL without a path (the "
                f"tenant is {ENV_TENANT_ID}), e.g. {PUBLIC_AUTHORITY}; got {clip(authority)!r}")
        if not (isinstance(self.http_timeout, (int, float)) and self.http_timeout > 0):
            raise ValueError("http_timeout must be a positive number of seconds")
        if not (isinstance(self.leeway_seconds, (int, float)) and self.leeway_seconds >= 0):
            raise ValueError("leeway_seconds must be >= 0")
        if not (isinstance(self.jwks_min_refresh_seconds, (int, float))
                and self.jwks_min_refresh_seconds >= 0):
            raise ValueError("jwks_min_refresh_seconds must be >= 0")
        object.__setattr__(self, "tenant_id", tenant)
        object.__setattr__(self, "audiences", audiences)
        object.__setattr__(self, "required_roles", _as_tuple(self.required_roles))
        object.__setattr__(self, "allowed_client_ids", _as_tuple(self.allowed_client_ids, lower=True))
        object.__setattr__(self, "authority", authority)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "EntraConfig | None":
        """Build from ``EMBEDDINGS_ENTRA_*`` variables; ``None`` when Entra auth is not configured.

        ``EMBEDDINGS_ENTRA_TENANT_ID`` unset or blank -> ``None``. Tenant set but
        ``EMBEDDINGS_ENTRA_AUDIENCES`` empty, or any value invalid -> ``ValueError``.
        Lists are comma-separated; blanks are ignored.
        """
        tenant = (env.get(ENV_TENANT_ID) or "").strip()
        if not tenant:
            return None
        audiences = _split_csv(env.get(ENV_AUDIENCES))
        if not audiences:
            raise ValueError(
                f"{ENV_TENANT_ID} is set but {ENV_AUDIENCES} is empty: list the accepted token "
                "audiences (the API's Application ID URI and/or client id), comma-separated.")
        kwargs: dict[str, Any] = {}
        authority = (env.get(ENV_AUTHORITY) or "").strip()
        if authority:
            kwargs["authority"] = authority
        try:
            return cls(
                tenant_id=tenant,
                audiences=audiences,
                required_roles=_split_csv(env.get(ENV_REQUIRED_ROLES)),
                allowed_client_ids=_split_csv(env.get(ENV_ALLOWED_CLIENT_IDS)),
                **kwargs,
            )
        except ValueError as exc:
            raise ValueError(f"Invalid Entra configuration ({ENV_TENANT_ID}/{ENV_AUTHORITY}...): {exc}") from exc

    # Derived values ------------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def v2_issuer(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0"

    @property
    def v1_issuer(self) -> str:
        parts = urlsplit(self.authority)
        host = (parts.hostname or "").lower()
        if host in _V1_ISSUER_HOSTS:
            return f"{_V1_ISSUER_HOSTS[host]}/{self.tenant_id}/"
        return f"{self.authority}/{self.tenant_id}/"


# --------------------------------------------------------------------------------------------
# Errors and cheap checks


class InvalidToken(Exception):
    """The token was refused. ``str(exc)`` is the generic client-facing message; ``reason`` is the
    specific cause for logs (never contains the token or key material)."""

    MESSAGE = "The access token is invalid or has expired."

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason

    def to_api_error(self) -> errors.ApiError:
        """401 ``Unauthorized`` with ``WWW-Authenticate: Bearer error="invalid_token"``."""
        return errors.unauthorized(self.MESSAGE, invalid_token=True)

    def __repr__(self) -> str:
        return f"InvalidToken(reason={self.reason!r})"


class KeysUnavailable(InvalidToken):
    """The tenant's signing keys could not be fetched: the token was not checked at all. The
    service answers 503 (retryable), not 401, so clients are not told a valid token is wrong."""


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def looks_like_jwt(value: str) -> bool:
    """Cheap structural test: ``header.payload.signature`` in base64url, header JSON with ``alg``.

    Lets the auth layer route a bearer credential to Entra validation or to API-key lookup. It
    verifies nothing; an unsigned token (empty signature segment) still "looks like" a JWT and is
    then refused by :meth:`EntraValidator.validate`. Never raises.
    """
    try:
        if not isinstance(value, str) or len(value) > MAX_TOKEN_CHARS or value.count(".") != 2:
            return False
        header, payload, signature = value.split(".")
        if not _B64URL.fullmatch(header) or not _B64URL.fullmatch(payload):
            return False
        if signature and not _B64URL.fullmatch(signature):
            return False
        decoded = json.loads(_b64url_decode(header))
        return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)
    except Exception:  # noqa: BLE001 - contract: never raises
        return False


# --------------------------------------------------------------------------------------------
# Fetching


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401, ANN001
        return None  # urllib then raises HTTPError for the 3xx


def default_fetch_json(url: str, timeout: float) -> dict:
    """GET ``url`` and parse a JSON object. https only (http for loopback hosts), no redirects,
    at most ``MAX_DOCUMENT_BYTES``; environment proxies are ignored for loopback hosts."""
    require_secure_url(url)
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if _is_loopback_host(urlsplit(url).hostname):
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "embedding-core-entra/1"})
    with opener.open(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        if status != 200:
            raise OSError(f"HTTP {status}")
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError("document too large")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("document is not a JSON object")
    return document


# --------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class _KeySet:
    keys: Mapping[str, RSAPublicKey]
    issuers: frozenset[str]
    fetched_at: float


def _parse_jwks(document: Any) -> dict[str, RSAPublicKey]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    keys: dict[str, RSAPublicKey] = {}
    for jwk in document["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) != ALGORITHM:
            continue
        public = {k: jwk[k] for k in ("kty", "n", "e") if k in jwk}  # never load private parts
        try:
            key = RSAAlgorithm.from_jwk(public)
        except Exception:  # noqa: BLE001 - one bad key must not hide the others
            continue
        if isinstance(key, RSAPrivateKey):  # defensive; cannot happen without "d"
            key = key.public_key()
        if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            continue
        keys[kid] = key
    return keys


def _is_numeric_date(value: Any) -> bool:
    """RFC 7519 NumericDate: a JSON number. Python's json gives int (any size), float (possibly
    NaN or infinite: json accepts those literals) or bool for true/false; only finite numbers
    count. Huge integers are fine (compared exactly; ``math.isfinite`` would overflow on them)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def client_app_id(claims: Mapping[str, Any]) -> str | None:
    """The calling application's id, lower-cased: ``azp`` of v2 tokens, ``appid`` of v1 tokens
    (by ``ver``; without ``ver``, ``azp`` then ``appid``); None if absent or not a short string."""
    ver = claims.get("ver")
    if ver == "2.0":
        client = claims.get("azp")
    elif ver == "1.0":
        client = claims.get("appid")
    else:
        client = claims.get("azp") or claims.get("appid")
    if not isinstance(client, str) or not 0 < len(client) <= 128 or not client.isprintable():
        return None
    return client.lower()


class EntraValidator:
    """Validates Entra ID access tokens for one tenant (see the module docstring for the rules).

    Thread-safe: one instance is meant to be shared by all requests of the process.
    ``fetch_json(url, timeout)`` returns parsed JSON (default: :func:`default_fetch_json`);
    ``clock()`` returns epoch seconds and drives both token-lifetime checks and key caching.
    """

    def __init__(self, config: EntraConfig, fetch_json: Callable[[str, float], dict] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._fetch = fetch_json or default_fetch_json
        self._clock = clock
        self._lock = threading.Lock()
        self._keyset: _KeySet | None = None
        self._last_attempt: float | None = None  # when the last fetch attempt ended
        self._last_failed = False
        self._static_issuers = frozenset({config.v2_issuer, config.v1_issuer})
        # The longest a request waits for another thread's fetch of the keys: a refresh is two
        # fetches, each bounded by http_timeout (per socket operation).
        self._wait_seconds = 2 * config.http_timeout + 1.0

    @property
    def config(self) -> EntraConfig:
        return self._config

    @property
    def keys_unavailable(self) -> bool:
        """No signing key was ever loaded and the last attempt failed: every token is answered
        503 until a fetch succeeds (never fetches itself; requests with a token do)."""
        return self._keyset is None and self._last_failed

    # Public ------------------------------------------------------------------------------

    def validate(self, token: str) -> dict:
        """Return the token's claims, or raise :class:`InvalidToken`."""
        cfg = self._config
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        # The header is read here, once, and the kid looked up before PyJWT decodes the whole
        # token (jwt.decode checks alg again, against algorithms=[RS256]).
        segments = token.split(".")
        if len(segments) != 3 or len(segments[0]) > MAX_HEADER_CHARS \
                or len(segments[2]) > MAX_SIGNATURE_CHARS:
            raise InvalidToken("malformed token")
        try:
            if not _B64URL.fullmatch(segments[0]):
                raise ValueError("not base64url")
            header = json.loads(_b64url_decode(segments[0]))
            if not isinstance(header, dict):
                raise ValueError("not an object")
        except Exception:  # noqa: BLE001 - anything unparsable is just an invalid token
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise InvalidToken(f"algorithm not allowed: {clip(alg)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token header has no kid")

        key, issuers = self._key_for(kid)
        # The signature first, with the key alone (~90 µs whatever the token's size): a forged
        # token with a real kid and a 30 KB payload cost 2.2 ms in PyJWT's checks before.
        signing_input, _, signature = token.rpartition(".")
        try:
            key.verify(_b64url_decode(signature), signing_input.encode("ascii"),
                       padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 - InvalidSignature, or a signature that is not base64
            raise InvalidToken("bad signature") from None

        try:
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=list(cfg.audiences),
                options={
                    "verify_signature": True,
                    "verify_aud": True,
                    # Lifetime and issuer are checked below (injected clock, several issuers).
                    "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                    "verify_iss": False,
                    "require": ["exp", "iat", "iss", "aud"],
                })
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim}") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except Exception as exc:  # noqa: BLE001
            raise InvalidToken(f"malformed token ({type(exc).__name__})") from None

        self._check_lifetime(claims)
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss not in issuers:
            raise InvalidToken(f"wrong issuer {clip(iss)!r}")
        if "tid" in claims and (not isinstance(claims["tid"], str)
                                or claims["tid"].lower() != cfg.tenant_id):
            raise InvalidToken(f"wrong tenant {clip(claims['tid'])!r}")
        self._check_roles(claims)
        self._check_client(claims)
        return claims

    # Claims ------------------------------------------------------------------------------

    def _check_lifetime(self, claims: dict) -> None:
        now = self._clock()
        leeway = self._config.leeway_seconds
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _is_numeric_date(exp):
            raise InvalidToken("exp is not a number (NumericDate)")
        if not _is_numeric_date(iat):
            raise InvalidToken("iat is not a number (NumericDate)")
        if "nbf" in claims and not _is_numeric_date(claims["nbf"]):
            raise InvalidToken("nbf is not a number (NumericDate)")
        if now - leeway >= exp:
            raise InvalidToken("expired")
        if "nbf" in claims and claims["nbf"] > now + leeway:
            raise InvalidToken("not yet valid")
        if iat > now + leeway:
            raise InvalidToken("issued in the future (iat)")

    def _check_roles(self, claims: dict) -> None:
        required = self._config.required_roles
        if not required:
            return
        roles = claims.get("roles")
        if not isinstance(roles, list):
            raise InvalidToken("missing role (token has no roles claim)")
        if not any(isinstance(r, str) and r in required for r in roles):
            raise InvalidToken("missing role")

    def _check_client(self, claims: dict) -> None:
        client = client_app_id(claims)
        if client is None:        # an ID token, not an access token (module docstring)
            raise InvalidToken("no client application (azp or appid): not an access token")
        allowed = self._config.allowed_client_ids
        if allowed and client not in allowed:
            raise InvalidToken(f"client application not allowed {clip(client)!r}")

    # Keys --------------------------------------------------------------------------------

    def _key_for(self, kid: str) -> tuple[RSAPublicKey, frozenset[str]]:
        keyset = self._keyset  # one atomic read; refreshes replace the whole object
        if keyset is not None and kid in keyset.keys:
            if self._clock() - keyset.fetched_at < JWKS_MAX_AGE_SECONDS:
                return keyset.keys[kid], keyset.issuers
            # Known but old: refresh, unless another thread already is (never wait for it).
            if not self._lock.acquire(blocking=False):
                return keyset.keys[kid], keyset.issuers
        elif not self._lock.acquire(timeout=self._wait_seconds):
            # Another thread's fetch hangs (e.g. in name resolution, which no timeout covers).
            raise KeysUnavailable("signing keys unavailable (a fetch is still running)")
        try:
            keyset = self._keyset  # another thread may have refreshed while we waited
            now = self._clock()
            fresh = keyset is not None and now - keyset.fetched_at < JWKS_MAX_AGE_SECONDS
            if not (fresh and kid in keyset.keys) and self._may_refresh(now):
                self._refresh(now)
                keyset = self._keyset
            last_failed = self._last_failed
        finally:
            self._lock.release()
        if keyset is not None and kid in keyset.keys:
            return keyset.keys[kid], keyset.issuers
        if keyset is None:
            raise KeysUnavailable("signing keys unavailable (metadata/JWKS fetch failed)")
        if last_failed:  # the key may be new: it could not be checked, which is not a 401
            raise KeysUnavailable(f"unknown signing key {clip(kid)!r} (key refresh failed)")
        raise InvalidToken(f"unknown signing key {clip(kid)!r}")

    def _may_refresh(self, now: float) -> bool:
        last = self._last_attempt
        if last is None or now < last:  # never tried, or the clock went backwards
            return True
        interval = self._config.jwks_min_refresh_seconds
        if self._keyset is None:
            interval = min(interval, COLD_RETRY_SECONDS)
        return now - last >= interval

    def _refresh(self, now: float) -> bool:
        """Fetch metadata + JWKS and install them. Called with the lock held. Never raises.

        The attempt is dated when it ends, so that requests which waited for it on the lock do
        not each fetch again once it failed (a fetch that times out lasts ``http_timeout``,
        as long as the cold retry interval)."""
        try:
            ok = self._fetch_keys(now)
        finally:
            self._last_attempt = self._clock()
        self._last_failed = not ok
        return ok

    def _fetch_keys(self, now: float) -> bool:
        cfg = self._config
        url = cfg.metadata_url
        try:
            metadata = self._fetch(url, cfg.http_timeout)
            if not isinstance(metadata, dict):
                raise ValueError("metadata is not a JSON object")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise ValueError("metadata has no jwks_uri")
            url = require_secure_url(jwks_uri)
            keys = _parse_jwks(self._fetch(url, cfg.http_timeout))
            if not keys:
                raise ValueError("JWKS has no usable RS256 signing keys")
        except Exception as exc:  # noqa: BLE001 - a failed fetch: 503 (KeysUnavailable), not 500
            logger.warning("Entra ID: could not load signing keys from %s: %s: %s",
                           clip(url, 200), type(exc).__name__, clip(str(exc), 200))
            return False
        issuers = set(self._static_issuers)
        meta_issuer = metadata.get("issuer")
        if isinstance(meta_issuer, str) and cfg.tenant_id in meta_issuer.lower():
            issuers.add(meta_issuer)
        self._keyset = _KeySet(keys=dict(keys), issuers=frozenset(issuers), fetched_at=now)
        logger.info("Entra ID: loaded %d signing key(s) for tenant %s", len(keys), cfg.tenant_id)
        return True

