"""The notebooks execute top to bottom on the embedded data (nbclient, the venv's kernel), use
only the public API, and every figure is read by text the notebook computes.

The kernels read their ConSE features from the shared feature cache (``~/.cache/pyro_clip``,
file-locked), as ``test_logit_scale`` does: the features of an image are fixed by the backbone's
fingerprint, and encoding the embedded images again in the session's cache costs minutes of CPU.
"""

import ast
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import pyro_clip as pc

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: the user's feature cache as the session found it (read at import, before the
#: per-test isolated cache of conftest replaces PYRO_CLIP_CACHE)
SHARED_CACHE = Path(os.environ.get("PYRO_CLIP_CACHE",
                                   Path.home() / ".cache" / "pyro_clip"))


def test_notebooks_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_explore.ipynb", "02_posterior_predictive_checks.ipynb", "03_calibration_report.ipynb",
        "04_active_labelling.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


#: what a notebook may import besides ``import pyro_clip as pc``
ALLOWED_IMPORTS = {"os", "json", "pathlib", "warnings", "numpy", "pandas", "matplotlib", "arviz",
                   "IPython"}


def _code(path):
    return [ast.parse(c.source) for c in nbformat.read(path, as_version=4).cells
            if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_use_only_the_public_api(path):
    for tree in _code(path):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "pyro_clip":
                        assert alias.asname == "pc", f"{path.name}: import pyro_clip as pc"
                    else:
                        assert alias.name.split(".")[0] in ALLOWED_IMPORTS, (path.name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in ALLOWED_IMPORTS, (path.name, node.module)
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "pc"):
                public = node.attr in pc.__all__ or node.attr.startswith("__")  # __file__, ...
                assert public, f"{path.name}: pc.{node.attr} is not public"


def _has(cell, mime):
    return any(mime in o.get("data", {}) for o in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_CLIP_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("PYRO_CLIP_CACHE", str(SHARED_CACHE))
    # the kernel must be this interpreter's (the venv's), whatever python3 is on PATH
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent), prepend=":")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, "every notebook shows at least one figure"
    # every figure is followed by text built from the notebook's numbers (a Markdown output)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        if _has(cell, "image/png"):
            assert i + 1 < len(code) and _has(code[i + 1], "text/markdown"), (
                f"{path.name}: the figure of code cell {i} is not followed by computed text")
