"""OpenAI token ids (cl100k_base) back to text, for the OpenAI dialect.

OpenAI-style clients may send ``input`` as arrays of *OpenAI's* token ids: LangChain's
``OpenAIEmbeddings`` does by default (it tokenises with tiktoken's cl100k_base first). Those ids
mean nothing to another model's tokenizer, so the OpenAI dialect decodes them to text with the
cl100k_base vocabulary and the deployment embeds the text with its own tokenizer, as LiteLLM's
proxy does for non-OpenAI models. Decoding is what tiktoken's ``decode`` does: concatenate the
tokens' bytes and read them as UTF-8, replacing invalid sequences.

The vocabulary ships in ``models/cl100k_base/`` (provenance, license and sha256 there; the
checksum is verified when it is first loaded). Loading it takes ~0.1 s, on first use only.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Sequence

from . import errors
from .registry import FileRef

VOCAB = FileRef(Path(__file__).resolve().parent / "models" / "cl100k_base" / "cl100k_base.tiktoken",
                "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7", 1681126)
SPECIAL = {100257: "<|endoftext|>", 100258: "<|fim_prefix|>", 100259: "<|fim_middle|>",
           100260: "<|fim_suffix|>", 100276: "<|endofprompt|>"}
SIZE = max(SPECIAL) + 1

_table: list[bytes | None] | None = None
_lock = threading.Lock()


def _load() -> list[bytes | None]:
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                table: list[bytes | None] = [None] * SIZE
                with VOCAB.verified().open("rb") as fh:
                    for line in fh:
                        token, rank = line.split()
                        table[int(rank)] = base64.b64decode(token)
                for rank, text in SPECIAL.items():
                    table[rank] = text.encode("utf-8")
                _table = table
    return _table


def decode_inputs(inputs: Sequence[str | Sequence[int]], max_bytes: int,
                  setting: str) -> list[str]:
    """Each token-id array as its text (strings are kept as they are).

    One id can stand for up to 128 bytes of text, so the ids a body may carry could decode to
    ~20x its size. The text decoded for one request is therefore bounded by ``max_bytes`` (the
    body limit, ``setting``, so that ids cost no more than the same text sent as strings); past
    it the request is a 413 that names the setting, before the text is built."""
    left = max_bytes
    texts: list[str] = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            texts.append(x)
            continue
        raw = _pieces(x, f"input[{i}]")
        left -= sum(map(len, raw))
        if left < 0:
            raise errors.ApiError(
                413, "PayloadTooLarge",
                f"The token ids up to input[{i}] decode to more than {max_bytes:,} bytes of text, "
                f"the most one request's text may be ({setting}, as for text sent as strings). "
                f"Send fewer or shorter inputs per request.", target=f"input[{i}]")
        texts.append(b"".join(raw).decode("utf-8", errors="replace"))
    return texts


def _pieces(ids: Sequence[int], target: str) -> list[bytes]:
    """The bytes of each id; an id that is no cl100k_base token is a 422 at ``{target}[j]``."""
    table = _load()
    try:
        pieces = [table[i] for i in ids]
        if None not in pieces:
            return pieces  # type: ignore[return-value]
    except (IndexError, TypeError):
        pass
    j = next(j for j, i in enumerate(ids) if not 0 <= i < SIZE or table[i] is None)
    raise errors.validation(
        f"Token id {errors.clip(ids[j])} is not a cl100k_base token (OpenAI token ids are "
        f"0..100255, or a special token id: {', '.join(map(str, SPECIAL))}).", f"{target}[{j}]")
