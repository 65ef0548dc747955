"""Where a generated MIMIC-CXR-format sample keeps what."""

from pathlib import Path

from cxr_lightning.data.sample import generate_sample, is_complete_sample
from cxr_lightning.data.sample.generate import PHYSIONET_DICOM_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT_ROOT / ".." / "shared" / "data"
"""Real radiographs for tests (``../shared/data``, beside the checkout); absent in a clone."""


def sample_tables(images_root: Path) -> Path:
    """The MIMIC-CXR-JPG directory that holds a generated sample's four tables: the sibling of its
    DICOM project in PhysioNet's layout (``.../mimic-cxr/2.0.0`` -> ``.../mimic-cxr-jpg/2.0.0``)."""
    return images_root.parents[1] / "mimic-cxr-jpg" / images_root.name


def cli_data_dir(base_temp: Path) -> Path:
    """``paths.data_dir`` shared by the CLI tests of one session: the sample ``data=sample``
    generates with ``data.sample.n_subjects=40`` (seed 0), written once, and the image caches
    the runs build beside it (keyed by their preprocessing, so runs of other sizes coexist)."""
    data_dir = base_temp / "cli_data"
    if not is_complete_sample(data_dir / "mimic_cxr_sample" / PHYSIONET_DICOM_DIR):
        generate_sample(data_dir / "mimic_cxr_sample", n_subjects=40, seed=0, trainable=True)
    return data_dir
