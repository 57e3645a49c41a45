"""dlib's serialization: primitives decode as dlib writes them; the real model parses whole."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from faceid.engine.vision.dlib_format import DlibFormatError, Reader, parse_net, read_net
from faceid.engine.vision.weights import RESNET_FILE, model_file


def dlib_int(value: int) -> bytes:
    magnitude = abs(value)
    body = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little") if magnitude else b""
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


@pytest.mark.parametrize("value", [0, 1, 127, 255, 256, 70000, -1, -300, 2**40, -(2**62)])
def test_integers_round_trip_through_the_control_byte_encoding(value: int) -> None:
    assert Reader(dlib_int(value)).integer() == value


def test_string_is_length_then_characters() -> None:
    assert Reader(dlib_int(5) + b"con_4").string() == "con_4"


def test_float_is_mantissa_times_two_to_the_exponent() -> None:
    r = Reader(dlib_int(3) + dlib_int(-2) + dlib_int(-5) + dlib_int(1))
    assert r.scalar() == 0.75
    assert r.scalar() == -10.0


def test_tensor_reads_shape_then_little_endian_float32() -> None:
    values = np.arange(6, dtype="<f4")
    data = dlib_int(2) + b"".join(dlib_int(v) for v in (1, 2, 3, 1)) + values.tobytes()
    tensor = Reader(data).tensor()
    assert tensor.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(tensor.ravel(), values)


def test_booleans_are_the_characters_zero_and_one() -> None:
    r = Reader(b"10")
    assert r.boolean() is True
    assert r.boolean() is False
    with pytest.raises(DlibFormatError, match="boolean"):
        Reader(b"x").boolean()


def test_truncated_stream_is_reported_with_its_position() -> None:
    with pytest.raises(DlibFormatError, match="unexpected end of stream"):
        Reader(dlib_int(2) + struct.pack("<B", 1)).tensor()


def test_real_model_parses_into_its_29_convolutions_and_a_128_by_256_projection() -> None:
    net = read_net(model_file(RESNET_FILE))
    kinds = [layer.kind for layer in net.layers]
    assert net.loss.kind == "loss_metric_2"
    assert net.loss.attrs["distance_threshold"] == pytest.approx(0.6)
    assert net.input.attrs["mean"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert (net.input.attrs["rows"], net.input.attrs["cols"]) == (150, 150)
    assert kinds.count("con_4") == 29
    assert kinds.count("affine_") == 29
    assert kinds[-1] == "fc_2"
    assert net.layers[-1].params["weight"].shape == (128, 256)
    assert net.layers[0].params["weight"].shape == (32, 3, 7, 7)


def test_a_cut_model_file_is_refused_not_half_loaded() -> None:
    data = model_file(RESNET_FILE).read_bytes()
    with pytest.raises(DlibFormatError):
        parse_net(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="trailing"):
        parse_net(data + b"\x00")
