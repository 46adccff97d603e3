"""The figures of `alignlab/plots.py` on synthetic results tables (no training): a method's
colour and marker do not depend on which methods a table holds, the upper envelope is the
best reward at KL ≤ x, failed runs are drawn as failed (never as points, never dropped),
the subset option, data-driven axes, and the cost plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from alignlab import plots


def results(methods, *, seeds=(0,), values=(0.1, 1.0), steps=(0, 10, 20, 40), seed=0,
            failed=()) -> pd.DataFrame:
  """A results table: each (method, value, seed) a run whose KL and reward grow with the step;
  runs in `failed` ((method, value, seed)) end at non-finite numbers with status 'failed'."""
  rng = np.random.default_rng(seed)
  rows = []
  for m in methods:
    for v in values:
      for s in seeds:
        kl = np.sort(rng.uniform(0, 8, len(steps)))
        kl[0] = 0.0
        reward = 0.1 + np.log1p(kl) * rng.uniform(0.1, 0.3) + rng.normal(0, 0.02, len(steps))
        bad = (m, v, s) in failed
        for k, (step, a, b) in enumerate(zip(steps, kl, reward)):
          if bad and k == len(steps) - 1:
            a, b = np.nan, np.nan
          rows.append({'method': m, 'hparam': 'beta', 'hparam_value': v, 'seed': s, 'step': step,
                       'gold_reward': b + (5.0 if bad else 0.0), 'gold_reward_stderr': 0.01,
                       'kl': a, 'kl_stderr': 0.05, 'objective': b - v * a,
                       'status': 'failed' if bad else 'done', 'run': f'{m}-beta{v:g}-seed{s}'})
  return pd.DataFrame(rows)


def frontier_axes(df, **kw):
  fig = Figure(figsize=(9, 5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  plots.draw_frontier(ax, df, **kw)
  fig.canvas.draw()
  return ax


def artists(ax, gid):
  return [a for a in list(ax.lines) + list(ax.collections) if a.get_gid() == gid]


def color_of(artist) -> str:
  if hasattr(artist, 'get_facecolor') and not hasattr(artist, 'get_xdata'):
    return to_hex(artist.get_facecolor()[0])
  return to_hex(artist.get_color())


def test_known_methods_follow_the_methods_table():
  from alignlab.methods import METHODS
  assert plots.KNOWN_METHODS == tuple(METHODS)
  families = [m for _, members in plots.FAMILIES for m in members]
  assert sorted(families) == sorted(METHODS)  # every method in exactly one legend group
  styles = [plots.method_style(m) for m in METHODS]
  assert len(set(c for c, _ in styles)) == len(styles)  # no two methods share a colour
  assert len(set(mk for _, mk in styles)) == len(styles)  # nor a marker


def test_a_method_has_the_same_colour_in_plots_of_different_result_sets():
  # Table A holds dpo first (alphabetically); table B holds methods sorting before dpo and a
  # method alignlab does not know, so any colour assigned by position within the table differs.
  a = frontier_axes(results(['dpo', 'ppo'], seed=1))
  b = frontier_axes(results(['cdpo', 'best_of_n', 'aaa_custom', 'dpo', 'kto'], seed=2))
  for method in ('dpo',):
    for gid in ('points', 'envelope', 'run'):
      ca = {color_of(x) for x in artists(a, f'{gid}:{method}')}
      cb = {color_of(x) for x in artists(b, f'{gid}:{method}')}
      assert ca and ca == cb == {to_hex(plots.method_color(method))}, (gid, ca, cb)
    ma = {x.get_paths()[0].vertices.tobytes() for x in artists(a, f'points:{method}')}
    mb = {x.get_paths()[0].vertices.tobytes() for x in artists(b, f'points:{method}')}
    assert ma == mb  # the same marker
  # the legend shows dpo in its colour in both
  for ax in (a, b):
    legend = ax.get_legend()
    entry = [h for h, t in zip(legend.legend_handles, legend.get_texts())
             if t.get_text().startswith('dpo ')]
    assert [to_hex(h.get_color()) for h in entry] == [to_hex(plots.method_color('dpo'))]
  # an unknown method: a colour from its name alone, whatever else is in the table
  assert plots.method_style('aaa_custom') == plots.method_style('aaa_custom')
  c = frontier_axes(results(['aaa_custom'], seed=3))
  assert ({color_of(x) for x in artists(b, 'points:aaa_custom')}
          == {color_of(x) for x in artists(c, 'points:aaa_custom')})
  # the other figures use the same colours
  fig = Figure()
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  wr = pd.DataFrame({'method': ['kto', 'dpo'], 'hparam': 'beta', 'hparam_value': [0.1, 0.1],
                     'temperature': [1.0, 1.0], 'win_rate': [0.6, 0.7]})
  plots.draw_win_rates(ax, wr)
  assert {color_of(x) for x in artists(ax, 'win_rate:dpo')} == {to_hex(plots.method_color('dpo'))}


def reference_envelope(x, y, at):
  """max{y_i : x_i ≤ a} for each a (−inf where no point is that far left)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  return np.array([y[x <= a].max() if (x <= a).any() else -np.inf for a in at])


def step_value(xs, ys, at):
  k = np.searchsorted(xs, at, side='right') - 1
  return np.where(k >= 0, ys[np.clip(k, 0, None)], -np.inf)


def test_upper_envelope_is_the_best_reward_at_kl_at_most_x():
  rng = np.random.default_rng(0)
  x = np.round(rng.exponential(3.0, 200), 1)  # ties on purpose
  y = rng.normal(0, 1, 200) + 0.1 * x
  x[5], y[7] = np.nan, np.inf  # non-finite points are not points
  xs, ys = plots.upper_envelope(x, y)
  assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
  ok = np.isfinite(x) & np.isfinite(y)
  at = np.concatenate([np.linspace(-1, 30, 500), x[ok]])
  np.testing.assert_array_equal(step_value(xs, ys, at), reference_envelope(x[ok], y[ok], at))
  assert xs[-1] == np.nanmax(x[ok])  # spans every point
  assert plots.upper_envelope([], [])[0].size == 0


def test_the_drawn_envelope_is_over_all_runs_of_a_method_and_leaves_failed_runs_out():
  df = results(['dpo', 'ipo'], seeds=(0, 1), failed={('dpo', 1.0, 1)})
  ax = frontier_axes(df)
  ok = df[(df['method'] == 'dpo') & (df['status'] != 'failed')]
  (line,) = artists(ax, 'envelope:dpo')
  assert line.get_drawstyle() == 'steps-post'
  xs, ys = line.get_xdata(), line.get_ydata()
  at = np.linspace(0, 10, 300)
  np.testing.assert_allclose(step_value(np.asarray(xs), np.asarray(ys), at),
                             reference_envelope(ok['kl'], ok['gold_reward'], at))
  assert len(artists(ax, 'run:dpo')) == 3  # one thin path per run that did not fail
  (path,) = [a for a in artists(ax, 'run:ipo')][:1]
  run = df[(df['run'] == 'ipo-beta0.1-seed0')].sort_values('step')
  np.testing.assert_allclose(path.get_xdata(), run['kl'])  # joined in step order


def test_failed_runs_are_drawn_as_failed_not_as_points_and_not_dropped():
  df = results(['dpo', 'ppo'], failed={('dpo', 1.0, 0), ('ppo', 0.1, 0)})
  df.loc[df['run'] == 'ppo-beta0.1-seed0', ['kl', 'gold_reward']] = np.nan  # no finite point
  ax = frontier_axes(df)
  (crosses,) = artists(ax, 'failed')
  bad = df[(df['run'] == 'dpo-beta1-seed0') & df['kl'].notna()]
  np.testing.assert_allclose(np.sort(crosses.get_offsets()[:, 1]), np.sort(bad['gold_reward']))
  assert to_hex(crosses.get_facecolor()[0]) == to_hex(plots.FAILED_COLOR)
  # the failed run's points are in no method's points, paths or envelope
  failed_y = set(np.round(bad['gold_reward'], 9))
  for gid in ('points:dpo', 'last:dpo'):
    for art in artists(ax, gid):
      assert not failed_y & set(np.round(art.get_offsets()[:, 1], 9))
  for art in artists(ax, 'run:dpo') + artists(ax, 'envelope:dpo'):
    assert not failed_y & set(np.round(art.get_ydata(), 9))
  assert ax.get_ylim()[1] < bad['gold_reward'].max()  # their +5 rewards set no axis range
  texts = [t.get_text() for t in ax.get_legend().get_texts()]
  assert any(t.startswith('failed (2 runs') for t in texts), texts
  assert any('dpo β=1 seed 0' in t for t in texts), texts
  assert any('ppo β=0.1 seed 0 (no finite point)' in t for t in texts), texts
  # the gap plot marks them too
  df['gap_fraction'] = 0.5
  fig = Figure()
  FigureCanvasAgg(fig)
  gax = fig.add_subplot()
  plots.draw_gap(gax, df)
  assert sorted(t.get_text().strip() for t in gax.texts if t.get_gid() == 'failed') == \
      ['✕ 1 failed (no value)', '✕ 1 failed (no value)']


def test_methods_subset_and_legend_groups():
  df = results(['ppo', 'dpo', 'best_of_n', 'kto'])
  ax = frontier_axes(df, methods=['dpo', 'ppo'])
  drawn = {a.get_gid().split(':', 1)[1] for a in list(ax.lines) + list(ax.collections)
           if a.get_gid() and a.get_gid().startswith('points:')}
  assert drawn == {'dpo', 'ppo'}
  texts = [t.get_text() for t in ax.get_legend().get_texts()]
  groups = [t for t in texts if t in ('DPO family', 'RLHF family', 'baselines', 'other')]
  assert groups == ['DPO family', 'RLHF family']
  assert texts.index('DPO family') < texts.index('dpo  β=0.1,1') < texts.index('RLHF family') \
      < texts.index('ppo  β=0.1,1')
  full = frontier_axes(df)
  assert ({color_of(a) for a in artists(ax, 'points:ppo')}
          == {color_of(a) for a in artists(full, 'points:ppo')})
  with pytest.raises(ValueError, match='no rows of grpo'):
    frontier_axes(df, methods=['grpo'])


def test_axes_ranges_follow_the_data(tmp_path):
  df = results(['dpo'], values=(0.1, 0.3, 1.0), seeds=(0, 1))
  frontier = pd.DataFrame({'beta': np.geomspace(10, 0.01, 50), 'kl': np.linspace(0, 400, 50),
                           'gold_reward': np.linspace(0, 40, 50)})
  ax = frontier_axes(df, frontier=frontier)
  lo, hi = ax.get_xlim()
  assert lo <= 0 and 0.9 * df['kl'].max() < hi < 1.2 * df['kl'].max()  # not the frontier's 400
  assert ax.get_ylim()[1] < 5  # nor its reward of 40
  # one runaway point does not squash the rest, and is noted
  df.loc[df.index[-1], 'kl'] = 1e4
  ax = frontier_axes(df)
  assert ax.get_xlim()[1] < 50
  assert [t for t in ax.texts if t.get_gid() == 'beyond']
  assert plots.plot_frontier(df, tmp_path / 'f.png', frontier).stat().st_size > 0


def test_compute_plot(tmp_path):
  df = results(['dpo', 'ppo'], failed={('ppo', 1.0, 0)})
  df['train_flops'] = df['step'] * 1e12
  fig = Figure()
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  assert plots.draw_compute(axes, df) == 'train_flops'
  (env,) = artists(axes[0], 'envelope:dpo')
  ok = df[(df['method'] == 'dpo')]
  np.testing.assert_allclose(env.get_xdata(), plots.upper_envelope(ok['train_flops'],
                                                                  ok['gold_reward'])[0])
  assert color_of(env) == to_hex(plots.method_color('dpo'))
  (env_j,) = artists(axes[1], 'envelope:dpo')
  np.testing.assert_allclose(env_j.get_ydata(), plots.upper_envelope(ok['train_flops'],
                                                                    ok['objective'])[1])
  assert artists(axes[0], 'failed') and artists(axes[1], 'failed')
  assert plots.plot_compute(df, tmp_path / 'c.png').stat().st_size > 0
  # fallbacks: train_tokens, then step; none: a clear error
  tokens = df.drop(columns='train_flops').assign(train_tokens=1.0)
  assert plots.cost_column(tokens) == 'train_tokens'
  assert plots.cost_column(df.assign(train_flops=np.nan)) == 'step'
  with pytest.raises(ValueError, match='no cost to plot against'):
    plots.plot_compute(df.drop(columns=['train_flops', 'step']), tmp_path / 'none.png')
  assert not (tmp_path / 'none.png').exists()


def test_a_missed_kl_target_is_flagged(tmp_path):
  df = results(['ppo', 'dpo'], values=(3.0, 6.0))
  df['kl_target_met'] = [(v == 6.0) if m == 'ppo' else np.nan  # target 3: missed
                         for m, v in zip(df['method'], df['hparam_value'])]
  df.to_csv(tmp_path / 'results.csv', index=False)
  for table in (df, pd.read_csv(tmp_path / 'results.csv')):  # bools, or strings from a CSV
    ax = frontier_axes(table)
    (rings,) = artists(ax, 'target_missed')
    last = df[df['run'] == 'ppo-beta3-seed0'].sort_values('step').iloc[-1]
    np.testing.assert_allclose(rings.get_offsets(), [[last['kl'], last['gold_reward']]])
    assert any(t.get_text().startswith('KL target missed (1 run')
               for t in ax.get_legend().get_texts())
  assert not artists(frontier_axes(df.assign(kl_target_met=True)), 'target_missed')


def test_the_legend_names_only_the_values_of_runs_that_did_not_fail():
  df = results(['dpo'], values=(0.1, 1.0), failed={('dpo', 1.0, 0)})
  texts = [t.get_text() for t in frontier_axes(df).get_legend().get_texts()]
  assert 'dpo  β=0.1' in texts and '  dpo β=1 seed 0' in texts, texts


def test_every_methods_points_are_visible():
  """A marker drawn by lines alone ('1'–'4', '+': ppo_fixed, rloo_rm, the GRPO KL variants)
  shows only through its edge: each scatter of every method must paint something, a face
  (filled markers) or a stroke of non-zero width."""
  from matplotlib.markers import MarkerStyle
  ax = frontier_axes(results(list(plots.KNOWN_METHODS)))
  for method in plots.KNOWN_METHODS:
    filled = MarkerStyle(plots.method_marker(method)).is_filled()
    for gid in (f'points:{method}', f'last:{method}'):
      drawn = artists(ax, gid)
      assert drawn, (method, gid)
      for scatter in drawn:
        face, edge = scatter.get_facecolor(), scatter.get_edgecolor()
        stroke = max(scatter.get_linewidths(), default=0) > 0 and len(edge) and edge[:, 3].max() > 0
        assert stroke or (filled and len(face) and face[:, 3].max() > 0), (method, gid)
