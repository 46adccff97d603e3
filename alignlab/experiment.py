"""The experiment runner: load an experiment, build its config, run it, write the results
table, the plots and a short table.

The protocol of `experiments/<name>.py`
---------------------------------------
    VARIANTS = ('tiny', 'quick', 'paper')   tiny: seconds (tests); quick: ≤ 10 min on 2 CPU
                                            cores; paper: the full protocol, ≥ 3 seeds
    get_config(variant: str) -> cfg         a frozen dataclass; an unknown variant raises
                                            `unknown_variant(variant, VARIANTS)`
    run(cfg, out_dir, *, progress=True) -> pandas.DataFrame
        trains and evaluates into run dirs (`alignlab/runs.py`: `prepare_run`, `is_complete`,
        `mark_complete`), skipping complete runs and resuming partial ones, and returns
        `runs.collect_results(out_dir)`. Shared stages go through
        `stages.cached_stage(stages.stage_root(out_dir), kind, key, build)`.
  optional:
    BEST_BY = ('objective', 'max')          the column (and direction) of the best point per
                                            method in the printed table
    plot(df, out_dir) -> list[Path]         the experiment's plots (default: `plots.plot_frontier`,
                                            with `out_dir/frontier.csv` as the exact frontier if
                                            present); the first is the one the CLI prints
    evaluate_run(cfg, run_dir) -> dict      re-evaluates a run's latest checkpoint (`alignlab eval`)
Keep an experiment's top-level imports light: `alignlab list` imports every experiment.

API
---
    load_experiment(name_or_path) -> module          'exact_frontier' or 'path/to/file.py'
    list_experiments() -> {name: variants}
    make_config(module, variant, overrides=()) -> cfg
    run_experiment(name, variant='quick', overrides=(), out_dir=None, progress=True)
        -> ExperimentResult(out_dir, df, results_csv, plots, table)
    load_results(path) -> DataFrame                  a results.csv or an experiment out dir
Errors the user can fix are `ExperimentError` (or `config.ConfigError`), one line each.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import pandas as pd

from alignlab import plots, runs
from alignlab.config import ConfigError, apply_overrides, config_hash, to_dict

VARIANTS = ('tiny', 'quick', 'paper')
RUNS_ENV = 'ALIGNLAB_RUNS'  # where default out dirs go (default: ./runs)


class ExperimentError(ValueError):
  """An unknown experiment, a missing results table, a plot with nothing to plot."""


def unknown_variant(variant: str, known: Sequence[str] = VARIANTS) -> ConfigError:
  return ConfigError(f'unknown variant {variant!r}; known variants: {", ".join(known)}')


@dataclasses.dataclass
class ExperimentResult:
  out_dir: Path
  df: pd.DataFrame
  results_csv: Path
  plots: list[Path]
  table: str


# ----------------------------------------------------------------------------- loading


def experiments_dirs() -> list[Path]:
  """Where experiments live: the repository's `experiments/` beside the `alignlab` package,
  and `./experiments`."""
  here = Path(__file__).resolve().parent.parent / 'experiments'
  cwd = Path.cwd() / 'experiments'
  return [d for d in dict.fromkeys([here, cwd]) if d.is_dir()]


def _names() -> list[str]:
  return sorted({p.stem for d in experiments_dirs() for p in d.glob('*.py')
                 if not p.stem.startswith('_')})


def _load_file(path: Path, name: str) -> ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while the file executes
  try:
    spec.loader.exec_module(module)
  except BaseException:
    sys.modules.pop(name, None)
    raise
  return module


def _import_from(directory: Path, name: str) -> ModuleType:
  """`experiments.<name>` from `directory`, as a package module (so that an experiment can
  import its sibling helpers), whether or not `experiments` is on sys.path."""
  package = sys.modules.get('experiments')
  paths = [Path(p).resolve() for p in getattr(package, '__path__', [])]
  if package is None or directory.resolve() not in paths:
    spec = importlib.util.spec_from_file_location(
        'experiments', directory / '__init__.py', submodule_search_locations=[str(directory)])
    package = importlib.util.module_from_spec(spec)
    sys.modules['experiments'] = package
    spec.loader.exec_module(package)
    for key in [k for k in sys.modules if k.startswith('experiments.')]:
      del sys.modules[key]  # loaded from another directory
  return importlib.import_module(f'experiments.{name}')


def load_experiment(name_or_path: str) -> ModuleType:
  """An experiment module by name (`experiments/<name>.py`) or by path to a .py file."""
  path = Path(name_or_path)
  if path.suffix == '.py':
    if not path.is_file():
      raise ExperimentError(f'no experiment file {name_or_path}')
    module = _load_file(path.resolve(), f'alignlab_experiment_{path.stem}')
  else:
    candidates = [d / f'{name_or_path}.py' for d in experiments_dirs()]
    found = [c for c in candidates if c.is_file() and not name_or_path.startswith('_')]
    if not found:
      known = ', '.join(_names()) or 'none'
      raise ExperimentError(f'unknown experiment {name_or_path!r}; known experiments: {known} '
                            '(or give a path to a .py file)')
    if (found[0].parent / '__init__.py').exists():
      module = _import_from(found[0].parent, name_or_path)
    else:
      module = _load_file(found[0], f'alignlab_experiment_{name_or_path}')
  missing = [a for a in ('get_config', 'run') if not hasattr(module, a)]
  if missing:
    raise ExperimentError(f'{name_or_path} is not an experiment: it defines no {", ".join(missing)}')
  return module


def list_experiments() -> dict[str, tuple[str, ...]]:
  out = {}
  for name in _names():
    try:
      out[name] = tuple(getattr(load_experiment(name), 'VARIANTS', VARIANTS))
    except Exception as e:  # a broken experiment file must not hide the others
      out[name] = (f'<cannot load: {type(e).__name__}: {e}>',)
  return out


def make_config(module: ModuleType, variant: str, overrides: Sequence[str] = ()) -> Any:
  known = tuple(getattr(module, 'VARIANTS', VARIANTS))
  if variant not in known:
    raise unknown_variant(variant, known)
  return apply_overrides(module.get_config(variant), list(overrides))


# ----------------------------------------------------------------------------- running


def enable_compilation_cache() -> None:
  """JAX's persistent compilation cache (DESIGN.md §5): a rerun skips XLA compiles."""
  import jax

  from alignlab.data.cache import cache_root
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.environ.get(
        'JAX_COMPILATION_CACHE_DIR', str(cache_root() / 'jax_compilation_cache')))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def default_out_dir(name: str, variant: str) -> Path:
  return Path(os.environ.get(RUNS_ENV, 'runs')) / f'{Path(name).stem}-{variant}'


def load_results(path: str | Path) -> pd.DataFrame:
  """A results.csv, or the results.csv (else the run dirs) of an experiment out dir."""
  path = Path(path)
  if path.is_dir():
    if (path / 'results.csv').exists():
      path = path / 'results.csv'
    else:
      df = runs.collect_results(path)
      if not len(df):
        raise ExperimentError(f'{path} holds no results.csv and no run dirs with eval.jsonl')
      return df
  if not path.exists():
    raise ExperimentError(f'no results at {path}')
  try:
    return pd.read_csv(path)
  except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
    raise ExperimentError(f'{path} is not a results table: {e}') from None


def make_plots(module: ModuleType | None, df: pd.DataFrame, out_dir: Path) -> list[Path]:
  if module is not None and hasattr(module, 'plot'):
    return [Path(p) for p in module.plot(df, out_dir)]
  frontier_csv = out_dir / 'frontier.csv'
  frontier = pd.read_csv(frontier_csv) if frontier_csv.exists() else None
  return [plots.plot_frontier(df, out_dir / 'frontier.png', frontier)]


def summary(module: ModuleType | None, df: pd.DataFrame) -> str:
  by, mode = getattr(module, 'BEST_BY', ('objective', 'max'))
  return runs.format_table(runs.best_points(df, by, mode))


def run_experiment(name: str, variant: str = 'quick', overrides: Sequence[str] = (),
                   out_dir: str | Path | None = None, *, progress: bool = True,
                   verbose: bool = True) -> ExperimentResult:
  """Runs (or resumes) an experiment and writes results.csv, plots and the summary table."""
  module = load_experiment(name)
  cfg = make_config(module, variant, overrides)
  out_dir = Path(out_dir) if out_dir is not None else default_out_dir(name, variant)
  out_dir.mkdir(parents=True, exist_ok=True)
  record = json.dumps({'experiment': str(name), 'variant': variant, 'overrides': list(overrides),
                       'config_hash': config_hash(cfg), 'config': to_dict(cfg)}, indent=1,
                      default=str)
  record_path = out_dir / 'experiment.json'
  if not record_path.exists():  # a partial run can be re-evaluated (`alignlab eval`)
    record_path.write_text(record)
  enable_compilation_cache()
  start = time.time()
  df = module.run(cfg, out_dir, progress=progress)
  record_path.write_text(record)  # the config that made the latest results
  results_csv = out_dir / 'results.csv'
  df.to_csv(results_csv, index=False)
  win_rates = runs.collect_win_rates(out_dir)
  if len(win_rates):
    win_rates.to_csv(out_dir / 'win_rates.csv', index=False)
  figures = make_plots(module, df, out_dir)
  table = summary(module, df)
  if verbose:
    print(f'{name} ({variant}): {len(df)} evaluation points from {df["run"].nunique() if len(df) else 0}'
          f' runs in {time.time() - start:.0f} s; results: {results_csv}')
  return ExperimentResult(out_dir=out_dir, df=df, results_csv=results_csv, plots=figures,
                          table=table)
