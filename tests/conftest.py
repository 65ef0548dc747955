"""Shared fixtures: one small generated MIMIC-CXR-format sample per test session, and the real
radiographs of ``../shared/data`` where they exist."""

from pathlib import Path

import pytest
import torch

from cxr_lightning.data.sample import generate_sample
from tests.helpers.samples import SHARED_DATA, cli_data_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip where CUDA is not available (``make gpu-check`` runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-subject MIMIC-CXR-format sample in PhysioNet's layout, generated once: its DICOM
    project (``files/``, record lists); the tables are in
    :func:`tests.helpers.samples.sample_tables`."""
    return generate_sample(tmp_path_factory.mktemp("sample") / "mimic", n_subjects=40, seed=7)


@pytest.fixture(scope="session")
def cli_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``paths.data_dir`` for the CLI tests (:func:`tests.helpers.samples.cli_data_dir`)."""
    return cli_data_dir(tmp_path_factory.getbasetemp())


@pytest.fixture()
def shared_data() -> Path:
    """``../shared/data`` (real radiographs), or a skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
