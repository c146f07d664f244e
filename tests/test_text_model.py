"""The served text models against committed sentence-transformers fp32 references, and the
behaviour users rely on: batch independence, stable integers, retrieval quality per encoding."""

from __future__ import annotations

import base64
import contextlib
import json
import sys

import numpy as np
import pytest

from conftest import (DATA, LONG_INPUTS, LONG_INPUTS_PREAMBLE, ROOT, long_inputs_on_openvino,
                      needs_long_inputs)
from embedding_core.encodings import FORMATS, encode, to_ubinary, to_uint8
from embedding_core.errors import ApiError


DEFAULT, EXACT = "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-exact"
DEPLOYMENTS = [DEFAULT, EXACT]


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def any_backend(request, registry):
    return registry.backend(registry.find(request.param))


@pytest.fixture(scope="module")
def heldout() -> dict:
    """200 held-out stdlib docstrings (11 to 256+ tokens) with sentence-transformers fp32 vectors,
    made by scripts/make_heldout_reference.py."""
    doc = json.loads((DATA / "minilm_heldout_reference.json").read_text(encoding="utf-8"))
    doc["vectors"] = np.stack([np.frombuffer(base64.b64decode(e), "<f4") for e in doc["embeddings_f32"]])
    return doc


def _cosines(backend, texts, ref) -> np.ndarray:
    vecs = backend.encode(texts, extras={"truncate": "END"}).vectors
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    return np.sum(vecs * np.asarray(ref, dtype=np.float32), axis=1)


def test_default_model_meets_its_fidelity_targets(registry, reference, heldout):
    """Per-token int8: min >= 0.995, median >= 0.999 against sentence-transformers fp32
    (measured on the 1,000 held-out texts: min 0.99863, median 0.99948)."""
    backend = registry.backend(registry.find(DEFAULT))
    cos = np.concatenate([_cosines(backend, reference["texts"], reference["embeddings"]),
                          _cosines(backend, heldout["texts"], heldout["vectors"])])
    assert len(cos) == 225
    assert cos.min() >= 0.995 and np.median(cos) >= 0.999, (cos.min(), np.median(cos))


def test_exact_model_is_within_0_9999_of_sentence_transformers(registry, reference, heldout):
    """fp32 arithmetic from fp16-stored weights (measured: min 0.9999996 on 1,000 texts)."""
    backend = registry.backend(registry.find(EXACT))
    cos = np.concatenate([_cosines(backend, reference["texts"], reference["embeddings"]),
                          _cosines(backend, heldout["texts"], heldout["vectors"])])
    assert cos.min() >= 0.9999, cos.min()


def test_default_model_on_short_inputs(registry):
    """The held-out texts are docstring paragraphs of 5-60 words; short inputs lose more (mean
    pooling over few tokens averages little of the per-token rounding away). Against the exact
    deployment (within 0.9999996 of sentence-transformers), tests/data/short_inputs.json, as the
    README states it: one word min 0.99355 ("thanks"), median 0.99905; two words min 0.99791;
    everyday sentences min 0.99698, median 0.99917."""
    spec = json.loads((DATA / "short_inputs.json").read_text(encoding="utf-8"))
    default = registry.backend(registry.find(DEFAULT))
    exact = registry.backend(registry.find(EXACT))
    got = {}
    for kind in ("one_word", "two_words", "sentences"):
        cos = np.sum(default.encode(spec[kind]).vectors * exact.encode(spec[kind]).vectors, axis=1)
        got[kind] = (round(float(cos.min()), 4), round(float(np.median(cos)), 4))
    assert got["one_word"][0] >= 0.993 and got["two_words"][0] >= 0.997, got
    assert got["sentences"][0] >= 0.996, got
    assert min(median for _, median in got.values()) >= 0.998, got


def test_fast_names_are_aliases_of_the_default(registry):
    for name in ("all-MiniLM-L6-v2-fast", "minilm-fast", "minilm", "text-embedding"):
        assert registry.find(name).name == DEFAULT
    assert registry.find("minilm-exact").name == EXACT
    assert "max_batch_size" not in registry.find(DEFAULT).options


def test_default_model_cannot_saturate_on_cpus_without_vnni(registry):
    """Every integer product is uint8 activations x int8 weights, and no two weights that MLAS's
    vpmaddubsw kernels (AVX2/AVX-512 without VNNI) add in 16 bits - rows 2i and 2i+1 of a column -
    exceed 128 together with the same sign: 255 * 128 < 32,767. (7-bit or unconstrained 8-bit
    weights make this fail; scripts/check_non_vnni.py shows the kernel saturating for them.)"""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(registry.find(DEFAULT).files["model"].verified()))
    inits = {i.name: i for i in model.graph.initializer}
    products = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat",
                                                               "DynamicQuantizeMatMul", "QAttention")]
    assert len(products) == 36 and {n.op_type for n in products} == {"MatMulIntegerToFloat"}
    worst = 0
    for n in products:
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.int64)
        assert numpy_helper.to_array(inits[n.input[1]]).dtype == np.int8, n.name
        assert w.shape[0] % 2 == 0
        a, b = w[0::2], w[1::2]
        pair = np.maximum(np.maximum(a, 0) + np.maximum(b, 0), -(np.minimum(a, 0) + np.minimum(b, 0)))
        worst = max(worst, int(pair.max()))
        zp = numpy_helper.to_array(inits[n.input[4]])
        assert zp.dtype == np.uint8 and zp.size == 1, n.name        # scalar activation zero point
    assert worst <= 128, worst
    assert worst > 64   # 8-bit, not 7-bit (reduce_range) weights


def test_the_performance_model_names_every_activation_zero_point_of_the_shipped_model(registry):
    """docs/performance-model.md's "The scheme" gives the quantisation of every weight MatMul:
    each activation zero point the shipped model uses (128, and 16 for FFN-out) is named there."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(registry.find(DEFAULT).files["model"].verified()))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = {int(numpy_helper.to_array(inits[n.input[4]])) for n in model.graph.node
                   if n.op_type == "MatMulIntegerToFloat"}
    assert zero_points == {128, 16}
    doc = (ROOT / "docs" / "performance-model.md").read_text(encoding="utf-8")
    scheme = doc.split("\n### The scheme\n", 1)[1].split("\n### ", 1)[0]
    assert all(f"zero point {z}" in scheme for z in zero_points), sorted(zero_points)


def test_token_counts_match_the_reference_tokenizer(text_backend, reference):
    ids = text_backend.tokenize(reference["texts"], truncate="END")
    expected = [min(n, 256) for n in reference["tokens_untruncated"]]
    assert [len(x) for x in ids] == expected


def test_paraphrases_are_closer_than_unrelated_pairs(any_backend):
    spec = json.loads((DATA / "reference_texts.json").read_text(encoding="utf-8"))
    v = any_backend.encode(spec["texts"], extras={"truncate": "END"}).vectors
    para = [float(v[a] @ v[b]) for a, b in spec["paraphrases"]]
    unrelated = [float(v[a] @ v[b]) for a, b in spec["unrelated"]]
    assert min(para) > max(unrelated), (para, unrelated)


def test_output_in_a_batch_equals_batch_of_one(any_backend, reference):
    texts = reference["texts"]
    batched = any_backend.encode(texts, extras={"truncate": "END"}).vectors
    for i, text in enumerate(texts):
        alone = any_backend.encode([text], extras={"truncate": "END"}).vectors[0]
        assert np.abs(alone - batched[i]).max() <= 1e-5, text


def test_small_token_budget_gives_the_same_vectors(registry, reference):
    """Micro-batch sizing changes padding and grouping, never the result."""
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    dep = registry.default_for("text")
    tiny = TextBackend(dep, Settings.from_env({"EMBEDDINGS_BATCH_TOKEN_BUDGET": "256",
                                              "EMBEDDINGS_MAX_BATCH_SIZE": "3"}), registry)
    big = registry.backend(dep)
    texts = reference["texts"]
    a = tiny.encode(texts, extras={"truncate": "END"}).vectors
    b = big.encode(texts, extras={"truncate": "END"}).vectors
    assert np.abs(a - b).max() <= 1e-5


def test_length_groups_cut_only_where_padding_costs_more_than_a_run():
    from embedding_core.text import length_groups

    assert length_groups([20] * 12) == [(0, 12)]                      # nothing to gain
    assert length_groups([18, 19, 20, 21, 22, 61, 144]) == [(0, 5), (5, 6), (6, 7)]
    assert length_groups([20, 21, 22, 23]) == [(0, 4)]                # a run costs more
    groups = length_groups(sorted([18 + (i * 7) % 40 for i in range(32)]))
    assert groups[0][0] == 0 and groups[-1][1] == 32
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))       # contiguous, in order


def test_length_groups_keep_each_run_within_the_run_token_cap():
    """Runs of several inputs stay within MAX_RUN_TOKENS padded tokens (larger runs outgrow the
    cache and cost more per token); an input longer than the cap runs alone."""
    from embedding_core.text import MAX_RUN_TOKENS, length_groups

    for lengths in ([20] * 32, [128] * 8, sorted([18 + (i * 37) % 239 for i in range(32)]), [300, 300, 400]):
        groups = length_groups(lengths)
        assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
        for lo, hi in groups:
            assert hi - lo == 1 or (hi - lo) * lengths[hi - 1] <= MAX_RUN_TOKENS, (lengths, groups)
    assert len(length_groups([20] * 32)) == 3                            # 640 tokens: three runs
    assert length_groups([128] * 8) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert length_groups([300, 300]) == [(0, 1), (1, 2)]


def test_a_batch_of_mixed_lengths_runs_in_groups_and_each_row_is_as_alone(text_backend, registry):
    """Short inputs in one batch with a long one are not padded to its length: the batch runs
    as ONNX Runtime runs of similar lengths; each row equals its input run alone (float within
    1e-5, int8 identical). (ONNX Runtime only here: the long-input runtime is tested below.)"""
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    text_backend = TextBackend(text_backend.deployment,
                               Settings.from_env({"EMBEDDINGS_LONG_INPUT_RUNTIME": "onnxruntime"}),
                               registry)
    texts = ["A short one.", "Another short sentence.", "Cats sleep.",
             " ".join(["a much longer input about rivers and trains"] * 20), "Hi there."]
    ids = text_backend.tokenize(texts, truncate="END")
    widths = []
    real_pick = text_backend.sessions.pick

    class Counting:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            widths.append(feeds["input_ids"].shape)
            return self.session.run(names, feeds)
    text_backend.sessions.pick = lambda tokens, requests: Counting(real_pick(tokens, requests))
    try:
        batch = text_backend.run(ids, requests=1)
    finally:
        del text_backend.sessions.pick
    longest = max(len(x) for x in ids)
    assert sorted(widths) == [(1, longest), (4, max(len(ids[i]) for i in (0, 1, 2, 4)))]
    alone = np.concatenate([text_backend.run([x]) for x in ids])
    assert np.abs(batch - alone).max() <= 1e-5
    lo, hi = registry.calibration(text_backend.deployment).get(384)
    assert np.array_equal(to_uint8(batch, lo, hi), to_uint8(alone, lo, hi))


def test_int8_is_identical_alone_and_inside_a_batch_of_50(any_backend, registry, reference):
    text_backend = any_backend
    lo, hi = registry.calibration(any_backend.deployment).get(384)
    others = [f"Filler sentence number {i} about {w}." for i, w in
              enumerate(["rivers", "trains", "music", "chess", "volcanoes"] * 10)]
    target = reference["texts"][2]
    alone = to_uint8(text_backend.encode([target]).vectors, lo, hi)[0]
    batch = others[:25] + [target] + others[25:]
    in_batch = to_uint8(text_backend.encode(batch).vectors, lo, hi)[25]
    assert np.array_equal(alone, in_batch)
    assert len(set(alone.tolist())) > 20  # real spread over the range, not a degenerate vector


def test_every_encoding_is_identical_alone_and_in_any_batch(any_backend, registry, reference, heldout):
    """The 25 reference texts alone, then shuffled among 1 to 60 held-out texts of other lengths
    (other neighbours, other padding), also with tiny micro-batches: float within 1e-5 and
    int8/uint8/binary/ubinary codes identical."""
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    texts = reference["texts"]
    ranges = registry.calibration(any_backend.deployment).get(384)
    alone = np.stack([any_backend.encode([t], extras={"truncate": "END"}).vectors[0] for t in texts])
    tiny = TextBackend(any_backend.deployment, Settings.from_env({"EMBEDDINGS_BATCH_TOKEN_BUDGET": "300",
                                                                  "EMBEDDINGS_MAX_BATCH_SIZE": "3"}), registry)
    rng = np.random.default_rng(8)
    for trial, extra in enumerate((1, 7, 31, 60)):
        others = [heldout["texts"][i] for i in rng.choice(len(heldout["texts"]), extra, replace=False)]
        order = rng.permutation(len(texts) + extra)
        batch = [(texts + others)[i] for i in order]
        backend = tiny if trial % 2 else any_backend
        got = backend.encode(batch, extras={"truncate": "END"}).vectors[np.argsort(order)[: len(texts)]]
        assert np.abs(got - alone).max() <= 1e-5, trial
        for fmt in FORMATS[2:]:
            assert np.array_equal(np.asarray(encode(got, fmt, ranges)), np.asarray(encode(alone, fmt, ranges))), fmt


def _rank1_accuracy(q: np.ndarray, d: np.ndarray, sim) -> float:
    return float(np.mean(np.argmax(sim(q, d), axis=1) == np.arange(len(q))))


def test_retrieval_with_int8_and_binary_is_about_as_good_as_float(any_backend, registry):
    spec = json.loads((DATA / "retrieval.json").read_text(encoding="utf-8"))
    q = any_backend.encode(spec["queries"]).vectors
    d = any_backend.encode(spec["documents"]).vectors
    lo, hi = registry.calibration(any_backend.deployment).get(384)

    float_acc = _rank1_accuracy(q, d, lambda a, b: a @ b.T)
    int8 = lambda x: to_uint8(x, lo, hi).astype(np.float32) - 128.0  # noqa: E731
    int8_acc = _rank1_accuracy(int8(q), int8(d), lambda a, b: a @ b.T)
    bits = lambda x: np.unpackbits(to_ubinary(x), axis=1).astype(np.int32)  # noqa: E731
    hamming = lambda a, b: -(a[:, None, :] != b[None, :, :]).sum(-1)  # noqa: E731
    binary_acc = _rank1_accuracy(bits(q), bits(d), hamming)
    print(f"{any_backend.deployment.name}: rank-1 accuracy on {len(q)} queries: float {float_acc:.3f}, int8 {int8_acc:.3f}, "
          f"binary {binary_acc:.3f}")
    assert float_acc >= 0.9
    assert int8_acc >= float_acc - 1 / len(q)
    # 384 sign bits keep most, not all, of the ranking (measured: 28 of 32 vs 32 of 32).
    assert binary_acc >= 0.85 * float_acc


def test_default_retrieves_what_the_exact_model_retrieves(registry):
    spec = json.loads((DATA / "retrieval.json").read_text(encoding="utf-8"))
    top = {}
    for name in DEPLOYMENTS:
        backend = registry.backend(registry.find(name))
        q, d = backend.encode(spec["queries"]).vectors, backend.encode(spec["documents"]).vectors
        top[name] = np.argmax(q @ d.T, axis=1)
    assert np.array_equal(top[EXACT], np.arange(len(spec["queries"])))       # 32/32
    assert np.array_equal(top[DEFAULT], top[EXACT])


def test_default_ranks_held_out_docstrings_as_the_exact_model_does(registry):
    """A harder set than retrieval.json's 32 pairs: each held-out docstring's first sentence
    against the rest of every docstring (~510; sentence-transformers puts the right one first
    for ~42 %). Measured on Python 3.11.7: rank-1 213 against 214 of 511 (4 queries right only
    with -exact, 3 only with the default), the same first document for 495, MRR 0.5566 against
    0.5579; on 3.12.1's docstrings 213 and 213 of 510, 497 the same."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from measure_minilm_fidelity import retrieval_pairs

    pairs = retrieval_pairs()
    n = len(pairs["queries"])
    assert n >= 400
    top, rank1, mrr = {}, {}, {}
    for name in DEPLOYMENTS:
        backend = registry.backend(registry.find(name))
        scores = backend.encode(pairs["queries"]).vectors @ backend.encode(pairs["documents"]).vectors.T
        own = scores[np.arange(n), np.arange(n)]
        top[name] = np.argmax(scores, axis=1)
        ranks = np.sum(scores > own[:, None], axis=1) + 1     # one rule for rank-1 and MRR
        rank1[name] = int(np.sum(ranks == 1))
        mrr[name] = float(np.mean(1.0 / ranks))
    assert rank1[EXACT] >= 0.35 * n
    assert abs(rank1[DEFAULT] - rank1[EXACT]) <= max(2, n // 100), rank1
    assert np.sum(top[DEFAULT] == top[EXACT]) >= 0.95 * n
    assert abs(mrr[DEFAULT] - mrr[EXACT]) <= 0.005, mrr


@pytest.mark.parametrize("truncate", ["END", "START"])
def test_truncation_keeps_the_right_end(text_backend, truncate):
    words = [f"w{i}" for i in range(400)]
    text = " ".join(words)
    ids = text_backend.tokenize([text], truncate=truncate)[0]
    assert len(ids) == 256 and ids[0] == text_backend.cls_id and ids[-1] == text_backend.sep_id
    full = text_backend.tokenize([text], truncate="END")[0] if truncate == "END" else None
    start_ids = text_backend.tokenizer.encode(text, add_special_tokens=False).ids
    expected = start_ids[:254] if truncate == "END" else start_ids[-254:]
    assert ids[1:-1].tolist() == expected
    assert full is None or len(full) == 256
    # Token-id inputs are cut at the same end (texts are cut while tokenised, ids afterwards).
    assert text_backend.tokenize([start_ids], truncate=truncate)[0].tolist() == ids.tolist()


def test_token_id_input_equals_text_input(text_backend):
    text = "Token ids give the same vector as the text they came from."
    plain = text_backend.tokenizer.encode(text, add_special_tokens=False).ids
    with_special = [text_backend.cls_id, *plain, text_backend.sep_id]
    v_text = text_backend.encode([text]).vectors[0]
    v_ids = text_backend.encode([plain]).vectors[0]
    v_ids_special = text_backend.encode([with_special]).vectors[0]
    assert np.abs(v_text - v_ids).max() <= 1e-6
    assert np.abs(v_text - v_ids_special).max() <= 1e-6


def _long_text(n_words: int) -> str:
    vocab = ["alpha", "beta,", "gamma.", "delta-epsilon", "zeta's", "(eta)", "theta:", "naïve"]
    return " ".join(f"{vocab[i % len(vocab)]}{i % 97}" for i in range(n_words))


@pytest.mark.parametrize("truncate", ["END", "START"])
def test_huge_inputs_are_truncated_exactly_as_whole_tokenisation(text_backend, truncate):
    text = _long_text(6000)  # about 45,000 characters, far over the piece size
    assert len(text) > text_backend.piece_chars
    whole = text_backend.tokenizer.encode(text, add_special_tokens=False).ids
    body = whole[:254] if truncate == "END" else whole[-254:]
    got = text_backend.tokenize([text], truncate=truncate)[0]
    assert got.tolist() == [text_backend.cls_id, *body, text_backend.sep_id]


def test_huge_input_without_truncation_is_refused_with_a_lower_bound(text_backend):
    with pytest.raises(ApiError) as e:
        text_backend.tokenize(["ok", "word " * 1_600_000])
    assert e.value.code == "InputTooLong" and e.value.target == "input[1]"
    assert "at least" in e.value.message and "256" in e.value.message


def test_an_over_long_token_id_input_counts_its_special_tokens(text_backend):
    """The count in the 422 (and in the OpenAI route's "you requested N tokens") is the one the
    limit is checked on: the ids plus [CLS] and [SEP], as for a text."""
    with pytest.raises(ApiError) as e:
        text_backend.tokenize(["ok", [1000] * 300])
    assert e.value.code == "InputTooLong" and e.value.target == "input[1]"
    assert "302 tokens" in e.value.message and "256" in e.value.message, e.value.message


def test_a_deployments_max_batch_size_caps_its_batches(registry):
    """``options.max_batch_size`` (1 for a model whose output depends on its batch) is what
    the queue batches that deployment by, below EMBEDDINGS_MAX_BATCH_SIZE."""
    import dataclasses

    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    dep = registry.default_for("text")
    one = dataclasses.replace(dep, options={**dep.options, "max_batch_size": 1})
    assert TextBackend(one, Settings.from_env({}), registry).max_batch_items == 1
    assert TextBackend(dep, Settings.from_env({}), registry).max_batch_items == \
        Settings.from_env({}).max_batch_size


def test_a_model_giving_token_vectors_is_mean_pooled_over_its_mask():
    """A registry entry that reads a model's ``last_hidden_state`` ([batch, sequence, 384]) is
    mean-pooled over the attention mask and normalised in Python (``pooling``); the shipped
    models pool in their graph, so only this reaches it. The exact model read both ways, in one
    padded batch of texts of different lengths and each text alone, gives the same vectors."""
    from conftest import registry_of, shipped_deployments

    dep = next(d for d in shipped_deployments() if d["name"] == EXACT)
    hidden = {**dep, "name": "exact-hidden", "aliases": [], "default": False,
              "options": {**dep["options"], "output": "last_hidden_state", "pooling": "mean"}}
    reg = registry_of([dep, hidden])
    texts = ["a", "a small test of mean pooling", "Mean pooling over the attention mask must not "
             "count the padding a batch of texts of different lengths adds to its shorter rows.",
             "ok"]
    want = reg.backend(reg.find(EXACT)).encode(texts).vectors
    pooled = reg.backend(reg.find("exact-hidden"))
    got = pooled.encode(texts).vectors
    assert got.shape == want.shape == (4, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.sum(got * want, axis=1).min() >= 0.99999
    alone = np.stack([pooled.encode([t]).vectors[0] for t in texts])
    assert np.allclose(alone, got, atol=1e-5)


def test_text_without_tokens_is_embedded_as_sentence_transformers_does(any_backend, reference):
    """Whitespace or a zero-width space gives no WordPiece token: ``[CLS] [SEP]`` is embedded,
    as sentence-transformers does (and OpenAI embeds such text), rather than failing the whole
    request. ``[CLS] [SEP]`` sent as token ids is the same input."""
    blank = reference["no_token_texts"]
    assert reference["no_token_tokens"] == [2] * len(blank)
    pair = [any_backend.cls_id, any_backend.sep_id]
    assert [x.tolist() for x in any_backend.tokenize(["fine", *blank, "\x00\x01"])[1:]] == \
        [pair] * (len(blank) + 1)
    fine = any_backend.encode(["fine"]).prompt_tokens
    out = any_backend.encode(["fine", *blank, pair])
    assert out.prompt_tokens == fine + 2 * (len(blank) + 1)
    vecs = out.vectors[1:]
    cos = vecs @ np.asarray(reference["no_token_embeddings"][0], dtype=np.float32)
    # each deployment's per-text target (the default: 0.99713 measured)
    assert cos.min() >= (0.9999 if any_backend.deployment.name == EXACT else 0.995), cos
    assert np.abs(vecs - vecs[0]).max() == 0


def test_prompt_prefix_applies_to_text_and_token_ids_and_survives_truncation(registry):
    import dataclasses

    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    dep = dataclasses.replace(registry.default_for("text"), prompts={"query": "query: "})
    b = TextBackend(dep, Settings.from_env({}), registry)
    prefix = b.tokenizer.encode("query: ", add_special_tokens=False).ids
    text = "where is the station"
    ids = b.tokenizer.encode(text, add_special_tokens=False).ids
    as_text = b.tokenize([text], input_type="query")[0].tolist()
    assert as_text == [b.cls_id, *prefix, *ids, b.sep_id]
    assert b.tokenize([ids], input_type="query")[0].tolist() == as_text
    assert b.tokenize([text], input_type="document")[0].tolist() == [b.cls_id, *ids, b.sep_id]
    long_ids = b.tokenize([_long_text(400)], input_type="query", truncate="START")[0].tolist()
    assert len(long_ids) == 256 and long_ids[1:1 + len(prefix)] == prefix


# -- long inputs: OpenVINO in bf16 on CPUs with AMX (embedding_core/openvino_session.py) ---------

def _long_on_openvino() -> bool:
    """Whether long inputs run on OpenVINO here: AMX, and memory enough (openvino_session)."""
    from embedding_core.openvino_session import why_not_here
    return why_not_here() is None


@pytest.fixture(scope="module")
def long_backend(registry):
    """The default deployment with its long inputs on OpenVINO (AMX claimed where the CPU has
    only avx512_bf16: conftest.long_inputs_on_openvino)."""
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend
    with long_inputs_on_openvino():
        backend = TextBackend(registry.find(DEFAULT), Settings.from_env({}), registry)
    assert backend.long is not None
    return backend


@pytest.fixture(scope="module")
def ort_only(registry):
    """The default deployment with its long inputs on ONNX Runtime too, by the setting: built
    with AMX claimed where the tests claim it, so that only the setting keeps them there."""
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend
    with long_inputs_on_openvino() if LONG_INPUTS else contextlib.nullcontext():
        return TextBackend(registry.find(DEFAULT),
                           Settings.from_env({"EMBEDDINGS_LONG_INPUT_RUNTIME": "onnxruntime"}),
                           registry)


def test_long_inputs_runtime_follows_the_cpu_and_the_setting(text_backend, ort_only):
    assert (text_backend.long is not None) == _long_on_openvino()
    assert ort_only.long is None
    from embedding_core.settings import Settings
    with pytest.raises(ValueError, match="EMBEDDINGS_LONG_INPUT_RUNTIME"):
        Settings.from_env({"EMBEDDINGS_LONG_INPUT_RUNTIME": "openvino"})


@pytest.mark.parametrize("usable_mb, on_openvino", [(784, False), (1535, False), (1536, True),
                                                    (2320, True), (None, True)])
def test_long_inputs_stay_on_onnx_runtime_where_memory_is_small(registry, monkeypatch, caplog,
                                                               usable_mb, on_openvino):
    """On a CPU with AMX, OpenVINO would hold ~225 MiB more for the process's life and peak at
    ~730 MiB in the soak: a 512 MB Flex instance (784 MB with the platform's 272) or a small
    container keeps its long inputs on ONNX Runtime. Nothing is compiled here."""
    from embedding_core import openvino_session, settings as settings_module
    from embedding_core.settings import Settings
    monkeypatch.setattr(openvino_session, "cpu_flags", lambda: {"avx2", openvino_session.AMX_FLAG})
    monkeypatch.setattr(settings_module, "usable_memory",
                        lambda: None if usable_mb is None else usable_mb << 20)
    dep = registry.find(DEFAULT)
    with caplog.at_level("INFO", logger="embedding_core.openvino_session"):
        long = openvino_session.long_inputs(dep.options, dep.files, Settings.from_env({}),
                                            dep.name)
    assert (long is not None) == on_openvino
    if not on_openvino:
        assert (f"may use {usable_mb} MiB of memory, less than the 1536 MiB that OpenVINO is "
                "used with; long inputs run on ONNX Runtime") in caplog.text


def test_a_deployment_with_long_inputs_must_name_its_output(registry):
    from embedding_core.openvino_session import long_inputs
    from embedding_core.settings import Settings
    dep = registry.find(DEFAULT)
    options = {k: v for k, v in dep.options.items() if k != "output"}
    with pytest.raises(ValueError, match="options.output"):
        long_inputs(options, dep.files, Settings.from_env({}), dep.name)


def test_a_damaged_long_input_model_is_refused_by_its_checksum(tmp_path):
    """The long-input model is read while its checksum is computed; a damaged file fails on the
    checksum, not on whatever OpenVINO's reader makes of it."""
    from embedding_core.openvino_session import OpenVinoSession
    from embedding_core.registry import FileRef
    from embedding_core.settings import Settings
    damaged = tmp_path / "model.onnx"
    damaged.write_bytes(b"\x08\x07" + b"\x00" * 1000)
    session = OpenVinoSession(FileRef(damaged, "0" * 64, None), Settings.from_env({}))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        session.run(["sentence_embedding"], {})
    assert session.release_memory() is False   # nothing was compiled


@needs_long_inputs
def test_a_long_input_runs_outputs_are_its_own_after_the_next_run(registry):
    """Each thread reuses one infer request: the vectors a run returned stay as they were when
    the thread runs again (OpenVINO would otherwise hand out its output buffer, rewritten)."""
    from embedding_core.openvino_session import OpenVinoSession
    from embedding_core.settings import Settings
    dep = registry.find(DEFAULT)
    session = OpenVinoSession(dep.files[dep.options["long_inputs"]["file"]],
                              Settings.from_env({"EMBEDDINGS_MEMORY_TUNING": "false"}))

    def run(token: int) -> np.ndarray:
        ids = np.full((2, 160), token, np.int64)
        return session.run(["sentence_embedding"], {"input_ids": ids,
                                                    "attention_mask": np.ones_like(ids),
                                                    "token_type_ids": np.zeros_like(ids)})[0]
    first = run(7)
    kept = first.copy()
    second = run(2000)
    assert not np.allclose(first, second, atol=1e-3)
    assert np.array_equal(first, kept)


@needs_long_inputs
def test_a_first_request_of_long_inputs_only_does_not_load_the_short_input_model(registry,
                                                                                  ort_only):
    """The int8 model's ONNX Runtime session is created on the first short input, so a cold
    process whose first request has only long inputs (OpenVINO's) does not wait for it."""
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend
    with long_inputs_on_openvino():
        backend = TextBackend(registry.find(DEFAULT), Settings.from_env({}), registry)
    rng = np.random.default_rng(8)
    long_ids = backend.tokenize([rng.integers(1000, 29000, 200).tolist()])
    long_vec = backend.run(long_ids)
    assert backend.sessions._wide is None
    short_ids = backend.tokenize(["A short sentence about trains."])
    assert np.array_equal(backend.run(short_ids), ort_only.run(short_ids))
    assert backend.sessions._wide is not None
    assert np.array_equal(backend.run(long_ids), long_vec)


def test_openvino_runs_are_padded_to_multiples_of_16_tokens(tmp_path):
    from embedding_core.openvino_session import cpu_flags, pad_width
    assert [pad_width(n) for n in (1, 16, 32, 33, 128, 129, 144, 145, 256)] == \
        [32, 32, 32, 48, 128, 144, 144, 160, 256]
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert {"amx_bf16", "avx2"} <= cpu_flags(str(info))
    assert cpu_flags(str(tmp_path / "missing")) == set()


@needs_long_inputs
def test_long_inputs_are_within_0_9999_and_short_ones_unchanged(long_backend, ort_only, heldout):
    """Held-out texts of 129+ tokens run the exact model in bf16 (measured: min cosine 0.99996
    against sentence-transformers, against 0.99892 for the int8 model); shorter ones are bitwise
    what ONNX Runtime gives."""
    texts = heldout["texts"]
    lengths = np.array([len(x) for x in long_backend.tokenize(texts, truncate="END")])
    long_ = lengths >= long_backend.long.from_tokens
    assert 20 <= long_.sum() < len(texts)
    got = long_backend.encode(texts, extras={"truncate": "END"}).vectors
    ort = ort_only.encode(texts, extras={"truncate": "END"}).vectors
    cos = np.sum(got * heldout["vectors"], axis=1)
    assert cos[long_].min() >= 0.9999, cos[long_].min()
    assert np.array_equal(got[~long_], ort[~long_])
    assert (got[long_] != ort[long_]).any(axis=1).all()   # really another runtime


@needs_long_inputs
def test_the_runtime_is_chosen_by_the_input_length_alone(long_backend, ort_only):
    """An input of 128 tokens runs on ONNX Runtime and one of 129 on OpenVINO, whatever batch
    they are in: alone, together, with 1-token and 256-token neighbours."""
    rng = np.random.default_rng(3)
    body = lambda n: rng.integers(1000, 29000, n).tolist()               # noqa: E731
    ids = long_backend.tokenize([body(126), body(127), body(254), body(1)])  # 128, 129, 256, 3
    assert [len(x) for x in ids] == [128, 129, 256, 3]
    alone = np.concatenate([long_backend.run([x]) for x in ids])
    ort = np.concatenate([ort_only.run([x]) for x in ids])
    assert np.array_equal(alone[[0, 3]], ort[[0, 3]])
    assert (alone[[1, 2]] != ort[[1, 2]]).any(axis=1).all()
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0], [2, 1]):
        batch = long_backend.run([ids[i] for i in order])
        assert np.array_equal(batch, alone[order]), order


# A child process runs 1,024-token runs on the long-input runtime, then the idle hooks
# (memory.on_idle, as the idle trimmer runs them) and malloc_trim, and reports RSS and vectors.
IDLE_CHILD = r"""
import json, sys
import numpy as np
from embedding_core import memory
from embedding_core.registry import Registry
from embedding_core.settings import Settings
from embedding_core.text import TextBackend

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

settings = Settings.from_env({})
memory.configure(True, 2, 3600.0)
registry = Registry.from_settings(settings)
backend = TextBackend(registry.find("all-MiniLM-L6-v2"), settings, registry)
session = backend.long.session
before_compile = session.release_memory()
rng = np.random.default_rng(5)
ids = [rng.integers(1000, 29000, n).tolist() for n in (254, 250, 240, 230, 200, 170, 140, 254)]
batch = [backend.tokenize([x])[0] for x in ids]
first = backend.run(batch)
for _ in range(3):
    backend.run(batch)
memory.trim()
busy = rss()
memory._run_idle_hooks()
memory.trim()
idle = rss()
again = backend.run(batch)
print(json.dumps({"before_compile": before_compile, "busy": busy, "idle": idle,
                  "released": session.release_memory(), "same": bool(np.array_equal(first, again))}))
"""


@needs_long_inputs
def test_the_long_input_runtime_gives_its_run_buffers_back_when_idle():
    """OpenVINO keeps the buffers of its largest runs (~35 MB after 1,024-token runs) until the
    process goes idle; the idle hooks give them back, and the next run's vectors are the same."""
    import subprocess
    import sys
    from pathlib import Path
    res = subprocess.run([sys.executable, "-c", LONG_INPUTS_PREAMBLE + IDLE_CHILD],
                         cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["before_compile"] is False and got["released"] is True, got
    assert got["busy"] - got["idle"] >= 15, got
    assert got["same"], got


@needs_long_inputs
def test_releasing_the_long_input_runtime_while_it_runs_is_skipped_not_raised(registry):
    """The idle hook may race a run that started just after the process went idle: OpenVINO
    refuses then, and the release is skipped (False) rather than raising into the trimmer."""
    import threading
    import time
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend
    with long_inputs_on_openvino():
        backend = TextBackend(registry.find(DEFAULT), Settings.from_env({}), registry)
    rng = np.random.default_rng(6)
    batch = [backend.tokenize([rng.integers(1000, 29000, 254).tolist()])[0] for _ in range(4)]
    alone = backend.run(batch)
    stop = threading.Event()
    outs = []

    def keep_running() -> None:
        while not stop.is_set():
            outs.append(backend.run(batch))
    runner = threading.Thread(target=keep_running)
    runner.start()
    results = []
    deadline = time.monotonic() + 10
    try:
        while False not in results and time.monotonic() < deadline:
            results.append(backend.long.session.release_memory())
            time.sleep(0.005)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert False in results
    assert outs and all(np.array_equal(o, alone) for o in outs)


# Four threads run their first inference on a freshly compiled long-input model at the same
# moment, while a fifth keeps the GIL busy.
FIRST_RUNS_CHILD = r"""
import os, threading, time
import numpy as np
from embedding_core.openvino_session import OpenVinoSession
from embedding_core.registry import Registry
from embedding_core.settings import Settings

settings = Settings.from_env({})
dep = Registry.from_settings(settings).find("all-MiniLM-L6-v2")
session = OpenVinoSession(dep.files[dep.options["long_inputs"]["file"]], settings)
session._compile()
ids = np.full((2, 160), 7, np.int64)
feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
start = threading.Barrier(5)
done = []
stop = []

def first_run():
    start.wait()
    done.append(session.run(["sentence_embedding"], feeds)[0])

def busy():
    start.wait()
    while not stop:
        sum(range(1000))

for target in [first_run] * 4 + [busy]:
    threading.Thread(target=target, daemon=True).start()
deadline = time.monotonic() + 20
while len(done) < 4 and time.monotonic() < deadline:
    time.sleep(0.05)
stop.append(1)
print("ok" if len(done) == 4 and all(np.array_equal(d, done[0]) for d in done) else "stuck",
      flush=True)
os._exit(0)
"""


@needs_long_inputs
def test_concurrent_first_runs_on_the_long_input_runtime_do_not_deadlock():
    """Before the model was warmed up on one thread, two workers' first runs deadlocked inside
    OpenVINO's Python binding in 3 of 8 such processes (every later request hung); each child
    below must finish its four runs, with equal vectors, within 20 s."""
    import subprocess
    import sys
    from pathlib import Path
    for _ in range(3):
        res = subprocess.run([sys.executable, "-c", FIRST_RUNS_CHILD], timeout=90,
                             cwd=Path(__file__).parent.parent, capture_output=True, text=True)
        assert res.stdout.strip() == "ok", (res.stdout, res.stderr[-2000:])


IMPORT_CHILD = r"""
import json, sys
from embedding_core.openvino_session import import_openvino
ov = import_openvino()
loaded = sorted(m for m in ("openvino.tools.ovc", "openvino_telemetry") if m in sys.modules)
dep_file = "embedding_core/models/all-MiniLM-L6-v2-exact/model.onnx"
inputs = sorted(p.get_any_name() for p in ov.Core().read_model(dep_file).inputs)
converter = None
if len(sys.argv) > 1:   # the converter can still be imported afterwards
    from openvino.tools.ovc import convert_model
    converter = callable(convert_model)
print(json.dumps({"loaded": loaded, "inputs": inputs, "converter": converter}))
"""


def _import_child(*args: str, path: str | None = None) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([path, str(Path(__file__).parent.parent)])
    res = subprocess.run([sys.executable, "-c", IMPORT_CHILD, *args], env=env, timeout=120,
                         cwd=Path(__file__).parent.parent, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_openvino_is_imported_without_its_model_converter():
    """The first long input waits for ``import openvino``: without the converter (and its
    telemetry, which imports urllib and http.client) that import takes 0.07 s here instead of
    0.20 s."""
    pytest.importorskip("openvino")
    got = _import_child()
    assert got["loaded"] == [] and got["inputs"] == ["attention_mask", "input_ids",
                                                     "token_type_ids"], got
    assert _import_child("converter")["converter"] is True


def test_an_openvino_that_needs_its_converter_is_imported_whole(tmp_path):
    # A stand-in package whose __init__ requires the converter (no try/except around it).
    pkg = tmp_path / "openvino"
    (pkg / "tools" / "ovc").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from openvino.tools.ovc import convert_model\n"
        "class Core:\n"
        "    def read_model(self, path):\n"
        "        class M:\n"
        "            inputs = []\n"
        "        return M()\n")
    (pkg / "tools" / "__init__.py").write_text("")
    (pkg / "tools" / "ovc" / "__init__.py").write_text("def convert_model(): pass\n")
    got = _import_child(path=str(tmp_path))
    assert got["loaded"] == ["openvino.tools.ovc"] and got["inputs"] == [], got


# What the long-input path is given and how it is built (h_mut8's sweep: vectors alone did not
# show these).

@needs_long_inputs
def test_long_inputs_run_sorted_padded_and_in_runs_of_at_most_max_run_tokens(long_backend,
                                                                          monkeypatch):
    """What OpenVINO is given for a mixed batch of long inputs: runs of similar lengths, each
    padded to a multiple of 16 tokens (pad_width), of at most long.max_run_tokens (1,024)
    padded tokens, whatever the order of the inputs; the vectors come back in input order.
    (On CPUs without AMX rows do not depend on their padding, so only the shapes tell.)"""
    b = long_backend
    rng = np.random.default_rng(11)
    lengths = [256, 150, 256, 130, 256, 256, 200]
    ids = b.tokenize([rng.integers(1000, 29000, n - 2).tolist() for n in lengths])
    assert [len(x) for x in ids] == lengths
    session = b.long.session
    shapes: list[tuple[int, int]] = []
    real_run = session.run

    def spy(output_names, feeds):
        shapes.append(feeds["input_ids"].shape)
        assert feeds["attention_mask"].dtype == np.int64
        return real_run(output_names, feeds)
    monkeypatch.setattr(session, "run", spy)
    got = b.run(ids)
    # 130 -> 144, 150 -> 160, 200 -> 208; four of 256 in one run of 1,024 tokens.
    assert sorted(shapes) == [(1, 144), (1, 160), (1, 208), (4, 256)], shapes
    shapes.clear()
    alone = np.concatenate([b.run([x]) for x in ids])
    assert sorted(shapes) == sorted([(1, 144), (1, 160), (1, 208)] + [(1, 256)] * 4), shapes
    assert np.array_equal(got, alone)


def test_long_inputs_options_are_checked_and_honoured(registry, monkeypatch, caplog):
    """On a CPU with AMX (claimed) and memory enough: a runtime other than openvino-bf16 is a
    registry error; the registry's max_run_tokens is used; EMBEDDINGS_LONG_INPUT_RUNTIME=
    onnxruntime keeps long inputs on ONNX Runtime (the fixture ort_only cannot tell on a CPU
    without AMX: there long inputs stay on ONNX Runtime anyway); without the openvino package long
    inputs stay on ONNX Runtime (with a warning) rather than failing on the first long input."""
    import importlib.util

    from embedding_core import openvino_session, settings as settings_module
    from embedding_core.settings import Settings
    monkeypatch.setattr(openvino_session, "cpu_flags", lambda: {"avx2", openvino_session.AMX_FLAG})
    monkeypatch.setattr(settings_module, "usable_memory", lambda: None)
    dep = registry.find(DEFAULT)
    settings = Settings.from_env({})
    spec = dep.options["long_inputs"]

    def options(**changes):
        return {**dep.options, "long_inputs": {**spec, **changes}}
    with pytest.raises(ValueError, match="long_inputs.runtime"):
        openvino_session.long_inputs(options(runtime="openvino-fp32"), dep.files, settings,
                                     dep.name)
    long = openvino_session.long_inputs(options(max_run_tokens=512), dep.files, settings, dep.name)
    assert long is not None and (long.from_tokens, long.max_run_tokens) == (129, 512)
    assert not long.session.compiled                 # nothing compiled here
    off = Settings.from_env({"EMBEDDINGS_LONG_INPUT_RUNTIME": "onnxruntime"})
    assert openvino_session.long_inputs(dep.options, dep.files, off, dep.name) is None
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real_find_spec(name, *a))
    with caplog.at_level("WARNING", logger="embedding_core.openvino_session"):
        assert openvino_session.long_inputs(dep.options, dep.files, settings, dep.name) is None
    assert "openvino is not installed; long inputs run on ONNX Runtime" in caplog.text


def test_a_discarded_long_input_session_is_not_kept_alive_by_its_idle_hook(registry,
                                                                           monkeypatch):
    """The idle hook (memory.on_idle) holds the session weakly: a session (~150 MB once
    compiled) of a discarded backend is freed, and its hook dropped at the next idle period.
    Nothing is compiled here."""
    import gc
    import weakref

    from embedding_core import memory
    from embedding_core.openvino_session import OpenVinoSession
    from embedding_core.settings import Settings
    monkeypatch.setattr(memory, "_idle_hooks", [])
    dep = registry.find(DEFAULT)
    session = OpenVinoSession(dep.files["long_model"], Settings.from_env({}))
    assert len(memory._idle_hooks) == 1
    memory._run_idle_hooks()                        # not compiled: releases nothing, stays
    assert len(memory._idle_hooks) == 1
    ref = weakref.ref(session)
    del session
    gc.collect()
    assert ref() is None
    memory._run_idle_hooks()
    assert memory._idle_hooks == []


@needs_long_inputs
def test_the_long_input_model_is_compiled_once_in_bf16_with_a_stream_per_worker(registry, caplog,
                                                                               monkeypatch):
    """One compile per session however many workers run their first long inputs at once, with
    the options it is measured with (bf16, one stream per worker, all workers' threads, no
    pinning), warmed up by one inference before it is published (concurrent first inferences
    deadlocked in OpenVINO's binding: test_concurrent_first_runs_... catches that only by chance).
    """
    import threading

    from embedding_core import openvino_session
    from embedding_core.openvino_session import OpenVinoSession
    from embedding_core.settings import Settings
    dep = registry.find(DEFAULT)
    settings = Settings.from_env({"EMBEDDINGS_INFERENCE_WORKERS": "2",
                                  "EMBEDDINGS_ORT_INTRA_OP_THREADS": "1",
                                  "EMBEDDINGS_MEMORY_TUNING": "false"})
    session = OpenVinoSession(dep.files[dep.options["long_inputs"]["file"]], settings)
    warmed: list[bool] = []
    real_warm_up = openvino_session._warm_up

    def warm_up(compiled):
        warmed.append(session._compiled is None)          # not yet published
        real_warm_up(compiled)
    monkeypatch.setattr(openvino_session, "_warm_up", warm_up)
    ids = np.full((1, 160), 7, np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids)}
    start = threading.Barrier(2)
    done: list[np.ndarray] = []

    def first_run() -> None:
        start.wait()
        done.append(session.run(["sentence_embedding"], feeds)[0])
    with caplog.at_level("INFO", logger="embedding_core.openvino_session"):
        threads = [threading.Thread(target=first_run, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(done) == 2 and np.array_equal(done[0], done[1])
        compiled = session._compiled
        # A third thread's first run (its own infer request) uses the same compiled model.
        third = threading.Thread(target=lambda: done.append(
            session.run(["sentence_embedding"], feeds)[0]))
        third.start()
        third.join(60)
        assert session._compiled is compiled and np.array_equal(done[2], done[0])
    compiles = [r for r in caplog.records if "with OpenVINO (bf16" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]
    assert warmed == [True]
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
    assert compiled.get_property("NUM_STREAMS") == 2
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert compiled.get_property("ENABLE_CPU_PINNING") is False


@needs_long_inputs
def test_a_long_input_model_mended_after_a_failure_serves_and_health_recovers(registry, tmp_path):
    """A long-input model that failed its checksum (503, Retry-After) and is then put right is
    compiled on the first long input after Retry-After: it serves, GET /health no longer
    reports the failure (load_failed), and the compile is counted as one-off work (not as the
    queue's throughput)."""
    import dataclasses
    import shutil
    import time

    from embedding_core.backends import take_one_off_seconds
    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend
    dep = registry.find(DEFAULT)
    good = dep.files["long_model"]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07" + b"\x00" * 1000)           # damaged
    files = {**dep.files, "long_model": dataclasses.replace(good, path=path)}
    with long_inputs_on_openvino():
        backend = TextBackend(dataclasses.replace(dep, files=files),
                              Settings.from_env({"EMBEDDINGS_RETRY_AFTER_SECONDS": "1"}), registry)
    ids = backend.tokenize([" ".join(["station"] * 200)])
    with pytest.raises(ApiError) as err:
        backend.run(ids)
    assert err.value.status == 503 and backend.load_failed()
    shutil.copyfile(good.path, path)                         # mended
    time.sleep(1.05)                                         # Retry-After
    take_one_off_seconds()
    vec = backend.run(ids)
    assert take_one_off_seconds() > 0
    assert not backend.load_failed()
    assert np.array_equal(backend.run(ids), vec)


# -- a model that fails to load on first use ------------------------------------------------------

def _failing_loads(caplog) -> int:
    return sum("failed to load" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("part", ["model", "long_model"])
def test_a_model_failing_on_first_use_is_remembered_for_retry_after(registry, caplog, part):
    """The int8 session (created by the first short input) or the long-input model (compiled
    by the first long input) that fails answers 503 with Retry-After and is not tried again
    until Retry-After has passed, as a failed deployment load."""
    import dataclasses
    import time

    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    dep = registry.find(DEFAULT)
    broken = (dep.files["tokenizer"] if part == "model"      # passes its checksum, is no model
              else dataclasses.replace(dep.files["long_model"], sha256="0" * 64))
    with long_inputs_on_openvino() if part == "long_model" else contextlib.nullcontext():
        backend = TextBackend(dataclasses.replace(dep, files={**dep.files, part: broken}),
                              Settings.from_env({"EMBEDDINGS_RETRY_AFTER_SECONDS": "1"}), registry)
    words = 40 if part == "model" else 200
    ids = backend.tokenize([" ".join(["station"] * words)])
    # The same failure again is tried after twice the wait, and its 503 says so.
    for tries, wait, retry_after in ((1, 0.0, "1"), (1, 0.0, "1"), (2, 1.05, "2")):
        time.sleep(wait)
        with pytest.raises(ApiError) as err:
            backend.run(ids)
        assert err.value.status == 503 and err.value.headers["Retry-After"] == retry_after
        assert _failing_loads(caplog) == tries
    assert backend.load_failed()


def _long_backend(registry, long_model=None):
    import dataclasses

    from embedding_core.settings import Settings
    from embedding_core.text import TextBackend

    dep = registry.find(DEFAULT)
    files = {**dep.files, "long_model": long_model or dep.files["long_model"]}
    with long_inputs_on_openvino():
        backend = TextBackend(dataclasses.replace(dep, files=files),
                              Settings.from_env({"EMBEDDINGS_RETRY_AFTER_SECONDS": "30",
                                                 "EMBEDDINGS_INFERENCE_WORKERS": "2"}), registry)
    assert backend.long is not None
    return backend, backend.tokenize([" ".join(["station"] * 200)])


def test_two_workers_meeting_a_failing_long_model_try_it_once(registry, caplog):
    """Both workers' first long batches arrive together: the second waits for the first one's
    compile and, when it fails, gets the remembered 503 instead of compiling again."""
    import dataclasses
    import threading

    bad = dataclasses.replace(registry.find(DEFAULT).files["long_model"], sha256="0" * 64)
    backend, ids = _long_backend(registry, bad)
    statuses: list[int] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        try:
            backend.run(ids)
        except ApiError as err:
            statuses.append(err.status)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [503, 503]
    assert _failing_loads(caplog) == 1


def test_a_compiled_long_model_is_not_refused_for_an_earlier_failure(registry):
    """One worker's compile failed (remembered for Retry-After), another's then succeeded: the
    compiled model serves at once rather than answering 503 until Retry-After has passed."""
    import time

    backend, ids = _long_backend(registry)
    first = backend.run(ids)
    backend._failed_until["long-input model"] = time.monotonic() + 30   # as a failure leaves it
    assert np.array_equal(backend.run(ids), first)
