"""numpy <-> sensor_msgs image payloads."""
from __future__ import annotations

import numpy as np
import pytest

from grrl_tools.image_codec import (ImageError, decode_compressed, decode_raw,
                                         encode_compressed, encode_raw)

IMG = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)


def test_raw_roundtrip_and_other_encodings():
    enc, h, w, step, data = encode_raw(IMG)
    assert (enc, h, w, step, len(data)) == ("rgb8", 6, 5, 15, 90)
    assert np.array_equal(decode_raw(enc, h, w, step, data), IMG)
    bgr = IMG[:, :, ::-1].tobytes()
    assert np.array_equal(decode_raw("bgr8", 6, 5, 15, bgr), IMG)
    padded = np.zeros((6, 16), np.uint8)
    padded[:, :15] = IMG.reshape(6, 15)
    assert np.array_equal(decode_raw("rgb8", 6, 5, 16, padded.tobytes()), IMG)
    mono = decode_raw("mono8", 2, 2, 2, bytes([1, 2, 3, 4]))
    assert mono.shape == (2, 2, 3) and mono[1, 1, 2] == 4


@pytest.mark.parametrize("args, match", [
    (("yuv422", 6, 5, 15, b""), "unsupported encoding"),
    (("rgb8", 6, 5, 15, b"\0" * 89), "89 bytes for 6 rows of 15 bytes"),
    (("rgb8", 6, 5, 10, b"\0" * 60), "step 10 < width"),
    (("rgb8", 0, 5, 15, b""), "empty image"),
])
def test_bad_raw_images(args, match):
    with pytest.raises(ImageError, match=match):
        decode_raw(*args)


def test_compressed_roundtrip():
    fmt, data = encode_compressed(IMG, "png")
    assert "png" in fmt and np.array_equal(decode_compressed(fmt, data), IMG)
    fmt, data = encode_compressed(np.full((16, 16, 3), 100, np.uint8), "jpeg")
    assert np.abs(decode_compressed(fmt, data).astype(int) - 100).max() <= 3
    with pytest.raises(ImageError, match="corrupt"):
        decode_compressed("jpeg", b"not a jpeg")
    with pytest.raises(ImageError, match="unsupported"):
        decode_compressed("tiff", data)
