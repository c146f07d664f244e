"""Encodings: exact bit packing, byte order, calibration formula, Matryoshka resizing."""

import base64
import struct

import numpy as np
import pytest

from embedding_core.encodings import encode, resize, to_base64, to_ubinary, to_uint8


def test_base64_is_little_endian_float32_of_the_vector():
    v = np.array([[1.0, -2.5, 0.15625, 3.0e-8]], dtype=np.float32)
    raw = base64.b64decode(to_base64(v)[0])
    assert raw == struct.pack("<4f", 1.0, -2.5, 0.15625, 3.0e-8)
    assert raw[:4] == b"\x00\x00\x80\x3f"  # 1.0f little-endian


def test_ubinary_packs_sign_bits_msb_first():
    bits = [1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    v = np.array([[0.5 if b else -0.5 for b in bits]], dtype=np.float32)
    assert to_ubinary(v).tolist() == [[0b10000001, 0b01111111]]
    assert [int(x) for x in encode(v, "ubinary")[0]] == [129, 127]
    assert [int(x) for x in encode(v, "binary")[0]] == [1, -1]


def test_zero_is_not_positive_for_binary():
    v = np.zeros((1, 8), dtype=np.float32)
    assert [int(x) for x in encode(v, "ubinary")[0]] == [0]
    assert [int(x) for x in encode(v, "binary")[0]] == [-128]


def test_uint8_and_int8_follow_the_calibration_formula():
    lo = np.array([-1.0, 0.0, -0.5, 0.0], dtype=np.float32)
    hi = np.array([1.0, 1.0, 0.5, 0.1], dtype=np.float32)
    v = np.array([[0.0, 1.0, -0.9, 0.05]], dtype=np.float32)
    # (0+1)/2*255 = 127.5 -> rint 128; 255; clipped to 0; 127.5 -> 128
    assert to_uint8(v, lo, hi).tolist() == [[128, 255, 0, 128]]
    assert [int(x) for x in encode(v, "uint8", (lo, hi))[0]] == [128, 255, 0, 128]
    assert [int(x) for x in encode(v, "int8", (lo, hi))[0]] == [0, 127, -128, 0]


def test_calibrated_formats_need_ranges():
    with pytest.raises(ValueError):
        encode(np.zeros((1, 4), dtype=np.float32), "int8")


def test_resize_truncates_and_renormalises():
    v = np.array([[0.6, 0.0, 0.8, 0.0]], dtype=np.float32)
    out = resize(v, 2)
    assert out.shape == (1, 2) and np.allclose(out, [[1.0, 0.0]])
    assert resize(v, 4) is v


def test_float_rows_serialise_as_json_numbers():
    import orjson

    v = np.array([[0.1, -0.25]], dtype=np.float32)
    doc = orjson.loads(orjson.dumps({"e": encode(v, "float")[0]}, option=orjson.OPT_SERIALIZE_NUMPY))
    assert np.allclose(doc["e"], [0.1, -0.25]) and np.float32(doc["e"][0]) == np.float32(0.1)
