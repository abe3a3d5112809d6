"""examples/lab_a.ipynb and lab_b.ipynb: committed without outputs, and run top to bottom in
quick mode (QUICK = True, their first code cell) through the Python API.

The kernel is this test's own interpreter (sys.executable: the venv that `make test` installs
with ipykernel from the `test` extra), given to nbclient as an explicit kernel spec, so that no
"python3" kernel registered elsewhere on the machine (~/.local/share/jupyter) is picked up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import DATA_ROOT, data_path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "examples").glob("*.ipynb"))
# What each notebook reads from the shared data root.
NEEDS = {"lab_a.ipynb": [("imagenet-samples",), ("hymenoptera",)],
         "lab_b.ipynb": [("cifar10", "cifar10-jpg.zip")]}


def test_both_labs_are_there():
    assert [p.name for p in NOTEBOOKS] == ["lab_a.ipynb", "lab_b.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    import nbformat

    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} cell {i} holds outputs: clear them before committing "
                "(jupyter nbconvert --clear-output --inplace)")
    first = next(c for c in book.cells if c.cell_type == "code")
    assert "QUICK = True" in first.source


def _kernel_manager():
    """A kernel manager that starts ipykernel on this very interpreter."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                                    "{connection_file}"],
                              display_name=f"cnnlab tests ({sys.executable})",
                              language="python", resource_dir="")

    return KernelManager(kernel_spec_manager=ThisPython(), kernel_name="python3")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_quick_mode(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for parts in NEEDS[path.name]:
        data_path(*parts)  # skip (CI: fail) without the real data
    # The kernel inherits this environment: the data root ($CNNLAB_CACHE, the decoded CIFAR-10,
    # stays the machine's: decoding 60,000 JPEGs anew would cost minutes); runs/ lands in
    # tmp_path (the kernel's working directory), not in examples/.
    monkeypatch.setenv("CNNLAB_DATA", str(DATA_ROOT.resolve()))
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, km=_kernel_manager(), timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on a failure
    html = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
            if "text/html" in o.get("data", {})]
    assert any("cnnlab-result" in o["data"]["text/html"] for o in html)  # Result._repr_html_
    assert (tmp_path / "runs").is_dir()
