"""The `alignlab` command line: one-line errors with exit status 2 for bad inputs, and
`alignlab run exact_frontier --variant tiny` end to end (results, plots, --set, resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alignlab import cli, runs

SMALL = ['--set', "methods=['dpo','best_of_n']", '--set', 'sweeps.dpo=[0.5]',
         '--set', 'sweeps.best_of_n=[4]']


def _error(capsys, argv) -> str:
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith('alignlab: error: ') and 'Traceback' not in err
  return lines[0]


def test_bad_inputs_are_one_line_errors(capsys, tmp_path):
  line = _error(capsys, ['run', 'no_such_experiment'])
  assert 'no_such_experiment' in line and 'exact_frontier' in line
  line = _error(capsys, ['run', 'exact_frontier', '--variant', 'huge'])
  assert "'huge'" in line and 'tiny, quick, paper' in line
  line = _error(capsys, ['run', 'exact_frontier', '--variant', 'tiny', '--set', 'train.stepz=3'])
  assert 'train.stepz' in line and 'train.steps' in line
  line = _error(capsys, ['run', 'exact_frontier', '--variant', 'tiny', '--set', 'train.steps'])
  assert 'key=value' in line
  line = _error(capsys, ['run', str(tmp_path / 'missing.py')])
  assert 'missing.py' in line
  line = _error(capsys, ['eval', str(tmp_path)])
  assert str(tmp_path) in line and 'no evaluation results' in line
  (tmp_path / 'r').mkdir()
  (tmp_path / 'r' / 'config.json').write_text('{"method": "dpo"}')
  assert 'no evaluation results yet' in _error(capsys, ['eval', str(tmp_path / 'r')])
  assert 'is not a directory' in _error(capsys, ['eval', str(tmp_path / 'nope')])
  assert 'no results' in _error(capsys, ['plot', str(tmp_path / 'results.csv')])
  assert 'invalid choice' in _error(capsys, ['frobnicate'])


def test_console_script_help_and_error():
  exe = Path(sys.executable).with_name('alignlab')
  argv = [str(exe)] if exe.exists() else [sys.executable, '-m', 'alignlab.cli']
  proc = subprocess.run(argv + ['--help'], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and 'examples:' in proc.stdout and 'alignlab run' in proc.stdout
  proc = subprocess.run(argv + ['run', 'no_such_experiment'], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and 'Traceback' not in proc.stderr


def test_run_end_to_end_with_overrides_resume_eval_and_plot(capsys, tmp_path):
  out = tmp_path / 'out'
  assert cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--out', str(out), '--quiet'] + SMALL) == 0
  stdout = capsys.readouterr().out
  df = pd.read_csv(out / 'results.csv')
  assert set(df['method']) == {'dpo', 'best_of_n'}  # --set methods.run took effect
  assert set(df.loc[df['method'] == 'dpo', 'hparam_value']) == {0.5}
  assert set(df.loc[df['method'] == 'best_of_n', 'hparam_value']) == {4}
  assert (out / 'frontier.png').stat().st_size > 1000
  assert f'plot: {out / "frontier.png"}' in stdout and 'gap_fraction' in stdout
  record = json.loads((out / 'experiment.json').read_text())
  assert record['variant'] == 'tiny' and record['overrides'] == SMALL[1::2]
  # The wall time, split into the stages and each method's training and evaluation, adds up
  # to the command's total; it is printed and in summary.md with the method families.
  timings = json.loads((out / 'stages.json').read_text())['timings']
  split = timings['split']
  assert split['dpo: training'] > 0 and split['dpo: evaluation'] > 0
  assert split['best_of_n: evaluation'] > 0 and split['best_of_n: training'] < 0.05
  assert abs(sum(split.values()) - timings['total_s']) < 0.05 * timings['total_s']
  for row in ('| stages |', '| dpo: training |', '| **offline (preference losses): evaluation** |',
              '| total |'):
    assert row in (out / 'summary.md').read_text() and row in stdout, row

  run_dir = out / 'dpo-beta0.5-seed0'
  stamp = (run_dir / 'done.json').stat().st_mtime_ns
  metrics = (run_dir / 'metrics.jsonl').read_text()
  assert cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--out', str(out)] + SMALL) == 0
  captured = capsys.readouterr()
  assert 'dpo: 1 runs complete, skipped' in captured.err
  assert (run_dir / 'done.json').stat().st_mtime_ns == stamp
  assert (run_dir / 'metrics.jsonl').read_text() == metrics
  # Another config in the same out dir would mix two experiments: refused, in one line.
  line = _error(capsys, ['run', 'exact_frontier', '--variant', 'tiny', '--out', str(out),
                         '--quiet', '--set', 'train.steps=5'] + SMALL)
  assert 'another config' in line and 'train.steps' in line
  # A changed evaluation setting recomputes what it affects (here every run), and frontier.csv.
  assert len(pd.read_csv(out / 'frontier.csv')) != 5
  assert cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--out', str(out), '--quiet',
                   '--set', 'task.eval_beta=0.7', '--set', 'task.frontier_points=5'] + SMALL) == 0
  assert 'evaluation settings changed (eval_beta: 0.3 → 0.7)' in capsys.readouterr().err
  df = pd.read_csv(out / 'results.csv')
  assert set(df.loc[df['method'] == 'best_of_n', 'beta']) == {0.7}
  assert len(pd.read_csv(out / 'frontier.csv')) == 5

  assert cli.main(['eval', str(run_dir)]) == 0
  assert 'gap_fraction' in capsys.readouterr().out
  assert cli.main(['eval', str(run_dir), '--recompute']) == 0
  recomputed = json.loads(capsys.readouterr().out)
  final = runs.read_jsonl(run_dir / 'eval.jsonl')[-1]
  assert recomputed['step'] == final['step']
  assert recomputed['gap'] == pytest.approx(final['gap'], abs=1e-6)
  assert cli.main(['eval', str(out)]) == 0  # an experiment dir: its best points
  assert 'dpo' in capsys.readouterr().out

  line = _error(capsys, ['plot', str(out / 'results.csv'), '--method', 'ppo'])
  assert 'ppo' in line and 'best_of_n, dpo' in line
  assert cli.main(['plot', str(out), '--kind', 'gap', '--out', str(tmp_path / 'g.png')]) == 0
  assert (tmp_path / 'g.png').stat().st_size > 1000
  # The path printed is the file written: no suffix added behind the user's back.
  assert cli.main(['plot', str(out), '--out', str(tmp_path / 'plain')]) == 0
  assert f'plot: {tmp_path / "plain"}' in capsys.readouterr().out
  assert (tmp_path / 'plain').read_bytes()[:4] == b'\x89PNG' and not (tmp_path / 'plain.png').exists()
  assert cli.main(['plot', str(out), '--out', str(tmp_path)]) == 0  # a dir: frontier.png in it
  assert (tmp_path / 'frontier.png').exists()
  assert '.foo is not an image format' in _error(capsys, ['plot', str(out), '--out', 'x.foo'])
  assert cli.main(['plot', str(out), '--kind', 'win_rate']) == 0
  assert (out / 'win_rate.png').exists()
  assert cli.main(['list']) == 0
  assert 'exact_frontier' in capsys.readouterr().out
