"""The text backend: WordPiece tokenizer + an ONNX transformer + pooling, micro-batched.

Token limit handling is ours (the shipped tokenizer.json has truncation and padding to 128 baked
in; both are switched off): an over-long input is refused with ``InputTooLong`` unless the client
asked for ``truncate: END|START``. Batches are padded to their longest member only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from . import errors
from .backends import Encoded, Prepared, Work, one_off, run_inline
from .bounded_tokenize import Limits, tokenize_texts
from .onnx_session import SessionPair, create_session, release_arena_when_idle
from .openvino_session import long_inputs, pad_width
from .pooling import POOLING, l2_normalize
from .registry import Deployment, load_failed, note_load_failure
from .settings import Settings

log = logging.getLogger(__name__)

TRUNCATE_VALUES = ("NONE", "END", "START")
_EMPTY = np.zeros(0, dtype=np.int64)


def check_truncate_extras(extras: dict[str, Any], deployment: str, what: str = "") -> dict[str, Any]:
    """Pass-through extras of deployments that tokenise text: ``truncate`` and nothing else."""
    out: dict[str, Any] = {"truncate": "NONE"}
    for key, value in extras.items():
        if key != "truncate":
            raise errors.unsupported_parameter(
                f"Parameter '{errors.clip(key)}' is not supported by deployment "
                f"'{deployment}'. Supported extra parameters: truncate{what}.", target=key)
        if value is None:            # null is the default, as for every optional field
            continue
        if not isinstance(value, str) or value.upper() not in TRUNCATE_VALUES:
            raise errors.validation(
                "'truncate' must be one of " + ", ".join(f'"{v}"' for v in TRUNCATE_VALUES)
                + ".", target="truncate")
        out["truncate"] = value.upper()
    return out


class TextBackend:
    def __init__(self, deployment: Deployment, settings: Settings, registry: Any = None):
        from tokenizers import Tokenizer

        self.deployment = deployment
        self.settings = settings
        self._failed_until: dict[str, float] = {}   # what failed to load -> when to try again
        self._failures: dict[str, tuple[str, float, bool]] = {}   # note_load_failure's history
        self._long_lock = threading.Lock()            # the long-input model's first compile
        model_checked = deployment.files["model"].verifying()   # while the tokenizer loads
        self.max_tokens = deployment.max_tokens or 512
        tok = Tokenizer.from_file(str(deployment.files["tokenizer"].verified()))
        tok.no_truncation()
        tok.no_padding()
        self.tokenizer = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        opts = deployment.options
        self.cls_id = tok.token_to_id(opts.get("cls_token", "[CLS]"))
        self.sep_id = tok.token_to_id(opts.get("sep_token", "[SEP]"))
        self.pad_id = tok.token_to_id(opts.get("pad_token", "[PAD]")) or 0
        # Words that are no token (WordPiece's [UNK]) have a tokenising budget of their own,
        # measured as WordPiece sees them (bounded_tokenize): finding that out costs it most.
        unk = getattr(tok.model, "unk_token", None)
        self.unk_id = tok.token_to_id(unk) if unk else None
        self._normalize = tok.normalizer.normalize_str if tok.normalizer else None
        self._max_word = int(getattr(tok.model, "max_input_chars_per_word", 100) or 100)
        for name, token_id in (("cls_token", self.cls_id), ("sep_token", self.sep_id)):
            if token_id is None:  # a registry entry copied from another model: fail the load
                raise ValueError(f"{deployment.name}: options.{name} "
                                 f"{opts.get(name, '[CLS]' if name == 'cls_token' else '[SEP]')!r}"
                                 " is not in the tokenizer's vocabulary")
        self.pool = POOLING[opts.get("pooling", "mean")]
        # A deployment may cap its micro-batch (1 for models whose output depends on the batch).
        self.max_batch_size = min(settings.max_batch_size,
                                  int(opts.get("max_batch_size", settings.max_batch_size)))
        # The queue's Lane: items of this deployment share batches under the token budget.
        self.key = ("text", deployment.name)
        self.unit = "tokens"
        self.max_batch_items = self.max_batch_size
        self.batch_budget = settings.batch_token_budget
        # The service's concurrency comes from requests: the tokenizer's own thread pool only
        # adds CPU (measured: 32 sentences 1.39 ms of CPU in parallel, 0.87 ms serially).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Verified here, so a damaged file fails the load (503); its sessions are created on
        # first use (onnx_session.SessionPair): a first request of long inputs only, which run
        # on OpenVINO, does not wait 0.2-0.3 s for them.
        model = model_checked()
        self.input_names: frozenset[str] = frozenset()   # the model's, once a session exists
        self.output_name: str | None = opts.get("output")

        def make_session(threads: int | None = None) -> Any:
            with self._loading("model"):
                session = create_session(model, settings, threads=threads)
            self.input_names = frozenset(i.name for i in session.get_inputs())
            if self.output_name is None:
                self.output_name = session.get_outputs()[0].name
            tiny = np.asarray([[self.cls_id, self.sep_id]], dtype=np.int64)
            release_arena_when_idle(session, feeds(self.input_names, tiny, np.ones_like(tiny)),
                                    settings)
            return session
        # With one inference worker on several cores, many small concurrent requests run on a
        # one-thread session (onnx_session.SessionPair); pointless where the sessions have one
        # thread already (one worker per core, the default).
        self.sessions = SessionPair(make_session, (lambda: make_session(1))
                                    if settings.ort_small_batch_thread
                                    and settings.session_threads > 1 else None)
        # The cap on one run's padded tokens is per thread: a run on n threads splits its
        # activations over n cores' caches.
        self.max_run_tokens = MAX_RUN_TOKENS * max(1, settings.session_threads)
        # Long inputs may run elsewhere (openvino_session: OpenVINO in bf16 where the CPU has
        # AMX and memory enough); within a process, which runtime embeds an input depends only
        # on its own length.
        self.long = long_inputs(opts, deployment.files, settings, deployment.name)
        self._prefixes = {t: np.asarray(tok.encode(p, add_special_tokens=False).ids, dtype=np.int64)
                          for t, p in deployment.prompts.items() if p}
        # Strings up to this many characters are tokenised whole; longer ones a piece at a time
        # (bounded_tokenize). Small, so dense text (a token per character) is not over-read.
        self.piece_chars = int(opts.get("piece_chars", max(256, self.max_tokens)))
        log.info("loaded text deployment %s", deployment.name)

    def loaded(self) -> bool:
        return True

    @contextlib.contextmanager
    def _loading(self, what: str) -> Iterator[None]:
        """A model loaded on first use (by an inference worker) that fails to load answers the
        batch's requests as a failed deployment load does (registry.Registry.backend): 503
        ModelUnavailable with Retry-After, not 500, and the failure is remembered for that long,
        so that the batches meanwhile are answered at once instead of trying again."""
        retry = self.settings.retry_after_s
        name = self.deployment.name
        failed = load_failed(name, self._failed_until, self._failures, what, retry)
        if failed is not None:
            raise failed  # failed moments ago
        try:
            yield
        except Exception:  # noqa: BLE001 - any load failure is a 503 for the client
            note_load_failure(self._failed_until, self._failures, what, retry,
                              "deployment %s: its %s failed to load", self.deployment.name, what,
                              logger=log)
            raise load_failed(name, self._failed_until, self._failures, what,
                              retry) or errors.model_unavailable(name, retry) from None
        self._failures.pop(what, None)

    def load_failed(self) -> bool:
        """Whether a part loaded on first use (a session, the long-input model) failed its
        last load (GET /health)."""
        return bool(self._failures)

    # -- extras ---------------------------------------------------------------------------------
    def check_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        return check_truncate_extras(extras, self.deployment.name)

    # -- tokenisation ---------------------------------------------------------------------------
    def tokenize(self, inputs: Sequence[str | list[int]], *, input_type: str = "text",
                 truncate: str = "NONE") -> list[np.ndarray]:
        """Token ids per input: ``[CLS] prompt-prefix body [SEP]``, within the token limit.

        Only the body (the client's text or ids) is truncated. Text is read from the end that is
        kept, a piece at a time, only until it has enough tokens, and within the character limits
        of :mod:`.bounded_tokenize` (``EMBEDDINGS_MAX_INPUT_CHARS``,
        ``EMBEDDINGS_MAX_CHARS_PER_TOKEN``); refusing a huge input reports "at least N tokens".
        """
        prefix = self._prefixes.get(input_type, _EMPTY)
        room = self.max_tokens - 2 - len(prefix)
        limits = Limits(room=room, extra=len(prefix) + 2, max_tokens=self.max_tokens,
                        first_piece=self.piece_chars,
                        max_input_chars=self.settings.max_input_chars,
                        max_chars_per_token=self.settings.max_chars_per_token,
                        unk_id=self.unk_id, normalize=self._normalize,
                        max_word=self._max_word)
        texts = {i: x for i, x in enumerate(inputs) if isinstance(x, str)}
        try:
            # encode_batch, not encode_batch_fast: cutting pieces at words needs the offsets.
            bodies = tokenize_texts(
                lambda xs: self.tokenizer.encode_batch(xs, add_special_tokens=False),
                texts, truncate, limits) if texts else {}
        except errors.ApiError as exc:
            # Token-id inputs before the failing text come first (the first bad input is reported).
            failed = int(exc.target[len("input["):-1]) if exc.target else len(inputs)
            for i in range(failed):
                if not isinstance(inputs[i], str):
                    self._checked(self._token_body(inputs[i], i), i, room, truncate, prefix)
            raise
        return [self._checked(bodies[i] if i in bodies else self._token_body(x, i), i, room,
                              truncate, prefix) for i, x in enumerate(inputs)]

    def body_tokens(self, ids: np.ndarray, input_type: str = "text") -> int:
        """How many of :meth:`tokenize`'s ``ids`` for one input are its own (no special tokens,
        no prompt): 0 for text the tokenizer drops entirely."""
        return len(ids) - 2 - len(self._prefixes.get(input_type, _EMPTY))

    def _checked(self, body: np.ndarray, i: int, room: int, truncate: str,
                 prefix: np.ndarray) -> np.ndarray:
        """``[CLS] prefix body [SEP]`` with the body cut to ``room`` (or the error for input i).

        A body without tokens (whitespace, characters the tokenizer drops) is embedded as
        ``[CLS] prefix [SEP]``, as sentence-transformers does."""
        if len(body) > room:
            if truncate == "NONE":
                raise errors.input_too_long(f"input[{i}]", len(body) + len(prefix) + 2,
                                            self.max_tokens)
            body = body[:room] if truncate == "END" else body[len(body) - room:]
        return np.concatenate(([self.cls_id], prefix, body, [self.sep_id])).astype(np.int64)

    def _token_body(self, tokens: list[int], i: int) -> np.ndarray:
        arr = np.asarray(tokens, dtype=np.int64)
        bad = np.flatnonzero((arr < 0) | (arr >= self.vocab_size))
        if bad.size:
            j = int(bad[0])
            raise errors.validation(
                f"Token id {int(arr[j])} is outside the vocabulary of deployment "
                f"'{self.deployment.name}' (0..{self.vocab_size - 1}).", target=f"input[{i}][{j}]")
        # Token ids are the tokenizer's WordPiece ids; [CLS]/[SEP] around them are optional.
        if len(arr) >= 2 and arr[0] == self.cls_id and arr[-1] == self.sep_id:
            arr = arr[1:-1]
        return arr

    # -- inference ------------------------------------------------------------------------------
    def prepare(self, inputs: Sequence[Any], *, input_type: str = "text",
                extras: dict[str, Any] | None = None, deadline: float | None = None) -> Prepared:
        truncate = (extras or {}).get("truncate", "NONE")
        ids = self.tokenize(inputs, input_type=input_type, truncate=truncate)
        tokens = int(sum(len(x) for x in ids))
        return Prepared([self.work(ids)], lambda outputs: Encoded(outputs[0], tokens),
                        inputs=len(ids))

    def encode(self, inputs: Sequence[Any], *, input_type: str = "text",
               extras: dict[str, Any] | None = None) -> Encoded:
        return run_inline(self.prepare(inputs, input_type=input_type, extras=extras))

    def work(self, ids: Sequence[np.ndarray]) -> Work:
        """Token-id arrays as queue items of this backend's lane (cost: their lengths)."""
        return Work(self, list(ids), [len(x) for x in ids])

    def embed_ids(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors of token-id arrays, run here in micro-batches (scripts and tests)."""
        return run_inline(Prepared([self.work(ids)], lambda outputs: Encoded(outputs[0], 0))).vectors

    # -- the Lane: one micro-batch ----------------------------------------------------------------
    def run(self, payloads: Sequence[np.ndarray], requests: int = 1) -> np.ndarray:
        """L2-normalised vectors of one batch of token-id arrays; ``requests``: how many
        requests have items in the batch (picks the session). The batch runs as one or more
        ONNX Runtime runs of similar lengths (:func:`length_groups`), each padded to its
        longest: the rows do not depend on what they are run with. With a long-input runtime,
        inputs of ``long.from_tokens`` tokens or more run there instead (:meth:`_run_long`)."""
        if self.long is None:
            return self._run_short(payloads, requests)
        long_rows = [i for i, x in enumerate(payloads) if len(x) >= self.long.from_tokens]
        if not long_rows:
            return self._run_short(payloads, requests)
        out = self._run_long([payloads[i] for i in long_rows])
        if len(long_rows) == len(payloads):
            return out
        short_rows = sorted(set(range(len(payloads))) - set(long_rows))
        short = self._run_short([payloads[i] for i in short_rows], requests)
        full = np.empty((len(payloads), *out.shape[1:]), dtype=out.dtype)
        full[long_rows], full[short_rows] = out, short
        return full

    def _run_long(self, payloads: Sequence[np.ndarray]) -> np.ndarray:
        """Runs of similar lengths on the long-input runtime, each padded to a multiple of 16
        tokens (openvino_session.pad_width), of at most ``long.max_run_tokens`` padded tokens."""
        lengths = [len(x) for x in payloads]
        order = sorted(range(len(payloads)), key=lengths.__getitem__)
        widths = [pad_width(lengths[i]) for i in order]
        out: np.ndarray | None = None
        for lo, hi in length_groups(widths, self.long.max_run_tokens):
            rows = order[lo:hi]
            names = self._long_input_names()
            vecs = self._run_padded([payloads[i] for i in rows], self.long.session, names,
                                    widths[hi - 1])
            if out is None:
                out = np.empty((len(payloads), *vecs.shape[1:]), dtype=vecs.dtype)
            out[rows] = vecs
        return out

    def _long_input_names(self) -> frozenset[str]:
        """The long-input model's input names; the first call compiles it. Until it is compiled,
        one worker at a time checks the remembered failure and compiles, so a worker that waited
        for a compile that failed gets its 503 at once instead of compiling again; once it is
        compiled, no failure is checked (a later success is not hidden by an earlier failure)."""
        session = self.long.session
        if not session.compiled:
            with one_off(), self._long_lock, self._loading("long-input model"):
                return session.input_names
        return session.input_names

    def _run_short(self, payloads: Sequence[np.ndarray], requests: int) -> np.ndarray:
        lengths = [len(x) for x in payloads]
        order = sorted(range(len(payloads)), key=lengths.__getitem__)
        sorted_lengths = [lengths[i] for i in order]
        groups = length_groups(sorted_lengths, self.max_run_tokens)
        # One session for the whole batch, chosen on the batch's padded tokens (not each run's).
        session = self.sessions.pick(sum((hi - lo) * sorted_lengths[hi - 1] for lo, hi in groups),
                                     requests)
        out: np.ndarray | None = None
        for lo, hi in groups:
            rows = order[lo:hi]
            vecs = self._run_padded([payloads[i] for i in rows], session, self.input_names)
            if out is None:
                out = np.empty((len(payloads), *vecs.shape[1:]), dtype=vecs.dtype)
            out[rows] = vecs
        return out

    def _run_padded(self, payloads: Sequence[np.ndarray], session: Any,
                    input_names: frozenset[str], width: int | None = None) -> np.ndarray:
        lengths = [len(x) for x in payloads]
        width = max(max(lengths), width or 0)
        input_ids = np.full((len(payloads), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(payloads), width), dtype=np.int64)
        for row, x in enumerate(payloads):
            input_ids[row, : lengths[row]] = x
            mask[row, : lengths[row]] = 1
        hidden = session.run([self.output_name], feeds(input_names, input_ids, mask))[0]
        vecs = hidden if hidden.ndim == 2 else self.pool(hidden, mask)
        return l2_normalize(vecs)


def feeds(input_names: frozenset[str], input_ids: np.ndarray, mask: np.ndarray
          ) -> dict[str, np.ndarray]:
    """A BERT-style model's inputs: ids, attention mask and, if it takes them, token types."""
    out = {"input_ids": input_ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        out["token_type_ids"] = np.zeros_like(input_ids)
    return out


# The cost of one ONNX Runtime run of ``rows`` inputs padded to ``width`` tokens, in units of one
# token's work: a fixed cost per run (about 300 operators; 1.5-1.8 ms measured here, the work of
# about 16-24 tokens) plus rows x width tokens, each dearer as the width grows (attention).
RUN_OVERHEAD_TOKENS = 16.0
ATTENTION_WIDTH = 768.0
# At most this many padded tokens per run and session thread (an input longer than that runs
# alone). A token costs 10-20 % more in larger runs, once a run's activations outgrow a core's L2
# cache: the FFN's are 1,536 floats (6 KB) per token, 1.5 MB at 256 tokens; the cores here have
# 2 MB each. Measured with one thread per run (docs/inference-queue.md): 4 inputs of 256 tokens
# cost 196 us a token in one run and 174 us in four; mixed lengths served 15 % faster end to end,
# short ones the same.
MAX_RUN_TOKENS = 256


def run_cost(rows: int, width: int) -> float:
    return RUN_OVERHEAD_TOKENS + rows * width * (1.0 + width / ATTENTION_WIDTH)


def length_groups(lengths: Sequence[int],
                  max_run_tokens: int = MAX_RUN_TOKENS) -> list[tuple[int, int]]:
    """Cut ``lengths`` (ascending) into runs [lo, hi) of least total :func:`run_cost`: a batch
    mixing a few long inputs with many short ones pads the short ones to the longest; run apart,
    they cost their own length (exact: optimal contiguous partition). No run of several inputs
    exceeds ``max_run_tokens`` padded tokens, so a run ending at ``hi`` starts at most
    ``max_run_tokens // width`` inputs before it: O(n * max_run_tokens / width)."""
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for hi in range(1, n + 1):
        width = lengths[hi - 1]
        for lo in range(max(0, hi - max(1, max_run_tokens // max(1, width))), hi):
            c = best[lo] + run_cost(hi - lo, width)
            if c < best[hi]:
                best[hi], cut[hi] = c, lo
    groups = []
    hi = n
    while hi > 0:
        groups.append((cut[hi], hi))
        hi = cut[hi]
    return groups[::-1]
