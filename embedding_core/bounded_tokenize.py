"""Tokenising with bounded work: each input is read from the end that is kept, a piece at a time,
only until it has enough tokens, and a request may not spend characters on nothing.

Why: the tokenizer's cost is per character (0.03 to 4 microseconds each, measured on 2 cores),
but what it returns can be a single token for megabytes (no spaces, combining accents, zero-width
or control characters, long "words" that become ``[UNK]``). Before this module one 8 MB string
cost 4-6 s of CPU and +0.5 GB, and 2048 inputs of 4 KB could cost 16 s.

How (per request, :func:`tokenize_texts`):

* **Pieces from the kept end.** An input of at most ``first_piece`` characters is tokenised whole.
  A longer one is read from the start (``truncate`` ``NONE``/``END``) or from the end (``START``)
  in pieces: the first of ``first_piece`` characters, each next one sized from the token density
  seen so far (at most 4x the previous piece). A piece's partial word at the cut is dropped and
  read again with the next piece, so the tokens are exactly those of tokenising the whole text
  (the normaliser works per character and the pre-tokenizer splits on whitespace and
  punctuation, so complete words do not depend on what follows or precedes them). Reading stops
  as soon as the input has more tokens than the model takes.
* **Per input** at most ``max_input_chars`` characters are read
  (``EMBEDDINGS_MAX_INPUT_CHARS``); an input longer than that whose first (or, with ``START``,
  last) ``max_input_chars`` characters do not reach the token limit is refused (422).
* **Per request** the characters read may not exceed ``2 * max_input_chars`` plus
  ``max_chars_per_token`` (``EMBEDDINGS_MAX_CHARS_PER_TOKEN``) per token found: text that costs
  the tokenizer without giving the model anything is refused (422) once it has cost
  ``2 * max_input_chars`` characters. Prose is 3-5 characters per token, source code and JSON 2-5,
  text laid out with runs of spaces up to ~17.
* **Words that are no token have a budget of their own.** WordPiece searches a word's longest
  known prefixes and gives up only at its end: a word that ends as ``[UNK]`` costs it about
  (characters × UTF-8 bytes) of the *normalised* word (NFD: a Hangul syllable is 2-3 jamo of
  3 bytes), ~0.55 µs per 21 of that: 259 µs for 100 ASCII characters, 574 for 100 Cyrillic,
  794 for 33 Hangul syllables, against ~0.8 µs a character of prose; for one token. A request
  may spend ``UNK_WORK_CAP`` of that work (~2 s of CPU here), then it is refused (422). Before,
  2,048 inputs of such words mixed with enough one-character tokens to stay under 32 characters
  a token cost 19-25 s of tokenizer CPU and a 422 at the end (found in a review),
  and with Hangul words 51 s and were accepted (found in a review). A word of
  over 100 normalised characters is ``[UNK]`` at once (cheap). Ordinary text stays under the
  cap: requests of 2,048 Wikipedia-style paragraphs in scripts this model has no tokens for
  (runs of 30-60 characters, each one ``[UNK]``) spend 44 % of it (Thai, 292 characters each),
  31 % (Khmer), 28 % (Lao); emoji-laden posts 5 %.
* Inputs are handled in groups of consecutive inputs (one batched, multi-threaded tokenizer call
  per group and round); the first bad input in request order is reported, and a bad group stops
  the request before later groups are read.

The work is counted in characters handed to the tokenizer (deterministic; the tests assert it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import errors

GROUP = 256            # inputs per batched tokenizer call
MIN_PIECE = 64         # never read less than this many characters in one piece (unless at the end)
EXACT_COUNT_CHARS = 8192   # a refused input up to this long is counted exactly for the message
UNK_WORK_DIVISOR = 21      # an [UNK] word costs chars * bytes // 21 (normalised), ~0.55 µs each
UNK_WORK_CAP = 4_000_000   # of that per request: ~2.2 s of tokenizer CPU (AMD VM)


@dataclass
class Limits:
    room: int                 # body tokens the model takes (max_tokens - [CLS]/[SEP] - prefix)
    extra: int                # tokens added around the body (for messages): prefix + 2
    max_tokens: int           # the deployment's limit (for messages)
    first_piece: int          # inputs up to this long are tokenised whole, in one piece
    max_input_chars: int      # EMBEDDINGS_MAX_INPUT_CHARS
    max_chars_per_token: int  # EMBEDDINGS_MAX_CHARS_PER_TOKEN
    unk_id: int | None = None  # the tokenizer's [UNK] (a word that is no token: its own budget)
    normalize: Callable[[str], str] | None = None   # the tokenizer's normaliser
    max_word: int = 100       # WordPiece's max_input_chars_per_word: longer words are [UNK] at once


@dataclass
class _Input:
    index: int
    text: str
    forward: bool                         # read from the start (NONE/END) or from the end (START)
    lo: int = 0                           # unread region is text[lo:hi]
    hi: int = 0
    parts: list[list[int]] = field(default_factory=list)
    count: int = 0                        # tokens collected (complete words only)
    read: int = 0                         # characters handed to the tokenizer for this input
    want: int = 0                         # size of the next piece
    done: bool = False
    starved: str | None = None            # "input" (per-input cap) or "request" (per-request)

    def body(self) -> np.ndarray:
        parts = self.parts if self.forward else self.parts[::-1]
        if len(parts) == 1:
            return np.asarray(parts[0], dtype=np.int64)
        return np.asarray([t for p in parts for t in p], dtype=np.int64)


class CharBudget:
    """Characters a request may hand the tokenizer: ``free + per_token * tokens found``."""

    def __init__(self, free: int, per_token: int):
        self.free, self.per_token = free, per_token
        self.read = 0
        self.tokens = 0
        self.unk_work = 0     # what the [UNK] words found so far cost WordPiece (UNK_WORK_DIVISOR)
        self.unk_words = 0

    def left(self) -> int:
        return self.free + self.per_token * self.tokens - self.read


def tokenize_texts(encode_batch: Callable[[list[str]], Sequence[Any]], texts: dict[int, str],
                   truncate: str, limits: Limits) -> dict[int, np.ndarray]:
    """Token bodies (no special tokens, no prefix) of ``texts`` ({request index: text}), each cut
    to ``limits.room`` per ``truncate``; raises the first error in request order.

    ``encode_batch(list_of_str)`` returns tokenizers ``Encoding``s without special tokens."""
    # Twice the per-input limit: one input growing its pieces to the limit (x4 each time, so up
    # to 4/3 of it read) meets the per-input limit, with its clearer message, first.
    budget = CharBudget(2 * limits.max_input_chars, limits.max_chars_per_token)
    order = sorted(texts)
    out: dict[int, np.ndarray] = {}
    for g in range(0, len(order), GROUP):
        group = [_Input(i, texts[i], truncate != "START", 0, len(texts[i]),
                        want=limits.first_piece) for i in order[g:g + GROUP]]
        _read_group(encode_batch, group, budget, limits)
        for item in group:          # in request order: the first problem is the one reported
            out[item.index] = _finish(encode_batch, item, truncate, limits, budget)
    return out


def _read_group(encode_batch, group: list[_Input], budget: CharBudget, limits: Limits) -> None:
    active = list(group)
    while active:
        pieces: list[tuple[_Input, str, bool, bool]] = []
        for item in active:
            rest = item.hi - item.lo
            if rest <= 0:           # an empty text (OpenAI's lone "input": ""): no tokens
                item.done = True
                continue
            consumed = item.lo if item.forward else len(item.text) - item.hi
            reach = limits.max_input_chars - consumed      # the piece may not go beyond this
            size = min(item.want, rest, reach)
            if size <= 0:
                item.starved = "input"
            elif budget.unk_work > UNK_WORK_CAP:
                item.starved = "words"
            elif size > budget.left():
                size = budget.left()
                if size <= 0:
                    item.starved = "request"
            if item.starved:
                item.done = True
                continue
            whole = size >= rest
            piece = item.text[item.lo:item.lo + size] if item.forward else \
                item.text[item.hi - size:item.hi]
            budget.read += size
            item.read += size
            pieces.append((item, piece, whole, size == reach))
        if not pieces:
            break
        encodings = encode_batch([p for _, p, _, _ in pieces])
        for (item, piece, whole, at_cap), enc in zip(pieces, encodings):
            _take(item, piece, whole, at_cap, enc, budget, limits)
        active = [item for item in active if not item.done]


def _take(item: _Input, piece: str, whole: bool, at_cap: bool, enc: Any, budget: CharBudget,
          limits: Limits) -> None:
    ids = enc.ids
    size = len(piece)
    first = 0               # keep = ids[first:first + len(keep)]
    if whole or not ids:    # the rest of the text, or nothing but whitespace/dropped characters
        keep, advance = ids, size
    else:
        # Drop the word cut by the piece's open end; it is read again with the next piece.
        words, offsets = enc.word_ids, enc.offsets
        if item.forward:
            k = len(words) - 1
            while k and words[k - 1] == words[-1]:
                k -= 1
            keep, advance = ids[:k], offsets[k][0]
        else:
            k = 1
            while k < len(words) and words[k] == words[0]:
                k += 1
            keep, first = ids[k:], k
            advance = size - (offsets[k][0] if k < len(ids) else offsets[k - 1][1])
    if limits.unk_id is not None and limits.unk_id in keep:
        _count_unk_work(budget, piece, enc, first, first + len(keep), limits)
    if keep:
        item.parts.append(keep)
        item.count += len(keep)
        budget.tokens += len(keep)
    if item.forward:
        item.lo += advance
    else:
        item.hi -= advance
    if whole or item.lo >= item.hi or item.count > limits.room:
        item.done = True
        return
    if at_cap:      # what is left within the allowed extent is the word cut at the cap
        item.starved, item.done = "input", True
        return
    consumed = item.lo if item.forward else len(item.text) - item.hi
    if not keep or consumed == 0:
        item.want = 4 * size            # no complete word yet: a bigger piece from the same place
    else:
        need = limits.room + 1 - item.count
        estimate = int(need * consumed / item.count * 1.25) + 32
        item.want = max(MIN_PIECE, min(estimate, 4 * size))


def _count_unk_work(budget: CharBudget, piece: str, enc: Any, lo: int, hi: int,
                    limits: Limits) -> None:
    """Add what the [UNK] words among tokens lo..hi cost WordPiece: characters × UTF-8 bytes of
    the word as it searched it (normalised), for words it searched (at most 100 characters)."""
    ids, offsets = enc.ids, enc.offsets
    for j in range(lo, hi):
        if ids[j] == limits.unk_id:
            word = piece[offsets[j][0]:offsets[j][1]]
            if limits.normalize is not None:
                word = limits.normalize(word)
            n = len(word)
            if n <= limits.max_word:
                budget.unk_work += n * len(word.encode("utf-8", "surrogatepass")) \
                    // UNK_WORK_DIVISOR
                budget.unk_words += 1


def _finish(encode_batch, item: _Input, truncate: str, limits: Limits,
            budget: CharBudget) -> np.ndarray:
    target = f"input[{item.index}]"
    if item.starved == "input":
        found = f"give only {item.count} tokens" if item.count else "hold no complete word"
        raise errors.validation(
            f"The input has {len(item.text):,} characters and its "
            f"{'first' if item.forward else 'last'} {limits.max_input_chars:,} {found}, "
            f"fewer than the {limits.max_tokens} tokens the model takes; the "
            f"service reads at most {limits.max_input_chars:,} characters of one input "
            f"(EMBEDDINGS_MAX_INPUT_CHARS), truncated or not. Remove or split what holds no "
            f"words: long unbroken strings (base64 data, long URLs, minified code) or runs of "
            f"whitespace, accents or symbols.", target)
    if item.starved == "request":
        raise errors.validation(
            f"The request's text gives too few tokens for its length: the tokenizer read "
            f"{budget.read:,} characters and found {budget.tokens:,} tokens. Beyond the first "
            f"{budget.free:,} characters (twice EMBEDDINGS_MAX_INPUT_CHARS) a request may "
            f"have at most {limits.max_chars_per_token} characters per token "
            f"(EMBEDDINGS_MAX_CHARS_PER_TOKEN). Send fewer or shorter inputs per request, or "
            f"remove what holds no words: long unbroken strings (base64 data, long URLs, "
            f"minified code) or runs of whitespace, accents or symbols (text in a "
            f"script written without spaces, such as Thai or Khmer, gives this model few "
            f"tokens: a run of over 100 characters is one [UNK]).", target)
    if item.starved == "words":
        raise errors.validation(
            f"The request's text has too many long words that are no token of the model's "
            f"vocabulary ({budget.unk_words:,} so far, each read as [UNK]): finding that out "
            f"is what costs the tokenizer most (a word of 100 letters costs it as much as ~300 "
            f"characters of prose). Send fewer or shorter inputs per request, or remove such "
            f"words (long runs of letters, or of a script the model has no tokens for).", target)
    body = item.body()
    if len(body) <= limits.room:
        return body
    if truncate == "NONE":
        exact = item.lo >= item.hi
        n = len(body)
        if not exact and len(item.text) <= EXACT_COUNT_CHARS:   # bounded: one input, 8 K chars
            n, exact = len(encode_batch([item.text])[0].ids), True
        raise errors.input_too_long(target, n + limits.extra, limits.max_tokens,
                                    at_least=not exact)
    return body[:limits.room] if truncate == "END" else body[len(body) - limits.room:]
