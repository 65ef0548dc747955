"""notebooks/compare_formulations.ipynb: stored without outputs, and executed (nbclient, the
project's ipykernel) against the tiny real sweep, showing the report's tables and figures."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers.report_fixtures import PROJECT_ROOT, tiny_sweep

NOTEBOOK = PROJECT_ROOT / "notebooks" / "compare_formulations.ipynb"


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_notebook_runs_on_a_sweep(tmp_path_factory, monkeypatch):
    sweep = tiny_sweep(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("CXR_SWEEP_DIR", str(sweep))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = "\n".join(o.data["text/markdown"] for o in outputs
                         if "text/markdown" in o.get("data", {}))
    assert str(sweep) in markdown
    for path in sweep.glob("*/results.json"):  # Table 3 shows every job's test accuracy
        metrics = json.loads(path.read_text())["metrics"]
        assert f"{metrics['test/acc/edema']:.3f}" in markdown
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6  # figures 4, 5, 6, 7, 8 and the reliability diagram
