"""Settings, read once from the environment (Azure app settings / local.settings.json)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from .cgroup_limits import cgroup_cpu_limit, cgroup_memory_limit

SUPPORTED_API_VERSIONS = ("2024-05-01-preview", "2024-04-01-preview", "2025-04-01")

log = logging.getLogger(__name__)

# Azure's HTTP front end answers a request itself after 230 s, whatever the function does.
AZURE_FRONT_END_TIMEOUT_S = 230

# Warnings about settings, once per process: while the service cannot be built (a bad registry)
# the settings are read again at every request, and each warning was a log row per call.
_warned: set[tuple[object, ...]] = set()


def _warn_once(template: str, *args: object) -> None:
    if (template, *args) not in _warned:
        _warned.add((template, *args))
        log.warning(template, *args)


def forget_warnings() -> None:
    """Warn again (tests that change the environment)."""
    _warned.clear()

C_INT_MAX = 2**31 - 1

# Settings of earlier versions, and what replaced them (a warning is logged when one is set).
RETIRED = {
    "EMBEDDINGS_MAX_CONCURRENCY": "the inference queue runs batches from every request "
                                  "(EMBEDDINGS_INFERENCE_WORKERS side by side; see "
                                  "EMBEDDINGS_MAX_QUEUE_TOKENS)",
    "EMBEDDINGS_MAX_QUEUE": "the queue is bounded by tokens: EMBEDDINGS_MAX_QUEUE_TOKENS",
    "EMBEDDINGS_QUEUE_TIMEOUT_SECONDS": "see EMBEDDINGS_REQUEST_TIMEOUT_SECONDS",
}


MAX_INFERENCE_WORKERS = 32

# A process that may use less than this much memory (MiB; its cgroup's limit or the machine's,
# :func:`usable_memory`) gets smaller image limits by default. On a 512 MB Flex instance (784 MB
# with the platform's 272; 2 requests at once) two image requests at the usual limits peaked at
# ~580 MB and the process was killed in a 512 MiB cgroup; with these, 426 MB (docs/images.md,
# "Memory"). 2,048 MB instances (2,320) are above it. infra/ sets the same values at 512 MB, so a
# Flex instance gets them whether or not its cgroup shows its memory.
SMALL_MEMORY_MB = 1536
SMALL_MEMORY_IMAGE_DECODE_BYTES = 128 << 20
SMALL_MEMORY_IMAGE_BODY_BYTES = 16 << 20


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"setting {name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"setting {name} must be <= {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):   # float() reads "nan" and "inf"
        raise ValueError(f"setting {name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ValueError(f"setting {name} must be >= {minimum:g}, got {value:g}")
    return value


def _queue_holds(name: str, value: int, request_name: str, request: int, what: str) -> None:
    """A queue bound that could never admit the largest request is a configuration error."""
    if value < request:
        raise ValueError(f"setting {name} must be >= {request_name}, or the largest {what} "
                         "could never be admitted")


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() in ("1", "true", "on", "yes"):
        return True
    if raw.lower() in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"setting {name} must be true or false, got {raw!r}")   # as written


# -- API keys ------------------------------------------------------------------------------------
API_KEYS_SETTING = "EMBEDDINGS_API_KEYS"
MIN_KEY_CHARS = 16
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The development key this project prints (README, Makefile, local.settings.json.example): fine on
# a developer's machine, refused where the app is hosted on Azure (published local settings, or
# `make serve`'s environment copied into app settings, would expose the API to anyone who read the
# README).
DEVELOPMENT_KEYS = frozenset({"local-dev-key-0000"})
DEVELOPMENT_KEY_PROBLEM = "is the development key printed in this project's README"
# What azure-functions-host itself reads to tell it runs on Azure (EnvironmentExtensions:
# IsAppService, IsFlexConsumptionSku, IsLinuxConsumptionOnLegion, IsManagedAppEnvironment for
# Functions on Container Apps), the specific ones only: CONTAINER_NAME, which the host reads with
# LEGION_SERVICE_HOST, is set by many container platforms, and LEGION_SERVICE_HOST alone by
# Kubernetes for any Service named "legion". `func start` and the local host set none of them.
AZURE_HOSTING_SETTINGS = ("WEBSITE_INSTANCE_ID", "WEBSITE_SKU", "WEBSITE_POD_NAME",
                          "MANAGED_ENVIRONMENT")


def hosted_on_azure(env: Mapping[str, str]) -> bool:
    """Whether the process runs on Azure App Service or Functions (not `func start`)."""
    def has(name: str) -> bool:
        return bool(env.get(name, "").strip())
    return any(map(has, AZURE_HOSTING_SETTINGS)) or (
        has("LEGION_SERVICE_HOST") and has("CONTAINER_NAME"))


_KV_MARKER = "@microsoft.keyvault("
_KV_PARAMS = {"secreturi": "SecretUri", "vaultname": "VaultName", "secretname": "SecretName",
              "secretversion": "SecretVersion"}
# Any part of a reference, mistyped ones included (App Service resolves none of these and
# passes the text on): the word anywhere, or a parameter at the start of a piece. A reference
# with ',' for ';' would otherwise be split into entries, and "SecretName=…)" taken as a key.
_KV_FRAGMENT = re.compile(r"microsoft\s*\.\s*keyvault|(?:^|[(\[{;,\s\"'])(?:"
                          + "|".join(_KV_PARAMS) + r")\s*[=:]", re.IGNORECASE)


def key_fingerprint(key: bytes) -> str:
    """A stable, non-secret name for an unnamed key: the first 8 hex digits of its sha256."""
    return "key:" + hashlib.sha256(key).hexdigest()[:8]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (e.g. a container's cpuset), at most
    its cgroup's CPU limit rounded up (``docker run --cpus=1`` on a 4-core host: 1)."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores


def usable_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes of memory this process may use: the machine's (``MemTotal``), at most its cgroup's
    memory limit (``docker run --memory=784m`` on a 16 GB host: 784 MiB). None if neither can
    be read."""
    limits = [limit for limit in (cgroup_memory_limit(), _mem_total(meminfo)) if limit]
    return min(limits) if limits else None


def _mem_total(meminfo: str) -> int | None:
    try:
        with open(meminfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    fields = line.split()
                    return int(fields[1]) * 1024 if fields[2:] == ["kB"] else None
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class ApiKey:
    """One accepted API key: its caller name (``None`` for a plain key) and the secret."""

    name: str | None
    secret: str = field(repr=False)

    @property
    def caller_id(self) -> str:
        """``key:<name>``, or ``key:<8 hex of the key's sha256>`` for a plain key. Never the key."""
        return f"key:{self.name}" if self.name else key_fingerprint(self.secret.encode("utf-8"))


def is_key_vault_reference(value: str) -> bool:
    """True if ``value`` holds an App Service Key Vault reference that was not resolved (App
    Service then passes the reference text itself), or a piece of one: ``Microsoft.KeyVault``
    in any case wherever it is (so surrounding whitespace or quotes, a missing ``@`` or a
    mistyped bracket do not hide it), or ``VaultName``, ``SecretName``, ``SecretUri`` or
    ``SecretVersion`` followed by ``=`` (or a mistyped ``:``) at the start of a piece (the rest
    of a reference split at a ``,``)."""
    return _KV_MARKER in value.lower() or _KV_FRAGMENT.search(value) is not None


def key_vault_reference_shape(value: str) -> str:
    """The reference's shape for logs, without vault, secret or version names:
    ``@Microsoft.KeyVault(SecretUri=…)``, ``@Microsoft.KeyVault(VaultName=…;SecretName=…)``
    (the parameters found, in order, whatever separates them)."""
    params = [_KV_PARAMS[m.lower()] for m in re.findall(
        r"(" + "|".join(_KV_PARAMS) + r")\s*[=:]", value, re.IGNORECASE)][:4]
    return "@Microsoft.KeyVault(" + ";".join(f"{p}=…" for p in params) + ")"


def parse_api_keys(raw: str, setting: str = API_KEYS_SETTING, *, hosted: bool = False
                   ) -> tuple[tuple[ApiKey, ...], tuple[str, ...]]:
    """Parse ``EMBEDDINGS_API_KEYS``: the accepted keys, and one log message (never a key) per
    entry that is not accepted.

    The value is either comma-separated entries, each a plain key or ``name:key`` (split at the
    first ``:``; the name is 1-64 letters, digits, ``.``, ``_``, ``-``), or, if it starts with
    ``{``, a JSON object ``{"name": "key", ...}`` (keys may then contain ``:`` and ``,``).
    Whitespace around entries, names and keys is ignored. A name may repeat: one caller with
    several keys, which is how a rotation works (``primary:<old>,primary:<new>``).

    A bad entry is refused on its own and the others keep working (a typo in one caller's entry,
    made in the vault or by a deployment, must not take every caller down); it is counted as no
    key and reported in the messages, as configuration errors:
    an unresolved Key Vault reference (the whole value, an entry or a key); a key shorter than
    ``MIN_KEY_CHARS`` characters or with a character that is not printable ASCII; an entry with
    ``:`` whose part before it is not a valid name; a name spelled in another case than where it
    first appears (the first spelling's entries are kept); a key held by entries of different
    callers, refused entries included (every one of them: whose it is cannot be told; the same
    caller's key twice is kept once); an entry that would report the same caller id as an
    earlier one of another caller; with ``hosted`` (on Azure), a key of ``DEVELOPMENT_KEYS``. A
    value starting with ``{`` that is not a JSON object (or is nested too deeply to parse) gives
    no keys at all.
    """
    text = raw.strip()
    if not text:
        return (), ()
    if is_key_vault_reference(text) and "," not in text and not text.startswith("{"):
        return (), (_unresolved(setting, text),)
    problems: list[str] = []
    # (entry number, name, key or None, why it is refused or None)
    entries: list[tuple[int, str | None, str | None, str | None]] = []
    if text.startswith("{"):
        entries = _json_entries(text, setting, problems)
    else:
        for n, part in enumerate((p.strip() for p in text.split(",") if p.strip()), 1):
            name, colon, key = part.partition(":")
            # "SecretName: x)" is a piece of a mistyped reference, not caller SecretName's key
            if colon and KEY_NAME.fullmatch(name.strip()) \
                    and not is_key_vault_reference(name + colon):
                entries.append((n, name.strip(), key.strip(), None))
            elif not colon or is_key_vault_reference(part):  # a SecretUri has ':' in it
                entries.append((n, None, part, None))
            else:
                entries.append((n, name.strip(), key.strip(), (
                    f"configuration error: {setting} entry {n} contains ':' but the part before "
                    "it is not a key name (1-64 letters, digits, '.', '_' or '-'), and is not "
                    "accepted. Write name:key, or use the JSON form {\"name\": \"key\"} for a "
                    "key that contains ':'.")))
    refused: dict[int, str] = {n: why for n, _, _, why in entries if why}
    spelling: dict[str, tuple[int, str]] = {}
    for n, name, key, why in entries:
        if name is not None and not why:
            first, written = spelling.setdefault(name.lower(), (n, name))
            if written != name:
                refused[n] = (
                    f"configuration error: {setting} entries {first} and {n} have names that "
                    f"differ only in case ({written!r}, {name!r}); entry {n} is not accepted: "
                    "write one name")
        if key is not None and n not in refused:
            problem = key_problem(key, f"{setting} entry {n}" + (f" (name {name!r})" if name else ""),
                                  hosted=hosted)
            if problem:
                refused[n] = problem
    # A key in several entries, refused ones included (a refused entry's key must not be
    # accepted as another caller's): the same caller's repeats are ignored, the first is kept;
    # held by several callers, it is refused in every entry, since whose it is cannot be told.
    holders: dict[str, list[tuple[int, str | None]]] = {}
    for n, name, key, _ in entries:
        if key is not None and key_problem(key, "") is None:
            holders.setdefault(key, []).append((n, name.lower() if name else None))
    for shared in holders.values():
        if len(shared) < 2:
            continue
        numbers = [n for n, _ in shared]
        if len({who for _, who in shared}) > 1:
            for n in numbers:
                refused.setdefault(n, "")          # reported once, below
            problems.append(
                f"configuration error: {setting}: entries {', '.join(map(str, numbers))} hold "
                "the same key for different callers; none of them is accepted: give each "
                "caller its own key")
        else:   # kept once: in the first of these entries that is not refused otherwise
            kept = next((n for n in numbers if n not in refused), numbers[0])
            for n in numbers:
                if n != kept:
                    refused.setdefault(n, (
                        f"configuration error: {setting}: entry {n} repeats the key of entry "
                        f"{kept} for the same caller and is ignored"))
    keys: list[ApiKey] = []
    callers: dict[str, tuple[int, str | None]] = {}    # caller id -> (first entry, its name)
    for n, name, key, _ in entries:
        if n in refused or key is None:
            continue
        new = ApiKey(name, key)
        first, first_name = callers.setdefault(new.caller_id, (n, name))
        if first != n and not (name and first_name == name):
            refused[n] = (
                f"configuration error: {setting}: entries {first} and {n} would both be reported "
                f"as caller {new.caller_id!r}; entry {n} is not accepted: give them different "
                "names")
            continue
        keys.append(new)
    problems.extend(why for _, why in sorted(refused.items()) if why)
    return tuple(keys), tuple(problems)


def key_problem(key: str, where: str, *, hosted: bool = False) -> str | None:
    """Why ``key`` is not accepted as a key (a log message naming ``where``, never the key), or
    None: an unresolved Key Vault reference, fewer than ``MIN_KEY_CHARS`` characters, a
    character that is not printable ASCII (HTTP clients send header values as bytes: httpx refuses
    non-ASCII, others send UTF-8 or Latin-1, so such a key works for some clients only), or, when
    ``hosted`` on Azure, the project's published development key."""
    if is_key_vault_reference(key):
        return _unresolved(where, key)
    if hosted and key in DEVELOPMENT_KEYS:
        return (f"configuration error: {where} {DEVELOPMENT_KEY_PROBLEM} and Makefile, and is "
                "not accepted on Azure, where anyone who read the "
                "README could call the API with it; use a random key (python3 -c 'import "
                "secrets; print(secrets.token_hex(32))'), as `azd provision` generates")
    if not all(" " <= c <= "~" for c in key):
        return (f"configuration error: {where} has a character that is not printable ASCII "
                "(a control or a non-ASCII character) and is not accepted as a key: "
                "HTTP clients cannot all send it; use a random key such as "
                "python3 -c 'import secrets; print(secrets.token_hex(32))'")
    if len(key) < MIN_KEY_CHARS:
        return (f"configuration error: {where} is shorter than {MIN_KEY_CHARS} characters and is "
                f"not accepted as a key; use a random key of at least {MIN_KEY_CHARS} characters "
                "(e.g. python3 -c 'import secrets; print(secrets.token_hex(32))')")
    return None


def _unresolved(where: str, value: str) -> str:
    return (f"configuration error: {where} is an unresolved Key Vault reference "
            f"({key_vault_reference_shape(value)}) and is not accepted as a key. App Service "
            "passes the reference text on when it cannot read the secret: check that the app's "
            "identity has 'Key Vault Secrets User' on the vault, that the secret exists and is "
            "enabled, and that the vault's network rules admit the app; then refresh the "
            "references (docs/deploy.md, 'Key Vault reference not resolved')")


def _json_entries(text: str, setting: str, problems: list[str]
                  ) -> list[tuple[int, str | None, str | None, str | None]]:
    try:
        pairs = json.loads(text, object_pairs_hook=lambda p: p)  # keeps repeated names
    except (ValueError, RecursionError) as exc:  # the message names a position, never the text
        detail = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) \
            else "nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
        problems.append(f"configuration error: {setting} starts with '{{' but is not a JSON "
                        f'object of "name": "key" strings ({detail}); no key is accepted from it')
        return []
    if not isinstance(pairs, list):        # a JSON value that is not an object
        problems.append(f"configuration error: {setting} starts with '{{' but is not a JSON "
                        f'object of "name": "key" strings; no key is accepted from it')
        return []
    entries: list[tuple[int, str | None, str | None, str | None]] = []
    for n, (name, key) in enumerate(pairs, 1):
        key = key.strip() if isinstance(key, str) else None
        if not KEY_NAME.fullmatch(name):
            entries.append((n, name, key, (
                f"configuration error: {setting} entry {n}: the name is not a key name (1-64 "
                "letters, digits, '.', '_' or '-'); the entry is not accepted")))
        elif key is None:
            entries.append((n, name, None, (
                f"configuration error: {setting} entry {n} (name {name!r}): the key must be a "
                "string; the entry is not accepted")))
        else:
            entries.append((n, name, key, None))
    return entries


@dataclass(frozen=True)
class Settings:
    # Auth (Entra ID settings are read by entra.EntraConfig.from_env from the same mapping).
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)   # see parse_api_keys
    api_key_problems: tuple[str, ...] = ()  # log messages for entries not accepted (no secrets)
    auth_disabled: bool = False
    hosted_on_azure: bool = False           # see hosted_on_azure()
    # Deployments.
    registry_path: str | None = None
    # Request limits.
    max_text_body_bytes: int = 8 * 1024 * 1024
    max_image_body_bytes: int = 32 * 1024 * 1024
    max_inputs: int = 2048
    max_image_inputs: int = 64
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # All of one request's pictures (width x height from their headers), at least one image's:
    # the dearest found to decode, 40 Mpx 16-bit RGBA PNGs, take ~1.2 s each here, so the
    # largest request is 16 of them, ~21 s (docs/images.md#performance).
    max_request_pixels: int = 640_000_000
    max_image_decode_bytes: int = 256 << 20   # estimated decoding memory of one image
    max_input_chars: int = 65_536         # characters of one input read to find its tokens
    max_chars_per_token: int = 32         # beyond max_input_chars per request (bounded_tokenize)
    openai_truncate: str = "NONE"         # over-long inputs on the OpenAI route: NONE | END | START
    # Inference.
    batch_token_budget: int = 1024        # measured fastest with the int8 model (docs/inference-queue.md)
    max_batch_size: int = 32
    max_request_tokens: int = 262144      # one request's tokens (~13 s here, bench)
    max_queue_tokens: int = 524288        # tokens queued in the process; beyond: 429
    max_queue_images: int = 128           # images queued in the process (77 MB of pixels)
    request_timeout_s: float = 200.0      # a request still queued then is cancelled (503)
    retry_after_s: int = 1
    inference_workers: int = 0             # batches run side by side; 0 = one per core
    ort_intra_op_threads: int = 0          # 0: the cores shared among the workers
    ort_small_batch_thread: bool = True     # many small concurrent requests: a one-thread session
    ort_inter_op_threads: int = 1
    ort_optimization_level: str = "all"     # disabled | basic | extended | all
    ort_spinning: bool | None = None        # None: each backend's default
    ort_cpu_mem_arena: bool = True          # shrunk when idle (onnx_session.release_arena_when_idle)
    long_input_runtime: str = "auto"        # auto: long inputs on OpenVINO (AMX, memory enough)
    # Process memory (memory.py).
    memory_tuning: bool = True
    malloc_arena_max: int = 2               # 0: glibc's default (8 per core)
    malloc_mmap_threshold: int = 1 << 20    # 0: glibc's dynamic threshold
    memory_trim_idle_s: float = 1.0         # 0: never trim
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def workers(self) -> int:
        """Inference workers: ``EMBEDDINGS_INFERENCE_WORKERS``, else one per usable core."""
        return self.inference_workers or min(usable_cores(), MAX_INFERENCE_WORKERS)

    @property
    def session_threads(self) -> int:
        """Intra-op threads of each ONNX Runtime session: ``EMBEDDINGS_ORT_INTRA_OP_THREADS``,
        else the usable cores shared among the workers (at least one each)."""
        return self.ort_intra_op_threads or max(1, usable_cores() // self.workers)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        auth_mode = env.get("EMBEDDINGS_AUTH", "").strip().lower()
        if auth_mode not in ("", "enabled", "disabled"):
            raise ValueError("setting EMBEDDINGS_AUTH must be 'enabled' or 'disabled'")
        level = env.get("EMBEDDINGS_ORT_OPTIMIZATION_LEVEL", "all").strip().lower() or "all"
        if level not in ("disabled", "basic", "extended", "all"):
            raise ValueError("setting EMBEDDINGS_ORT_OPTIMIZATION_LEVEL must be one of "
                             "disabled, basic, extended, all")
        openai_truncate = env.get("EMBEDDINGS_OPENAI_TRUNCATE", "").strip().upper() or "NONE"
        if openai_truncate not in ("NONE", "END", "START"):
            raise ValueError("setting EMBEDDINGS_OPENAI_TRUNCATE must be NONE, END or START")
        long_runtime = env.get("EMBEDDINGS_LONG_INPUT_RUNTIME", "auto").strip().lower() or "auto"
        if long_runtime not in ("auto", "onnxruntime"):
            raise ValueError("setting EMBEDDINGS_LONG_INPUT_RUNTIME must be 'auto' or 'onnxruntime'")
        max_request_tokens = _int(env, "EMBEDDINGS_MAX_REQUEST_TOKENS", cls.max_request_tokens, 1)
        max_queue_tokens = _int(env, "EMBEDDINGS_MAX_QUEUE_TOKENS", cls.max_queue_tokens, 1)
        _queue_holds("EMBEDDINGS_MAX_QUEUE_TOKENS", max_queue_tokens,
                     "EMBEDDINGS_MAX_REQUEST_TOKENS", max_request_tokens, "request")
        hosted = hosted_on_azure(env)
        api_keys, api_key_problems = parse_api_keys(env.get(API_KEYS_SETTING, ""), hosted=hosted)
        max_queue_images = _int(env, "EMBEDDINGS_MAX_QUEUE_IMAGES", cls.max_queue_images, 1)
        max_image_inputs = _int(env, "EMBEDDINGS_MAX_IMAGE_INPUTS", cls.max_image_inputs, 1)
        max_image_pixels = _int(env, "EMBEDDINGS_MAX_IMAGE_PIXELS", cls.max_image_pixels, 1)
        max_request_pixels = _int(env, "EMBEDDINGS_MAX_REQUEST_PIXELS", cls.max_request_pixels, 1)
        if max_request_pixels < max_image_pixels:
            raise ValueError("setting EMBEDDINGS_MAX_REQUEST_PIXELS must be >= "
                             "EMBEDDINGS_MAX_IMAGE_PIXELS, or a request of one image at the "
                             "per-image limit would be refused; lower both")
        _queue_holds("EMBEDDINGS_MAX_QUEUE_IMAGES", max_queue_images,
                     "EMBEDDINGS_MAX_IMAGE_INPUTS", max_image_inputs, "image request")
        request_timeout_s = _float(env, "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS", cls.request_timeout_s,
                                   minimum=1)
        if request_timeout_s >= AZURE_FRONT_END_TIMEOUT_S:
            # Not refused: it is a working value under the local host. On Azure the client is
            # answered by the front end while the request still runs here.
            _warn_once("setting EMBEDDINGS_REQUEST_TIMEOUT_SECONDS=%g is not below Azure's "
                       "%d-second front-end limit: on Azure a request still running then is "
                       "answered by the front end with an error while it goes on using the "
                       "instance; set it below %d", request_timeout_s, AZURE_FRONT_END_TIMEOUT_S,
                       AZURE_FRONT_END_TIMEOUT_S)
        image_decode_default = cls.max_image_decode_bytes
        image_body_default = cls.max_image_body_bytes
        usable = usable_memory()
        if usable is not None and usable < SMALL_MEMORY_MB << 20:
            image_decode_default = SMALL_MEMORY_IMAGE_DECODE_BYTES
            image_body_default = SMALL_MEMORY_IMAGE_BODY_BYTES
            defaulted = [f"{name}={value}" for name, value in (
                ("EMBEDDINGS_MAX_IMAGE_DECODE_BYTES", image_decode_default),
                ("EMBEDDINGS_MAX_IMAGE_BODY_BYTES", image_body_default))
                if not env.get(name, "").strip()]
            if defaulted:
                _warn_once("this process may use %d MiB of memory, less than %d MiB, so the "
                           "image limits not set are lowered: %s", usable >> 20, SMALL_MEMORY_MB,
                           ", ".join(defaulted))
        for retired in RETIRED:
            if env.get(retired, "").strip():
                _warn_once("setting %s is no longer used: %s", retired, RETIRED[retired])
        return cls(
            api_keys=api_keys,
            api_key_problems=api_key_problems,
            hosted_on_azure=hosted,
            auth_disabled=auth_mode == "disabled",
            registry_path=env.get("EMBEDDINGS_REGISTRY", "").strip() or None,
            max_text_body_bytes=_int(env, "EMBEDDINGS_MAX_BODY_BYTES", cls.max_text_body_bytes, 1024),
            max_image_body_bytes=_int(env, "EMBEDDINGS_MAX_IMAGE_BODY_BYTES", image_body_default, 1024),
            max_inputs=_int(env, "EMBEDDINGS_MAX_INPUTS", cls.max_inputs, 1),
            max_image_inputs=max_image_inputs,
            max_image_bytes=_int(env, "EMBEDDINGS_MAX_IMAGE_BYTES", cls.max_image_bytes, 1024),
            max_image_pixels=max_image_pixels,
            max_request_pixels=max_request_pixels,
            max_image_decode_bytes=_int(env, "EMBEDDINGS_MAX_IMAGE_DECODE_BYTES",
                                        image_decode_default, 1 << 20),
            max_input_chars=_int(env, "EMBEDDINGS_MAX_INPUT_CHARS", cls.max_input_chars, 1024),
            max_chars_per_token=_int(env, "EMBEDDINGS_MAX_CHARS_PER_TOKEN", cls.max_chars_per_token, 1),
            openai_truncate=openai_truncate,
            batch_token_budget=_int(env, "EMBEDDINGS_BATCH_TOKEN_BUDGET", cls.batch_token_budget, 1),
            max_batch_size=_int(env, "EMBEDDINGS_MAX_BATCH_SIZE", cls.max_batch_size, 1),
            max_request_tokens=max_request_tokens,
            max_queue_tokens=max_queue_tokens,
            max_queue_images=max_queue_images,
            request_timeout_s=request_timeout_s,
            retry_after_s=_int(env, "EMBEDDINGS_RETRY_AFTER_SECONDS", cls.retry_after_s, 1),
            # Each worker is a thread with its own ONNX Runtime sessions: more than this many is
            # a typo (5000 were accepted, and started on the first request).
            inference_workers=_int(env, "EMBEDDINGS_INFERENCE_WORKERS", cls.inference_workers, 0,
                                   MAX_INFERENCE_WORKERS),
            ort_intra_op_threads=_int(env, "EMBEDDINGS_ORT_INTRA_OP_THREADS", cls.ort_intra_op_threads, 0),
            ort_small_batch_thread=_bool(env, "EMBEDDINGS_ORT_SMALL_BATCH_THREAD") is not False,
            ort_inter_op_threads=_int(env, "EMBEDDINGS_ORT_INTER_OP_THREADS", cls.ort_inter_op_threads, 1),
            ort_optimization_level=level,
            ort_spinning=_bool(env, "EMBEDDINGS_ORT_SPINNING"),
            ort_cpu_mem_arena=_bool(env, "EMBEDDINGS_ORT_CPU_MEM_ARENA") is not False,
            long_input_runtime=long_runtime,
            memory_tuning=_bool(env, "EMBEDDINGS_MEMORY_TUNING") is not False,
            # glibc's mallopt takes a C int: larger values would wrap.
            malloc_arena_max=_int(env, "EMBEDDINGS_MALLOC_ARENA_MAX", cls.malloc_arena_max, 0,
                                  C_INT_MAX),
            malloc_mmap_threshold=_int(env, "EMBEDDINGS_MALLOC_MMAP_THRESHOLD",
                                       cls.malloc_mmap_threshold, 0, C_INT_MAX),
            memory_trim_idle_s=_float(env, "EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS", cls.memory_trim_idle_s),
            env=env,
        )
