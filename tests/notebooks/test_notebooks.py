"""Every notebook runs headless top to bottom (nbclient, a fresh kernel, the notebook's smoke parameters: tiny
models, few steps) and fails the suite when a cell raises; the committed notebooks carry no outputs."""
import os
import pathlib

import nbformat
import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA

NOTEBOOKS = sorted((REPO_ROOT / 'notebooks').glob('*.ipynb'))
NEEDS_SHARED_DATA = {'analysis.ipynb', 'evaluate.ipynb', 'compression.ipynb'}  # UD English-EWT, GLUE SST-2


def test_the_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {'quickstart.ipynb', 'evaluate.ipynb', 'analysis.ipynb', 'generation.ipynb',
                                           'compression.ipynb'}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == 'code':
            assert not cell.outputs and cell.execution_count is None, \
                f'{path.name} holds outputs: strip them (python scripts/render_notebooks.py --strip)'


@pytest.mark.slow  # each trains its tiny models first: 1-3 minutes a notebook
@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    if path.name in NEEDS_SHARED_DATA and not SHARED_DATA.is_dir():
        pytest.skip(f'{path.name} reads {SHARED_DATA}, which is absent')
    from nbclient import NotebookClient
    monkeypatch.setenv('PLMJAX_NOTEBOOK_SMOKE', '1')
    monkeypatch.setenv('PLMJAX_SHARED_DATA', str(SHARED_DATA))
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name='python3',
                   resources={'metadata': {'path': str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors
