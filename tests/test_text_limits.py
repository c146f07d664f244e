"""Tokenising is bounded by characters as well as tokens (embedding_core/bounded_tokenize.py).

The work is measured in characters handed to the tokenizer (deterministic), never in seconds.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import make_service, post
from embedding_core import bounded_tokenize
from embedding_core.errors import ApiError
from embedding_core.settings import Settings

MB8 = 8_000_000


class Counting:
    """The real tokenizer, counting the characters handed to it."""

    def __init__(self, real):
        self.real, self.chars = real, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def encode(self, s, *a, **k):
        self.chars += len(s)
        return self.real.encode(s, *a, **k)

    def encode_batch(self, xs, *a, **k):
        self.chars += sum(map(len, xs))
        return self.real.encode_batch(xs, *a, **k)

    def encode_batch_fast(self, xs, *a, **k):
        self.chars += sum(map(len, xs))
        return self.real.encode_batch_fast(xs, *a, **k)


@pytest.fixture
def counted(text_backend, monkeypatch):
    c = Counting(text_backend.tokenizer)
    monkeypatch.setattr(text_backend, "tokenizer", c)
    return c


def refused(fn, *args, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kw)
    return info.value


LIMIT = Settings().max_input_chars
PER_TOKEN = Settings().max_chars_per_token


# -- one huge string with (almost) no tokens ------------------------------------------------------

@pytest.mark.parametrize("text", ["a" * MB8, "a" + "\u0301" * (MB8 // 2), "1234567890" * (MB8 // 10),
                                  "\U0001F468\u200D\U0001F469" * (MB8 // 10)],
                         ids=["no spaces", "combining accents", "digits", "emoji ZWJ"])
@pytest.mark.parametrize("truncate", ["NONE", "END", "START"])
def test_a_huge_string_without_words_is_refused_after_reading_a_bounded_piece(
        text_backend, counted, text, truncate):
    err = refused(text_backend.tokenize, ["fine", text], truncate=truncate)
    assert (err.status, err.code, err.target) == (422, "InvalidParameter", "input[1]")
    assert "EMBEDDINGS_MAX_INPUT_CHARS" in err.message and f"{LIMIT:,}" in err.message
    assert f"{len(text):,} characters" in err.message
    # Pieces grow x4 from the same place while no word is complete: at most 4/3 of the limit.
    assert counted.chars <= LIMIT * 4 // 3 + 1024


@pytest.mark.parametrize("truncate", ["END", "START"])
def test_a_long_attachment_in_a_short_text_is_refused_saying_what_to_remove(text_backend,
                                                                          truncate):
    """A few words and a base64 attachment past the per-input limit: its first (or last) 65,536
    characters give 6 tokens, so even with truncate it is refused (what lies beyond is never
    read), with a hint that names the usual cause (found by a new-user walkthrough, h_user6)."""
    blob = "QUJD" * (LIMIT // 4 + 120)
    for text in ("see attachment: " + blob, blob + " see attachment"):
        err = refused(text_backend.tokenize, [text], truncate=truncate)
        assert (err.status, err.code, err.target) == (422, "InvalidParameter", "input[0]")
        assert "base64 data" in err.message and "truncated or not" in err.message, err.message
    fits = "see attachment: " + blob[:LIMIT - 1000]          # under the limit: embedded
    assert len(text_backend.tokenize([fits], truncate=truncate)[0]) < 16


def test_the_per_input_limit_is_a_setting():
    service = make_service(EMBEDDINGS_MAX_INPUT_CHARS="2048")
    res = post(service, {"input": ["ok", "x" * 5000], "truncate": "END"},
               headers={"extra-parameters": "pass-through"})
    body = res.json()["error"]
    assert res.status == 422 and res.headers["x-ms-error-code"] == "InvalidParameter"
    assert body["code"] == "InvalidParameter" and body["target"] == "input[1]"
    assert "EMBEDDINGS_MAX_INPUT_CHARS" in body["message"] and "2,048" in body["message"]
    assert "first 2,048 hold no complete word" in body["message"]   # not "give only 0 tokens"
    # Under the limit the same kind of text is fine: 2,000 characters are one [UNK].
    ok = post(service, {"input": ["x" * 2000]})
    assert ok.status == 200 and ok.json()["usage"]["prompt_tokens"] == 3


def test_settings_are_validated():
    assert Settings.from_env({}).max_input_chars == 65536
    assert Settings.from_env({}).max_chars_per_token == 32
    with pytest.raises(ValueError, match="EMBEDDINGS_MAX_INPUT_CHARS"):
        Settings.from_env({"EMBEDDINGS_MAX_INPUT_CHARS": "100"})
    with pytest.raises(ValueError, match="EMBEDDINGS_MAX_CHARS_PER_TOKEN"):
        Settings.from_env({"EMBEDDINGS_MAX_CHARS_PER_TOKEN": "0"})


# -- many inputs ---------------------------------------------------------------------------------

def _fill(unit: str, nbytes: int = 4088) -> str:
    return unit * (nbytes // len(unit.encode()))


@pytest.mark.parametrize("unit", ["\u0301", "\U0001F468\u200D\U0001F469\u200D\U0001F467",
                                  "".join(chr(0xAC00 + 7 * i) for i in range(300))],
                         ids=["combining accents", "emoji ZWJ", "Hangul without spaces"])
def test_many_inputs_with_few_tokens_are_refused_once_they_cost_the_allowance(
        text_backend, counted, unit):
    inputs = ["a" + _fill(unit)] * 2048         # 8 MiB of JSON: one token each, ~2-4 K characters
    err = refused(text_backend.tokenize, inputs, truncate="END")
    assert (err.status, err.code) == (422, "InvalidParameter")
    assert err.target.startswith("input[")
    assert "EMBEDDINGS_MAX_CHARS_PER_TOKEN" in err.message and f"{PER_TOKEN} characters" in err.message
    # At most the allowance plus 32 characters per token found, plus one round of pieces.
    assert counted.chars <= 2 * LIMIT + PER_TOKEN * 2048 + bounded_tokenize.GROUP * 4 * text_backend.piece_chars


@pytest.mark.parametrize("word", ["x" * 99 + "\u02ac", "\u0436" * 99 + "\u02ac",
                                  "\ud55c" * 33 + "\u02ac"], ids=["ASCII", "Cyrillic", "Hangul"])
def test_words_that_are_no_token_have_a_budget_of_their_own(text_backend, counted, word):
    """A word of up to 100 (normalised) characters ending in a character the vocabulary lacks is
    one [UNK], found only after WordPiece has searched all its prefixes: 259 µs for 100 ASCII
    characters, 574 for Cyrillic, 794 for 33 Hangul syllables (99 jamo after NFD), against
    ~0.8 µs a character of prose. 2,048 inputs of 34 such words and 92 one-character tokens stay
    under 32 characters a token, so they were all read: 19-25 s of tokenizer CPU and a 422 over
    the token cap (ASCII), 51 s and accepted (Hangul). Their cost now has a budget of its own."""
    inputs = [("qz" * 46) + " " + (word + " ") * 34] * 2048
    assert text_backend.tokenizer.real.encode(word, add_special_tokens=False).ids == [
        text_backend.unk_id]
    err = refused(text_backend.tokenize, inputs, truncate="END")
    assert (err.status, err.code) == (422, "InvalidParameter")
    assert "too many long words that are no token" in err.message
    assert counted.chars < sum(map(len, inputs)) // 5     # ASCII: 0.94 M of 7.2 M (all, before)


def test_ordinary_text_with_unknown_words_is_within_that_budget(text_backend):
    """Emoji are one-character [UNK]s; Khmer (no spaces inside phrases) gives this model one
    [UNK] per run of 30-60 characters: 2,048 such paragraphs are still accepted."""
    emoji = ["Launch day \U0001F680 went well \U0001F389 for the team. " * 20] * 2048
    assert all(len(x) <= 256 for x in text_backend.tokenize(emoji, truncate="END"))
    khmer = " ".join(["\u1796\u17d2\u179a\u17c7\u179a\u17b6\u1787\u17b6\u178e\u17b6"
                      "\u1785\u1780\u17d2\u179a\u1780\u1798\u17d2\u1796\u17bb\u1787\u17b6" * 2] * 4)
    assert len(text_backend.tokenize([khmer] * 2048, truncate="END")) == 2048


@pytest.mark.parametrize("unit", ["!", "".join(chr(0x4E00 + i) for i in range(500)), "x" * 99 + " "],
                         ids=["punctuation", "CJK", "99-letter words"])
@pytest.mark.parametrize("truncate", ["END", "START"])
def test_dense_text_is_read_only_as_far_as_the_token_limit(text_backend, counted, unit, truncate):
    """A token per character or two: only a few hundred characters of each input are read."""
    inputs = [_fill(unit)] * 256           # one group; 2048 such inputs read 8 times as much
    ids = text_backend.tokenize(inputs, truncate=truncate)
    assert all(len(x) == 256 for x in ids)
    assert counted.chars <= 256 * 3 * text_backend.piece_chars      # vs 4 K each before
    whole = text_backend.tokenizer.real.encode(inputs[0], add_special_tokens=False).ids
    assert ids[0][1:-1].tolist() == (whole[:254] if truncate == "END" else whole[-254:])


def test_normal_text_within_the_limits_is_unaffected(text_backend, counted):
    """Prose at the token limit: every character is read once (and the last partial word of a
    piece twice), all accepted."""
    words = ("The quick brown fox jumps over the lazy dog while the committee reviews "
             "its quarterly budget and the weather stays mild. ").split()
    inputs = [" ".join(words[(i + k) % len(words)] for k in range(200)) for i in range(512)]
    ids = text_backend.tokenize(inputs, truncate="END")
    assert all(len(x) <= 256 for x in ids)
    assert counted.chars <= sum(map(len, inputs)) * 1.05


# -- behaviour kept ------------------------------------------------------------------------------

def test_a_refused_input_is_counted_exactly_when_it_is_not_huge(text_backend):
    text = "word " * 600                                       # 602 tokens with [CLS]/[SEP]
    err = refused(text_backend.tokenize, [text])
    assert err.code == "InputTooLong" and "The input has 602 tokens" in err.message
    huge = "word " * 100_000
    err = refused(text_backend.tokenize, ["ok", huge])
    assert err.code == "InputTooLong" and err.target == "input[1]" and "at least" in err.message


def test_pieces_give_exactly_the_tokens_of_the_whole_text(text_backend):
    """Cutting at words is exact: random texts of awkward pieces (accents, control and zero-width
    characters, CJK, long words, emoji, runs of spaces), tokenised a few characters at a time."""
    atoms = ["hello", "naïve", "e\u0301", "\u0301", " ", "  ", "\n", "\t", ",", "!!", "你", "好",
             "\u200b", "\x1c", "\x00", "x" * 99, "y" * 120, "д" * 30, "가나다", "😀",
             "\U0001F468\u200D\U0001F469", "ΣΑΣ", "İ", "ﬃ", "\u3000", "\u00a0", "a.b", "1234", "'s"]
    tok = text_backend.tokenizer
    enc = lambda xs: tok.encode_batch(xs, add_special_tokens=False)  # noqa: E731
    rng = random.Random(7)
    for _ in range(150):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 300)))
        whole = tok.encode(text, add_special_tokens=False).ids
        room = rng.choice([3, 20, 254])
        limits = bounded_tokenize.Limits(room=room, extra=2, max_tokens=room + 2,
                                         first_piece=rng.choice([8, 32, 256]),
                                         max_input_chars=1 << 20, max_chars_per_token=1 << 10)
        for truncate in ("END", "START"):
            got = bounded_tokenize.tokenize_texts(enc, {0: text}, truncate, limits)[0]
            expected = whole if len(whole) <= room else \
                whole[:room] if truncate == "END" else whole[-room:]
            assert got.tolist() == expected, (truncate, room, text)
            assert got.dtype == np.int64


def test_an_input_whose_first_piece_fills_the_room_exactly_is_still_too_long(text_backend):
    """The first 256-character piece of ``"a " + "," * 400`` gives exactly the 254 tokens of
    room (the comma at the cut is left for the next piece): reading must go on, so with
    truncate NONE the input is refused, counted exactly, not silently cut as if it fitted."""
    text = "a " + "," * 400
    assert text_backend.piece_chars == 256 < len(text)
    err = refused(text_backend.tokenize, [text])
    assert (err.status, err.code, err.target) == (422, "InputTooLong", "input[0]")
    assert err.context_length == (403, 256, False)      # [CLS] a ,x400 [SEP]
    assert len(text_backend.tokenize([text], truncate="END")[0]) == 256


def test_a_piece_is_cut_to_what_is_left_of_the_requests_allowance(text_backend):
    """What a request hands the tokenizer never passes its allowance: a piece bigger than what is
    left is cut to it. Ten inputs of combining accents (no token at all), pieces of 300
    characters, 2,048 free: six pieces take 1,800, the seventh is cut to 248, then the 422."""
    tok = text_backend.tokenizer
    enc = lambda xs: tok.encode_batch(xs, add_special_tokens=False)  # noqa: E731
    limits = bounded_tokenize.Limits(room=254, extra=2, max_tokens=256, first_piece=300,
                                     max_input_chars=1024, max_chars_per_token=32)
    with pytest.raises(ApiError) as info:
        bounded_tokenize.tokenize_texts(enc, {i: "\u0301" * 1000 for i in range(10)}, "END", limits)
    assert (info.value.status, info.value.code) == (422, "InvalidParameter")
    assert "the tokenizer read 2,048 characters and found 0 tokens" in info.value.message, \
        info.value.message


def test_the_first_bad_input_in_request_order_is_reported(text_backend):
    """A bad token-id input before a text refused for its characters is the one reported."""
    err = refused(text_backend.tokenize, [[101, 10**9, 102], "a" * MB8])
    assert err.target == "input[0][1]"
    err = refused(text_backend.tokenize, [[101, 2000, 102], "a" * MB8, [10**9]])
    assert err.target == "input[1]" and "EMBEDDINGS_MAX_INPUT_CHARS" in err.message


def test_text_without_tokens_is_cls_sep_within_the_character_limits(text_backend):
    """Whitespace is embedded as ``[CLS] [SEP]`` (sentence-transformers does the same), but only
    as far as the service reads: past EMBEDDINGS_MAX_INPUT_CHARS of nothing it is refused."""
    pair = [text_backend.cls_id, text_backend.sep_id]
    ids = text_backend.tokenize(["\n", " " * 65_536, "\u200b\t" * 1000])
    assert [x.tolist() for x in ids] == [pair] * 3
    with pytest.raises(ApiError) as e:
        text_backend.tokenize(["ok", " " * 65_537])
    assert e.value.status == 422 and e.value.target == "input[1]"
    assert "EMBEDDINGS_MAX_INPUT_CHARS" in e.value.message


def test_a_request_of_text_without_spaces_is_told_to_send_fewer_inputs(text_backend):
    """A script written without spaces (Khmer here) gives this model one [UNK] per run of over 100
    characters: a request of many such paragraphs passes the per-request budget, and the 422
    says what to do about it."""
    paragraph = ("ព្រះរាជាណាចក្រកម្ពុជា" * 200)[:2880]   # 2,880 characters, no spaces
    text_backend.tokenize([paragraph] * 10)                # a few are fine
    with pytest.raises(ApiError) as e:
        text_backend.tokenize([paragraph] * 60)
    assert e.value.status == 422 and "fewer or shorter inputs per request" in e.value.message
    assert "EMBEDDINGS_MAX_CHARS_PER_TOKEN" in e.value.message


def test_a_request_over_the_token_cap_holds_at_most_the_cap_while_it_is_tokenised(monkeypatch):
    """What a request may cost is held against later requests while it is tokenised; one over
    EMBEDDINGS_MAX_REQUEST_TOKENS can only end in a 422, so it holds no more than the cap, not
    its whole estimate (h_mut1: 2,048 long inputs held ~528k tokens, every other request a 429
    meanwhile)."""
    svc = make_service(EMBEDDINGS_MAX_REQUEST_TOKENS="1000", EMBEDDINGS_MAX_QUEUE_TOKENS="1000")
    held = []
    real = svc.queue.precheck
    monkeypatch.setattr(svc.queue, "precheck",
                        lambda costs, likely=None: held.append(dict(likely)) or real(costs, likely))
    try:
        res = post(svc, {"input": ["word " * 200] * 8})        # 8 x 202 tokens
        assert res.status == 422 and "EMBEDDINGS_MAX_REQUEST_TOKENS" in res.body.decode()
        assert held == [{"tokens": 1000}]
        assert svc.queue.stats().preparing == {}
    finally:
        svc.queue.stop()
