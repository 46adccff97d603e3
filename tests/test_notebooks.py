"""Every notebook in notebooks/ (jupytext percent-format .py) runs top to bottom in `tiny`
mode: converted with jupytext, executed with nbclient on the python3 kernel.

Runs go to a directory shared by the test session ($ALIGNLAB_RUNS), so a notebook reading an
experiment that tests/test_experiment_exact.py already ran reuses it instead of running it
again."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / 'notebooks').glob('*.py'))


def _force_tiny(nb) -> None:
  """Like papermill: a cell after the one tagged `parameters` sets VARIANT = 'tiny'."""
  tagged = [i for i, cell in enumerate(nb.cells) if 'parameters' in cell.get('metadata', {}).get('tags', [])]
  if not tagged:
    raise AssertionError('a notebook needs a cell tagged "parameters" holding VARIANT')
  assert 'VARIANT' in nb.cells[tagged[0]].source
  nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("VARIANT = 'tiny'"))


def test_notebooks_exist():
  names = [p.name for p in NOTEBOOKS]
  assert '01_exact_optimum_gap.py' in names and '03_win_rate_vs_temperature.py' in names


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_tiny_mode(path, tmp_path, tmp_path_factory, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_RUNS', str(tmp_path_factory.getbasetemp() / 'shared_runs'))
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  nb = jupytext.read(path)
  _force_tiny(nb)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                                   resources={'metadata': {'path': str(tmp_path)}})
  client.execute()
  errors = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
