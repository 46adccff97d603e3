"""Every notebook in notebooks/ (jupytext percent-format .py) runs top to bottom in `tiny`
mode through docs/run_notebook.py: converted with jupytext, executed with nbclient on the
python3 kernel.

Runs go to a directory shared by the test session ($ALIGNLAB_RUNS), so a notebook reading an
experiment that tests/test_experiment_exact.py already ran reuses it instead of running it
again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.py'))
_spec = importlib.util.spec_from_file_location('run_notebook', ROOT / 'docs' / 'run_notebook.py')
run_notebook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebook)


def test_notebooks_exist():
  names = [p.name for p in NOTEBOOKS]
  assert '01_exact_optimum_gap.py' in names and '03_win_rate_vs_temperature.py' in names


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_tiny_mode(path, tmp_path, tmp_path_factory, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_RUNS', str(tmp_path_factory.getbasetemp() / 'shared_runs'))
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  # Like papermill, through the README's runner (docs/run_notebook.py): VARIANT = 'tiny' in a
  # cell after the one tagged `parameters`; a notebook that can save its figure saves it.
  params = {'VARIANT': 'tiny'}
  if 'FIGURE = None' in path.read_text():
    params['FIGURE'] = str(tmp_path / 'figure.png')
  nb = run_notebook.execute(path, params, tmp_path)
  errors = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
  if 'FIGURE' in params:
    assert (tmp_path / 'figure.png').stat().st_size > 10_000


def test_the_runner_refuses_an_unknown_parameter(tmp_path):
  with pytest.raises(ValueError, match="has no parameter 'VARIANTS'"):
    run_notebook.execute(NOTEBOOKS[0], {'VARIANTS': 'tiny'}, tmp_path)
