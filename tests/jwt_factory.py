"""Test helper: a fake Entra ID tenant that mints locally signed access tokens.

No network. Typical use::

    from jwt_factory import TokenFactory

    idp = TokenFactory()                       # RSA key + kid, tenant, audience, client id
    validator = idp.validator()                # EntraValidator wired to idp.fetch_json (stub)
    claims = validator.validate(idp.mint())    # valid v2 token
    idp.mint(roles=None)                       # claim removed (None drops a claim)
    idp.mint(aud="api://other", exp=0)         # claims overridden
    idp.mint(version=1)                        # v1 token (sts.windows.net issuer, appid)
    idp.mint(key=idp.new_key())                # signed by a key the JWKS does not publish
    idp.rotate()                               # publish a new key and sign with it from now on

For tests that run a real server process, serve the documents over loopback HTTP and point
``EMBEDDINGS_ENTRA_AUTHORITY`` at it (tokens minted inside the block carry the matching issuer)::

    with idp.serve_http() as authority:        # "http://127.0.0.1:PORT"
        env = {**os.environ, **idp.env()}      # EMBEDDINGS_ENTRA_* for the server process
        ... start server with env, send f"Bearer {idp.mint()}" ...

Inside that block, ``idp.managed_identity_env()`` are the variables that make an unchanged
``DefaultAzureCredential`` (Python or Node.js) get this tenant's tokens, as a managed identity
does on Azure: a user's code runs as written.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from embedding_core.entra import PUBLIC_AUTHORITY, EntraConfig, EntraValidator

DEFAULT_TENANT_ID = "8f4b5a1e-2c3d-4e5f-9a8b-7c6d5e4f3a2b"
DEFAULT_AUDIENCE = "api://embeddings-test"
DEFAULT_CLIENT_ID = "0d1e2f3a-4b5c-4d6e-8f70-81920a1b2c3d"
DEFAULT_ROLES = ("Embeddings.Invoke",)
# The app registration's client id where the tests follow docs/deploy.md (its APP_ID).
REGISTERED_APP_ID = "6c1f0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
MANAGED_IDENTITY_PATH = "/msi/token"        # App Service's IDENTITY_ENDPOINT has this path


def registered_app_audiences(app_id: str = REGISTERED_APP_ID) -> str:
    """EMBEDDINGS_ENTRA_AUDIENCES as deploy.md sets it for its app registration."""
    return f"api://{app_id},{app_id}"


def b64url(data: bytes | str | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    """An RSA key pair with its ``kid``."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> "SigningKey":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return cls(kid or f"kid-{uuid.uuid4().hex[:12]}", key)

    @property
    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_jwk(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}


@dataclass
class TokenFactory:
    """A fake tenant: signing keys, its OpenID metadata + JWKS, and a token minter.

    Attributes a test may change: ``authority``, ``published`` (keys in the JWKS, in order),
    ``key`` (default signing key), ``fail_with`` (exception raised by :meth:`fetch_json`, or an
    HTTP status int for :meth:`serve_http`), ``delay`` (seconds to wait before answering),
    ``metadata_overrides`` / ``extra_jwks`` (to serve odd documents). Every fetch is recorded in
    ``calls`` as ``(url, timeout)`` (``timeout`` is None for HTTP requests). The managed identity
    endpoint (:meth:`managed_identity_env`) records in ``resources`` instead, and ``fail_with``
    and ``delay`` do not apply to it.
    """

    tenant_id: str = DEFAULT_TENANT_ID
    audience: str = DEFAULT_AUDIENCE
    client_id: str = DEFAULT_CLIENT_ID
    roles: tuple[str, ...] = DEFAULT_ROLES
    authority: str = PUBLIC_AUTHORITY
    clock: Callable[[], float] = time.time
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("test-key-1"))
    published: list[SigningKey] = field(default_factory=list)
    fail_with: BaseException | int | None = None
    delay: float = 0.0
    metadata_overrides: dict[str, Any] = field(default_factory=dict)
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, float | None]] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    identity_header: str = field(default_factory=lambda: uuid.uuid4().hex)
    _serving: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.published:
            self.published.append(self.key)
        self._calls_lock = threading.Lock()

    # Keys ----------------------------------------------------------------------------------

    @staticmethod
    def new_key(kid: str | None = None, bits: int = 2048) -> SigningKey:
        """A fresh key that is *not* published (sign with it to get an unknown-key token)."""
        return SigningKey.generate(kid, bits)

    def rotate(self, kid: str | None = None, *, retire_old: bool = False) -> SigningKey:
        """Publish a new key and make it the default signer; optionally unpublish the others."""
        new = SigningKey.generate(kid)
        if retire_old:
            self.published.clear()
        self.published.append(new)
        self.key = new
        return new

    # Documents -----------------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return f"{self.authority}/{self.tenant_id}/discovery/v2.0/keys"

    @property
    def v2_issuer(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0"

    @property
    def v1_issuer(self) -> str:
        return self.config().v1_issuer

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.published] + list(self.extra_jwks)}

    def openid_configuration(self) -> dict[str, Any]:
        doc = {
            "issuer": self.v2_issuer,
            "jwks_uri": self.jwks_url,
            "authorization_endpoint": f"{self.authority}/{self.tenant_id}/oauth2/v2.0/authorize",
            "token_endpoint": f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
        }
        doc.update(self.metadata_overrides)
        return doc

    def document_for(self, url: str) -> dict[str, Any] | None:
        if url == self.metadata_url:
            return self.openid_configuration()
        if url == self.jwks_url:
            return self.jwks()
        return None

    def fetch_json(self, url: str, timeout: float) -> dict:
        """Stub for ``EntraValidator(fetch_json=...)``; records the call, honours fault injection."""
        with self._calls_lock:
            self.calls.append((url, timeout))
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.fail_with, BaseException):
            raise self.fail_with
        if isinstance(self.fail_with, int):
            raise OSError(f"HTTP {self.fail_with}")
        doc = self.document_for(url)
        if doc is None:
            raise OSError(f"HTTP 404 for {url}")
        return doc

    def fetches(self, which: str = "all") -> int:
        """Number of recorded fetches: ``"all"``, ``"metadata"`` or ``"jwks"``."""
        urls = [u for u, _ in self.calls]
        if which == "metadata":
            return sum(u.endswith("/.well-known/openid-configuration") for u in urls)
        if which == "jwks":
            return sum(u.endswith("/discovery/v2.0/keys") for u in urls)
        return len(urls)

    # Configuration -------------------------------------------------------------------------

    def config(self, **overrides: Any) -> EntraConfig:
        values: dict[str, Any] = {"tenant_id": self.tenant_id, "audiences": (self.audience,),
                                  "authority": self.authority}
        values.update(overrides)
        return EntraConfig(**values)

    def validator(self, *, clock: Callable[[], float] | None = None,
                  fetch_json: Callable[[str, float], dict] | None = None,
                  **config_overrides: Any) -> EntraValidator:
        """Validator for this tenant using the stub fetcher :meth:`fetch_json`. For the real
        urllib fetcher build ``EntraValidator(idp.config())`` directly."""
        return EntraValidator(self.config(**config_overrides),
                              fetch_json=fetch_json or self.fetch_json,
                              clock=clock or self.clock)

    def env(self, **extra: str) -> dict[str, str]:
        """``EMBEDDINGS_ENTRA_*`` variables matching this tenant (plus ``extra``)."""
        return {
            "EMBEDDINGS_ENTRA_TENANT_ID": self.tenant_id,
            "EMBEDDINGS_ENTRA_AUDIENCES": self.audience,
            "EMBEDDINGS_ENTRA_AUTHORITY": self.authority,
            **extra,
        }

    # Tokens --------------------------------------------------------------------------------

    def claims(self, *, version: int = 2, lifetime: int = 3600, **overrides: Any) -> dict[str, Any]:
        """Claims of a valid token; ``overrides`` replace claims, a value of ``None`` drops one."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.tenant_id,
            "oid": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
            "sub": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
            "roles": list(self.roles),
            "uti": uuid.uuid4().hex[:22],
        }
        if version == 1:
            claims.update(iss=self.v1_issuer, appid=self.client_id, appidacr="1", ver="1.0")
        else:
            claims.update(iss=self.v2_issuer, azp=self.client_id, azpacr="1", ver="2.0")
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint(self, *, headers: dict[str, Any] | None = None, key: SigningKey | None = None,
             version: int = 2, lifetime: int = 3600, **claim_overrides: Any) -> str:
        """A RS256 token signed by ``key`` (default: the current published key), ``kid`` set.

        ``headers`` are merged into the JOSE header (``None`` values drop a field; to forge a
        token with another ``alg`` use :meth:`forge`).
        """
        key = key or self.key
        header: dict[str, Any] = {"kid": key.kid, "typ": "JWT"}
        for name, value in (headers or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        payload = self.claims(version=version, lifetime=lifetime, **claim_overrides)
        return jwt.encode(payload, key.private_key, algorithm="RS256", headers=header)

    def managed_identity_env(self) -> dict[str, str]:
        """While :meth:`serve_http` runs: the variables App Service and Azure Functions give an
        app with a managed identity (``IDENTITY_ENDPOINT``, ``IDENTITY_HEADER``). With them in
        its environment, an unchanged ``DefaultAzureCredential`` (Python's or Node.js's) gets
        its tokens from this tenant, as it would on Azure from the platform's token endpoint;
        ``resources`` records what each request asked for. ``AZURE_TOKEN_CREDENTIALS`` keeps
        ``DefaultAzureCredential`` to its managed identity: were this endpoint to fail, it would
        otherwise go on to run ``az``, ``azd`` and ``pwsh``, which could reach Entra ID from a
        developer's logged-in machine."""
        if not self._serving:
            raise RuntimeError("managed_identity_env() is for use inside serve_http()")
        return {"IDENTITY_ENDPOINT": self.authority + MANAGED_IDENTITY_PATH,
                "IDENTITY_HEADER": self.identity_header,
                "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"}

    def managed_identity_token(self, path: str, header: str | None) -> tuple[int, dict[str, Any]]:
        """App Service's managed identity protocol (api-version 2019-08-01): ``GET
        <IDENTITY_ENDPOINT>?resource=<uri>&api-version=2019-08-01`` with ``X-IDENTITY-HEADER``
        answers a token for ``resource``, ``expires_on`` in epoch seconds."""
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(path).query)
        if header != self.identity_header:
            return 401, {"error": "invalid X-IDENTITY-HEADER"}
        if query.get("api-version") != ["2019-08-01"] or len(query.get("resource", [])) != 1:
            return 400, {"error": "resource and api-version=2019-08-01 expected"}
        resource = query["resource"][0]
        with self._calls_lock:
            self.resources.append(resource)
        # A v2 token, as Entra ID issues them: for an app's api://<id> the aud is <id>, for
        # another resource's URI the URI itself.
        token = self.mint(aud=resource.removesuffix("/.default").removeprefix("api://"))
        return 200, {"access_token": token, "expires_on": str(int(self.clock()) + 3600),
                     "resource": resource, "token_type": "Bearer", "client_id": self.client_id}

    @staticmethod
    def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
        """Assemble a compact JWS from raw parts without signing (for attack tests)."""
        return f"{b64url(header)}.{b64url(claims)}.{b64url(signature) if signature else ''}"

    # Loopback HTTP -------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve_http(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve the metadata and JWKS on ``http://host:PORT``; yields that authority.

        ``self.authority`` is set to it for the duration (so minted issuers match) and restored
        afterwards. Documents are rendered per request, so :meth:`rotate` takes effect live.
        ``fail_with`` as an int makes the server answer with that status; ``delay`` stalls.
        """
        factory = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith(MANAGED_IDENTITY_PATH + "?"):
                    return self.reply(*factory.managed_identity_token(
                        self.path, self.headers.get("X-IDENTITY-HEADER")))
                url = factory.authority + self.path
                with factory._calls_lock:
                    factory.calls.append((url, None))
                if factory.delay:
                    time.sleep(factory.delay)
                status, doc = 200, factory.document_for(url)
                if isinstance(factory.fail_with, int):
                    status, doc = factory.fail_with, {"error": "injected"}
                elif factory.fail_with is not None:
                    status, doc = 500, {"error": "injected"}
                elif doc is None:
                    status, doc = 404, {"error": "not found"}
                self.reply(status, doc)

            def reply(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # client gave up (time-out tests)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer((host, 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="fake-entra", daemon=True)
        thread.start()
        previous = self.authority
        shown = f"[{host}]" if ":" in host else host
        self.authority = f"http://{shown}:{server.server_address[1]}"
        self._serving = True
        try:
            yield self.authority
        finally:
            self._serving = False
            self.authority = previous
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

