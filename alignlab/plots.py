"""PNG plots of a results table (matplotlib's Agg canvas: no display needed; the global
pyplot backend is left alone, so a notebook keeps its inline figures).

    plot_frontier(df, path, frontier=None, title='', methods=None)
        gold reward against KL(π‖π_ref), read like Fig. 2 (left) of the DPO paper: each run
        (method, hyperparameter value, seed) a thin path in step order, its last point ringed;
        each method's upper envelope (the best gold reward at KL ≤ x over all its points) a
        thick step line; error bars from `gold_reward_stderr` / `kl_stderr`; failed runs
        (`status == 'failed'`) grey crosses listed in the legend; a run whose KL controller
        missed its target (`kl_target_met` False) a dotted ring; the exact frontier of π*_β
        (DataFrame kl, gold_reward) a black curve when given
    plot_compute(df, path, x='train_flops', title='', methods=None)
        gold reward and J_β against a cost column (`x`, else train_flops, train_tokens, step)
    plot_gap(df, path, title='')          final gap_fraction (J(π*) − J(π) over that of π_ref)
                                          per method and hyperparameter value
    plot_win_rates(wr, path, title='')    win rate against π_ref vs sampling temperature
    plot_grid(df, path, x, y, mode='min') each method's final `y` against a grid column `x`
                                          (`pipeline.run_grid`: e.g. the data size), 95 % intervals
Each has a `draw_*(ax, ...)` twin that draws into given matplotlib Axes (for notebooks).

A method has one colour and one marker in every plot of every run: `method_style(name)`,
fixed by the method's place in KNOWN_METHODS (the order of `methods.METHODS`, which this
core module cannot import; tests/test_plots.py checks the two agree), and for a method not
listed there by a hash of its name, never by which methods a table happens to hold. Legends
group methods by family (FAMILIES). Drawn artists carry a `gid` ('points:<method>',
'run:<method>', 'envelope:<method>', 'failed', ...) so tests and notebooks can find them.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.patches import Patch


# The order of `alignlab.methods.METHODS` (checked by tests/test_plots.py), with each method's
# colour and marker at the same position.
KNOWN_METHODS = ('sft', 'dpo', 'ipo', 'cdpo', 'kto', 'simpo', 'orpo', 'unlikelihood',
                 'preferred_ft', 'best_of_n', 'ppo', 'ppo_gt', 'rloo', 'grpo', 'grpo_kl_reward',
                 'grpo_k1', 'grpo_k2', 'grpo_k3_ratio', 'ppo_fixed', 'rloo_rm')
_PALETTE = ('#4d4d4d', '#1f77b4', '#17becf', '#9467bd', '#e377c2', '#bcbd22', '#8c564b',
            '#637939', '#b8860b', '#7b4173', '#d62728', '#ff7f0e', '#2ca02c', '#393b79',
            '#843c39', '#8ca252', '#5254a3', '#e6550d', '#e41a1c', '#4daf4a')
_MARKERS = ('*', 'o', 'v', '^', '<', '>', 'P', 'X', 'h', 'p', 's', 'D', 'd', 'H', '8', '1', '2',
            '3', '4', '+')
# Methods not in KNOWN_METHODS: a colour and marker picked by a hash of the name.
_EXTRA_PALETTE = ('#6b6ecf', '#e7969c', '#b5cf6b', '#9edae5', '#c5b0d5', '#ff9896', '#ffbb78',
                  '#98df8a', '#aec7e8', '#f7b6d2', '#dbdb8d', '#c49c94')
_EXTRA_MARKERS = ('o', 's', 'D', '^', 'v', 'P', 'X', '<', '>', 'p', 'h', 'd')
FAMILIES = (('DPO family', ('dpo', 'ipo', 'cdpo', 'kto', 'simpo', 'orpo')),
            ('RLHF family', ('ppo', 'ppo_gt', 'rloo', 'grpo', 'grpo_kl_reward', 'grpo_k1',
                             'grpo_k2', 'grpo_k3_ratio', 'ppo_fixed', 'rloo_rm')),
            ('baselines', ('sft', 'preferred_ft', 'unlikelihood', 'best_of_n')))
OTHER_FAMILY = 'other'
FAILED_COLOR, FAILED_MARKER = '#9a9a9a', 'x'
FRONTIER_COLOR = 'black'
RUN_KEYS = ('method', 'hparam', 'hparam_value', 'seed')  # a run; `hparam` names the value
_SYMBOLS = {'beta': 'β', 'lambda': 'λ', 'lambda_': 'λ', 'alpha': 'α', 'kl_target': 'KL target',
            'gamma': 'γ'}


def _hash(name: str) -> int:
  return zlib.crc32(str(name).encode('utf-8'))


def method_style(method: str) -> tuple[str, str]:
  """(colour, marker) of a method: the same in every plot, whatever else is plotted."""
  if method in KNOWN_METHODS:
    i = KNOWN_METHODS.index(method)
    return _PALETTE[i], _MARKERS[i]
  h = _hash(method)
  return _EXTRA_PALETTE[h % len(_EXTRA_PALETTE)], _EXTRA_MARKERS[(h // 7) % len(_EXTRA_MARKERS)]


def _is_line_marker(marker: str) -> bool:
  """'1'–'4', '+', 'x': drawn by lines alone, so no face to leave empty and no edge that
  `lw=0` may drop (the points would vanish)."""
  return not MarkerStyle(marker).is_filled()


def method_color(method: str) -> str:
  return method_style(method)[0]


def method_marker(method: str) -> str:
  return method_style(method)[1]


def family_of(method: str) -> str:
  for family, members in FAMILIES:
    if method in members:
      return family
  return OTHER_FAMILY


def ordered_methods(methods: Iterable[str]) -> list[str]:
  """Methods grouped by family (FAMILIES order, then the rest alphabetically)."""
  methods = list(dict.fromkeys(str(m) for m in methods))
  known = [m for _, members in FAMILIES for m in members if m in methods]
  return known + sorted(m for m in methods if m not in known)


def upper_envelope(x, y) -> tuple[np.ndarray, np.ndarray]:
  """The breakpoints (xs, ys) of the best y reachable at x' ≤ x over the finite points: xs
  increasing, ys non-decreasing; the envelope at x is ys[k] for the last xs[k] ≤ x (a step
  function, `drawstyle='steps-post'`). The last breakpoint is the largest x, so the line
  spans every point."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  if not len(x):
    return np.empty(0), np.empty(0)
  ux, inverse = np.unique(x, return_inverse=True)
  best = np.full(len(ux), -np.inf)
  np.maximum.at(best, inverse, y)
  run = np.maximum.accumulate(best)
  keep = np.ones(len(ux), bool)
  keep[1:] = run[1:] > run[:-1]
  keep[-1] = True
  return ux[keep], run[keep]


def _axes(figsize: tuple[float, float], ncols: int = 1):
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  if ncols == 1:
    return fig, fig.add_subplot()
  return fig, fig.subplots(1, ncols)


def _finish(fig, path: str | Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  # The format given explicitly: matplotlib would append '.png' to a name without a suffix,
  # and the path returned (and printed) would not be the file written.
  fig.savefig(path, dpi=120, bbox_inches='tight', format=path.suffix[1:].lower() or 'png')
  return path


def _finite(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
  """The rows where both x and y are finite numbers."""
  return df[np.isfinite(df[x].to_numpy(np.float64)) & np.isfinite(df[y].to_numpy(np.float64))]


def _run_keys(df: pd.DataFrame) -> list[str]:
  return [k for k in RUN_KEYS if k in df]


def _failed_mask(df: pd.DataFrame) -> np.ndarray:
  if 'status' not in df:
    return np.zeros(len(df), bool)
  return (df['status'].astype(str) == 'failed').to_numpy()


def _missed_mask(df: pd.DataFrame) -> np.ndarray:
  """Rows of runs whose adaptive KL controller missed its target (`kl_target_met` False; NaN
  where a run has no target). Read back from a CSV the column may hold strings."""
  if 'kl_target_met' not in df:
    return np.zeros(len(df), bool)
  def missed(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
      return not v
    if isinstance(v, str):
      return v.strip().lower() in ('false', '0')
    return isinstance(v, (int, float, np.number)) and v == 0
  return df['kl_target_met'].map(missed).to_numpy(bool)


def _draw_missed(ax, ok: pd.DataFrame, x: str, y: str) -> list[tuple]:
  """A dotted black ring round the last point of each run that missed its KL target."""
  missed = _finite(ok[_missed_mask(ok)], x, y)
  if not len(missed):
    return []
  last = final_points(missed)
  ax.scatter(last[x], last[y], s=150, facecolors='none', edgecolors='black', linestyles=':',
             lw=1.2, zorder=5, gid='target_missed')
  n = len(last)
  return [(Line2D([], [], color='black', lw=0, marker='o', ms=9, mfc='none', ls=':'),
           f'KL target missed ({n} run{"s" if n != 1 else ""}, ±25 %)')]


def select_methods(df: pd.DataFrame, methods: Sequence[str] | None) -> pd.DataFrame:
  """The rows of `methods` (all rows when None); a method not in the table is an error."""
  if methods is None:
    return df
  methods = [methods] if isinstance(methods, str) else list(methods)
  there = sorted(df['method'].dropna().astype(str).unique())
  missing = [m for m in methods if m not in there]
  if missing:
    raise ValueError(f'no rows of {", ".join(missing)} to plot; methods there: '
                     f'{", ".join(there) or "none"}')
  return df[df['method'].isin(methods)]


def final_points(df: pd.DataFrame) -> pd.DataFrame:
  """The last evaluation of each run."""
  keys = ['run'] if 'run' in df else _run_keys(df)
  return df.sort_values('step', kind='stable').groupby(keys, sort=False, dropna=False).tail(1)


def _value_text(hparam, value) -> str:
  if not isinstance(hparam, str) or not hparam:
    return ''
  try:
    value = float(value)
  except (TypeError, ValueError):
    return ''
  if not math.isfinite(value):
    return ''
  return f'{_SYMBOLS.get(hparam, hparam)}={value:g}'


def _method_label(method: str, rows: pd.DataFrame) -> str:
  """'dpo  β=0.1,1  ×3 seeds': the method and the values its runs swept."""
  label = method
  if 'hparam' in rows and 'hparam_value' in rows:
    hparams = [h for h in rows['hparam'].dropna().unique() if isinstance(h, str) and h]
    values = pd.to_numeric(rows['hparam_value'], errors='coerce').dropna().unique()
    if len(hparams) == 1 and len(values):
      shown = ','.join(f'{v:g}' for v in sorted(values)[:5]) + (',…' if len(values) > 5 else '')
      label += f'  {_SYMBOLS.get(hparams[0], hparams[0])}={shown}'
  if 'seed' in rows and rows['seed'].nunique() > 1:
    label += f'  ×{rows["seed"].nunique()} seeds'
  return label


def _run_text(row) -> str:
  parts = [str(row.get('method', '?')), _value_text(row.get('hparam'), row.get('hparam_value'))]
  if 'seed' in row and pd.notna(row['seed']):
    parts.append(f'seed {int(row["seed"])}')
  return ' '.join(p for p in parts if p)


def _range(values, lo_errs=None, hi_errs=None, *, floor: float | None = None, q: float = 0.95,
           clip_outliers: bool = True, far: float = 10.0,
           pad: float = 0.05) -> tuple[float, float] | None:
  """Axis limits from the data (± their error bars): from the smallest value (or `floor`,
  when that is lower) to the largest, or to twice the `q` quantile when a few values lie
  more than `far` times as far out (one runaway point does not squash the rest; the caller
  notes what is not shown)."""
  v = np.asarray(values, np.float64)
  ok = np.isfinite(v)
  if not ok.any():
    return None
  lo_e = np.nan_to_num(np.asarray(lo_errs, np.float64)) if lo_errs is not None else 0.0
  hi_e = np.nan_to_num(np.asarray(hi_errs, np.float64)) if hi_errs is not None else 0.0
  lo, hi = float(np.min((v - lo_e)[ok])), float(np.max((v + hi_e)[ok]))
  if floor is not None:
    lo = min(lo, floor)
  if clip_outliers and ok.sum() >= 5:
    top = float(np.quantile(v[ok], q))
    if top > lo and hi - lo > far * (top - lo):
      hi = lo + 2.0 * (top - lo)
  span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
  bottom = 0.02 if floor is not None and lo == floor else pad
  return lo - bottom * span, hi + pad * span


def _legend(ax, present: Sequence[str], labels: dict[str, str], extra: Sequence[tuple] = (),
            outside: bool = True, envelope: bool = True) -> None:
  """A legend grouped by family: a bold header, then its methods; then `extra` handles."""
  handles, texts, headers = [], [], []
  groups = [(family, [m for m in members if m in present]) for family, members in FAMILIES]
  groups.append((OTHER_FAMILY,
                 [m for m in ordered_methods(present) if family_of(m) == OTHER_FAMILY]))
  for family, members in groups:
    if not members:
      continue
    headers.append(len(handles))
    handles.append(Patch(visible=False))
    texts.append(family)
    for m in members:
      color, marker = method_style(m)
      handles.append(Line2D([], [], color=color, marker=marker, lw=2.2 if envelope else 1.0,
                            ms=6))
      texts.append(labels.get(m, m))
  for handle, text in extra:
    handles.append(handle)
    texts.append(text)
  kw = dict(bbox_to_anchor=(1.01, 1.0), loc='upper left', borderaxespad=0.) if outside else \
      dict(loc='best')
  legend = ax.legend(handles, texts, fontsize=7, handlelength=2.2, frameon=False, **kw)
  for i, text in enumerate(legend.get_texts()):
    if i in headers:
      text.set_fontweight('bold')
      text.set_position((-30, 0))


def _draw_paths(ax, ok: pd.DataFrame, x: str, y: str, *, xerr: str | None, yerr: str | None,
                envelope: bool = True) -> None:
  """Each method's runs (thin paths in step order, last point ringed), its points with error
  bars, and its upper envelope of y over x."""
  for method in ordered_methods(ok['method'].unique()):
    rows = _finite(ok[ok['method'] == method], x, y)
    if not len(rows):
      continue
    color, marker = method_style(method)
    keys = _run_keys(rows)
    for _, run in rows.groupby(keys, dropna=False, sort=False) if keys else [(None, rows)]:
      run = run.sort_values('step', kind='stable') if 'step' in run else run
      if len(run) > 1:
        ax.plot(run[x], run[y], color=color, lw=0.8, alpha=0.55, zorder=2, gid=f'run:{method}')
      last = run.iloc[[-1]]
      ring = {'color': color} if _is_line_marker(marker) else {'facecolors': 'none',
                                                                'edgecolors': color}
      ax.scatter(last[x], last[y], s=48, lw=0.9, zorder=3, marker=marker, gid=f'last:{method}',
                 **ring)
    xe = rows[xerr].to_numpy(np.float64) if xerr and xerr in rows else None
    ye = rows[yerr].to_numpy(np.float64) if yerr and yerr in rows else None
    xe = None if xe is None or not np.nan_to_num(xe).any() else np.nan_to_num(xe)
    ye = None if ye is None or not np.nan_to_num(ye).any() else np.nan_to_num(ye)
    if xe is not None or ye is not None:
      ax.errorbar(rows[x], rows[y], xerr=xe, yerr=ye, fmt='none', ecolor=color, elinewidth=0.7,
                  alpha=0.4, capsize=0, zorder=2, gid=f'errorbar:{method}')
    ax.scatter(rows[x], rows[y], s=16, color=color, marker=marker, alpha=0.8, zorder=3,
               lw=0.9 if _is_line_marker(marker) else 0, gid=f'points:{method}')
    if envelope:
      ex, ey = upper_envelope(rows[x], rows[y])
      ax.plot(ex, ey, color=color, lw=2.2, alpha=0.95, drawstyle='steps-post', zorder=4,
              solid_capstyle='round', gid=f'envelope:{method}')


def _draw_failed(ax, failed: pd.DataFrame, x: str, y: str) -> list[tuple]:
  """Failed runs' finite points as grey crosses; legend entries naming every failed run."""
  if not len(failed):
    return []
  pts = _finite(failed, x, y)
  if len(pts):
    ax.scatter(pts[x], pts[y], s=36, color=FAILED_COLOR, marker=FAILED_MARKER, lw=1.2, zorder=5,
               gid='failed')
  keys = _run_keys(failed)
  runs_ = failed.groupby(keys, dropna=False, sort=True) if keys else [(0, failed)]
  names = [_run_text(run.iloc[0]) + ('' if len(_finite(run, x, y)) else ' (no finite point)')
           for _, run in runs_]
  cross = Line2D([], [], color=FAILED_COLOR, marker=FAILED_MARKER, lw=0, ms=6)
  plural = 's' if len(names) != 1 else ''
  entries = [(cross, f'failed ({len(names)} run{plural}, not in the envelopes)')]
  shown = names[:8] + ([f'… {len(names) - 8} more'] if len(names) > 8 else [])
  entries += [(Patch(visible=False), f'  {n}') for n in shown]
  return entries


def _limits(ax, ok: pd.DataFrame, x: str, y: str, *, xerr: str | None, yerr: str | None,
            x_floor: float | None) -> None:
  """Axis ranges from the points; a note counts the points beyond the x range."""
  xv = ok[x].to_numpy(np.float64)
  yv = ok[y].to_numpy(np.float64)
  finite = np.isfinite(xv) & np.isfinite(yv)
  if not finite.any():
    return
  xs = xv[finite]
  xe = ok[xerr].to_numpy(np.float64)[finite] if xerr and xerr in ok else None
  xr = _range(xs, xe, xe, floor=x_floor)
  ax.set_xlim(*xr)
  inside = finite & (xv <= xr[1])
  ye = ok[yerr].to_numpy(np.float64)[inside] if yerr and yerr in ok else None
  ys = yv[inside]
  yr = _range(ys, ye, ye, clip_outliers=False, pad=0.06)
  if yr is not None:
    ax.set_ylim(*yr)
  beyond = int((finite & (xv > xr[1])).sum())
  if beyond:
    ax.text(0.99, 0.01, f'{beyond} point{"s" if beyond != 1 else ""} beyond {x} = {xr[1]:.3g} '
            f'(max {np.nanmax(xs):.3g}) not shown', transform=ax.transAxes, ha='right',
            va='bottom', fontsize=7, color='0.35', gid='beyond')


def draw_frontier(ax, df: pd.DataFrame, frontier: pd.DataFrame | None = None,
                  title: str = '', methods: Sequence[str] | None = None,
                  legend: bool = True) -> None:
  df = select_methods(df, methods)
  failed_mask = _failed_mask(df)
  ok, failed = df[~failed_mask], df[failed_mask]
  _draw_paths(ax, ok, 'kl', 'gold_reward', xerr='kl_stderr', yerr='gold_reward_stderr')
  extra = _draw_missed(ax, ok, 'kl', 'gold_reward') + _draw_failed(ax, failed, 'kl', 'gold_reward')
  _limits(ax, ok if len(ok) else failed, 'kl', 'gold_reward', xerr='kl_stderr',
          yerr='gold_reward_stderr', x_floor=0.0)
  key = [(Line2D([], [], color='0.3', lw=0.8, alpha=0.7), 'one run, in step order'),
         (Line2D([], [], color='0.3', lw=0, marker='o', ms=6, mfc='none'), 'its last evaluation'),
         (Line2D([], [], color='0.3', lw=2.2, drawstyle='steps-post'),
          'upper envelope: best at KL ≤ x')]
  if frontier is not None and len(frontier):
    f = frontier.sort_values('kl')
    right = ax.get_xlim()[1] if len(ok) or len(failed) else np.inf
    f = f[(f['kl'] <= right) | (f['kl'].shift(1) <= right)]  # up to just past the right edge
    ax.plot(f['kl'], f['gold_reward'], color=FRONTIER_COLOR, lw=1.6, zorder=6, gid='frontier')
    key.insert(0, (Line2D([], [], color=FRONTIER_COLOR, lw=1.6), 'exact frontier (π*_β)'))
    if len(ok):  # the frontier where the points are: the y range takes it in
      lo, hi = ax.get_ylim()
      inside = f['gold_reward'][f['kl'] <= ax.get_xlim()[1]].to_numpy(np.float64)
      if len(inside) and np.isfinite(inside).any():
        top = max(hi, float(np.nanmax(inside)) + 0.04 * (hi - lo))
        bottom = min(lo, float(np.nanmin(inside)) - 0.04 * (hi - lo))
        ax.set_ylim(bottom, top)
  ax.set_xlabel('KL(π ‖ π_ref)  (nats per sequence)')
  ax.set_ylabel('gold reward E[r]')
  ax.grid(alpha=0.3)
  if legend:
    labels = {m: _method_label(m, ok[ok['method'] == m]) for m in ok['method'].unique()}
    _legend(ax, list(ok['method'].unique()), labels, key + extra)
  ax.set_title(title or 'reward–KL frontier')


def plot_frontier(df: pd.DataFrame, path: str | Path, frontier: pd.DataFrame | None = None,
                  title: str = '', methods: Sequence[str] | None = None) -> Path:
  fig, ax = _axes((9, 5.2))
  draw_frontier(ax, df, frontier, title, methods=methods)
  return _finish(fig, path)


COST_COLUMNS = ('train_flops', 'train_tokens', 'step')
_COST_LABELS = {'train_flops': 'training model-FLOPs', 'train_tokens': 'training tokens',
                'step': 'training step'}


def cost_column(df: pd.DataFrame, x: str = 'train_flops') -> str:
  """`x`, else the first of COST_COLUMNS that the table holds with a value."""
  for column in dict.fromkeys((x,) + COST_COLUMNS):
    if column in df and pd.to_numeric(df[column], errors='coerce').notna().any():
      return column
  tried = ', '.join(dict.fromkeys((x,) + COST_COLUMNS))
  raise ValueError(f'no cost to plot against: none of {tried} is a column with a value in the '
                   f'results')


def draw_compute(axes, df: pd.DataFrame, x: str = 'train_flops', title: str = '',
                 methods: Sequence[str] | None = None) -> str:
  """Gold reward (axes[0]) and J_β (axes[1]) against the cost column; returns its name."""
  df = select_methods(df, methods)
  column = cost_column(df, x)
  df = df.assign(**{column: pd.to_numeric(df[column], errors='coerce')})
  failed_mask = _failed_mask(df)
  ok, failed = df[~failed_mask], df[failed_mask]
  panels = [('gold_reward', 'gold_reward_stderr', 'gold reward E[r]'),
            ('objective', 'objective_stderr', 'J_β = E[r] − β·KL  (β of each run)')]
  extra = []
  for ax, (y, yerr, ylabel) in zip(axes, panels):
    if y not in df or not df[y].notna().any():
      ax.text(0.5, 0.5, f'no {y} in the results', transform=ax.transAxes, ha='center',
              va='center', color='0.4')
      ax.set_axis_off()
      continue
    _draw_paths(ax, ok, column, y, xerr=None, yerr=yerr)
    extra = _draw_failed(ax, failed, column, y) or extra
    _limits(ax, ok if len(ok) else failed, column, y, xerr=None, yerr=yerr,
            x_floor=0.0 if (df[column].dropna() >= 0).all() else None)
    values = ok[column].to_numpy(np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) and positive.max() / positive.min() > 100:
      decade = 10.0 ** math.floor(math.log10(float(positive.min())))  # 0, then log decades
      ax.set_xscale('symlog', linthresh=decade, linscale=0.6)
      ax.set_xlim(left=0.0 if (values[np.isfinite(values)] >= 0).all() else None,
                  right=1.3 * float(positive.max()))
    ax.set_xlabel(_COST_LABELS.get(column, column) + (' (symlog)' if ax.get_xscale() == 'symlog'
                                                     else ''))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(f'{y.replace("_", " ")} against cost', fontsize=10)
  key = [(Line2D([], [], color='0.3', lw=0.8, alpha=0.7), 'one run, in step order'),
         (Line2D([], [], color='0.3', lw=0, marker='o', ms=6, mfc='none'), 'its last evaluation'),
         (Line2D([], [], color='0.3', lw=2.2, drawstyle='steps-post'), 'best at cost ≤ x')]
  labels = {m: _method_label(m, ok[ok['method'] == m]) for m in ok['method'].unique()}
  _legend(axes[-1], list(ok['method'].unique()), labels, key + extra)
  if title:
    axes[0].figure.suptitle(title)
  return column


def plot_compute(df: pd.DataFrame, path: str | Path, x: str = 'train_flops', title: str = '',
                 methods: Sequence[str] | None = None) -> Path:
  """Gold reward and J_β against cost; ValueError when the table has no cost column."""
  cost_column(select_methods(df, methods), x)  # before a figure exists
  fig, axes = _axes((12, 4.8), ncols=2)
  draw_compute(axes, df, x, title, methods=methods)
  return _finish(fig, path)


def final_gaps(df: pd.DataFrame) -> pd.DataFrame:
  """Mean (and std over seeds) of the final gap_fraction per method and hyperparameter; a
  failed run gives no value, it is counted in `n_failed` (a row of its own where every seed
  failed)."""
  keys = ['method', 'hparam', 'hparam_value']
  failed_mask = _failed_mask(df)
  ok = df[~failed_mask]
  last = final_points(ok[ok['gap_fraction'].notna()])
  last = (last.groupby(keys, dropna=False)['gap_fraction'].agg(['mean', 'std', 'count'])
          .reset_index())
  failed = df[failed_mask]
  if len(failed):
    counts = (failed.drop_duplicates(_run_keys(failed)).groupby(keys, dropna=False).size()
              .rename('n_failed').reset_index())
    last = last.merge(counts, on=keys, how='outer')
  else:
    last['n_failed'] = 0
  last['n_failed'] = last['n_failed'].fillna(0).astype(int)
  last['count'] = last['count'].fillna(0).astype(int)
  rank = {m: i for i, m in enumerate(ordered_methods(last['method'].unique()))}
  last = last.assign(_rank=last['method'].map(rank)).sort_values(
      ['_rank', 'hparam_value'], kind='stable').drop(columns='_rank')
  return last.reset_index(drop=True)


def draw_gap(ax, df: pd.DataFrame, title: str = '') -> None:
  last = final_gaps(df)
  labels = [f'{m}' + (f' {_value_text(h, v)}' if _value_text(h, v) else '')
            for m, h, v in zip(last['method'], last['hparam'], last['hparam_value'])]
  y = np.arange(len(last))
  means = last['mean'].to_numpy(np.float64)
  ax.barh(y, np.nan_to_num(means), xerr=last['std'].fillna(0),
          color=[method_color(m) for m in last['method']], gid='gap_bars')
  for i, (mean, n_failed, count) in enumerate(zip(means, last['n_failed'], last['count'])):
    if n_failed:
      ax.text(0.0 if not np.isfinite(mean) else mean, i,
              f'  ✕ {n_failed} failed' + ('' if count else ' (no value)'),
              va='center', ha='left', fontsize=7, color=FAILED_COLOR, gid='failed')
  ax.set_yticks(y, labels, fontsize=7)
  ax.invert_yaxis()
  ax.axvline(1.0, color='gray', lw=0.8, ls='--')
  ax.set_xlabel('gap to the optimum / gap of π_ref  (0 = π*, 1 = π_ref)')
  ax.set_title(title or 'J_β(π*) − J_β(π), final policies')
  ax.grid(axis='x', alpha=0.3)


def plot_gap(df: pd.DataFrame, path: str | Path, title: str = '') -> Path:
  fig, ax = _axes((7, max(3, 0.28 * len(final_gaps(df)) + 1)))
  draw_gap(ax, df, title)
  return _finish(fig, path)


def draw_win_rates(ax, wr: pd.DataFrame, title: str = '') -> None:
  rank = {m: i for i, m in enumerate(ordered_methods(wr['method'].unique()))}
  groups = sorted(wr.groupby(['method', 'hparam_value'], dropna=False),
                  key=lambda item: (rank[item[0][0]], -np.inf if pd.isna(item[0][1])
                                    else float(item[0][1])))
  for (method, value), rows in groups:
    curve = rows.groupby('temperature')['win_rate'].mean()
    text = _value_text(rows['hparam'].iloc[0], value) if 'hparam' in rows else ''
    color, marker = method_style(method)
    ax.plot(curve.index, curve.to_numpy(), marker=marker, ms=4, color=color,
            label=f'{method} {text}'.strip(), gid=f'win_rate:{method}')
  ax.axhline(0.5, color='gray', lw=0.8, ls='--')
  ax.set_xlabel('sampling temperature')
  ax.set_ylabel('win rate vs π_ref (gold reward judge)')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2)
  ax.set_title(title or 'win rate against π_ref samples')


def plot_win_rates(wr: pd.DataFrame, path: str | Path, title: str = '') -> Path:
  fig, ax = _axes((6, 4.5))
  draw_win_rates(ax, wr, title)
  return _finish(fig, path)


def grid_finals(df: pd.DataFrame, x: str, y: str, mode: str = 'min') -> pd.DataFrame:
  """Per method and value of the grid column `x` (`pipeline.run_grid`, e.g.
  `task.pairs.pairs_per_prompt`): `y` at the last evaluation of each run, mean over every run
  sharing method, hyperparameter value and x (seeds, and a grid's data seeds), with `n` and
  the half-width of its 95 % t interval; of a method's hyperparameter values, the best mean at
  each x (`mode`: 'min' or 'max'), named in `hparam_value`. A method whose points never set x
  keeps x NaN: a level that does not depend on it (e.g. PPO on the gold reward). Failed runs
  give no value."""
  from alignlab.verdict import _t975
  ok = df[~_failed_mask(df) & df[y].notna()]
  run_keys = [k for k in ('grid_point', 'run') if k in ok] or _run_keys(ok)
  last = ok.sort_values('step', kind='stable').groupby(run_keys, sort=False, dropna=False).tail(1)
  rows = []
  for (method, value, at), g in last.groupby(['method', 'hparam_value', x], dropna=False):
    v = g[y].to_numpy(np.float64)
    n = len(v)
    half = _t975(n - 1) * float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    rows.append({'method': method, 'hparam': g['hparam'].iloc[0], 'hparam_value': value, x: at,
                 'mean': float(v.mean()), 'half_width': half, 'n': n})
  table = pd.DataFrame(rows, columns=['method', 'hparam', 'hparam_value', x, 'mean',
                                      'half_width', 'n'])
  if not len(table):
    return table
  best = (table.groupby(['method', x], dropna=False)['mean'].idxmin() if mode == 'min' else
          table.groupby(['method', x], dropna=False)['mean'].idxmax())
  return table.loc[best.to_numpy()].sort_values(['method', x]).reset_index(drop=True)


def draw_grid(ax, df: pd.DataFrame, x: str, y: str, mode: str = 'min', title: str = '') -> None:
  """`grid_finals` against x, one line per method with its 95 % intervals; a method that
  does not vary with x is a horizontal band."""
  finals = grid_finals(df, x, y, mode)
  for method in ordered_methods(finals['method'].unique()):
    rows = finals[finals['method'] == method]
    color, marker = method_style(method)
    tuned = df.loc[df['method'] == method, 'hparam_value'].nunique() > 1
    label = method + (f' (best {_SYMBOLS.get(rows["hparam"].iloc[0], rows["hparam"].iloc[0])} '
                      'at each point)' if tuned else '')
    at = rows[x].to_numpy(np.float64)
    if np.isnan(at).all():
      mean, half = float(rows['mean'].mean()), float(np.nan_to_num(rows['half_width'].max()))
      ax.axhline(mean, color=color, lw=1.2, ls='--', label=f'{label} (does not vary)',
                 gid=f'level:{method}')
      ax.axhspan(mean - half, mean + half, color=color, alpha=0.12, lw=0)
      continue
    rows = rows[np.isfinite(at)]
    ax.errorbar(rows[x], rows['mean'], yerr=np.nan_to_num(rows['half_width']), color=color,
                marker=marker, ms=5, lw=1.2, capsize=3, label=label, gid=f'points:{method}')
  values = finals[x].to_numpy(np.float64)
  values = values[np.isfinite(values)]
  if len(values) and values.min() > 0 and values.max() >= 8 * values.min():
    ax.set_xscale('log', base=2)
  ax.set_xlabel(x)
  ax.set_ylabel(f'{y}, last evaluation (mean, 95 % interval)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title or f'{y} against {x}')


def plot_grid(df: pd.DataFrame, path: str | Path, x: str, y: str, mode: str = 'min',
              title: str = '') -> Path:
  fig, ax = _axes((7, 4.5))
  draw_grid(ax, df, x, y, mode, title)
  return _finish(fig, path)
