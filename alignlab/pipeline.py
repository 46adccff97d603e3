"""The pipeline, once for every task: π_ref → pairs → (reward model) → methods → evaluation →
results table → plots and verdict.

    cfg = ExperimentConfig(name='exact_frontier', task=exact.Config(), methods=('dpo', 'ppo'),
                           sweeps=Sweeps(dpo=(0.1, 1.0)))
    result = run_experiment('exact_frontier', 'tiny', ['sweeps.dpo=(0.3,)'])
    result = run(cfg, out_dir)  # the same for a config built in code

An experiment (`experiments/<name>.py`, or any .py file) is configuration only:
    VARIANTS = ('tiny', 'quick', 'paper')
    get_config(variant) -> ExperimentConfig        (an unknown variant: `unknown_variant`)
and is loaded by name or path (`load_experiment`); it is not an installed package.

The task (`cfg.task`, the `Config` of a `tasks.TASKS` module) builds π_ref and the pairs in
its cached stages (`alignlab/stages.py`: one cache root) and returns its env; every method of
`cfg.methods` then trains against that env with the values of `cfg.sweeps.<method>` × seeds
(`alignlab/methods.py`). `run` alone writes `results.csv`, `win_rates.csv`, `stages.json`,
the plots and `summary.md`.

Several processes (`alignlab/distributed.py`, docs/multihost.md) run the same `run`: they
train and evaluate together over one mesh of all their devices, and process 0 alone writes
the out dir (the same files a single process writes) and prints.

Run dirs and the results table: `alignlab/runs.py`. Errors the user can fix are
`ExperimentError` or `config.ConfigError`, one line each.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import pandas as pd

from alignlab import methods as methods_lib
from alignlab import distributed, plots, runs, sharding, stages
from alignlab.artifacts import write_text_atomic
from alignlab import verdict as verdict_lib
from alignlab.config import (ConfigError, MeshConfig, _parse_value, apply_overrides, config_hash,
                             to_dict)
from alignlab.methods import METHODS, RLConfig, Sweeps, TrainConfig
from alignlab.tasks import task_of

VARIANTS = ('tiny', 'quick', 'paper')
RUNS_ENV = 'ALIGNLAB_RUNS'  # where default out dirs go (default: ./runs)


class ExperimentError(ValueError):
  """An unknown experiment, a missing results table, a plot with nothing to plot."""


class RunsFailed(RuntimeError):
  """Some runs diverged: their results are written, marked failed, and left out of the
  verdict and the plots."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str
  task: Any  # the Config of a task in `tasks.TASKS`; its type says which task
  methods: tuple[str, ...]
  sweeps: Sweeps = Sweeps()
  train: TrainConfig = TrainConfig()
  rl: RLConfig = RLConfig()
  seeds: tuple[int, ...] = (0,)
  mesh: MeshConfig = MeshConfig()
  kl_budgets: tuple[float, ...] = verdict_lib.BUDGETS  # the verdict's KL budgets (nats)
  # Whole pipelines over values that are no method's hyperparameter (a data size, a data
  # seed): each point is `(name, 'key=value', ...)`, run with its overrides into OUT/<name>/
  # (`run_grid`). Empty: one pipeline into OUT.
  grid: tuple[tuple[str, ...], ...] = ()


@dataclasses.dataclass
class ExperimentResult:
  out_dir: Path
  df: pd.DataFrame
  results_csv: Path
  plots: list[Path]
  table: str


def unknown_variant(variant: str, known: Sequence[str] = VARIANTS) -> ConfigError:
  return ConfigError(f'unknown variant {variant!r}; known variants: {", ".join(known)}')


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


def load_experiment(name_or_path: str) -> ModuleType:
  """An experiment module by name (`experiments/<name>.py`) or by path to a .py file."""
  path = Path(name_or_path)
  if path.suffix != '.py':
    found = [d / f'{name_or_path}.py' for d in experiments_dirs()
             if (d / f'{name_or_path}.py').is_file()]
    if not found or name_or_path.startswith('_'):
      known = ', '.join(_names()) or 'none'
      raise ExperimentError(f'unknown experiment {name_or_path!r}; known experiments: {known} '
                            '(or give a path to a .py file)')
    path = found[0]
  elif not path.is_file():
    raise ExperimentError(f'no experiment file {name_or_path}')
  name = f'alignlab_experiment_{path.stem}'
  spec = importlib.util.spec_from_file_location(name, path.resolve())
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while the file executes
  try:
    spec.loader.exec_module(module)
  except BaseException:
    sys.modules.pop(name, None)
    raise
  if not hasattr(module, 'get_config'):
    raise ExperimentError(f'{name_or_path} is not an experiment: it defines no get_config')
  return module


def list_experiments() -> dict[str, tuple[str, ...]]:
  out = {}
  for name in _names():
    try:
      out[name] = tuple(getattr(load_experiment(name), 'VARIANTS', VARIANTS))
    except Exception as e:  # a broken experiment file must not hide the others
      out[name] = (f'<cannot load: {type(e).__name__}: {e}>',)
  return out


def make_config(module: ModuleType, variant: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
  known = tuple(getattr(module, 'VARIANTS', VARIANTS))
  if variant not in known:
    raise unknown_variant(variant, known)
  return apply_overrides(module.get_config(variant), list(overrides))


# ----------------------------------------------------------------------------- running


def enable_compilation_cache() -> None:
  """JAX's persistent compilation cache: a rerun skips XLA compiles."""
  import jax

  from alignlab.data.cache import cache_root
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.environ.get(
        'JAX_COMPILATION_CACHE_DIR', str(cache_root() / 'jax_compilation_cache')))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def default_out_dir(name: str, variant: str) -> Path:
  return Path(os.environ.get(RUNS_ENV, 'runs')) / f'{Path(name).stem}-{variant}'


def _log(progress: bool, name: str):
  def log(message: str) -> None:
    if progress:
      print(f'[{name}] {message}', file=sys.stderr, flush=True)
  return log


def setup(cfg: ExperimentConfig, *, progress: bool = True) -> tuple[ModuleType, dict]:
  """(task module, env): the task's stages built or read from the cache."""
  _, task = task_of(cfg.task)
  mesh = sharding.make_mesh(cfg.mesh)  # a mesh that does not fit: ConfigError, before any compile
  return task, task.setup(cfg.task, mesh=mesh, progress=progress, log=_log(progress, cfg.name))


def evaluate_run(cfg: ExperimentConfig, run_dir: str | Path) -> dict:
  """Evaluates a run dir's latest checkpoint again (or recomputes its single point: π_ref,
  Best-of-N) with the task's evaluation; returns the point with its step."""
  run_dir = Path(run_dir)
  record = json.loads((run_dir / 'config.json').read_text())
  name, hparams = record['method'], record['hparams']
  spec = METHODS[name]
  _, env = setup(cfg, progress=False)
  if spec['train'] is methods_lib.best_of_n:
    return {'step': 0, **env['best_of_n'](int(hparams['n']))[0]}
  if spec['train'] is methods_lib.reference:
    return {'step': 0, **env['evaluate'](env['ref_params'], None)}
  step, params = methods_lib.restore_policy(env, name, run_dir, cfg)
  beta = hparams[spec['hparam']] if spec.get('own_beta') else None
  return {'step': step, **env['evaluate'](params, beta)}


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


def make_plots(cfg: ExperimentConfig, df: pd.DataFrame, out_dir: Path) -> list[Path]:
  """The task's figures: the reward–KL frontier (first: the one the CLI prints), the gap to
  the optimum where the task knows it, the win rates by temperature."""
  _, task = task_of(cfg.task)
  kinds = getattr(task, 'PLOTS', ('frontier', 'win_rates'))
  frontier_csv = out_dir / 'frontier.csv'
  frontier = pd.read_csv(frontier_csv) if frontier_csv.exists() else None
  # Failed runs are drawn as failed (grey crosses), never as points (`plots.py`).
  paths = [plots.plot_frontier(df, out_dir / 'frontier.png', frontier,
                               title=f'{cfg.name}: gold reward vs KL(π‖π_ref)')]
  if 'train_flops' in df and df['train_flops'].notna().any():
    paths.append(plots.plot_compute(df, out_dir / 'compute.png', x='train_flops',
                                    title=f'{cfg.name}: gold reward and J_β vs training compute'))
  if 'gap' in kinds and 'gap_fraction' in df and df['gap_fraction'].notna().any():
    paths.append(plots.plot_gap(df, out_dir / 'gap.png'))
  wr_csv = out_dir / 'win_rates.csv'
  if 'win_rates' in kinds and wr_csv.exists():
    paths.append(plots.plot_win_rates(pd.read_csv(wr_csv), out_dir / 'win_rates.png'))
  return paths


def summary(cfg: ExperimentConfig | None, df: pd.DataFrame) -> str:
  """Per method, its best evaluation point by the task's BEST_BY (means over seeds)."""
  by, mode = ('objective', 'max')
  if cfg is not None:
    by, mode = getattr(task_of(cfg.task)[1], 'BEST_BY', (by, mode))
  return runs.format_table(runs.best_points(df, by, mode))


def plan(cfg: ExperimentConfig, env: dict, out_dir: Path) -> str:
  """One line stated before training starts: the runs to train and their training compute,
  with a lower bound on its time at this machine's measured matmul rate."""
  todo, flops = 0, 0.0
  for name in cfg.methods:
    values = getattr(cfg.sweeps, name, METHODS[name]['values'])
    single = METHODS[name]['train'] in (methods_lib.best_of_n, methods_lib.reference)
    for v in values:
      for s in (0,) if single else cfg.seeds:  # one point, no training, no seeds
        hparams = {METHODS[name]['hparam']: v} if METHODS[name]['hparam'] else {}
        if not runs.is_complete(out_dir / runs.run_name(name, hparams, s)):
          todo += 1
          flops += methods_lib.planned_flops(env, name, cfg)
  rate = sharding.matmul_flops_per_s()
  amount = f'{flops / 1e12:.3g} TFLOP' if flops >= 1e12 else f'{flops / 1e9:.3g} GFLOP'
  return (f'plan: {todo} runs to make, {amount} of training (6·N·tokens); at the '
          f'{rate / 1e9:.0f} GFLOP/s this machine multiplies matrices, ≥ '
          f'{_duration(flops / rate)}, before sampling and evaluation')


TIMED = ('evaluate', 'win_rates', 'best_of_n')  # the env's evaluation functions


def _timed_env(env: dict, clock: dict[str, float]) -> dict:
  """`env` with its evaluation functions timed into `clock['evaluation']`. Each returns host
  numbers, so its wall time is its cost; a stage it builds on first use (the reward model of
  a proxy reward) is left out, counted apart by `stages.seconds_spent`."""
  def timed(fn):
    def wrapped(*args, **kwargs):
      t0, s0 = time.perf_counter(), stages.seconds_spent()
      try:
        return fn(*args, **kwargs)
      finally:
        clock['evaluation'] = (clock.get('evaluation', 0.0) + time.perf_counter() - t0
                               - (stages.seconds_spent() - s0))
    return wrapped
  return {**env, **{k: timed(env[k]) for k in TIMED if k in env}}


FAMILIES = {methods_lib.train_preference: 'offline (preference losses)',
            methods_lib.train_rl: 'online RL', methods_lib.best_of_n: 'no training (sampling)',
            methods_lib.reference: 'no training (sampling)'}


def wall_time_markdown(cfg: ExperimentConfig, timings: dict) -> str:
  """The command's wall time split by part (the shared stages, the reward model, each
  method's training and evaluation) and by method family, each with its share."""
  split, total = timings['split'], max(timings['total_s'], 1e-9)
  families: dict[str, float] = {}
  for name in cfg.methods:
    family = FAMILIES.get(METHODS[name]['train'], 'other')
    for part in ('training', 'evaluation'):
      key = f'{family}: {part}'
      families[key] = families.get(key, 0.0) + split.get(f'{name}: {part}', 0.0)
  rows = ['| part | s | share |', '|---|---|---|']
  for key, s in [*split.items(), *[(f'**{k}**', v) for k, v in families.items()]]:
    if s >= 0.05 or key == 'stages':  # a part that took no time is left out
      rows.append(f'| {key} | {s:.1f} | {100 * s / total:.0f} % |')
  rows.append(f'| total | {total:.1f} | 100 % |')
  return '\n'.join(rows) + '\n'


def _duration(seconds: float) -> str:
  return (f'{seconds:.0f} s' if seconds < 120 else f'{seconds / 60:.0f} min' if seconds < 7200
          else f'{seconds / 3600:.1f} h')


def run(cfg: ExperimentConfig, out_dir: str | Path, *, source: dict | None = None,
        progress: bool = True, verbose: bool = True) -> ExperimentResult:
  """Runs (or resumes) an experiment: trains and evaluates every (method, value, seed) of
  `cfg` into run dirs under `out_dir` (complete runs are skipped, partial ones resume), then
  writes results.csv, win_rates.csv, stages.json, the plots and summary.md. `source`
  ({experiment, variant, overrides}) is recorded in experiment.json for `alignlab eval`."""
  out_dir = Path(out_dir)
  if cfg.grid:
    return run_grid(cfg, out_dir, source=source, progress=progress, verbose=verbose)
  methods_lib.validate(cfg.methods, cfg.sweeps, cfg.train, cfg.rl)
  if out_dir.exists() and not out_dir.is_dir():
    raise ExperimentError(f'--out {out_dir} is a file; give a directory')
  sharding.make_mesh(cfg.mesh)  # a mesh.* that does not fit the devices fails before any write
  if not distributed.same_everywhere(config_hash(cfg)):
    raise ConfigError(f'process {distributed.process_index()} of {distributed.process_count()} '
                      'runs another config than some other process: give every process the '
                      'same command (experiment, --variant, --set)')
  writer = distributed.is_writer()
  progress, verbose = progress and writer, verbose and writer  # one voice: process 0's
  if writer:
    out_dir.mkdir(parents=True, exist_ok=True)
  source = source or {'experiment': cfg.name, 'variant': None, 'overrides': []}
  record = json.dumps({**source, 'config_hash': config_hash(cfg), 'config': to_dict(cfg)},
                      indent=1, default=str)
  with runs.lock_dir(out_dir):  # one process per out dir: two would interleave their results
    record_path = out_dir / 'experiment.json'
    if writer and not record_path.exists():  # a partial run can be re-evaluated (`alignlab eval`)
      record_path.write_text(record)
    enable_compilation_cache()
    log = _log(progress, cfg.name)
    t0 = time.perf_counter()
    _, env = setup(cfg, progress=progress)
    timings = {'stages_s': time.perf_counter() - t0}
    log(plan(cfg, env, out_dir))
    if 'frontier' in env:  # recomputed every time (it is cheap): never stale to the config
      frontier = env['frontier']()  # computed by every process: it may run on the mesh
      if writer:
        write_text_atomic(out_dir / 'frontier.csv', frontier.to_csv(index=False))
    clock: dict[str, float] = {}
    timed_env = _timed_env(env, clock)
    split = {'stages': timings['stages_s'],
             'plan and frontier': time.perf_counter() - t0 - timings['stages_s']}
    for name in cfg.methods:
      t1 = time.perf_counter()
      values = getattr(cfg.sweeps, name, METHODS[name]["values"])  # an entry added at run time
      runs_ = [(v, s) for v in values for s in cfg.seeds]
      clock.clear()
      s1 = stages.seconds_spent()
      trained = METHODS[name]['train'](timed_env, name, runs_, cfg, out_dir, progress)
      timings[f'{name}_s'] = time.perf_counter() - t1
      built = stages.seconds_spent() - s1  # e.g. the reward model, built when first needed
      split['stages built on first use'] = split.get('stages built on first use', 0.0) + built
      split[f'{name}: evaluation'] = clock.get('evaluation', 0.0)
      split[f'{name}: training'] = timings[f'{name}_s'] - clock.get('evaluation', 0.0) - built
      log(f'{name}: {trained} runs trained in {timings[f"{name}_s"]:.1f} s' if trained else
          f'{name}: {len(runs_)} runs complete, skipped')
    timings['total_s'] = time.perf_counter() - t0
    timings['split'] = split
    distributed.sync('alignlab.pipeline.trained')  # every run dir written before it is read
    runs.write_text(out_dir / 'stages.json', json.dumps(
        {'stages': env.get('stages', {}), 'info': env.get('info', {}), 'timings': timings},
        indent=2, default=str))
    runs.write_text(record_path, record)  # the config that made the latest results
    df = runs.collect_results(out_dir)
    results_csv = out_dir / 'results.csv'
    win_rates = runs.collect_win_rates(out_dir)
    if writer:
      df.to_csv(results_csv, index=False)
      if len(win_rates):
        win_rates.to_csv(out_dir / 'win_rates.csv', index=False)
    # Drawn by process 0 alone; the others print nothing.
    figures = make_plots(cfg, df, out_dir) if writer else []
    table = summary(cfg, df)
    by, mode = getattr(task_of(cfg.task)[1], 'VERDICT', ('gold_reward', 'max'))
    verdict_md = verdict_lib.verdict_markdown(
        verdict_lib.verdict(df, budgets=cfg.kl_budgets, by=by, mode=mode), by=by,
        beta=getattr(cfg.task, 'eval_beta', None))
    failed = runs.failures(out_dir)
    wall_md = wall_time_markdown(cfg, timings)
    runs.write_text(out_dir / 'summary.md',
        f'# {cfg.name}\n\n'
        f'{df["run"].nunique() if len(df) else 0} runs, {len(df)} evaluation points; '
        f'{timings["total_s"]:.0f} s.\n\n'
        f'## Verdict: best {by} at each KL budget\n\n{verdict_md}\n'
        f'## Wall time of this command\n\n{wall_md}\n'
        f'## Best point per method (`results.csv`)\n\n```\n{table}\n```\n'
        + ('\n## Failed runs (they give no point)\n\n' + ''.join(
            f'- {name}: {f["reason"]} at step {f["step"]}\n' for name, f in failed)
           if failed else ''))
    if verbose:
      print(f'{cfg.name}: {len(df)} evaluation points from '
            f'{df["run"].nunique() if len(df) else 0} runs in {timings["total_s"]:.0f} s; '
            f'results: {results_csv}')
      print(f'\nbest point per method ({results_csv}):\n{table}')
      print(f'\nverdict: best {by} at each KL budget (95 % intervals; {out_dir / "summary.md"}):'
            f'\n{verdict_md}')
      print(f'wall time of this command ({timings["total_s"]:.0f} s):\n{wall_md}')
      for path in figures:
        print(f'plot: {path}')
    if failed:
      raise RunsFailed(f'{len(failed)} run(s) failed and give no point: ' + '; '.join(
          f'{name} ({f["reason"]} at step {f["step"]})' for name, f in failed[:3])
          + (' …' if len(failed) > 3 else '')
          + f'; see failed.json in their run dirs under {out_dir}')
    return ExperimentResult(out_dir=out_dir, df=df, results_csv=results_csv, plots=figures,
                            table=table)


def grid_points(cfg: ExperimentConfig) -> list[tuple[str, list[str], ExperimentConfig]]:
  """(name, overrides, config) of each point of `cfg.grid`, checked before anything runs."""
  names = [point[0] if point else '' for point in cfg.grid]
  bad = [n for n in names if not n or n != Path(n).name or n.startswith('.')]
  if bad or len(set(names)) != len(names):
    raise ConfigError(f'grid: every point needs a distinct plain name first, got {names}')
  base = dataclasses.replace(cfg, grid=())
  return [(point[0], list(point[1:]), apply_overrides(base, list(point[1:]))) for point in cfg.grid]


def run_grid(cfg: ExperimentConfig, out_dir: str | Path, *, source: dict | None = None,
             progress: bool = True, verbose: bool = True) -> ExperimentResult:
  """`run` of every point of `cfg.grid` into OUT/<name>/ (each resumes on its own; its
  experiment.json records the point's overrides, so `alignlab eval` works inside it), then
  OUT/results.csv: their tables stacked, with `grid_point` and one column per scalar key a
  point sets (e.g. `task.pairs.pairs_per_prompt`), and OUT/grid.png: the task's BEST_BY
  metric of each run's last point against the first numeric key that varies."""
  out_dir = Path(out_dir)
  points = grid_points(cfg)
  for _, _, point_cfg in points:
    methods_lib.validate(point_cfg.methods, point_cfg.sweeps, point_cfg.train, point_cfg.rl)
  source = source or {'experiment': cfg.name, 'variant': None, 'overrides': []}
  writer = distributed.is_writer()
  frames, tables, t0 = [], [], time.perf_counter()
  with runs.lock_dir(out_dir):  # one process per grid: two would race for its points
    if writer:
      runs.write_text(out_dir / 'experiment.json', json.dumps(
          {**source, 'config_hash': config_hash(cfg), 'config': to_dict(cfg)}, indent=1,
          default=str))
    for name, overrides, point_cfg in points:
      _log(progress and writer, cfg.name)(f'grid point {name}: {" ".join(overrides)}')
      result = run(point_cfg, out_dir / name, progress=progress, verbose=verbose, source={
          **source, 'overrides': [*source.get('overrides', []), 'grid=()', *overrides]})
      values = {k.strip(): _parse_value(v.strip()) for k, v in (o.split('=', 1) for o in overrides)}
      frames.append(result.df.assign(grid_point=name, **{
          k: v for k, v in values.items() if isinstance(v, (int, float, str))}))
      tables.append(f'{name}:\n{result.table}')
    df = pd.concat(frames, ignore_index=True)
    results_csv = out_dir / 'results.csv'
    by, mode = getattr(task_of(cfg.task)[1], 'BEST_BY', ('objective', 'max'))
    set_keys = dict.fromkeys(o.split('=', 1)[0].strip() for _, overrides, _ in points
                             for o in overrides)
    varying = [k for k in set_keys if k in df and pd.api.types.is_numeric_dtype(df[k])
               and df[k].nunique() > 1]
    figures = []
    if writer:
      df.to_csv(results_csv, index=False)
      if varying and by in df:
        figures.append(plots.plot_grid(df, out_dir / 'grid.png', x=varying[0], y=by, mode=mode,
                                       title=f'{cfg.name}: final {by} against {varying[0]}'))
      runs.write_text(out_dir / 'summary.md', f'# {cfg.name}\n\n{len(points)} grid points, '
                      f'{time.perf_counter() - t0:.0f} s; each point\'s summary.md is in its '
                      'dir.\n\n## Best point per method at each grid point\n\n```\n'
                      + '\n\n'.join(tables) + '\n```\n')
    if verbose:
      print(f'{cfg.name}: {len(points)} grid points, {len(df)} evaluation points in '
            f'{time.perf_counter() - t0:.0f} s; results: {results_csv}')
      for path in figures:
        print(f'plot: {path}')
  return ExperimentResult(out_dir=out_dir, df=df, results_csv=results_csv, plots=figures,
                          table='\n\n'.join(tables))


def run_experiment(name: str, variant: str = 'quick', overrides: Sequence[str] = (),
                   out_dir: str | Path | None = None, *, progress: bool = True,
                   verbose: bool = True) -> ExperimentResult:
  """`run` of the experiment `name` (or a .py path) at `variant` with `--set` overrides."""
  cfg = make_config(load_experiment(name), variant, overrides)
  out_dir = Path(out_dir) if out_dir is not None else default_out_dir(name, variant)
  return run(cfg, out_dir, source={'experiment': str(name), 'variant': variant,
                                   'overrides': list(overrides)},
             progress=progress, verbose=verbose)
