"""Run directories of an experiment and the tidy results table built from them.

    out_dir/
      experiment.json                      name, variant, overrides, config
      <method>-<hparam><value>-seed<k>/    one run dir per (method, hyperparameter, seed):
        config.json                        {experiment, method, hparams, seed, config, config_hash}
        metrics.jsonl                      training metrics, one line per logged step
        eval.jsonl                         one evaluation point per line: {step, gold_reward, kl, ...}
        win_rate.jsonl                     (optional) {temperature, win_rate, ...}
        checkpoints/                       orbax checkpoints of the run's training state
        done.json                          written last: the run is complete (resume skips it)
      results.csv, win_rates.csv, *.png    written by the runner

API
---
    run = prepare_run(out_dir, method, hparams, seed, config, experiment=name) -> Path
    is_complete(run) ; mark_complete(run, **info)
    collect_results(out_dir) -> DataFrame   (RESULT_COLUMNS first; NaN where a run lacks one)
    collect_win_rates(out_dir) -> DataFrame
    best_points(df, by='objective', mode='max') -> DataFrame ; format_table(df) -> str

`hparams` is the run's identifying hyperparameters, e.g. {'beta': 0.1}; the first one names
the run and fills the `hparam` / `hparam_value` columns. `beta` in the results is the β of
J_β used for `objective` and `gap` (the method's own β where it has one).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from alignlab.config import config_hash, to_dict

RESULT_COLUMNS = ('method', 'hparam', 'hparam_value', 'seed', 'step', 'gold_reward',
                  'gold_reward_stderr', 'kl', 'kl_stderr', 'kl_k1', 'kl_k3', 'objective', 'beta',
                  'gap', 'gap_fraction', 'proxy_reward')
TABLE_COLUMNS = ('method', 'hparam', 'hparam_value', 'n_seeds', 'step', 'gold_reward', 'kl',
                 'objective', 'gap_fraction', 'proxy_reward')


class RunDirError(ValueError):
  """A run directory that cannot be used (another config, no results)."""


def _fmt(value: Any) -> str:
  return f'{value:g}' if isinstance(value, float) else str(value)


def run_name(method: str, hparams: dict[str, Any], seed: int) -> str:
  """'dpo-beta0.1-seed0'; a trailing '_' of a name (ORPO's `lambda_`) is dropped."""
  parts = [method] + [f'{k.rstrip("_")}{_fmt(v)}' for k, v in hparams.items()] + [f'seed{seed}']
  return '-'.join(parts)


def prepare_run(out_dir: str | Path, method: str, hparams: dict[str, Any], seed: int,
                config: Any, *, experiment: str = '') -> Path:
  """Creates (or checks) the run dir and its config.json. A run dir made by another config
  is an error: resuming it would mix two experiments."""
  record = {'experiment': experiment, 'method': method, 'hparams': dict(hparams), 'seed': seed,
            'config': to_dict(config)}
  record['config_hash'] = config_hash(record)
  run = Path(out_dir) / run_name(method, hparams, seed)
  path = run / 'config.json'
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get('config_hash') != record['config_hash']:
      raise RunDirError(f'{run} was made by another config (hash {saved.get("config_hash")} ≠ '
                        f'{record["config_hash"]}); choose another --out or delete that run dir')
    return run
  run.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1, default=str))
  return run


def is_complete(run: str | Path) -> bool:
  return (Path(run) / 'done.json').exists()


def mark_complete(run: str | Path, **info: Any) -> None:
  (Path(run) / 'done.json').write_text(json.dumps({'finished': time.time(), **info}))


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
  Path(path).write_text(''.join(json.dumps(row) + '\n' for row in rows))


def read_jsonl(path: str | Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dirs(out_dir: str | Path) -> list[Path]:
  return sorted(p.parent for p in Path(out_dir).glob('*/config.json'))


def _identity(run: Path) -> dict[str, Any]:
  record = json.loads((run / 'config.json').read_text())
  hparams = record.get('hparams') or {}
  name, value = next(iter(hparams.items()), (None, math.nan))
  return {'method': record['method'], 'hparam': name.rstrip('_') if name else '',
          'hparam_value': value, 'seed': record.get('seed', 0), 'run': run.name}


def _ordered(df: pd.DataFrame, first: tuple[str, ...]) -> pd.DataFrame:
  for column in first:
    if column not in df:
      df[column] = math.nan
  return df[list(first) + [c for c in df.columns if c not in first]]


def collect_results(out_dir: str | Path) -> pd.DataFrame:
  """One row per evaluation point of every run dir under `out_dir`."""
  rows = []
  for run in run_dirs(out_dir):
    ident = _identity(run)
    rows.extend({**ident, **point} for point in read_jsonl(run / 'eval.jsonl'))
  df = pd.DataFrame(rows)
  df = _ordered(df, RESULT_COLUMNS)
  if len(df):
    df = df.sort_values(['method', 'hparam_value', 'seed', 'step'], kind='stable')
  return df.reset_index(drop=True)


def collect_win_rates(out_dir: str | Path) -> pd.DataFrame:
  rows = []
  for run in run_dirs(out_dir):
    ident = _identity(run)
    rows.extend({**ident, **point} for point in read_jsonl(run / 'win_rate.jsonl'))
  return _ordered(pd.DataFrame(rows), ('method', 'hparam', 'hparam_value', 'seed', 'temperature',
                                       'win_rate'))


def best_points(df: pd.DataFrame, by: str = 'objective', mode: str = 'max') -> pd.DataFrame:
  """Per method, the evaluation point (mean over seeds at equal method, hyperparameter and
  step) with the best `by`."""
  if not len(df):
    return df
  keys = ['method', 'hparam', 'hparam_value', 'step']
  numeric = [c for c in df.columns if c not in keys + ['run', 'seed']
             and pd.api.types.is_numeric_dtype(df[c])]
  grouped = df.groupby(keys, dropna=False)
  means = grouped[numeric].mean().reset_index()
  means['n_seeds'] = grouped['seed'].nunique().to_numpy()
  means = means[means[by].notna()] if by in means else means
  if not len(means):
    return means
  pick = means.groupby('method')[by].idxmax() if mode == 'max' else means.groupby('method')[by].idxmin()
  return means.loc[pick.to_numpy()].sort_values(by, ascending=mode != 'max').reset_index(drop=True)


def format_table(df: pd.DataFrame, columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
  cols = [c for c in columns if c in df and not (df[c].isna().all() and c != 'method')]
  return df[cols].to_string(index=False, float_format=lambda v: f'{v:.4g}',
                            na_rep='-') if len(df) else '(no results)'
