"""experiments/quickstart.ipynb runs top to bottom (real Fashion-MNIST, in-process hosts)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

NOTEBOOK = Path(__file__).parent.parent / "experiments" / "quickstart.ipynb"


def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert list((tmp_path / "results" / "quickstart").glob("*/fedavg/global.ckpt"))
    assert list((tmp_path / "results" / "quickstart").glob("*/compare/accuracy.png"))  # FedAvg against FedAdam
