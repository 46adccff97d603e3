"""Runs one of notebooks/ top to bottom with its parameters set (as papermill would), so a
figure in the README comes from the notebook itself, drawn from a real run's results:

    .venv/bin/python docs/run_notebook.py notebooks/07_data_size.py --set VARIANT=paper \
        --set OUT_DIR=runs/exact_data_size-paper --set FIGURE=docs/figures/exact_data_size_paper.png

Each `--set NAME=VALUE` becomes a cell `NAME = VALUE` right after the cell tagged
`parameters` (VALUE a Python literal, else a string). The notebook's printed output (its
numbers and its computed finding) goes to stdout. Needs the dev extras (jupytext, nbclient).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def execute(path: Path, values: dict, cwd: Path):
  """The notebook at `path` run top to bottom in `cwd`, each of `values` set by a cell after
  the one tagged `parameters`; returns the executed notebook (a failing cell raises)."""
  import jupytext
  import nbclient
  import nbformat
  nb = jupytext.read(path)
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.get('metadata', {}).get('tags', [])]
  if not tagged:
    raise ValueError(f'{path}: no cell tagged "parameters"')
  for name in values:
    if not name.isidentifier() or name not in nb.cells[tagged[0]].source:
      raise ValueError(f'{path} has no parameter {name!r} in its "parameters" cell')
  nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
      '\n'.join(f'{name} = {value!r}' for name, value in values.items())))
  os.environ.setdefault('MPLBACKEND', 'Agg')
  nbclient.NotebookClient(nb, timeout=None, kernel_name='python3',
                          resources={'metadata': {'path': str(cwd)}}).execute()
  return nb


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('notebook', type=Path)
  parser.add_argument('--set', dest='values', action='append', default=[], metavar='NAME=VALUE')
  args = parser.parse_args(argv)
  values = {}
  for item in args.values:
    name, sep, value = item.partition('=')
    if not sep:
      parser.error(f'--set {item!r}: expected NAME=VALUE')
    values[name] = _literal(value)
  try:
    nb = execute(args.notebook, values, Path.cwd())
  except ValueError as e:
    parser.error(str(e))
  for cell in nb.cells:
    for out in cell.get('outputs', []) if cell.cell_type == 'code' else []:
      if out.get('output_type') == 'stream' and out.get('name') == 'stdout':
        sys.stdout.write(out['text'])
  return 0


if __name__ == '__main__':
  sys.exit(main())
