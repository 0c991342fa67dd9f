from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edged.errors import ErrorCode, RequestError
from edged.runtime.preprocess import Preprocessing, decode_image


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_default_maps_pixels_to_unit_range_and_resizes():
    data = png(Image.new("RGB", (64, 48), (255, 0, 51)))
    x = decode_image(data, [1, 8, 8, 3], np.dtype(np.float32), (0.0, 0), Preprocessing(), max_pixels=10**6)
    assert x.shape == (1, 8, 8, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_uint8_input_is_quantized_with_tensor_params():
    data = png(Image.new("L", (10, 10), 255))
    x = decode_image(data, [1, 4, 4, 1], np.dtype(np.uint8), (1 / 255, 0), Preprocessing(), max_pixels=10**6)
    assert x.dtype == np.uint8 and (x == 255).all()
    x = decode_image(data, [1, 4, 4, 1], np.dtype(np.int8), (1 / 255, -128), Preprocessing(), max_pixels=10**6)
    assert x.dtype == np.int8 and (x == 127).all()


def test_manifest_preprocessing_invert_mean_std_and_grey_conversion():
    prep = Preprocessing.from_manifest({"color": "L", "mean": [0.0], "std": [15.9375], "invert": True})
    data = png(Image.new("RGB", (8, 8), (255, 255, 255)))  # white paper: no ink
    x = decode_image(data, [1, 8, 8, 1], np.dtype(np.float32), (0.0, 0), prep, max_pixels=10**6)
    assert (x == 0).all()


def test_undecodable_bytes_are_bad_image():
    with pytest.raises(RequestError) as info:
        decode_image(b"\x89PNG not really", [1, 8, 8, 1], np.dtype(np.float32), (0.0, 0), Preprocessing(), max_pixels=10**6)
    assert info.value.code is ErrorCode.BAD_IMAGE


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png(Image.new("L", (5000, 5000), 0))  # compresses to a few KB
    assert len(bomb) < 100_000
    with pytest.raises(RequestError) as info:
        decode_image(bomb, [1, 8, 8, 1], np.dtype(np.float32), (0.0, 0), Preprocessing(), max_pixels=1_000_000)
    assert info.value.code is ErrorCode.BAD_IMAGE and "5000x5000" in info.value.message


def test_bad_manifest_preprocessing_is_named():
    with pytest.raises(ValueError, match="std"):
        Preprocessing.from_manifest({"std": [0]})
    with pytest.raises(ValueError, match="color"):
        Preprocessing.from_manifest({"color": "CMYK"})


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format=fmt)
    return buf.getvalue()


#: A minimal EPS: Pillow's EPS plugin would hand it to Ghostscript.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("data", [encoded("GIF"), encoded("BMP"), encoded("TIFF"), encoded("ICO"), EPS],
                         ids=["gif", "bmp", "tiff", "ico", "eps"])
def test_only_the_configured_formats_are_ever_decoded(data):
    with pytest.raises(RequestError, match=r"accepted format \(JPEG, PNG") as info:
        decode_image(data, [1, 4, 4, 1], np.dtype(np.float32), (0.0, 0), Preprocessing(), max_pixels=10**6)
    assert info.value.code is ErrorCode.BAD_IMAGE


def test_jpeg_and_png_by_default_and_others_when_configured():
    for fmt in ("JPEG", "PNG"):
        x = decode_image(encoded(fmt), [1, 4, 4, 1], np.dtype(np.float32), (0.0, 0), Preprocessing(), max_pixels=10**6)
        assert x.shape == (1, 4, 4, 1)
    x = decode_image(encoded("GIF"), [1, 4, 4, 1], np.dtype(np.float32), (0.0, 0), Preprocessing(),
                     max_pixels=10**6, formats=["GIF"])
    assert x.shape == (1, 4, 4, 1)
    with pytest.raises(RequestError, match="accepted format"):
        decode_image(encoded("PNG"), [1, 4, 4, 1], np.dtype(np.float32), (0.0, 0), Preprocessing(),
                     max_pixels=10**6, formats=[])


def test_image_formats_config_key(tmp_path):
    from edged import config
    from edged.errors import ConfigError

    assert config.load(None).server.image_formats == ["JPEG", "PNG"]
    assert config.load(None, {"server.image_formats": ["webp", "png"]}).server.image_formats == ["WEBP", "PNG"]
    for bad in (["EPS"], ["PDF"], "JPEG", [1]):
        with pytest.raises(ConfigError, match="server.image_formats"):
            config.load(None, {"server.image_formats": bad})
