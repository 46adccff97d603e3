"""PNG plots of a results table (matplotlib's Agg canvas: no display needed; the global
pyplot backend is left alone, so a notebook keeps its inline figures).

    plot_frontier(df, path, frontier=None, title='')  reward–KL points per method (each
        evaluation a point, the runs of one method in one colour, the last point of each run
        ringed), with the exact frontier of π* as a curve when given (DataFrame kl, gold_reward)
    plot_gap(df, path)          final gap_fraction (J(π*) − J(π) over that of π_ref) per method
                                and hyperparameter value
    plot_win_rates(wr, path)    win rate against π_ref vs sampling temperature per method
Each has a `draw_*(ax, ...)` twin that draws into a given matplotlib Axes (for notebooks).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


_ORDER = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the 10 strong tab20 colours first
_MARKERS = 'osD^vPX<>*'


def _colors(methods) -> dict[str, tuple]:
  cmap = matplotlib.colormaps['tab20']
  return {m: cmap(_ORDER[i % 20]) for i, m in enumerate(sorted(methods))}


def _markers(methods) -> dict[str, str]:
  return {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(sorted(methods))}


def _axes(figsize: tuple[float, float]):
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def _finish(fig, path: str | Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def final_points(df: pd.DataFrame) -> pd.DataFrame:
  """The last evaluation of each run."""
  return df.sort_values('step').groupby('run', sort=False).tail(1)


def draw_frontier(ax, df: pd.DataFrame, frontier: pd.DataFrame | None = None,
                  title: str = '') -> None:
  kl = df['kl'].to_numpy(np.float64)
  if frontier is not None and len(frontier):
    f = frontier.sort_values('kl')
    if np.isfinite(kl).any():  # the frontier where the points are, and a little beyond
      f = f[f['kl'] <= 1.5 * np.nanmax(kl) + 1e-3]
    ax.plot(f['kl'], f['gold_reward'], color='black', lw=1.5, label='exact frontier (π*_β)')
  colors, markers = _colors(df['method'].unique()), _markers(df['method'].unique())
  for method, rows in df.groupby('method'):
    ax.scatter(rows['kl'], rows['gold_reward'], s=12, alpha=0.45, color=colors[method],
               marker=markers[method], label=method)
    last = final_points(rows)
    ax.scatter(last['kl'], last['gold_reward'], s=45, facecolors='none', edgecolors=colors[method],
               marker=markers[method])
  ax.set_xlabel('KL(π ‖ π_ref)')
  ax.set_ylabel('gold reward E[r]')
  if np.isfinite(kl).any():
    ax.set_xlim(left=min(0.0, np.nanmin(kl)) - 0.05 * max(np.nanmax(kl), 1e-3),
                right=1.1 * np.nanmax(kl) + 1e-3)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc='lower right')
  ax.set_title(title or 'reward–KL frontier')


def plot_frontier(df: pd.DataFrame, path: str | Path, frontier: pd.DataFrame | None = None,
                  title: str = '') -> Path:
  fig, ax = _axes((7, 5))
  draw_frontier(ax, df, frontier, title)
  return _finish(fig, path)


def final_gaps(df: pd.DataFrame) -> pd.DataFrame:
  """Mean (and std over seeds) of the final gap_fraction per method and hyperparameter."""
  last = final_points(df[df['gap_fraction'].notna()])
  last = last.groupby(['method', 'hparam', 'hparam_value'], dropna=False)['gap_fraction'].agg(
      ['mean', 'std', 'count']).reset_index()
  return last


def draw_gap(ax, df: pd.DataFrame, title: str = '') -> None:
  last = final_gaps(df)
  labels = [f'{m}' + (f' {h}={v:g}' if isinstance(h, str) and h and np.isfinite(v) else '')
            for m, h, v in zip(last['method'], last['hparam'], last['hparam_value'])]
  colors = _colors(last['method'].unique())
  y = np.arange(len(last))
  ax.barh(y, last['mean'], xerr=last['std'].fillna(0), color=[colors[m] for m in last['method']])
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
  colors = _colors(wr['method'].unique())
  for (method, value), rows in wr.groupby(['method', 'hparam_value'], dropna=False):
    curve = rows.groupby('temperature')['win_rate'].mean()
    label = method if not np.isfinite(value) else f'{method} {rows["hparam"].iloc[0]}={value:g}'
    ax.plot(curve.index, curve.to_numpy(), marker='o', ms=3, color=colors[method], label=label)
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
