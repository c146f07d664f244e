"""Settings, read once from the environment (Azure app settings / local.settings.json)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

SUPPORTED_API_VERSIONS = ("2024-05-01-preview", "2024-04-01-preview", "2025-04-01")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"setting {name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"setting {name} must be >= 0, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"setting {name} must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    # Auth (Entra ID settings are read by entra.EntraConfig.from_env from the same mapping).
    api_keys: tuple[str, ...] = ()
    auth_disabled: bool = False
    # Deployments.
    registry_path: str | None = None
    # Request limits.
    max_text_body_bytes: int = 8 * 1024 * 1024
    max_image_body_bytes: int = 32 * 1024 * 1024
    max_inputs: int = 2048
    max_image_inputs: int = 64
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_image_decode_bytes: int = 256 << 20   # estimated decoding memory of one image
    max_input_chars: int = 65_536         # characters of one input read to find its tokens
    max_chars_per_token: int = 32         # beyond max_input_chars per request (bounded_tokenize)
    # Inference.
    batch_token_budget: int = 512         # small batches run fastest on CPU (measured)
    max_batch_size: int = 32
    max_concurrency: int = 1
    max_queue: int = 32
    queue_timeout_s: float = 30.0
    retry_after_s: int = 1
    ort_intra_op_threads: int = 0          # 0 = onnxruntime's default (one per core)
    ort_inter_op_threads: int = 1
    ort_optimization_level: str = "all"     # disabled | basic | extended | all
    ort_spinning: bool | None = None        # None: each backend's default
    ort_cpu_mem_arena: bool = True          # shrunk when idle (onnx_session.release_arena_when_idle)
    # Process memory (memory.py).
    memory_tuning: bool = True
    malloc_arena_max: int = 2               # 0: glibc's default (8 per core)
    malloc_mmap_threshold: int = 1 << 20    # 0: glibc's dynamic threshold
    memory_trim_idle_s: float = 1.0         # 0: never trim
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

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
        return cls(
            api_keys=_list(env, "EMBEDDINGS_API_KEYS"),
            auth_disabled=auth_mode == "disabled",
            registry_path=env.get("EMBEDDINGS_REGISTRY", "").strip() or None,
            max_text_body_bytes=_int(env, "EMBEDDINGS_MAX_BODY_BYTES", cls.max_text_body_bytes, 1024),
            max_image_body_bytes=_int(env, "EMBEDDINGS_MAX_IMAGE_BODY_BYTES", cls.max_image_body_bytes, 1024),
            max_inputs=_int(env, "EMBEDDINGS_MAX_INPUTS", cls.max_inputs, 1),
            max_image_inputs=_int(env, "EMBEDDINGS_MAX_IMAGE_INPUTS", cls.max_image_inputs, 1),
            max_image_bytes=_int(env, "EMBEDDINGS_MAX_IMAGE_BYTES", cls.max_image_bytes, 1024),
            max_image_pixels=_int(env, "EMBEDDINGS_MAX_IMAGE_PIXELS", cls.max_image_pixels, 1),
            max_image_decode_bytes=_int(env, "EMBEDDINGS_MAX_IMAGE_DECODE_BYTES",
                                        cls.max_image_decode_bytes, 1 << 20),
            max_input_chars=_int(env, "EMBEDDINGS_MAX_INPUT_CHARS", cls.max_input_chars, 1024),
            max_chars_per_token=_int(env, "EMBEDDINGS_MAX_CHARS_PER_TOKEN", cls.max_chars_per_token, 1),
            batch_token_budget=_int(env, "EMBEDDINGS_BATCH_TOKEN_BUDGET", cls.batch_token_budget, 1),
            max_batch_size=_int(env, "EMBEDDINGS_MAX_BATCH_SIZE", cls.max_batch_size, 1),
            max_concurrency=_int(env, "EMBEDDINGS_MAX_CONCURRENCY", cls.max_concurrency, 1),
            max_queue=_int(env, "EMBEDDINGS_MAX_QUEUE", cls.max_queue, 0),
            queue_timeout_s=_float(env, "EMBEDDINGS_QUEUE_TIMEOUT_SECONDS", cls.queue_timeout_s),
            retry_after_s=_int(env, "EMBEDDINGS_RETRY_AFTER_SECONDS", cls.retry_after_s, 1),
            ort_intra_op_threads=_int(env, "EMBEDDINGS_ORT_INTRA_OP_THREADS", cls.ort_intra_op_threads, 0),
            ort_inter_op_threads=_int(env, "EMBEDDINGS_ORT_INTER_OP_THREADS", cls.ort_inter_op_threads, 1),
            ort_optimization_level=level,
            ort_spinning=_bool(env, "EMBEDDINGS_ORT_SPINNING"),
            ort_cpu_mem_arena=_bool(env, "EMBEDDINGS_ORT_CPU_MEM_ARENA") is not False,
            memory_tuning=_bool(env, "EMBEDDINGS_MEMORY_TUNING") is not False,
            malloc_arena_max=_int(env, "EMBEDDINGS_MALLOC_ARENA_MAX", cls.malloc_arena_max, 0),
            malloc_mmap_threshold=_int(env, "EMBEDDINGS_MALLOC_MMAP_THRESHOLD",
                                       cls.malloc_mmap_threshold, 0),
            memory_trim_idle_s=_float(env, "EMBEDDINGS_MEMORY_TRIM_IDLE_SECONDS", cls.memory_trim_idle_s),
            env=env,
        )
