"""Any supported chest radiograph file -> uint8 grey (H, W) array, 255 = bright.

:func:`read_image_uint8` dispatches on the file suffix (case-insensitive):

* ``.dcm`` — :func:`cxr_lightning.data.dicom.read_dicom_uint8` (DICOM grayscale pipeline,
  or the MIMIC-CXR-JPG conversion with ``histogram_equalization``).
* ``.png``, ``.jpg``, ``.jpeg`` — decoded by Pillow, which, unlike OpenCV, raises on a
  truncated file instead of returning a grey-filled image. Pixels are taken as stored (no
  EXIF orientation, no colour management) and turned into grey as follows:

  * 8-bit grey (``L``; bilevel ``1`` as 0/255): as is.
  * 16-bit grey (``I;16*``, ``I``): ``rint((v - min) / (max - min) * 255)`` over the
    image's own values (a constant image gives 0). A 16-bit container holds any stored depth
    (12-bit radiographs are common) and carries no window, so ``v / 257`` would crush a
    12-bit image into 16 grey levels; the image's own range keeps every image's full
    contrast and the order of its values, like the DICOM pipeline's fallback and
    MIMIC-CXR-JPG's normalisation. An 8-bit image widened as ``v * 257`` that uses both 0
    and 255 comes back exactly.
  * RGB / RGBA / grey+alpha / palette whose colour channels are identical (NIH
    ChestX-ray14 stores grey replicated into RGB, a few files RGBA): that grey. Alpha is
    ignored.
  * Colour (channels differ anywhere) or any other pixel mode: :class:`ImageDecodeError`.

  MIMIC-CXR-JPG files are already inverted, equalised 8-bit grey JPEGs: reading them is
  plain grey decoding.

With ``histogram_equalization`` a raster image is equalised by ``cv2.equalizeHist`` after the
conversion to grey, so every source in a cache built with it has the same kind of
histogram; on MIMIC-CXR-JPG files, already equalised, this is nearly the identity.

Every failure — missing, unreadable, truncated, colour, smaller than 2×2, larger than
``max_pixels`` (checked from the header, before decoding), unknown suffix — raises
:class:`ImageDecodeError` (:class:`DicomDecodeError` is a subclass) naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cxr_lightning.data.dicom import (
    MAX_PIXELS,
    DicomDecodeError,
    ImageDecodeError,
    read_dicom_uint8,
)

__all__ = [
    "MAX_PIXELS",
    "MIN_SIDE",
    "SUPPORTED_SUFFIXES",
    "DicomDecodeError",
    "ImageDecodeError",
    "read_image_uint8",
]

log = logging.getLogger(__name__)

_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
#: File suffixes :func:`read_image_uint8` accepts (compared case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".dcm", *_RASTER_SUFFIXES)
#: Smallest accepted height and width, in pixels.
MIN_SIDE = 2

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA"})


def read_image_uint8(path: str | Path, histogram_equalization: bool = False,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a DICOM, PNG or JPEG file as a uint8 (H, W) grey array (see module doc)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        grey = read_dicom_uint8(path, histogram_equalization=histogram_equalization,
                                max_pixels=max_pixels)
    elif suffix in _RASTER_SUFFIXES:
        grey = _read_raster(path, max_pixels)
        if histogram_equalization:
            grey = cv2.equalizeHist(grey)
    else:
        raise ImageDecodeError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if min(grey.shape) < MIN_SIDE:
        raise ImageDecodeError(
            f"{path}: image of {grey.shape[0]}x{grey.shape[1]} pixels; "
            f"at least {MIN_SIDE}x{MIN_SIDE} needed"
        )
    return grey


def _read_raster(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a PNG/JPEG fully with Pillow; every decoder failure names the file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{path}: {height} x {width} = {width * height} pixels exceeds max_pixels="
                    f"{max_pixels}; refused before decoding (raise max_pixels if this is a "
                    "real image)")
            image.load()
            mode = image.mode
            if mode == "1":
                image, mode = image.convert("L"), "L"
            elif mode in ("P", "PA"):
                image, mode = image.convert("RGBA"), "RGBA"
            pixels = np.asarray(image)
    except ImageDecodeError:
        raise
    except Exception as exc:  # missing, not an image, truncated, corrupt: many types
        raise ImageDecodeError(f"{path}: cannot decode image: {exc}") from exc
    log.debug("%s: Pillow mode %s, shape %s", path, mode, pixels.shape)
    return _to_grey(pixels, mode, path)


def _to_grey(pixels: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Decoded Pillow pixels of ``mode`` -> uint8 (H, W) grey, or ImageDecodeError."""
    if mode == "L":
        return np.ascontiguousarray(pixels)
    if mode in _SIXTEEN_BIT_MODES:
        return _min_max_uint8(pixels)
    if mode == "LA":
        return np.ascontiguousarray(pixels[..., 0])
    if mode in _COLOUR_MODES:
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        if not (np.array_equal(red, green) and np.array_equal(red, blue)):
            raise ImageDecodeError(
                f"{path}: colour image (mode {mode}, R/G/B channels differ); "
                "only grey images are supported"
            )
        return np.ascontiguousarray(red)
    raise ImageDecodeError(f"{path}: unsupported pixel mode {mode!r}")


def _min_max_uint8(values: np.ndarray) -> np.ndarray:
    """``rint((v - min) / (max - min) * 255)`` as uint8; a constant image gives 0."""
    shifted = values.astype(np.float64) - float(values.min())
    peak = float(shifted.max())
    if peak == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint(shifted / peak * 255.0).astype(np.uint8)
