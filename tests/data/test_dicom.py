"""Tests for cxr_lightning.data.dicom against independent references.

References used: hand computations of the PS3.3 C.11.2 VOI formulas, numpy percentiles,
pydicom's own modality/VOI functions, pydicom-data's RG1 chest CR (in three transfer
syntaxes), pydicom's bundled files with uncompressed twins (one per transfer syntax),
libjpeg-turbo through OpenCV for JPEG Baseline, the MIMIC-CXR-JPG description for the
equalised mode, and a MONOCHROME1/MONOCHROME2 twin pair from ../shared/data/dicom.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from cxr_lightning.data import dicom
from cxr_lightning.data.dicom import (
    DicomDecodeError,
    DisplayInfo,
    ImageDecodeError,
    read_dicom_display,
    read_dicom_display_with_info,
    read_dicom_uint8,
)
from tests.helpers.dicom import cr_dataset

SHARED_DICOM = Path(__file__).parents[2] / ".." / "shared" / "data" / "dicom"
SIIM = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
SIIM_MONOCHROME1 = "Fake_MONOHR1.dcm"

# Stored values exercising both LINEAR window edges of the (600, 1001) window used below,
# after rescale v = 2 p - 1024: p=561 -> v=98 (0), p=562 -> v=100 (first step above 0),
# p=1061 -> v=1098 (last step below 1), p=1062 -> v=1100 (1).
EDGE_PIXELS = (0, 561, 562, 811, 1061, 1062, 4095)


# ----------------------------------------------------------------------------- helpers


def _pixels(rng: np.random.Generator, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """12-bit unsigned test image containing EDGE_PIXELS and random values."""
    pixels = rng.integers(0, 4096, size=shape, dtype=np.uint16)
    pixels.flat[: len(EDGE_PIXELS)] = EDGE_PIXELS
    return pixels


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _smooth(rng: np.random.Generator, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """12-bit image of smooth structure plus mild noise (what lossy codecs are built for)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    signal = 2048 + 1500 * np.sin(cols / 9.0) * np.cos(rows / 13.0)
    return (signal + rng.normal(0, 20, shape)).clip(0, 4095).astype(np.uint16)


def _testdata(name: str) -> Path:
    """A file bundled with pydicom or pydicom-data, found offline; skip when absent."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not among pydicom's test files")
    return Path(path)


def _linear(v: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window, output scaled to [0, 1]."""
    out = (v - (c - 0.5)) / (w - 1) + 0.5
    out[v <= c - 0.5 - (w - 1) / 2] = 0.0
    out[v > c - 0.5 + (w - 1) / 2] = 1.0
    return out


def _linear_exact(v: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2 LINEAR_EXACT window, output scaled to [0, 1]."""
    out = (v - c) / w + 0.5
    out[v <= c - w / 2] = 0.0
    out[v > c + w / 2] = 1.0
    return out


def _sigmoid(v: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1 SIGMOID window, output scaled to [0, 1]."""
    return 1.0 / (1.0 + np.exp(-4.0 * (v - c) / w))


def _region_mean(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]):
    h, w = image.shape
    return float(image[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)]
                 .mean())


def _assert_lungs_dark(image: np.ndarray) -> None:
    """PA chest: both upper/mid lung fields are darker than the mediastinum between them."""
    rows = (0.25, 0.45)
    mediastinum = _region_mean(image, rows, (0.45, 0.55))
    for lung_cols in ((0.18, 0.35), (0.62, 0.80)):
        assert _region_mean(image, rows, lung_cols) < mediastinum - 0.15


# -------------------------------------------------------------------- synthetic: windows


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_rescale_and_window_match_standard_formula(tmp_path, function):
    pixels = _pixels(np.random.default_rng(0))
    ds = cr_dataset(pixels, RescaleSlope=2, RescaleIntercept=-1024,
                  WindowCenter=600, WindowWidth=1001)
    if function != "LINEAR":
        ds.VOILUTFunction = function
    image, info = read_dicom_display_with_info(_save(ds, tmp_path / "w.dcm"))

    v = pixels.astype(np.float64) * 2 - 1024
    formula = {"LINEAR": _linear, "LINEAR_EXACT": _linear_exact, "SIGMOID": _sigmoid}[function]
    expected = formula(v, 600.0, 1001.0)
    assert image.dtype == np.float32 and image.shape == pixels.shape
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)
    assert info == DisplayInfo("MONOCHROME2", "window", (600.0, 1001.0), function,
                               ExplicitVRLittleEndian)
    if function == "LINEAR":  # the edge pixels land exactly where the formula puts them
        edges = image.flat[: len(EDGE_PIXELS)]
        np.testing.assert_allclose(edges, [0, 0, 0.0005, 0.4985, 0.9985, 1, 1], atol=1e-6)


def test_signed_pixels_window(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.integers(-2048, 2048, size=(32, 40)).astype(np.int16)
    ds = cr_dataset(values.view(np.uint16) & 0x0FFF, signed=True, RescaleSlope=1,
                  RescaleIntercept=0, WindowCenter=-100, WindowWidth=2500)
    image = read_dicom_display(_save(ds, tmp_path / "s.dcm"))
    np.testing.assert_allclose(image, _linear(values.astype(np.float64), -100, 2500), atol=1e-6)


def test_multivalued_window_uses_first(tmp_path):
    pixels = _pixels(np.random.default_rng(2))
    ds = cr_dataset(pixels, RescaleSlope=2, RescaleIntercept=-1024,
                  WindowCenter=[600, 40], WindowWidth=[1001, 400])
    image, info = read_dicom_display_with_info(_save(ds, tmp_path / "m.dcm"))
    expected = _linear(pixels.astype(np.float64) * 2 - 1024, 600.0, 1001.0)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert info.window == (600.0, 1001.0)


def test_invalid_window_falls_back_to_percentile(tmp_path, caplog):
    pixels = _pixels(np.random.default_rng(3))
    path = _save(cr_dataset(pixels, WindowCenter=100, WindowWidth=0), tmp_path / "bad.dcm")
    with caplog.at_level("WARNING"):
        _, info = read_dicom_display_with_info(path)
    assert info.voi_source == "percentile"
    assert "bad.dcm" in caplog.text


@pytest.mark.parametrize("depth", [8, 12, 16])
def test_voi_lut_sequence_preferred_over_window(tmp_path, depth):
    rng = np.random.default_rng(4)
    pixels = _pixels(rng)
    first_map, entries = 300, 3000
    top = 2**depth - 1
    lut = np.round(top * np.sqrt(np.linspace(0, 1, entries))).astype(np.int64)
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first_map, depth])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    # RescaleIntercept makes the modality output float64: it must still index the LUT.
    ds = cr_dataset(pixels, RescaleSlope=1, RescaleIntercept=-100,
                  WindowCenter=2000, WindowWidth=100, VOILUTSequence=[item])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, info = read_dicom_display_with_info(_save(ds, tmp_path / "lut.dcm"))

    index = np.clip(pixels.astype(np.int64) - 100 - first_map, 0, entries - 1)
    np.testing.assert_allclose(image, lut[index] / top, atol=1e-6)
    assert (info.voi_source, info.window, info.voi_function) == ("voi_lut", None, None)


def test_no_voi_uses_percentile_window(tmp_path):
    rng = np.random.default_rng(5)
    values = np.clip(rng.normal(1500, 400, size=(80, 60)), 0, 4095).astype(np.uint16)
    values.flat[:5] = 4095  # a few hot pixels must not stretch the window
    image, info = read_dicom_display_with_info(_save(cr_dataset(values), tmp_path / "p.dcm"))

    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    expected = np.clip((values - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert info.voi_source == "percentile"
    np.testing.assert_allclose(info.window, ((lo + hi) / 2, hi - lo))
    assert image.min() == 0.0 and image.max() == 1.0


def test_constant_image_is_black(tmp_path):
    path = _save(cr_dataset(np.full((8, 8), 7, np.uint16)), tmp_path / "c.dcm")
    assert not read_dicom_display(path).any()


# ------------------------------------------------------- synthetic: bits, codecs, polarity


@pytest.mark.parametrize("signed", [False, True])
def test_unused_high_bits_are_masked(tmp_path, signed):
    rng = np.random.default_rng(6)
    if signed:
        values = rng.integers(-2048, 2048, size=(48, 64)).astype(np.int16)
        low12 = values.view(np.uint16) & 0x0FFF
    else:
        values = _pixels(rng).astype(np.int16)
        low12 = values.view(np.uint16)
    garbage = rng.integers(0, 16, size=values.shape, dtype=np.uint16) << 12
    assert garbage.any()
    tags = {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 600,
            "WindowWidth": 1001}
    dirty = _save(cr_dataset(low12 | garbage, signed=signed, **tags), tmp_path / "dirty.dcm")
    clean = _save(cr_dataset(low12, signed=signed, **tags), tmp_path / "clean.dcm")

    expected = _linear(values.astype(np.float64) * 2 - 1024, 600.0, 1001.0)
    np.testing.assert_allclose(read_dicom_display(dirty), expected, atol=1e-6)
    np.testing.assert_array_equal(read_dicom_display(dirty), read_dicom_display(clean))


@pytest.mark.parametrize("voi", [{"WindowCenter": 600, "WindowWidth": 1001}, {}])
def test_monochrome1_is_exact_negative(tmp_path, voi):
    pixels = _pixels(np.random.default_rng(8))
    mono2 = _save(cr_dataset(pixels, **voi), tmp_path / "m2.dcm")
    mono1 = _save(cr_dataset(pixels, photometric="MONOCHROME1", **voi), tmp_path / "m1.dcm")

    image2, image1 = read_dicom_display(mono2), read_dicom_display(mono1)
    np.testing.assert_array_equal(image1, np.float32(1) - image2)
    total = read_dicom_uint8(mono1).astype(np.int32) + read_dicom_uint8(mono2)
    assert (total == 255).all()


def test_uint8_is_rounded_display(tmp_path):
    pixels = _pixels(np.random.default_rng(9))
    path = _save(cr_dataset(pixels, WindowCenter=1500, WindowWidth=2000), tmp_path / "u.dcm")
    as_uint8 = read_dicom_uint8(path)
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == pixels.shape
    np.testing.assert_array_equal(as_uint8, np.rint(read_dicom_display(path) * 255))


# ------------------------------------------------------------------------------ errors


def test_missing_pixel_data(tmp_path):
    ds = cr_dataset(np.zeros((4, 4), np.uint16))
    del ds.PixelData
    path = _save(ds, tmp_path / "nopix.dcm")
    with pytest.raises(DicomDecodeError, match="Pixel Data") as err:
        read_dicom_display(path)
    assert str(path) in str(err.value)


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(DicomDecodeError) as err:
        read_dicom_uint8(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_truncated_file(tmp_path):
    whole = _save(cr_dataset(_pixels(np.random.default_rng(10))), tmp_path / "whole.dcm")
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole.read_bytes()[:-1000])
    with pytest.raises(DicomDecodeError) as err:
        read_dicom_display(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.dcm"
    with pytest.raises(DicomDecodeError) as err:
        read_dicom_display(path)
    assert str(path) in str(err.value)


def test_colour_rejected(tmp_path):
    ds = cr_dataset(np.zeros((4, 4), np.uint16), photometric="RGB")
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = bytes(4 * 4 * 3)
    path = _save(ds, tmp_path / "rgb.dcm")
    with pytest.raises(DicomDecodeError, match="colour") as err:
        read_dicom_display(path)
    assert str(path) in str(err.value)


def test_multiframe_rejected(tmp_path):
    ds = cr_dataset(np.zeros((8, 4), np.uint16))
    ds.Rows, ds.NumberOfFrames = 4, 2
    path = _save(ds, tmp_path / "frames.dcm")
    with pytest.raises(DicomDecodeError, match="multi-frame") as err:
        read_dicom_display(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------- pydicom-data: RG1 chest CR


@pytest.fixture(scope="module")
def rg1() -> dict[str, tuple[np.ndarray, DisplayInfo]]:
    """RG1 (Philips CR chest PA, 15-bit MONOCHROME1, window 15000/30000), decoded once.

    UNCI is the *decompressed lossy* image (same SOP Instance UID as J2KI, Lossy Image
    Compression 01); J2KR is the lossless original.
    """
    pytest.importorskip("data_store")  # the pydicom-data package
    from pydicom.data import get_testdata_file

    decoded = {}
    for name in ("UNCI", "J2KR", "J2KI"):
        path = get_testdata_file(f"RG1_{name}.dcm", download=False)
        if path is None:
            pytest.skip(f"RG1_{name}.dcm not in pydicom-data")
        decoded[name] = (*read_dicom_display_with_info(path), path)
    return decoded


def test_rg1_info(rg1):
    for image, info, _ in rg1.values():
        assert image.shape == (1955, 1841) and image.dtype == np.float32
        assert (info.photometric, info.voi_source) == ("MONOCHROME1", "window")
        assert info.window == (15000.0, 30000.0)


def test_rg1_matches_pydicom_and_formula(rg1):
    image, _, path = rg1["UNCI"]
    ds = dcmread(path)
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    np.testing.assert_allclose(image, 1 - voi / (2**15 - 1), atol=1e-6)
    by_hand = 1 - _linear(ds.pixel_array.astype(np.float64), 15000.0, 30000.0)
    np.testing.assert_allclose(image, by_hand, atol=1e-6)


def test_rg1_transfer_syntaxes_agree(rg1):
    # Same decompressed-lossy pixels, JPEG 2000 lossy vs uncompressed: identical.
    np.testing.assert_array_equal(rg1["J2KI"][0], rg1["UNCI"][0])
    # Lossless original vs the lossy round trip: close.
    difference = np.abs(rg1["J2KR"][0] - rg1["UNCI"][0])
    assert difference.mean() < 0.01
    assert np.quantile(difference, 0.999) < 0.05


def test_rg1_lungs_are_dark(rg1):
    for image, _, _ in rg1.values():
        _assert_lungs_dark(image)


# ------------------------------------------------------ shared data: MONOCHROME1/2 twins


@pytest.fixture(scope="module")
def siim_twins() -> tuple[Path, Path]:
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"{SHARED_DICOM} not present")
    paths = SHARED_DICOM / SIIM, SHARED_DICOM / SIIM_MONOCHROME1
    for path in paths:
        if not path.is_file():
            pytest.skip(f"{path} not present")
    return paths


@pytest.mark.realdata
def test_siim_twin_is_exact_negative(siim_twins):
    mono2, mono1 = siim_twins
    image2, info2 = read_dicom_display_with_info(mono2)
    image1, info1 = read_dicom_display_with_info(mono1)
    assert image2.shape == (1024, 1024)
    assert (info2.photometric, info1.photometric) == ("MONOCHROME2", "MONOCHROME1")
    assert info2.voi_source == info1.voi_source == "percentile"
    np.testing.assert_array_equal(image1, np.float32(1) - image2)
    total = read_dicom_uint8(mono1).astype(np.int32) + read_dicom_uint8(mono2)
    assert (total == 255).all()


@pytest.mark.realdata
def test_siim_percentile_window_and_orientation(siim_twins):
    mono2, _ = siim_twins
    stored = dcmread(mono2).pixel_array.astype(np.float64)
    lo, hi = np.percentile(stored, [0.5, 99.5])
    image = read_dicom_display(mono2)
    np.testing.assert_allclose(image, np.clip((stored - lo) / (hi - lo), 0, 1), atol=1e-6)
    _assert_lungs_dark(image)
    np.testing.assert_array_equal(read_dicom_uint8(mono2), np.rint(image * 255))


# ---------------------------------------------------- transfer syntaxes: synthetic files


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_lossless_encodings_decode_identically(tmp_path, syntax):
    pixels = _pixels(np.random.default_rng(7))
    ds = cr_dataset(pixels, WindowCenter=2048, WindowWidth=4096)
    plain = _save(ds, tmp_path / "plain.dcm")
    ds.compress(syntax)
    packed = _save(ds, tmp_path / "packed.dcm")

    image, info = read_dicom_display_with_info(packed)
    assert info.transfer_syntax == syntax
    assert dcmread(packed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(image, read_dicom_display(plain))
    np.testing.assert_array_equal(read_dicom_uint8(packed), read_dicom_uint8(plain))


def test_jpeg2000_lossy_is_close(tmp_path):
    ds = cr_dataset(_smooth(np.random.default_rng(11)), WindowCenter=2048, WindowWidth=4096)
    plain = _save(ds, tmp_path / "plain.dcm")
    ds.compress(JPEG2000, j2k_cr=[10])
    lossy = _save(ds, tmp_path / "lossy.dcm")

    image, info = read_dicom_display_with_info(lossy)
    assert info.transfer_syntax == JPEG2000
    difference = np.abs(image - read_dicom_display(plain))
    assert 0 < difference.mean() < 0.01 and difference.max() < 0.05


def test_jpeg_baseline_matches_libjpeg_turbo(tmp_path):
    """8-bit grey JPEG made by OpenCV, wrapped in DICOM; OpenCV's decode is the reference."""
    original = (_smooth(np.random.default_rng(12)) >> 4).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", original, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    # LINEAR_EXACT with center 127.5, width 255 is the identity on 0..255 (PS3.3 C.11.2.1.3.2).
    ds = cr_dataset(original.astype(np.uint16), bits_stored=8, WindowCenter=127.5,
                  WindowWidth=255, VOILUTFunction="LINEAR_EXACT")
    ds.BitsAllocated = 8
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([encoded.tobytes()])
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "baseline.dcm")

    decoded = read_dicom_uint8(path).astype(np.int16)
    assert read_dicom_display_with_info(path)[1].transfer_syntax == JPEGBaseline8Bit
    reference = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).astype(np.int16)
    assert np.abs(decoded - reference).max() <= 1  # two IDCT implementations
    assert np.abs(decoded - original).mean() < 1.5


# ---------------------------------------------- transfer syntaxes: pydicom's bundled files

#: (encoded file, its twin, exact?): each twin holds the same pixels uncompressed (for lossy
#: files ending in ``I``, the ``UNCI`` twin is the decompressed lossy image itself).
TWINS = [
    ("MR_small_implicit.dcm", "MR_small.dcm", True),
    ("MR_small_bigendian.dcm", "MR_small.dcm", True),
    ("MR_small_RLE.dcm", "MR_small.dcm", True),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", True),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", True),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm", True),
    ("693_J2KR.dcm", "693_UNCR.dcm", True),
    ("RG3_J2KR.dcm", "RG3_UNCR.dcm", True),
    ("MR2_J2KI.dcm", "MR2_UNCI.dcm", True),
    ("693_J2KI.dcm", "693_UNCI.dcm", True),
    ("MR2_J2KI.dcm", "MR2_UNCR.dcm", False),
    # JPEG Lossless SV1 has no uncompressed twin here: its lossy (76:1) JPEG Extended
    # sibling of the same acquisition, read through the same percentile window, is close.
    ("JPEG-LL.dcm", "JPGExtended.dcm", False),
]


@pytest.mark.parametrize(("encoded", "twin", "exact"), TWINS, ids=[t[0] for t in TWINS])
def test_transfer_syntax_matches_twin(encoded, twin, exact):
    encoded_path, twin_path = _testdata(encoded), _testdata(twin)
    image, info = read_dicom_display_with_info(encoded_path)
    assert info.transfer_syntax == dcmread(encoded_path).file_meta.TransferSyntaxUID
    reference = read_dicom_display(twin_path)
    if exact:
        np.testing.assert_array_equal(image, reference)
    else:
        difference = np.abs(image - reference)
        assert 0 < difference.mean() < 0.03 and np.quantile(difference, 0.999) < 0.25


def test_jpeg_lossless_sv1_decoder_is_bit_exact():
    """The SV1 decoder the reader relies on, on the one SV1 file with an uncompressed twin.

    That pair is RGB (which the reader rejects), so the decoded arrays are compared directly.
    """
    encoded, twin = _testdata("SC_rgb_jpeg_gdcm.dcm"), _testdata("SC_rgb.dcm")
    np.testing.assert_array_equal(dcmread(encoded).pixel_array, dcmread(twin).pixel_array)


@pytest.mark.parametrize("name", ["JPGLosslessP14SV1_1s_1f_8b.dcm", "JPGExtended.dcm"])
def test_transfer_syntax_decodes(name):
    path = _testdata(name)
    ds = dcmread(path)
    image, info = read_dicom_display_with_info(path)
    assert info.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert image.shape == (ds.Rows, ds.Columns) and image.std() > 0


def test_undecodable_codestream_names_file():
    path = _testdata("JPEG-lossy.dcm")  # a JPEG Extended stream no installed plugin accepts
    with pytest.raises(DicomDecodeError, match="cannot decode pixel data") as err:
        read_dicom_uint8(path)
    assert str(path) in str(err.value)


# -------------------------------------------------------- MIMIC-CXR-JPG (equalised) mode


def _mimic_reference(stored: np.ndarray, monochrome1: bool) -> np.ndarray:
    """The MIMIC-CXR-JPG description, step by step (min-max, truncate, invert, equalise)."""
    shifted = stored.astype(np.float64) - stored.min()
    quantised = (shifted / shifted.max() * 255).astype(np.uint8)
    if monochrome1:
        quantised = 255 - quantised
    return cv2.equalizeHist(quantised)


def _assert_equalised(image: np.ndarray, tolerance: float) -> None:
    """The cumulative histogram is close to the straight line of a uniform histogram."""
    cdf = np.cumsum(np.bincount(image.ravel(), minlength=256)) / image.size
    assert np.abs(cdf - np.arange(1, 257) / 256).max() < tolerance


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_equalised_mode_follows_mimic_cxr_jpg(tmp_path, photometric):
    stored = _smooth(np.random.default_rng(13), (128, 128))
    path = _save(cr_dataset(stored, photometric=photometric), tmp_path / "e.dcm")
    image = read_dicom_uint8(path, histogram_equalization=True)

    assert image.dtype == np.uint8 and image.shape == stored.shape
    monochrome1 = photometric == "MONOCHROME1"
    np.testing.assert_array_equal(image, _mimic_reference(stored, monochrome1))
    _assert_equalised(image, tolerance=0.02)
    # Monotone: sorted by stored value, the output never goes back (MONOCHROME1: never up).
    ordered = image.ravel()[np.argsort(stored.ravel(), kind="stable")].astype(np.int16)
    steps = np.diff(ordered)
    assert (steps <= 0).all() if monochrome1 else (steps >= 0).all()


def test_equalised_mode_ignores_window_and_rescale(tmp_path):
    stored = _smooth(np.random.default_rng(14))
    bare = _save(cr_dataset(stored), tmp_path / "bare.dcm")
    windowed = _save(cr_dataset(stored, WindowCenter=900, WindowWidth=300, RescaleSlope=2,
                              RescaleIntercept=-1024), tmp_path / "windowed.dcm")
    equalised = read_dicom_uint8(bare, histogram_equalization=True)
    np.testing.assert_array_equal(read_dicom_uint8(windowed, histogram_equalization=True),
                                  equalised)
    assert not np.array_equal(read_dicom_uint8(windowed), read_dicom_uint8(bare))


def test_equalised_mode_constant_image(tmp_path):
    path = _save(cr_dataset(np.full((8, 8), 700, np.uint16)), tmp_path / "flat.dcm")
    image = read_dicom_uint8(path, histogram_equalization=True)
    assert image.dtype == np.uint8 and len(np.unique(image)) == 1


def test_equalised_mode_rg1_chest():
    path = _testdata("RG1_UNCR.dcm")  # MONOCHROME1, 15 bits stored
    image = read_dicom_uint8(path, histogram_equalization=True)
    np.testing.assert_array_equal(image, _mimic_reference(dcmread(path).pixel_array, True))
    _assert_equalised(image, tolerance=0.03)  # a grey level cannot be split: steps remain
    _assert_lungs_dark(image / 255.0)


def test_dicom_error_is_an_image_error():
    assert issubclass(DicomDecodeError, ImageDecodeError)
    assert issubclass(ImageDecodeError, ValueError)


# --------------------------------------- lookup table (fast path) vs per-pixel reference


def _voi_lut_item(depth: int, first_map: int = 300, entries: int = 3000) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first_map, depth])  # LUT Descriptor
    lut = np.round((2**depth - 1) * np.sqrt(np.linspace(0, 1, entries))).astype(np.int64)
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    return item


def _modality_lut_item() -> Dataset:
    """A non-monotone 16-bit Modality LUT: the sorted order of its output is not the stored's."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])
    item.add_new(0x00283006, "US", ((np.arange(4096) * 7919) % 65536).tolist())
    return item


def _signed(rng: np.random.Generator, low: int, high: int, shape=(37, 53)) -> np.ndarray:
    return rng.integers(low, high, size=shape).astype(np.int16)


def _table_cases() -> dict[str, tuple[np.ndarray, dict[str, object]]]:
    """Synthetic (stored values, dataset options) covering every VOI source and pixel kind.

    The odd 37 x 53 shape makes both percentile interpolation branches (gamma < and >= 0.5)
    occur; the signed 16-bit 'wrap' image has adjacent order statistics 60,000 apart.
    """
    rng = np.random.default_rng(20)
    window = {"WindowCenter": 600, "WindowWidth": 1001}
    rescale = {"RescaleSlope": 2, "RescaleIntercept": -1024}
    wrap = np.where(rng.random((37, 53)) < 0.5, -30000, 30000).astype(np.int16)
    return {
        "mono2_window": (_pixels(rng), {**rescale, **window}),
        "mono1_window": (_pixels(rng), {**rescale, **window, "photometric": "MONOCHROME1"}),
        "linear_exact": (_pixels(rng), {**window, "VOILUTFunction": "LINEAR_EXACT"}),
        "sigmoid": (_pixels(rng), {**window, "VOILUTFunction": "SIGMOID"}),
        "fractional_rescale": (_pixels(rng), {"RescaleSlope": 0.37, "RescaleIntercept": -3.25,
                                              **window}),
        "voi_lut_8": (_pixels(rng), {"RescaleSlope": 1, "RescaleIntercept": -100,
                                     "VOILUTSequence": [_voi_lut_item(8)]}),
        "voi_lut_16_mono1": (_pixels(rng), {"VOILUTSequence": [_voi_lut_item(16)],
                                            "photometric": "MONOCHROME1"}),
        "signed12_window": (_signed(rng, -2048, 2048),
                            {"bits_stored": 12, "WindowCenter": -100, "WindowWidth": 2500}),
        "signed16_window": (_signed(rng, -32768, 32768),
                            {"bits_stored": 16, "WindowCenter": 0, "WindowWidth": 40000}),
        "percentile": (_pixels(rng, (37, 53)), {}),
        "percentile_mono1": (_pixels(rng, (37, 53)), {"photometric": "MONOCHROME1"}),
        "percentile_negative_slope": (_pixels(rng, (37, 53)),
                                      {"RescaleSlope": -1.5, "RescaleIntercept": 7}),
        "percentile_modality_lut": (_pixels(rng, (37, 53)),
                                    {"ModalityLUTSequence": [_modality_lut_item()]}),
        "percentile_signed16": (_signed(rng, -32768, 32768), {"bits_stored": 16}),
        "percentile_signed16_wrap": (wrap, {"bits_stored": 16}),
        "percentile_empty_window": (np.where(rng.random((40, 50)) < 0.998, 5, 900)
                                    .astype(np.uint16), {}),
        "constant": (np.full((8, 8), 7, np.uint16), {}),
        "bad_window": (_pixels(rng, (37, 53)), {"WindowCenter": 100, "WindowWidth": 0}),
    }


def _assert_table_matches_reference(path: Path) -> None:
    """Lookup-table outputs (display, info, uint8, equalised) equal per-pixel ones exactly."""
    fast, fast_info = dicom._display_with_info(path, use_table=True)
    slow, slow_info = dicom._display_with_info(path, use_table=False)
    assert fast_info == slow_info
    assert fast.dtype == slow.dtype == np.float32
    np.testing.assert_array_equal(fast, slow)
    for equalise in (False, True):
        fast_u8 = dicom._uint8(path, equalise, use_table=True)
        slow_u8 = dicom._uint8(path, equalise, use_table=False)
        assert fast_u8.dtype == slow_u8.dtype == np.uint8
        np.testing.assert_array_equal(fast_u8, slow_u8)


@pytest.mark.parametrize("case", list(_table_cases()))
def test_table_matches_per_pixel_reference(tmp_path, case):
    stored, options = _table_cases()[case]
    signed = stored.dtype.kind == "i"
    ds = cr_dataset(stored.view(np.uint16) if signed else stored, signed=signed, **options)
    path = _save(ds, tmp_path / f"{case}.dcm")
    assert dicom._stored_values(dcmread(path).pixel_array, use_table=True)[1] is not None
    _assert_table_matches_reference(path)


def test_table_matches_reference_8bit_pixels(tmp_path):
    stored = np.random.default_rng(21).integers(0, 256, size=(37, 53)).astype(np.uint16)
    for name, options in (("w", {"WindowCenter": 100, "WindowWidth": 60}), ("p", {})):
        ds = cr_dataset(stored, bits_stored=8, **options)
        ds.BitsAllocated = 8
        ds.PixelData = stored.astype(np.uint8).tobytes()
        path = _save(ds, tmp_path / f"{name}.dcm")
        assert dcmread(path).pixel_array.dtype == np.uint8
        _assert_table_matches_reference(path)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm",
                                  "MR_small.dcm", "MR_small_bigendian.dcm", "CT_small.dcm",
                                  "693_UNCR.dcm", "MR2_UNCR.dcm", "JPGExtended.dcm"])
def test_table_matches_reference_on_real_files(name):
    _assert_table_matches_reference(_testdata(name))


@pytest.mark.parametrize("bincount", [False, True])
def test_histogram_percentiles_equal_numpy(monkeypatch, bincount):
    """_percentiles from a histogram of stored values == np.percentile of the image's values."""
    if bincount:  # the path for images of 2**24 pixels or more
        monkeypatch.setattr(dicom, "_CALCHIST_MAX_PIXELS", 0)
    rng = np.random.default_rng(22)
    every16 = np.arange(65536, dtype=np.uint16)
    tables = {  # per stored value, as the modality LUT leaves them
        "uint16": every16,
        "int16": every16.view(np.int16),
        "uint8": np.arange(256, dtype=np.uint8),
        "float64": every16 * -0.37 + 11.0,
        "lut": ((every16.astype(np.int64) * 7919) % 65536).astype(np.uint16),
    }
    q = (*dicom.PERCENTILE_WINDOW, 0.0, 100.0, 49.75, 12.3456, 87.5, 99.99)
    for name, table in tables.items():
        for size in (1, 2, 3, 7, 200, 201, 1961, 10_007):
            unsigned = np.uint8 if table.size == 256 else np.uint16
            index = rng.integers(0, table.size, size=size).astype(unsigned)
            if name == "int16" and size == 201:  # adjacent order statistics 60,000 apart
                index = np.where(np.arange(size) < 100, 35536, 30000).astype(np.uint16)
            index = index.reshape(1, -1)
            expected = np.percentile(table[index], q)
            actual = dicom._percentiles(table, index, q)
            np.testing.assert_array_equal(actual, expected, err_msg=f"{name}, {size} pixels")
