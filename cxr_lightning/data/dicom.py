"""DICOM → display-ready grey image, following the DICOM grayscale pipeline (PS3.3 C.11).

Pipeline applied by :func:`read_dicom_display` (and its variants), in order:

1. **Decode** ``ds.pixel_array`` (pydicom 3; compressed transfer syntaxes through the
   pylibjpeg / openjpeg / libjpeg plugins, RLE natively). pydicom masks the unused high
   bits when *Bits Stored* < *Bits Allocated* (and sign-extends signed data); the raw
   *Pixel Data* bytes are never read directly, so that masking is never bypassed.
   Transfer syntaxes covered by the tests (``tests/data/test_dicom.py``), each against an
   independent reference: bit-exact to an uncompressed twin for Implicit/Explicit VR Little
   Endian, Explicit VR Big Endian, RLE Lossless, JPEG 2000 Lossless and JPEG-LS Lossless;
   JPEG 2000 (lossy) bit-exact to its decompressed twin and close to the original; JPEG
   Baseline 8-bit within one grey level of OpenCV's (libjpeg-turbo) decode of the same
   codestream; JPEG Lossless SV1 decoder bit-exact on an RGB pair and a monochrome file
   close to its lossy sibling; JPEG Extended 12-bit decoded. A codestream no installed
   plugin accepts raises :class:`DicomDecodeError`.
   Only single-frame ``MONOCHROME1``/``MONOCHROME2`` images with *Samples per Pixel* = 1
   are accepted; anything else raises :class:`DicomDecodeError`.
2. **Modality LUT** — :func:`pydicom.pixels.apply_modality_lut`: *Modality LUT Sequence*
   if present, else *Rescale Slope*/*Intercept*, else identity.
3. **VOI** — the same choice as :func:`pydicom.pixels.apply_voi_lut` with
   ``prefer_lut=True``, first view (index 0, i.e. the first value of a multi-valued
   *Window Center*/*Width*):

   * ``voi_lut``: *VOI LUT Sequence* applied by :func:`pydicom.pixels.apply_voi`; the
     output range is ``[0, 2**n - 1]`` with ``n`` the third *LUT Descriptor* value, and is
     divided by ``2**n - 1`` (values beyond it, from a mis-declared depth, are clipped).
     A non-integer modality output is rounded to integers first (LUT inputs are indices).
     (8-bit LUTs are passed to pydicom declared as 16-bit, since pydicom 3.0.2 would wrap
     their indices at 256.) A LUT pydicom rejects (e.g. an unsupported entry depth) falls
     through to the window.
   * ``window``: *Window Center*/*Width* applied by :func:`pydicom.pixels.apply_windowing`
     (``LINEAR`` — PS3.3 C.11.2.1.2 —, ``LINEAR_EXACT`` or ``SIGMOID`` per *VOI LUT
     Function*). pydicom maps the window onto ``[y_min, y_max]``, the range of the stored
     bit depth carried through the rescale. That range is obtained from pydicom itself by
     windowing the probes ``-inf``/``+inf`` (which land exactly on ``y_min``/``y_max`` for
     every function), and the output is normalised as ``(y - y_min) / (y_max - y_min)``;
     for ``LINEAR`` this is exactly the standard's 0…1 formula. A window pydicom rejects
     (e.g. width < 1 for ``LINEAR``) falls back to the percentile window, with a warning.
   * ``percentile`` (no usable VOI information): a robust window over the modality-LUT
     output, ``lo, hi = np.percentile(values, (0.5, 99.5))`` (numpy's default linear
     interpolation), mapped as ``clip((v - lo) / (hi - lo), 0, 1)``. If ``hi == lo`` the
     full min/max range is used; a constant image becomes all 0 (before step 4).

4. **Photometric interpretation** — ``MONOCHROME1`` (minimum value = white) is inverted,
   ``1 - x``, so that in the result 1 is always bright (bone, opacities). *Presentation
   LUT Shape* is not applied on top: for CR/DX it is ``INVERSE`` exactly when the image is
   ``MONOCHROME1``, i.e. it restates this same inversion.

The [0, 1] value is computed in float64, cast to float32, and the inversion is done in
float32, so a ``MONOCHROME1`` twin of a ``MONOCHROME2`` image decodes to exactly
``1 - image``. :func:`read_dicom_uint8` quantises before inverting (``255 - q``), so twins
are exact 8-bit complements too; it equals ``round(read_dicom_display * 255)`` except at
exact .5 ties, where it may differ by one.

**MIMIC-CXR-JPG compatibility** (``read_dicom_uint8(path, histogram_equalization=True)``,
config ``data.histogram_equalization``) replaces steps 2-4 by the conversion that produced
MIMIC-CXR-JPG, as its authors describe it (Johnson et al., MIMIC-CXR-JPG v2.0.0, PhysioNet
2019, section *Methods / Chest radiographs*; paraphrased): pixels extracted with pydicom,
shifted by the image minimum, divided by the maximum of the shifted image, scaled to
[0, 255], truncated and converted to unsigned integers; inverted where
*PhotometricInterpretation* requires it; histogram-equalised with OpenCV; written as JPEG by
OpenCV at quality 95. Reproduced here, bit for bit where the description is unambiguous:

* the decoded stored values (``ds.pixel_array``, step 1 above) — no modality LUT, VOI LUT or
  window, which the description does not mention;
* ``q = floor((p - min) / (max - min) * 255)`` in float64, in that order, cast to uint8 (a
  constant image gives 0);
* ``MONOCHROME1``: ``q = 255 - q``, so that dense tissue is bright, as in the standard
  display and in this module's other outputs (the description's sentence on which of air and
  body appears white is self-contradictory);
* ``cv2.equalizeHist(q)``.

The final JPEG (quality 95) round trip is *not* reproduced: it is storage, not
preprocessing; its error (about one grey level at full resolution) is averaged away by the
downscale to the cache size, and reproducing it would only add noise.

**Lookup table.** Steps 2-4 and the quantisation (and the MIMIC-CXR-JPG min-max step) are
elementwise functions of the stored value, except for two image statistics: the percentile
window and the MIMIC minimum/maximum. For 8/16-bit integer pixels (the normal case), the
same code is therefore run once on a table of every value the pixel dtype can hold (256 or
65,536 entries, in that dtype, so that pydicom and numpy see the same dtype as for the
image), and the image is mapped through the table by one fancy index (the pixels viewed as
unsigned, so signed values need no offset). The percentiles are then computed from the
histogram of stored values (:func:`_percentiles`), equal to ``np.percentile`` of the
modality-LUT output. The output is bit-identical to evaluating every pixel, which is still
done for float or 32-bit pixel data (rare: pydicom returns 8/16-bit integer arrays for the
usual *Bits Allocated* 8 or 16; big-endian ones are first converted to native order).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

log = logging.getLogger(__name__)

#: Percentiles of the modality-LUT output used as the window when a file has no VOI data.
PERCENTILE_WINDOW: tuple[float, float] = (0.5, 99.5)

#: Images are histogrammed by ``cv2.calcHist`` (about 8x faster than ``np.bincount``) in
#: blocks of fewer pixels than this, where its float32 counts are exact.
_CALCHIST_MAX_PIXELS = 2**24

#: Default largest image accepted, in pixels (a CXR detector is at most about 3000 x 3000 =
#: 9 Mpx; this is generous): larger declared sizes are refused before decoding.
MAX_PIXELS = 60_000_000
#: A deflated dataset may inflate to at most MAX_BYTES_PER_PIXEL per allowed pixel plus this.
_MAX_BYTES_PER_PIXEL = 4
_HEADER_ALLOWANCE = 16 * 2**20
_CHUNK = 2**20

VoiSource = Literal["voi_lut", "window", "percentile"]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class ImageDecodeError(ValueError):
    """An image file (any kind) that cannot be read as a grey image; the message names it.

    The base of every decoding error of :mod:`cxr_lightning.data` (re-exported by
    :mod:`cxr_lightning.data.images`); defined here so that module can import this one.
    """


class DicomDecodeError(ImageDecodeError):
    """A DICOM file that cannot be turned into a single-frame grey image."""


@dataclass(frozen=True)
class DisplayInfo:
    """What the grayscale pipeline applied to one file (for logging and cohort reports).

    ``window`` is (center, width) in modality-LUT output units: the file's first window for
    ``voi_source == "window"``, the percentile window ``((lo + hi) / 2, hi - lo)`` for
    ``"percentile"``, and ``None`` for ``"voi_lut"``. ``voi_function`` is the *VOI LUT
    Function* used with a window (``LINEAR`` by default), else ``None``.
    """

    photometric: str
    voi_source: VoiSource
    window: tuple[float, float] | None
    voi_function: str | None
    transfer_syntax: str


def read_dicom_display(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a DICOM file as a float32 (H, W) array in [0, 1], 1 = bright (see module doc)."""
    return read_dicom_display_with_info(path, max_pixels)[0]


def read_dicom_display_with_info(
    path: str | Path, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, DisplayInfo]:
    """Like :func:`read_dicom_display`, also returning the :class:`DisplayInfo` applied."""
    return _display_with_info(Path(path), use_table=True, max_pixels=max_pixels)


def read_dicom_uint8(path: str | Path, histogram_equalization: bool = False,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a DICOM file as a uint8 (H, W) array, 255 = bright: ``round(display * 255)``.

    MONOCHROME1 images are quantised before the inversion (``255 - q``), which differs from
    rounding the inverted value by one only at exact .5 ties (see module doc). With
    ``histogram_equalization`` the MIMIC-CXR-JPG conversion is applied instead (module doc).
    A file declaring more than ``max_pixels`` pixels is refused before its pixels are decoded.
    """
    return _uint8(Path(path), histogram_equalization, use_table=True, max_pixels=max_pixels)


def _display_with_info(path: Path, use_table: bool,
                       max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, DisplayInfo]:
    """:func:`read_dicom_display_with_info`; ``use_table=False`` evaluates every pixel."""
    levels, index, info = _presentation_values(path, use_table, max_pixels)
    if info.photometric == "MONOCHROME1":
        levels = np.float32(1.0) - levels
    return _per_pixel(levels, index), info


def _uint8(path: Path, histogram_equalization: bool, use_table: bool,
           max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`read_dicom_uint8`; ``use_table=False`` evaluates every pixel."""
    if histogram_equalization:
        return _mimic_cxr_jpg_uint8(path, use_table, max_pixels)
    levels, index, info = _presentation_values(path, use_table, max_pixels)
    quantised = np.rint(levels * np.float32(255.0)).astype(np.uint8)
    if info.photometric == "MONOCHROME1":
        quantised = np.uint8(255) - quantised
    return _per_pixel(quantised, index)


def _mimic_cxr_jpg_uint8(path: Path, use_table: bool, max_pixels: int) -> np.ndarray:
    """MIMIC-CXR-JPG's conversion: min-max to 8 bits (truncated), inversion, equalisation."""
    _, pixels, photometric = _decode(path, max_pixels)
    stored, index = _stored_values(pixels, use_table)
    low, high = pixels.min(), pixels.max()
    # Table entries absent from the image are clipped, so that none leaves the uint8 range.
    shifted = np.clip(stored, low, high).astype(np.float64) - float(low)
    peak = float(high) - float(low)  # == shifted.max() over the image: x - low is monotone
    quantised = (shifted / peak * 255.0 if peak > 0 else shifted).astype(np.uint8)
    if photometric == "MONOCHROME1":
        quantised = np.uint8(255) - quantised
    return cv2.equalizeHist(_per_pixel(quantised, index))


def _stored_values(pixels: np.ndarray, use_table: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored values to run the pipeline on, and each pixel's index into them.

    With ``use_table`` and 8/16-bit integer pixels: every value of the pixel dtype (in that
    dtype, native byte order, ordered as its unsigned view) and the pixels viewed as
    unsigned, i.e. their positions in it. Otherwise: the pixels themselves and ``None``.
    """
    dtype = pixels.dtype.newbyteorder("=")
    if not use_table or dtype.kind not in "iu" or dtype.itemsize > 2:
        return pixels, None
    unsigned = np.dtype(f"u{dtype.itemsize}")
    every_value = np.arange(2 ** (8 * dtype.itemsize), dtype=unsigned).view(dtype)
    return every_value, pixels.astype(dtype, copy=False).view(unsigned)


def _histogram(index: np.ndarray, bins: int) -> np.ndarray:
    """int64 counts of each value ``0 .. bins-1`` in the 2-D ``index``, by ``cv2.calcHist``
    over row blocks of under 2**24 pixels (its float32 counts are exact there): no temporary
    of the image's size, unlike ``np.bincount``'s int64 copy."""
    rows_per_block = max(1, (_CALCHIST_MAX_PIXELS - 1) // max(1, index.shape[1]))
    counts = np.zeros(bins, dtype=np.int64)
    for top in range(0, index.shape[0], rows_per_block):
        block = np.ascontiguousarray(index[top:top + rows_per_block])
        counts += cv2.calcHist([block], [0], None, [bins], [0, bins]).ravel().astype(np.int64)
    return counts


def _per_pixel(values: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    """``values`` per pixel: looked up at ``index`` (see :func:`_stored_values`) if given."""
    return values if index is None else values[index]


def _decode(path: Path, max_pixels: int) -> tuple[Dataset, np.ndarray, str]:
    """Step 1: the dataset, its decoded stored values (H, W) and its photometric.

    The header is checked (single grey frame, at most ``max_pixels`` pixels) before the pixel
    data are decoded, so a small file declaring a huge image never allocates it.
    """
    ds = _read_dataset(path, max_pixels)
    photometric = _check_single_grey_frame(ds, path)
    _check_size(ds, path, max_pixels)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise DicomDecodeError(f"{path}: cannot decode pixel data: {exc}") from exc
    if pixels.ndim != 2:
        raise DicomDecodeError(f"{path}: expected a 2-D image, decoded shape {pixels.shape}")
    return ds, pixels, photometric


def _presentation_values(
    path: Path, use_table: bool, max_pixels: int
) -> tuple[np.ndarray, np.ndarray | None, DisplayInfo]:
    """Steps 1-3: float32 values in [0, 1] before the MONOCHROME1 flip, and their index.

    The values are per pixel (index ``None``), or per stored value with each pixel's index
    into them (see :func:`_stored_values`).
    """
    ds, pixels, photometric = _decode(path, max_pixels)
    stored, index = _stored_values(pixels, use_table)
    _check_finite(ds, path, ("RescaleSlope", "RescaleIntercept"))
    try:
        modality = apply_modality_lut(stored, ds)
    except Exception as exc:
        raise DicomDecodeError(f"{path}: cannot apply the modality LUT: {exc}") from exc

    values, source, window, function = _apply_voi(modality, index, ds, path)
    info = DisplayInfo(
        photometric=photometric,
        voi_source=source,
        window=window,
        voi_function=function,
        transfer_syntax=str(getattr(ds.file_meta, "TransferSyntaxUID", "")),
    )
    log.debug("%s: %s", path, info)
    return np.clip(values, 0.0, 1.0).astype(np.float32), index, info


def _read_dataset(path: Path, max_pixels: int) -> Dataset:
    """``dcmread`` with every failure (missing, not DICOM, truncated) naming the file.

    A file without the preamble and file meta header (classic headerless CR files) is read
    with ``force=True``, its transfer syntax set to the encoding pydicom found (implicit VR
    little endian for those files). A deflated dataset is inflated once, in bounded memory,
    to check its size before pydicom inflates it whole.
    """
    try:
        if _is_deflated(path):
            _check_inflated_size(path, max_pixels)
            return dcmread(path)
        try:
            return dcmread(path)
        except InvalidDicomError:
            return _read_headerless(path)
    except DicomDecodeError:
        raise
    except Exception as exc:
        raise DicomDecodeError(f"{path}: cannot read as DICOM: {exc}") from exc


def _read_headerless(path: Path) -> Dataset:
    """A dataset without preamble and file meta, with the transfer syntax it was read in."""
    ds = dcmread(path, force=True)
    if "PixelData" not in ds:  # anything at all reads under force=True: demand an image
        raise DicomDecodeError(f"{path}: cannot read as DICOM: no DICM preamble, and no Pixel "
                               "Data element when read without one")
    implicit, little = ds.original_encoding
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    log.debug("%s: headerless DICOM read as %s", path, ds.file_meta.TransferSyntaxUID.name)
    return ds


def _is_deflated(path: Path) -> bool:
    """Whether the file's meta header declares the Deflated Explicit VR Little Endian syntax."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # headerless or not DICOM: dcmread explains
        return False
    return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _check_inflated_size(path: Path, max_pixels: int) -> None:
    """Refuse a deflated dataset that inflates beyond what ``max_pixels`` pixels can need."""
    limit = max_pixels * _MAX_BYTES_PER_PIXEL + _HEADER_ALLOWANCE
    with path.open("rb") as handle:
        read_preamble(handle, False)
        _read_file_meta_info(handle)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while data := handle.read(_CHUNK):
            while data:
                total += len(inflater.decompress(data, _CHUNK))
                if total > limit:
                    raise DicomDecodeError(
                        f"{path}: the deflated dataset inflates beyond {limit} bytes, more "
                        f"than an image of max_pixels={max_pixels} pixels needs; refused")
                data = inflater.unconsumed_tail


def _header_number(ds: Dataset, keyword: str, default: int, path: Path) -> int:
    """An integer header value (``default`` when absent or empty), or DicomDecodeError."""
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError) as exc:
        raise DicomDecodeError(f"{path}: {keyword} = {value!r} is not an integer") from exc


def _check_size(ds: Dataset, path: Path, max_pixels: int) -> None:
    """Refuse an image declaring no size or more than ``max_pixels`` pixels."""
    rows, columns = (_header_number(ds, k, 0, path) for k in ("Rows", "Columns"))
    if rows < 1 or columns < 1:
        raise DicomDecodeError(f"{path}: Rows x Columns = {rows} x {columns}: no image")
    if rows * columns > max_pixels:
        raise DicomDecodeError(
            f"{path}: {rows} x {columns} = {rows * columns} pixels exceeds max_pixels="
            f"{max_pixels}; refused before decoding (raise max_pixels if this is a real image)")


def _check_finite(ds: Dataset, path: Path, keywords: tuple[str, ...]) -> None:
    """Refuse non-finite values (NaN, inf) of numeric header elements (first value each)."""
    for keyword in keywords:
        if ds.get(keyword) in (None, ""):
            continue
        try:
            value = _first_value(ds, keyword)
        except (TypeError, ValueError) as exc:
            raise DicomDecodeError(f"{path}: {keyword} is not a number: {exc}") from exc
        if not math.isfinite(value):
            raise DicomDecodeError(f"{path}: {keyword} = {value} is not finite; the image "
                                   "cannot be displayed faithfully")


def _check_single_grey_frame(ds: Dataset, path: Path) -> str:
    """Reject files without pixel data, colour, palette or multi-frame; return photometric."""
    if "PixelData" not in ds:
        raise DicomDecodeError(f"{path}: no Pixel Data (7FE0,0010) element")
    samples = _header_number(ds, "SamplesPerPixel", 1, path)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in _MONOCHROME:
        raise DicomDecodeError(
            f"{path}: colour or palette image not supported (SamplesPerPixel={samples}, "
            f"PhotometricInterpretation={photometric or 'missing'})"
        )
    frames = _header_number(ds, "NumberOfFrames", 1, path)
    if frames != 1:
        raise DicomDecodeError(f"{path}: multi-frame image ({frames} frames) not supported")
    return photometric


def _apply_voi(
    modality: np.ndarray, index: np.ndarray | None, ds: Dataset, path: Path
) -> tuple[np.ndarray, VoiSource, tuple[float, float] | None, str | None]:
    """Step 3: VOI LUT, else window, else percentile window; values in [0, 1] (float64).

    ``index``: see :func:`_percentiles`.
    """
    lut_items = ds.get("VOILUTSequence")
    if lut_items and None not in (
        lut_items[0].get("LUTDescriptor"),
        lut_items[0].get("LUTData"),
    ):
        lut_input = modality
        if not np.issubdtype(modality.dtype, np.integer):
            lut_input = np.rint(modality).astype(np.int64)
        try:
            depth = int(lut_items[0].LUTDescriptor[2])
            voi_ds = _widened_8bit_voi_lut(ds) if depth == 8 else ds
            return apply_voi(lut_input, voi_ds) / float(2**depth - 1), "voi_lut", None, None
        except Exception as exc:  # malformed LUTs fail in many ways; all fall through
            log.warning("%s: unusable VOI LUT Sequence (%s); trying the window", path, exc)

    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        _check_finite(ds, path, ("WindowCenter", "WindowWidth"))
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        try:
            window = (_first_value(ds, "WindowCenter"), _first_value(ds, "WindowWidth"))
            windowed = apply_windowing(modality, ds)
            y_min, y_max = apply_windowing(np.array([-np.inf, np.inf]), ds)
        except (ValueError, TypeError) as exc:
            log.warning("%s: unusable window (%s); using the percentile window", path, exc)
        else:
            if y_max != y_min:
                return (windowed - y_min) / (y_max - y_min), "window", window, function
            log.warning("%s: window output range is empty; using the percentile window", path)

    values, window = _percentile_window(modality, index)
    return values, "percentile", window, None


def _widened_8bit_voi_lut(ds: Dataset) -> Dataset:
    """Minimal copy of ``ds``'s first VOI LUT declaring 16-bit entries (values unchanged).

    pydicom 3.0's ``apply_voi`` holds the LUT indices in the entry dtype (uint8 for an
    8-bit LUT), so any index above 255 wraps around; declaring 16 bits keeps the same
    entries (read one per 16-bit word either way) with uint16 indices.
    """
    item = ds.VOILUTSequence[0]
    descriptor = list(item.LUTDescriptor)
    descriptor[2] = 16
    widened = Dataset()
    widened.add_new(0x00283002, item["LUTDescriptor"].VR, descriptor)
    widened["LUTData"] = item["LUTData"]
    voi_ds = Dataset()
    voi_ds.file_meta = ds.file_meta  # endianness of OW LUT Data
    voi_ds.VOILUTSequence = [widened]
    return voi_ds


def _first_value(ds: Dataset, keyword: str) -> float:
    """First value of a possibly multi-valued DS element (the default VOI view)."""
    element = ds[keyword]
    return float(element.value[0] if element.VM > 1 else element.value)


def _percentile_window(
    modality: np.ndarray, index: np.ndarray | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the PERCENTILE_WINDOW range of the image linearly onto [0, 1] (clipped).

    Falls back to the full (min, max) range if that window is empty; ``index``: see
    :func:`_percentiles`.
    """
    lo, hi, lowest, highest = _percentiles(modality, index, (*PERCENTILE_WINDOW, 0.0, 100.0))
    if hi <= lo:
        lo, hi = lowest, highest
    window = ((lo + hi) / 2.0, hi - lo)
    if hi <= lo:
        return np.zeros(modality.shape, dtype=np.float64), window
    scaled = (modality.astype(np.float64) - lo) / (hi - lo)
    return np.clip(scaled, 0.0, 1.0), window


def _percentiles(
    values: np.ndarray, index: np.ndarray | None, q: tuple[float, ...]
) -> list[float]:
    """``np.percentile`` (linear) of the image's ``values``, bit for bit.

    Without ``index`` the values are per pixel. With it, ``values`` holds one entry per stored
    value and ``index`` each pixel's entry (see :func:`_stored_values`): the order statistics
    are read from the histogram of ``index`` and interpolated exactly as numpy's ``_lerp``
    does (in the values' dtype for the difference, as numpy takes them from the array).
    """
    if index is None:
        return [float(v) for v in np.percentile(values, q)]
    counts = _histogram(index, values.size)
    present = values[counts > 0]
    order = np.argsort(present, kind="stable")
    ordered = present[order]
    cumulative = np.cumsum(counts[counts > 0][order])
    last = int(cumulative[-1]) - 1
    virtual = last * (np.asarray(q, dtype=np.float64) / 100)
    below = np.floor(virtual)
    gamma = virtual - below
    rank = below.astype(np.intp)
    a, b = (ordered[np.searchsorted(cumulative, r, side="right")]
            for r in (rank, np.minimum(rank + 1, last)))
    difference = b - a
    interpolated = np.where(gamma >= 0.5, b - difference * (1 - gamma), a + difference * gamma)
    return [float(v) for v in interpolated]
