"""Procedural chest radiographs and their DICOM encoding, for the synthetic MIMIC-CXR sample.

Images are rendered in an *attenuation* field (bright = dense, as displayed in MONOCHROME2)
on normalised anatomical coordinates: ``x`` runs from the image's left (patient's right on a
frontal view) to its right, ``y`` downwards, and the shorter image side spans [-1, 1]. A random
pose (scale, rotation, shift) maps pixels to anatomy, so position and size vary per image.

Findings are rendered as loss of lung aeration (``opacity`` in [0, 1] replaces air by
soft-tissue density): pleural effusion as a basal opacity with a concave-up meniscus that blunts
the costophrenic angle, edema as bilateral perihilar "bat wing" haze with peripheral Kerley-B
lines at the bases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
"""SOP Class UID of Digital X-Ray Image Storage - For Presentation."""

MAX_VALUE = 4095
"""Largest 12-bit pixel value."""

FRONTAL_VIEWS = ("PA", "AP", "")
LATERAL_VIEWS = ("LATERAL", "LL")
RENDER_STEP = 2
"""Anatomy is rendered on a grid this many times coarser than the image, then upsampled."""


@dataclass(frozen=True)
class StudyFindings:
    """What a study's images show. Severities are in [0, 1]; 0 means absent."""

    edema: float = 0.0
    effusion: float = 0.0
    effusion_right: bool = True
    effusion_left: bool = True
    cardiomegaly: bool = False
    support_devices: bool = False


@dataclass(frozen=True)
class DicomStyle:
    """How an image is stored: photometric interpretation, modality LUT, VOI tags, syntax."""

    photometric: str = "MONOCHROME2"
    rescale_slope: int | None = None
    window: bool = False
    compression: str = ""  # "", "rle" or "j2k"


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render and write one DICOM file, deterministically."""

    path: Path
    dicom_id: str
    subject_id: int
    study_id: int
    view: str
    rows: int
    cols: int
    study_date: int
    study_time: float
    procedure: str
    patient_sex: str
    findings: StudyFindings
    style: DicomStyle
    anatomy_seed: tuple[int, ...]
    image_seed: tuple[int, ...]


# --------------------------------------------------------------------------------- primitives


def _ramp(value: np.ndarray | float, width: float) -> np.ndarray:
    """Soft step: 0 for value << 0, 1 for value >> 0, linear over ``width``."""
    return np.clip(0.5 + np.asarray(value, dtype=np.float32) / width, 0.0, 1.0)


def _frac(value: np.ndarray) -> np.ndarray:
    """Fractional part (much faster than ``% 1.0`` on float32 arrays)."""
    return value - np.floor(value)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean, unit-ish variance noise varying on a scale of ``cell`` pixels."""
    small = rng.standard_normal(
        (max(2, shape[0] // cell + 2), max(2, shape[1] // cell + 2)), dtype=np.float32
    )
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


@dataclass(frozen=True)
class _Pose:
    scale: float
    angle: float
    shift_x: float
    shift_y: float
    unit: float  # pixels per anatomical unit
    rows: int
    cols: int

    def grid(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical (x, y) on a grid subsampled by ``step`` (float32, for speed)."""
        rows, cols = -(-self.rows // step), -(-self.cols // step)
        col = ((np.arange(cols) + 0.5) * step - self.cols / 2) / self.unit - self.shift_x
        row = ((np.arange(rows) + 0.5) * step - self.rows / 2) / self.unit - self.shift_y
        px, py = np.meshgrid(col.astype(np.float32), row.astype(np.float32))
        cos, sin = float(np.cos(self.angle)), float(np.sin(self.angle))
        return (cos * px + sin * py) / self.scale, (-sin * px + cos * py) / self.scale

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Anatomical (N, 2) points to integer (col, row) pixel positions for cv2 drawing."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x, y = points[:, 0] * self.scale, points[:, 1] * self.scale
        px = cos * x - sin * y + self.shift_x
        py = sin * x + cos * y + self.shift_y
        cols = px * self.unit + self.cols / 2 - 0.5
        rows = py * self.unit + self.rows / 2 - 0.5
        return np.round(np.stack([cols, rows], axis=1)).astype(np.int32)


def _random_pose(rng: np.random.Generator, rows: int, cols: int) -> _Pose:
    return _Pose(
        scale=float(rng.uniform(0.86, 1.04)),
        angle=float(np.deg2rad(rng.uniform(-4.0, 4.0))),
        shift_x=float(rng.uniform(-0.06, 0.06)),
        shift_y=float(rng.uniform(-0.05, 0.07)),
        unit=min(rows, cols) / 2.0,
        rows=rows,
        cols=cols,
    )


@dataclass(frozen=True)
class _Anatomy:
    """A subject's body habitus, constant across that subject's studies."""

    body_width: float
    lung_width: float
    lung_base: float
    dome_height: float
    heart_scale: float
    air_fraction: float
    rib_spacing: float
    gastric_bubble: bool


def _subject_anatomy(rng: np.random.Generator) -> _Anatomy:
    body_width = float(rng.uniform(0.84, 1.0))
    return _Anatomy(
        body_width=body_width,
        lung_width=body_width - float(rng.uniform(0.1, 0.16)),
        lung_base=float(rng.uniform(0.5, 0.62)),
        dome_height=float(rng.uniform(0.18, 0.28)),
        heart_scale=float(rng.uniform(0.9, 1.08)),
        air_fraction=float(rng.uniform(0.6, 0.72)),
        rib_spacing=float(rng.uniform(0.14, 0.17)),
        gastric_bubble=bool(rng.random() < 0.6),
    )


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float,
             tilt: float = 0.0) -> np.ndarray:
    """Squared normalised radius of an (optionally tilted) ellipse."""
    dx, dy = x - cx, y - cy
    cos, sin = np.cos(tilt), np.sin(tilt)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return (u / rx) ** 2 + (v / ry) ** 2


# ------------------------------------------------------------------------------ frontal view


def _frontal_lung(x: np.ndarray, y: np.ndarray, side: int, anat: _Anatomy) -> tuple[
        np.ndarray, np.ndarray]:
    """Soft mask of one lung (side -1 = image left = patient right) and its local dome level."""
    a = side * x
    apex, base = -0.8, anat.lung_base + (0.0 if side > 0 else -0.03)
    t = np.clip((y - apex) / (base - apex), 0.0, 1.0)
    lateral = 0.3 + (anat.lung_width - 0.3) * np.sqrt(1.0 - (1.0 - t) ** 2)
    medial = 0.1 + 0.2 * (1.0 - t) ** 4
    dome = base + 0.04 - anat.dome_height * np.exp(-(((a - 0.38) / 0.24) ** 2))
    mask = (_ramp(a - medial, 0.03) * _ramp(lateral - a, 0.03) * _ramp(dome - y, 0.02)
            * _ramp(y - apex, 0.04))
    return mask, dome


def _effusion_opacity(x: np.ndarray, y: np.ndarray, side: int, severity: float,
                      anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Basal fluid with a concave-up meniscus climbing along the lateral chest wall."""
    a = side * x
    base = anat.lung_base
    top = base - (0.1 + 0.6 * severity) * rng.uniform(0.85, 1.15)
    depth = np.clip((anat.lung_width - a) / (anat.lung_width - 0.1), 0.0, 1.0)
    surface = top + (0.1 + 0.15 * severity) * depth**1.5
    fluid = _ramp(y - surface, 0.05) * (0.8 + 0.2 * _ramp(y - surface - 0.15, 0.3))
    cap = 0.5 * _ramp(a - (anat.lung_width - 0.06), 0.04) * _ramp(y - top + 0.25, 0.2)
    return np.maximum(fluid, cap) * (a > 0) * float(rng.uniform(0.8, 1.0))


def _kerley_lines(x: np.ndarray, y: np.ndarray, anat: _Anatomy, noise: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Short horizontal septal lines at the periphery of both lung bases."""
    period = float(rng.uniform(0.035, 0.05))
    phase = _frac(y / period + float(rng.uniform(0, 1)))
    stripes = _ramp(0.07 - np.abs(phase - 0.5), 0.06)
    a = np.abs(x)
    band = _ramp(a - (anat.lung_width - 0.16), 0.04) * _ramp(y - 0.05, 0.1)
    return stripes * band * (noise > -0.3)


def _edema_opacity(x: np.ndarray, y: np.ndarray, severity: float, anat: _Anatomy,
                   noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar haze fading to the periphery, plus basal Kerley-B lines."""
    spread = 0.22 * (1.0 + 0.5 * severity)
    a = np.abs(x)
    bat_wing = np.exp(-(((a - 0.15) / spread) ** 2) - ((y - 0.02) / 0.33) ** 2)
    haze = severity * (0.65 * bat_wing + 0.12 + 0.08 * noise)
    return haze + (0.3 + 0.4 * severity) * _kerley_lines(x, y, anat, noise, rng)


def _frontal_body(x: np.ndarray, y: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """Soft-tissue thickness in [0, 1]: a boxy torso with rounded shoulders, and the neck."""
    torso = np.clip(1.0 - np.abs(x / anat.body_width) ** 2.4 - np.abs((y - 0.25) / 1.35) ** 6,
                    0.0, 1.0) ** 0.5
    neck = np.clip(1.0 - (x / 0.26) ** 2, 0.0, 1.0) ** 0.5 * _ramp(-0.8 - y, 0.3)
    return np.maximum(torso, neck)


def _frontal_attenuation(x: np.ndarray, y: np.ndarray, anat: _Anatomy,
                         findings: StudyFindings, rng: np.random.Generator) -> np.ndarray:
    shape = x.shape
    body = _frontal_body(x, y, anat)
    inside = (body > 0.02).astype(np.float32)
    soft = 0.58 * body + 0.12 * inside

    heart_scale = anat.heart_scale * (1.18 if findings.cardiomegaly else 1.0)
    heart_scale *= 1.0 + 0.08 * findings.edema
    heart = _ramp(1.0 - _ellipse(x, y, 0.13, anat.lung_base - 0.18, 0.38 * heart_scale,
                                 0.27 * heart_scale, -0.3), 0.3)
    knob = _ramp(1.0 - _ellipse(x, y, 0.13, -0.38, 0.08, 0.07), 0.3)

    noise = _smooth_noise(rng, shape, max(4, min(shape) // 25))
    lungs = np.zeros(shape, np.float32)
    opacity = np.zeros(shape, np.float32)
    for side, has_fluid in ((-1, findings.effusion_right), (1, findings.effusion_left)):
        lungs += _frontal_lung(x, y, side, anat)[0]
        if findings.effusion > 0 and has_fluid:
            fluid = _effusion_opacity(x, y, side, findings.effusion, anat, rng)
            opacity = np.maximum(opacity, fluid)
    lungs *= (1.0 - heart) * (1.0 - knob)
    if findings.edema > 0:
        opacity = np.maximum(opacity, _edema_opacity(x, y, findings.edema, anat, noise, rng))
    opacity = np.clip(opacity + _lung_markings(x, y, noise, rng), 0.0, 1.0)

    att = soft * (1.0 - anat.air_fraction * np.clip(lungs, 0.0, 1.0) * (1.0 - opacity))
    att += _bones_frontal(x, y, anat, lungs, rng) * inside
    att -= 0.05 * np.exp(-((x / 0.035) ** 2)) * _ramp(-0.2 - y, 0.1) * inside
    if anat.gastric_bubble:
        bubble = _ellipse(x, y, 0.38, anat.lung_base + 0.18, 0.12, 0.07)
        att -= 0.12 * _ramp(1.0 - bubble, 0.3)
    return att


def _lung_markings(x: np.ndarray, y: np.ndarray, noise: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Hila and vessels radiating from them, as a small opacity."""
    a = np.abs(x)
    hilum = np.exp(-(((a - 0.2) / 0.09) ** 2) - ((y + 0.02) / 0.14) ** 2)
    radius = np.sqrt((a - 0.15) ** 2 + (y + 0.05) ** 2)
    angle = np.arctan2(y + 0.05, a - 0.15)
    branches = float(rng.uniform(8.0, 11.0))
    vessels = (0.5 + 0.5 * np.cos(branches * angle + 2.5 * noise)) ** 6 * np.exp(-radius / 0.35)
    return 0.35 * hilum + 0.2 * vessels


def _bones_frontal(x: np.ndarray, y: np.ndarray, anat: _Anatomy, lungs: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs as faint curved bands (clearest over the lungs), clavicles, spine."""
    a = np.abs(x)
    chest = _ramp(a - 0.08, 0.05) * _ramp(anat.lung_width + 0.06 - a, 0.05)
    chest *= _ramp(y + 0.85, 0.05) * _ramp(anat.lung_base + 0.05 - y, 0.1)
    phase = _frac((y - 0.45 * a**2 + 0.1 * a) / anat.rib_spacing + float(rng.uniform(0, 1)))
    ribs = _ramp(0.17 - np.abs(phase - 0.5), 0.06) * chest * (0.15 + 0.85 * lungs)
    clav_y = -0.76 - 0.1 * a + 0.25 * (a - 0.3) ** 2 + float(rng.uniform(-0.04, 0.04))
    clavicles = np.exp(-(((y - clav_y) / 0.03) ** 2)) * _ramp(a - 0.06, 0.04) * _ramp(
        0.72 - a, 0.06)
    vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * y / 0.12)
    spine = np.exp(-(np.abs(x / 0.07) ** 4)) * vertebrae
    return 0.07 * ribs + 0.14 * clavicles + 0.06 * spine


# ------------------------------------------------------------------------------ lateral view


def _lateral_attenuation(x: np.ndarray, y: np.ndarray, anat: _Anatomy,
                         findings: StudyFindings, rng: np.random.Generator) -> np.ndarray:
    """Lateral chest, anterior to the image left: one lung field, heart, spine, sternum."""
    shape = x.shape
    depth = 0.9 * anat.body_width
    body = np.clip(1.0 - np.abs(x / depth) ** 2.2 - np.abs((y - 0.15) / 1.3) ** 2.4,
                   0.0, 1.0) ** 0.5
    inside = (body > 0.02).astype(np.float32)
    soft = (0.62 * body + 0.12) * inside * (1.0 + 0.2 * _ramp(-0.4 - y, 0.4))
    anterior, posterior = -0.6 * depth + 0.08 * (y + 1.0) ** 2 * 0.3, 0.6 * depth
    base = anat.lung_base
    dome = base - 0.22 + 0.3 * np.clip((x - anterior) / (posterior - anterior), 0.0, 1.0) ** 2
    apex = _ramp(1.0 - _ellipse(x, y, 0.0, -0.05, 0.62 * depth, 0.78), 0.1)
    lungs = _ramp(x - anterior, 0.04) * _ramp(posterior - x, 0.06) * _ramp(dome - y, 0.03)
    lungs *= np.where(y < -0.05, apex, 1.0)
    heart_scale = anat.heart_scale * (1.15 if findings.cardiomegaly else 1.0)
    heart = _ramp(1.0 - _ellipse(x, y, anterior + 0.3, base - 0.08, 0.32 * heart_scale,
                                 0.3 * heart_scale, 0.4), 0.5)

    noise = _smooth_noise(rng, shape, max(4, min(shape) // 25))
    opacity = 0.6 * heart + 0.04 * noise
    if findings.effusion > 0:
        top = base + 0.08 - (0.15 + 0.6 * findings.effusion)
        rise = np.clip((posterior - x) / (posterior - anterior), 0.0, 1.0) ** 1.5
        fluid = _ramp(y - (top + (0.15 + 0.2 * findings.effusion) * rise), 0.06)
        both = findings.effusion_left and findings.effusion_right
        opacity = np.maximum(opacity, fluid * (0.95 if both else 0.7))
    if findings.edema > 0:
        haze = np.exp(-(((x - 0.05) / 0.35) ** 2) - ((y - 0.05) / 0.35) ** 2)
        opacity = opacity + findings.edema * (0.55 * haze + 0.12 + 0.06 * noise)
    opacity = np.clip(opacity, 0.0, 1.0)

    att = soft * (1.0 - anat.air_fraction * lungs * (1.0 - opacity))
    spine_x = posterior + 0.12
    column = _ramp(0.09 - np.abs(x - spine_x), 0.03) * inside
    discs = 0.75 + 0.25 * (np.cos(2 * np.pi * (y + float(rng.uniform(0, 1))) / 0.13) > -0.6)
    att += 0.12 * column * discs
    att += 0.08 * np.exp(-(((x - anterior + 0.07) / 0.02) ** 2)) * _ramp(0.35 - y, 0.1)
    att -= 0.04 * np.exp(-(((x - 0.05 + 0.1 * y) / 0.05) ** 2)) * _ramp(-0.1 - y, 0.2) * inside
    return att


# ---------------------------------------------------------------------------- devices, text


def _draw_devices(att: np.ndarray, pose: _Pose, view: str, rng: np.random.Generator) -> None:
    """Add an endotracheal/nasogastric tube and ECG leads to ``att`` as dense lines."""
    layer = np.zeros_like(att)
    thickness = max(2, round(pose.unit * 0.012))
    if view in LATERAL_VIEWS:
        tube = np.array([[0.1, -1.3], [0.08, -0.9], [0.05, -0.5], [0.02, 0.2], [-0.1, 0.8]])
    else:
        wiggle = float(rng.uniform(-0.04, 0.04))
        tube = np.array([[0.0, -1.3], [0.0, -0.8], [wiggle, -0.3], [0.05, 0.3],
                         [0.25, 0.65], [0.4, 0.8]])
    pts = pose.to_pixels(tube)
    cv2.polylines(layer, [pts.reshape(-1, 1, 2)], False, 0.2, thickness, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        centre = pose.to_pixels(rng.uniform([-0.8, -0.9], [0.8, 0.4], size=(1, 2)))[0]
        cv2.circle(layer, (int(centre[0]), int(centre[1])), int(pose.unit * 0.04), 0.25, -1,
                   cv2.LINE_AA)
    att += layer


def _draw_marker(display: np.ndarray, view: str, rng: np.random.Generator) -> None:
    """Burn a side marker (and sometimes PORTABLE) into a corner, as technologists do."""
    rows, cols = display.shape
    scale = rows / 500.0
    text = "L" if view in LATERAL_VIEWS or rng.random() < 0.5 else "R"
    corner_x = int(cols * (0.05 if rng.random() < 0.5 else 0.85))
    ink = np.zeros(display.shape, np.uint8)
    cv2.putText(ink, text, (corner_x, int(rows * 0.12)), cv2.FONT_HERSHEY_SIMPLEX,
                1.2 * scale, 255, max(1, round(2 * scale)), cv2.LINE_AA)
    if view == "AP" and rng.random() < 0.5:
        cv2.putText(ink, "PORTABLE", (int(cols * 0.55), int(rows * 0.95)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, 255, max(1, round(scale)),
                    cv2.LINE_AA)
    burned = ink.astype(np.uint32) * (MAX_VALUE - 95) // 255
    np.maximum(display, burned.astype(np.uint16), out=display)


def _expose(att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Detector response: noise, heel effect, gain, offset and gamma, to 12-bit values."""
    rows = att.shape[0]
    quantum = rng.random(att.shape, dtype=np.float32) - 0.5
    quantum = cv2.GaussianBlur(quantum, (0, 0), 0.8) * float(rng.uniform(0.025, 0.06))
    heel = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None] * float(
        rng.uniform(-0.03, 0.03))
    signal = np.clip(att * (1.0 / 0.78) + heel + quantum, 0.0, 1.3)
    levels = np.linspace(0.0, 1.3, 2048) ** float(rng.uniform(0.75, 1.3))
    low, high = rng.uniform(60, 400), rng.uniform(2700, 3700)
    lut = np.clip(np.round(low + (high - low) * levels), 0, MAX_VALUE).astype(np.uint16)
    return lut[(signal * (2047 / 1.3)).astype(np.intp)]


def render_radiograph(spec: ImageSpec) -> np.ndarray:
    """Render ``spec``'s image as 12-bit display values (bright = dense), shape (rows, cols)."""
    anat = _subject_anatomy(np.random.default_rng(spec.anatomy_seed))
    rng = np.random.default_rng(spec.image_seed)
    pose = _random_pose(rng, spec.rows, spec.cols)
    x, y = pose.grid(RENDER_STEP)
    if spec.view in LATERAL_VIEWS:
        att = _lateral_attenuation(x, y, anat, spec.findings, rng)
    else:
        att = _frontal_attenuation(x, y, anat, spec.findings, rng)
    att = cv2.resize(att.astype(np.float32), (spec.cols, spec.rows),
                     interpolation=cv2.INTER_LINEAR)
    if spec.findings.support_devices:
        _draw_devices(att, pose, spec.view, rng)
    display = _expose(att.astype(np.float32), rng)
    if spec.view == "LL":
        display = np.ascontiguousarray(display[:, ::-1])
    if rng.random() < 0.7:
        _draw_marker(display, spec.view, rng)
    return display


# ------------------------------------------------------------------------------------- DICOM


def _stored_values(display: np.ndarray, style: DicomStyle) -> np.ndarray:
    """Invert for MONOCHROME1 and undo the modality LUT, giving the values to store."""
    modality = display.astype(np.int32)
    if style.photometric == "MONOCHROME1":
        modality = MAX_VALUE - modality
    if style.rescale_slope:
        modality = modality // style.rescale_slope
    return modality.astype(np.uint16)


def _dicom_time(study_time: float) -> str:
    return f"{study_time:013.6f}"


def build_dataset(spec: ImageSpec, display: np.ndarray) -> Dataset:
    """A DX For Presentation dataset holding ``display`` stored per ``spec.style``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_uid = generate_uid(entropy_srcs=["sop", spec.dicom_id])
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(spec.study_id)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", spec.dicom_id])
    _set_patient_study_tags(ds, spec)
    stored = _stored_values(display, spec.style)
    ds.set_pixel_data(stored, spec.style.photometric, 12, generate_instance_uid=False)
    if spec.style.rescale_slope:
        ds.RescaleSlope = str(spec.style.rescale_slope)
        ds.RescaleIntercept = "0"
        ds.RescaleType = "US"
    if spec.style.window:
        modality = stored[::4, ::4].astype(np.float64) * (spec.style.rescale_slope or 1)
        low, high = np.percentile(modality, [1.0, 99.0])
        ds.WindowCenter = str(round((low + high) / 2))
        ds.WindowWidth = str(max(1, round((high - low) * 1.1)))
        ds.VOILUTFunction = "LINEAR"
    if spec.style.compression:
        _compress(ds, spec.style.compression, stored)
    return ds


def _compress(ds: Dataset, compression: str, stored: np.ndarray) -> None:
    """Losslessly compress ``ds``'s pixel data in place (RLE Lossless or JPEG 2000 Lossless)."""
    if compression == "rle":
        ds.PixelData = encapsulate([rle_lossless_frame(stored)])
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
        return
    # openjpeg logs an INFO line per tile: keep it out of the caller's logs
    quiet = [logging.getLogger(name) for name in ("_openjpeg", "openjpeg")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.WARNING)
    try:
        ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


def rle_lossless_frame(stored: np.ndarray) -> bytes:
    """DICOM RLE Lossless (PS3.5 Annex G) encoding of a 2-D uint16 frame.

    A vectorised PackBits encoder, equivalent in output format to pydicom's native one (which
    is pure Python and ~100x slower): one segment per byte plane, most significant first, each
    row encoded separately, segments padded to even length.
    """
    planes = [(stored >> 8).astype(np.uint8), (stored & 0xFF).astype(np.uint8)]
    segments = []
    for plane in planes:
        segment = _packbits_rows(plane)
        segments.append(segment.tobytes() + b"\x00" * (len(segment) % 2))
    offsets = [64, 64 + len(segments[0])]
    header = np.zeros(16, dtype="<u4")
    header[0], header[1:3] = len(segments), offsets
    return header.tobytes() + b"".join(segments)


def _split_packets(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split (start, length) stretches into PackBits packets of at most 128 bytes."""
    pieces = -(-lengths // 128)
    first = np.repeat(starts, pieces)
    index = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    packet_lengths = np.minimum(128, np.repeat(lengths, pieces) - 128 * index)
    return first + 128 * index, packet_lengths


def _packbits_rows(plane: np.ndarray) -> np.ndarray:
    """PackBits-encode a (rows, cols) uint8 array row by row; packets never cross rows."""
    flat = plane.ravel()
    n = flat.size
    row_start = np.zeros(n, dtype=bool)
    row_start[:: plane.shape[1]] = True
    change = row_start.copy()
    change[1:] |= flat[1:] != flat[:-1]
    run_starts = np.flatnonzero(change)
    run_lengths = np.diff(np.append(run_starts, n))
    replicate = run_lengths >= 3
    rep_starts, rep_lengths = _split_packets(run_starts[replicate], run_lengths[replicate])
    single = rep_lengths == 1  # a 1-byte tail of a split run is stored as a literal
    literal_byte = np.repeat(~replicate, run_lengths)
    literal_byte[rep_starts[single]] = True
    rep_starts, rep_lengths = rep_starts[~single], rep_lengths[~single]
    lit_begin = literal_byte & (row_start | ~np.concatenate([[False], literal_byte[:-1]]))
    lit_end = literal_byte & (np.append(row_start[1:], True) | ~np.append(literal_byte[1:],
                                                                          False))
    lit_starts, lit_lengths = _split_packets(np.flatnonzero(lit_begin),
                                             np.flatnonzero(lit_end) - np.flatnonzero(lit_begin)
                                             + 1)
    starts = np.concatenate([rep_starts, lit_starts])
    lengths = np.concatenate([rep_lengths, lit_lengths])
    is_rep = np.concatenate([np.ones(len(rep_starts), bool), np.zeros(len(lit_starts), bool)])
    order = np.argsort(starts, kind="stable")
    starts, lengths, is_rep = starts[order], lengths[order], is_rep[order]
    sizes = 1 + np.where(is_rep, 1, lengths)
    offsets = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    out[offsets] = np.where(is_rep, 257 - lengths, lengths - 1).astype(np.uint8)
    out[offsets[is_rep] + 1] = flat[starts[is_rep]]
    lit_len = lengths[~is_rep]
    within = np.arange(lit_len.sum()) - np.repeat(np.cumsum(lit_len) - lit_len, lit_len)
    out[np.repeat(offsets[~is_rep] + 1, lit_len) + within] = flat[
        np.repeat(starts[~is_rep], lit_len) + within]
    return out


def _set_patient_study_tags(ds: Dataset, spec: ImageSpec) -> None:
    date, time = str(spec.study_date), _dicom_time(spec.study_time)
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = str(spec.subject_id)
    ds.PatientSex = spec.patient_sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.StudyID = str(spec.study_id)
    ds.AccessionNumber = str(spec.study_id)
    ds.StudyDescription = spec.procedure
    ds.Modality = "DX"
    ds.Manufacturer = "cxr-lightning synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagerPixelSpacing = ["0.8", "0.8"]
    # row direction, column direction; laterals face the image left, LL ones are mirrored
    ds.PatientOrientation = {"LATERAL": ["P", "F"], "LL": ["A", "F"]}.get(spec.view, ["L", "F"])
    ds.BurnedInAnnotation = "NO"


def write_image(spec: ImageSpec) -> None:
    """Render ``spec`` and write it as a DICOM file at ``spec.path``."""
    display = render_radiograph(spec)
    ds = build_dataset(spec, display)
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(spec.path, enforce_file_format=True)
