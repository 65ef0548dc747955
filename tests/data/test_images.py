"""Tests for cxr_lightning.data.images (PNG/JPEG/DICOM -> uint8 grey).

References: the raw channels as decoded by OpenCV (libpng / libjpeg-turbo) and by Pillow,
arrays written by OpenCV in the test itself, and real NIH ChestX-ray14 PNGs (RGB with grey
replicated, a few RGBA, and 8-bit grey) from ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_lightning.data.dicom import read_dicom_uint8
from cxr_lightning.data.images import (
    SUPPORTED_SUFFIXES,
    DicomDecodeError,
    ImageDecodeError,
    read_image_uint8,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
NIH_64 = SHARED_DATA / "nih_chestxray14_64px" / "images"
NIH_FULL = SHARED_DATA / "nih_chestxray14_fullres" / "images"


def _grey(rng: np.random.Generator, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    """8-bit grey image with smooth structure and noise, using the full 0..255 range."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    signal = 128 + 100 * np.sin(cols / 7.0) * np.cos(rows / 11.0) + rng.normal(0, 8, shape)
    image = signal.clip(0, 255).astype(np.uint8)
    image.flat[:2] = (0, 255)
    return image


def _write(path: Path, image: np.ndarray, *params: int) -> Path:
    assert cv2.imwrite(str(path), image, list(params))
    return path


def _pngs(folder: Path, mode: str, limit: int) -> list[Path]:
    """Up to ``limit`` PNGs of ``folder`` whose Pillow mode is ``mode``; skip if none."""
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    found = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            if image.mode == mode:
                found.append(path)
        if len(found) == limit:
            break
    if not found:
        pytest.skip(f"no {mode} PNG in {folder}")
    return found


# ------------------------------------------------------------------ real NIH ChestX-ray14


@pytest.mark.realdata
@pytest.mark.parametrize(("mode", "limit"), [("RGB", 40), ("RGBA", 100)])
def test_nih_replicated_grey_reads_as_channel(mode, limit):
    for path in _pngs(NIH_64, mode, limit):
        grey = read_image_uint8(path)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # BGR(A), channels all equal
        assert raw.shape[2] == len(mode)
        assert grey.dtype == np.uint8 and grey.shape == raw.shape[:2] == (64, 64)
        np.testing.assert_array_equal(grey, raw[..., 0])
        with Image.open(path) as image:
            np.testing.assert_array_equal(grey, np.asarray(image)[..., 1])
            # Luma weights sum to one in Pillow's fixed point: exact on equal channels.
            np.testing.assert_array_equal(grey, np.asarray(image.convert("L")))


@pytest.mark.realdata
def test_nih_fullres_grey_reads_as_is():
    for path in _pngs(NIH_FULL, "L", 18):
        grey = read_image_uint8(path)
        np.testing.assert_array_equal(grey, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        assert grey.shape in ((256, 256), (512, 512), (1024, 1024))


@pytest.mark.realdata
def test_nih_equalised_is_equalizehist():
    path = _pngs(NIH_FULL, "L", 1)[0]
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    equalised = read_image_uint8(path, histogram_equalization=True)
    np.testing.assert_array_equal(equalised, cv2.equalizeHist(raw))


# --------------------------------------------------------------------- written by the test


def test_sixteen_bit_png_min_max_rule(tmp_path):
    rng = np.random.default_rng(1)
    twelve_bit = rng.integers(100, 3001, size=(40, 50)).astype(np.uint16)
    twelve_bit.flat[:2] = (100, 3000)
    path = _write(tmp_path / "twelve.png", twelve_bit)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    expected = np.rint((twelve_bit.astype(np.float64) - 100) / 2900 * 255)
    np.testing.assert_array_equal(read_image_uint8(path), expected)

    # An 8-bit image widened to 16 bits as v * 257 comes back exactly.
    eight_bit = _grey(rng)
    widened = _write(tmp_path / "widened.png", eight_bit.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image_uint8(widened), eight_bit)


def test_sixteen_bit_constant_png_is_black(tmp_path):
    path = _write(tmp_path / "flat.png", np.full((8, 8), 4000, np.uint16))
    np.testing.assert_array_equal(read_image_uint8(path), np.zeros((8, 8), np.uint8))


def test_jpeg_quality_95_reads_back_close(tmp_path):
    original = _grey(np.random.default_rng(2))
    path = _write(tmp_path / "q95.JPG", original, cv2.IMWRITE_JPEG_QUALITY, 95)
    grey = read_image_uint8(path)
    assert grey.dtype == np.uint8 and grey.shape == original.shape
    np.testing.assert_array_equal(grey, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    assert np.abs(grey.astype(np.int16) - original).mean() < 2.0


def test_grey_stored_as_three_channel_jpeg(tmp_path):
    original = _grey(np.random.default_rng(3))
    path = _write(tmp_path / "rgb.jpeg", cv2.merge([original] * 3), cv2.IMWRITE_JPEG_QUALITY, 95)
    np.testing.assert_array_equal(read_image_uint8(path),
                                  cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., 0])


@pytest.mark.parametrize("mode", ["LA", "P", "1"])
def test_other_grey_modes(tmp_path, mode):
    original = _grey(np.random.default_rng(4))
    if mode == "1":
        original = np.where(original > 127, 255, 0).astype(np.uint8)
    image = Image.fromarray(original, mode="L").convert(mode)
    path = tmp_path / f"{mode}.png"
    image.save(path)
    np.testing.assert_array_equal(read_image_uint8(path), original)


def test_equalised_png(tmp_path):
    original = _grey(np.random.default_rng(5))
    path = _write(tmp_path / "g.png", original)
    np.testing.assert_array_equal(read_image_uint8(path, histogram_equalization=True),
                                  cv2.equalizeHist(original))


def test_dicom_is_dispatched(tmp_path):
    stored = (_grey(np.random.default_rng(6)).astype(np.uint16) * 16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    path = tmp_path / "x.DCM"
    ds.save_as(path, enforce_file_format=True)
    for equalise in (False, True):
        np.testing.assert_array_equal(read_image_uint8(path, histogram_equalization=equalise),
                                      read_dicom_uint8(path, histogram_equalization=equalise))


# ------------------------------------------------------------------------------ errors


def _assert_error_names(path: Path, match: str | None = None) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError, match=match) as err:
        read_image_uint8(path)
    assert str(path) in str(err.value)
    return err.value


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path, suffix):
    whole = _write(tmp_path / f"whole{suffix}", _grey(np.random.default_rng(7)))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _assert_error_names(cut, "truncated")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_colour_image_rejected(tmp_path, suffix):
    grey = _grey(np.random.default_rng(8))
    colour = cv2.merge([grey, np.flipud(grey), 255 - grey])
    path = _write(tmp_path / f"colour{suffix}", colour)
    _assert_error_names(path, "colour")


def test_nearly_grey_rgba_with_one_coloured_pixel_rejected(tmp_path):
    rgba = cv2.merge([_grey(np.random.default_rng(9))] * 3 + [np.full((64, 80), 255, np.uint8)])
    rgba[10, 20, 2] ^= 1
    _assert_error_names(_write(tmp_path / "rgba.png", rgba), "colour")


@pytest.mark.parametrize("shape", [(1, 1), (1, 40)])
def test_degenerate_size_rejected(tmp_path, shape):
    path = _write(tmp_path / "tiny.png", np.zeros(shape, np.uint8))
    _assert_error_names(path, "2x2")


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_error_names(empty)
    garbage = tmp_path / "text.jpg"
    garbage.write_text("not an image\n" * 10)
    _assert_error_names(garbage)


@pytest.mark.parametrize("name", ["absent.png", "absent.jpeg", "absent.dcm"])
def test_missing_file(tmp_path, name):
    error = _assert_error_names(tmp_path / name)
    if name.endswith(".dcm"):
        assert isinstance(error, DicomDecodeError)


def test_unknown_suffix_lists_supported(tmp_path):
    path = _write(tmp_path / "scan.tif", _grey(np.random.default_rng(10)))
    error = _assert_error_names(path, "unsupported file type")
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in str(error)
