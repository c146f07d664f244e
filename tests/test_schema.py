"""Wire schema: accepted input shapes, defaults, and extras handling."""

import pytest

from embedding_core import schema
from embedding_core.errors import ApiError


def parse(doc, mode="error", modality="text", max_items=10):
    return schema.parse_request(doc, modality=modality, extra_mode=mode, max_items=max_items)


@pytest.mark.parametrize("value, inputs", [
    ("one string", ["one string"]),
    (["a", "b"], ["a", "b"]),
    ([101, 7592, 102], [[101, 7592, 102]]),
    ([[7592], [2088, 999]], [[7592], [2088, 999]]),
    (["text", [7592]], ["text", [7592]]),
])
def test_input_shapes(value, inputs):
    assert parse({"input": value}).inputs == inputs


def test_defaults():
    r = parse({"input": "x", "dimensions": None, "encoding_format": None, "input_type": None,
               "model": None})
    assert (r.dimensions, r.encoding_format, r.input_type, r.model, r.extras) == \
        (None, "float", "text", None, {})


def test_extras_by_mode():
    doc = {"input": "x", "truncate": "END", "foo": 1}
    assert parse(doc, "pass-through").extras == {"truncate": "END", "foo": 1}
    assert parse(doc, "drop").extras == {}
    with pytest.raises(ApiError) as e:
        parse(doc, "error")
    assert e.value.status == 400 and e.value.code == "ExtraParametersNotAllowed"


def test_image_inputs():
    r = parse({"input": [{"image": "data:image/png;base64,AA=="}, {"image": "data:x", "text": "t"}]},
              modality="image")
    assert r.inputs == [schema.ImageInput("data:image/png;base64,AA==", None),
                        schema.ImageInput("data:x", "t")]
    for bad, target in [("data:x", "input"), ([], "input"), (["data:x"], "input[0]"),
                        ([{"text": "t"}], "input[0].image"), ([{"image": 3}], "input[0].image"),
                        ([{"image": "d", "text": 3}], "input[0].text"),
                        ([{"image": "d", "foo": 1}], "input[0].foo")]:
        with pytest.raises(ApiError) as e:
            parse({"input": bad}, modality="image")
        assert e.value.status == 422 and e.value.target == target, bad
    for text, shown in [(" \n", "blank text"), (3, "integer 3"), ("", "blank text")]:
        with pytest.raises(ApiError) as e:
            parse({"input": [{"image": "d", "text": text}]}, modality="image")
        assert e.value.target == "input[0].text" and f"(got {shown}); omit 'text'" in \
            e.value.message, e.value.message


@pytest.mark.parametrize("value", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON", "application/vnd.api+json", None, ""])
def test_json_content_types(value):
    schema.check_content_type({} if value is None else {"content-type": value})


@pytest.mark.parametrize("value", ["text/plain", "multipart/form-data; boundary=x", "text/json"])
def test_non_json_content_types(value):
    with pytest.raises(ApiError) as e:
        schema.check_content_type({"content-type": value})
    assert e.value.status == 415


def test_error_messages_do_not_echo_unbounded_client_text():
    with pytest.raises(ApiError) as e:
        schema.check_api_version({"api-version": "x" * 10_000 + "\x00"})
    assert len(e.value.message) < 300 and "\x00" not in e.value.message


def test_error_messages_echo_control_and_format_characters_as_question_marks():
    """Within the part that is echoed: a NUL, CR/LF or a bidi override from a client must not
    reach a log line or a terminal that prints the message (h_mut1: only the clipping was
    tested, with the NUL past it)."""
    with pytest.raises(ApiError) as e:
        schema.check_api_version({"api-version": "x\x00y\r\nz\u202e"})
    assert "x?y??z?" in e.value.message
    assert not any(c in e.value.message for c in "\x00\r\n\u202e")


def test_a_body_of_exactly_the_limit_is_parsed_and_one_byte_more_is_413():
    body = b'{"input": ["a"]}'.ljust(2048)                   # JSON allows trailing whitespace
    assert schema.parse_body(body, 2048, 4)["input"] == ["a"]
    with pytest.raises(ApiError) as e:
        schema.parse_body(body + b" ", 2048, 4)
    assert e.value.status == 413


@pytest.mark.parametrize("value, shown", [
    (None, "(got null)"), ("abc", '(got string "abc")'), (1.5, "(got number 1.5)"),
    (True, "(got boolean true)"), (-3, "(got integer -3)"), ({"a": 1}, "(got an object)"),
    (10**40, "(got a very large integer)")])
def test_bad_values_are_named_as_json(value, shown):
    with pytest.raises(ApiError) as e:
        parse({"input": [[101, value]]})
    assert e.value.status == 422 and e.value.target == "input[0][1]"
    assert e.value.message.endswith(shown + "."), e.value.message


@pytest.mark.parametrize("item", [
    b'"a"', b'[]', b'{}', b'"[{\\"]}\\\\"', b'"' + b'\\"[' * 40 + b'"', b'[1, 2]'])
def test_json_values_are_counted_exactly_past_the_quick_bound(item):
    # Brackets and escaped quotes inside strings are not values; the quick count (quotes / 2 +
    # brackets) is over the bound for most of these, the exact count is one value per item.
    bound = 100
    def body(n):
        return b'{"input": [' + b", ".join([item] * n) + b"]}"
    schema.check_json_values(body(bound - 3), 10, bound=bound)  # the object, "input", its array
    with pytest.raises(ApiError) as e:
        schema.check_json_values(body(bound - 2), 10, bound=bound)
    assert e.value.status == 400 and "more than 100 JSON strings" in e.value.message
    assert "at most 10 inputs" in e.value.message


def test_numbers_count_where_asked_and_commas_in_strings_do_not():
    numbers = b'{"input": [{"image": "x"}, ' + b"0.5, " * 200 + b"1]}"
    schema.check_json_values(numbers, 10, bound=100)              # text routes: token ids
    with pytest.raises(ApiError) as e:
        schema.check_json_values(numbers, 10, numbers=True, bound=100)
    assert "more than 100 JSON strings, arrays, objects and commas" in e.value.message
    commas = b'{"input": [{"image": "' + b"a,b," * 500 + b'", "text": "x,y"}]}'
    schema.check_json_values(commas, 10, numbers=True, bound=100)


def test_the_default_bound_holds_every_valid_request():
    # 8 per allowed input, beyond 65,536: image inputs with text are 5 values each.
    item = b'{"image": "data:image/png;base64,AAAA", "text": "a, b"}'
    body = b'{"input": [' + b", ".join([item] * 20_000) + b'], "model": "m"}'
    schema.check_json_values(body, 20_000, numbers=True)
    with pytest.raises(ApiError):
        schema.check_json_values(body, 10_000, numbers=True)


@pytest.mark.parametrize("n, chunk", [(900_000, None), (3000, 1), (3000, 7)])
def test_the_quick_count_reads_the_whole_body(n, chunk, monkeypatch):
    # Counted 64 KiB at a time (2.7 MB here: 42 chunks), or in chunks of 1 and 7 bytes so that
    # every byte of the pattern falls at a chunk's edge: values the quick count missed anywhere
    # would let the body through unscanned. The object, "input", its array, n arrays, "x": n + 4 values.
    if chunk:
        monkeypatch.setattr(schema, "_QUICK_CHUNK", chunk)
    body = b'{"input": [' + b"[]," * n + b'"x"]}'
    schema.check_json_values(body, 10, bound=n + 4)
    with pytest.raises(ApiError) as e:
        schema.check_json_values(body, 10, bound=n + 3)
    assert e.value.status == 400 and f"more than {n + 3:,} JSON strings" in e.value.message


def test_an_unterminated_string_is_left_to_the_parser():
    body = b'{"input": ["' + b'\\"[' * 200
    schema.check_json_values(body, 10, bound=100)       # one string to the end, not 200 values
    with pytest.raises(ApiError) as e:
        schema.parse_body(body, 1 << 20, 10)
    assert e.value.status == 400 and "not valid JSON" in e.value.message
