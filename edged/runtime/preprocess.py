"""Encoded images (JPEG/PNG) to model input tensors, with Pillow.

decode → colour convert → resize to the input's H×W → optional invert →
``(pixel - mean) / std`` per channel → quantize for uint8/int8 inputs with the
tensor's own scale and zero point.  The default preprocessing (no manifest
entry) maps pixels to [0, 1]: mean 0, std 255.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.errors import ErrorCode, RequestError

#: Pillow format names decoded unless ``server.image_formats`` says otherwise.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG")
#: What ``server.image_formats`` may name: raster formats with Pillow's own decoders.
#: Never EPS/PS/PDF (Ghostscript runs them) nor formats that read other files.
ALLOWED_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "PPM")
#: ``<_io.BytesIO object at 0x7f...>`` and the like, which Pillow puts in its messages.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Preprocessing:
    color: str | None = None  # "L" | "RGB"; None = from the channel count
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)
    invert: bool = False

    @classmethod
    def from_manifest(cls, data: dict[str, Any] | None) -> Preprocessing:
        """Build from a manifest's ``preprocessing`` object.

        Raises ValueError naming the bad field (the repository reports it as a
        validation failure of that version).
        """
        if not data:
            return cls()
        color = data.get("color")
        if color not in (None, "L", "RGB"):
            raise ValueError(f"preprocessing.color {color!r} must be 'L' or 'RGB'")
        mean = tuple(float(v) for v in _seq(data.get("mean", [0.0]), "mean"))
        std = tuple(float(v) for v in _seq(data.get("std", [255.0]), "std"))
        if any(s == 0 for s in std):
            raise ValueError("preprocessing.std must not contain 0")
        return cls(color, mean, std, bool(data.get("invert", False)))


def _seq(value: Any, name: str) -> Sequence[Any]:
    if isinstance(value, (int, float)):
        return [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"preprocessing.{name} must be a number or a non-empty list")
    return value


def _layout(shape: Sequence[int]) -> tuple[int, int, int]:
    """(H, W, C) of an image input shaped [1,H,W,C], [H,W,C] or [1,H,W]."""
    dims = list(shape)
    if len(dims) == 4 and dims[0] == 1:
        return dims[1], dims[2], dims[3]
    if len(dims) == 3 and dims[0] == 1:
        return dims[1], dims[2], 1
    if len(dims) == 3:
        return dims[0], dims[1], dims[2]
    raise RequestError(f"model input shape {dims} is not an image (expected [1,H,W,C])", code=ErrorCode.BAD_SHAPE)


def decode_image(
    data: bytes | memoryview,
    shape: Sequence[int],
    dtype: np.dtype,
    quantization: tuple[float, int],
    prep: Preprocessing,
    *,
    max_pixels: int,
    formats: Sequence[str] = DEFAULT_IMAGE_FORMATS,
) -> np.ndarray:
    """Turn encoded image bytes into a tensor of ``shape``/``dtype``.

    Raises :class:`RequestError` ``BAD_IMAGE`` when the bytes are not an image
    Pillow can decode, or when the image declares more than ``max_pixels``
    pixels (checked from the header, before decoding, so a decompression bomb
    never allocates), or when it is not in one of ``formats`` (Pillow format names):
    only those decoders are ever tried, so a request cannot reach the others
    (EPS would run Ghostscript; GIF, BMP, TIFF, ICO bring their own parsers).
    """
    from PIL import Image, UnidentifiedImageError  # imported here: serving tensors never needs Pillow

    height, width, channels = _layout(shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)), formats=list(formats))
            w, h = img.size
            if w * h > max_pixels:
                raise RequestError(f"image is {w}x{h}, over the {max_pixels}-pixel limit", code=ErrorCode.BAD_IMAGE)
            img.load()
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(f"not an image in an accepted format ({', '.join(formats)}; server.image_formats)",
                           code=ErrorCode.BAD_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(f"image refused: {exc}", code=ErrorCode.BAD_IMAGE) from None
    except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise RequestError(f"cannot decode image: {_OBJECT_REPR.sub('the image', str(exc))}",
                           code=ErrorCode.BAD_IMAGE) from None
    mode = prep.color or ("L" if channels == 1 else "RGB")
    if (mode == "L") != (channels == 1):
        raise RequestError(f"preprocessing colour {mode} does not fit a {channels}-channel input", code=ErrorCode.BAD_SHAPE)
    img = img.convert(mode).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32).reshape(height, width, channels)
    if prep.invert:
        pixels = 255.0 - pixels
    x = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    scale, zero_point = quantization
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if scale:
            x = np.round(x / scale + zero_point)
        x = np.clip(x, info.min, info.max)
    return x.astype(dtype).reshape(shape)
