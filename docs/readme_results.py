"""Writes the README's results section from a real run's files, never by hand:

    python docs/readme_results.py runs/imdb_frontier-quick --command "alignlab run imdb_frontier --variant quick" \
        --commit a8b51a6 --machine "Intel Xeon, 2 cores (shared)" --wall "41 min"

It copies the run's frontier, compute and win-rate plots to docs/figures/ and replaces the text
between `<!-- results:begin -->` and `<!-- results:end -->` in README.md with the run's
verdict (`summary.md`), its size and its stage costs (`stages.json`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'


def section(out: Path, *, command: str, commit: str, machine: str, wall: str, name: str) -> str:
  summary = (out / 'summary.md').read_text()
  stages = json.loads((out / 'stages.json').read_text())
  verdict = summary.split('## Verdict', 1)[1].split('\n## ', 1)[0]
  verdict = verdict.split('\n', 1)[1].replace('### ', '#### ')
  timings = stages.get('timings', {})
  n_runs = summary.split('\n\n', 2)[1].split(';')[0]
  first = (f'{n_runs}; stages {timings.get("stages_s", 0):.0f} s, then per method: ' + ', '.join(
      f'{k[:-2]} {v:.0f} s' for k, v in timings.items()
      if k not in ('stages_s', 'total_s') and isinstance(v, (int, float)))
      + '.')
  rm = stages.get('info', {}).get('reward_model', {}).get('heldout_accuracy')
  from_cache = stages.get('info', {}).get('from_cache', {})
  cache = ('from an empty cache' if not any(from_cache.values()) else
           'with every stage read from the cache' if all(from_cache.values()) else
           'with the stages ' + ', '.join(k for k, v in from_cache.items() if v)
           + ' read from the cache')
  record = json.loads((out / 'experiment.json').read_text())['config']
  n_seeds = len(record['seeds'])
  n_prompts = record['task'].get('n_eval_prompts', '?')
  figures = []
  for kind, caption in (('frontier', 'reward–KL frontier'), ('compute', 'reward vs training compute'),
                        ('win_rates', 'win rate vs π_ref by temperature')):
    src = out / f'{kind}.png'
    if src.exists():
      dst = ROOT / 'docs' / 'figures' / f'{name}_{kind}.png'
      shutil.copyfile(src, dst)
      figures.append(f'![{caption}](docs/figures/{dst.name})')
  lines = [
      figures[0] if figures else '',
      '',
      f'Made by `{command}` at commit `{commit}` on {machine}: {wall} {cache}. '
      f'{first}' + (f' The reward model reaches {rm:.3f} held-out accuracy.' if rm else '')
      + ' Best-of-N\'s KL is the analytic log N − (N − 1)/N, an upper bound on its true KL '
      '(Beirami et al. 2024, arXiv 2401.01879).',
      '',
      'The verdict below is `summary.md` of that run (`alignlab/verdict.py`): each method\'s best '
      'mean gold reward at KL(π‖π_ref) ≤ each budget, with its 95 % interval (' + (
          f'{n_seeds} seeds and {n_prompts} held-out prompts' if n_seeds > 1 else
          f'one seed here, so {n_prompts} prompts only') + '), and the methods it cannot separate.',
      '',
      verdict.strip(),
      '',
      ' · '.join(f'[{f.split("](")[0][2:]}]({f.split("](")[1][:-1]})' for f in figures[1:]),
  ]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('out', type=Path)
  parser.add_argument('--command', required=True)
  parser.add_argument('--commit', required=True)
  parser.add_argument('--machine', required=True)
  parser.add_argument('--wall', required=True)
  parser.add_argument('--name', default='imdb_frontier_quick')
  args = parser.parse_args()
  readme = ROOT / 'README.md'
  text = readme.read_text()
  if BEGIN not in text or END not in text:
    raise SystemExit(f'README.md has no {BEGIN} … {END} markers')
  new = section(args.out, command=args.command, commit=args.commit, machine=args.machine,
                wall=args.wall, name=args.name)
  readme.write_text(re.sub(re.escape(BEGIN) + '.*?' + re.escape(END),
                           lambda m: f'{BEGIN}\n{new}\n{END}', text, flags=re.S))
  print(f'README.md: results section from {args.out}')


if __name__ == '__main__':
  main()
