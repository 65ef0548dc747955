"""Shared fixtures: one small generated MIMIC-CXR-format sample per test session."""

from pathlib import Path

import pytest

from cxr_lightning.data.sample import generate_sample

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-subject MIMIC-CXR-format sample (DICOM files + CSVs), generated once."""
    return generate_sample(tmp_path_factory.mktemp("sample") / "mimic", n_subjects=40, seed=7)


@pytest.fixture()
def shared_data() -> Path:
    """``../shared/data`` (real radiographs), or a skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
