"""Shared fixtures: one small generated MIMIC-CXR-format sample per test session."""

from pathlib import Path

import pytest

from cxr_lightning.data.sample import generate_sample

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-subject MIMIC-CXR-format sample in PhysioNet's layout, generated once: its DICOM
    project (``files/``, record lists); the tables are in :func:`sample_tables`."""
    return generate_sample(tmp_path_factory.mktemp("sample") / "mimic", n_subjects=40, seed=7)


def sample_tables(images_root: Path) -> Path:
    """The MIMIC-CXR-JPG directory that holds a generated sample's four tables: the sibling of its
    DICOM project in PhysioNet's layout (``.../mimic-cxr/2.0.0`` -> ``.../mimic-cxr-jpg/2.0.0``)."""
    return images_root.parents[1] / "mimic-cxr-jpg" / images_root.name


@pytest.fixture()
def shared_data() -> Path:
    """``../shared/data`` (real radiographs), or a skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
