"""alignlab vs the PyTorch peers, interleaved: each round runs every job once, in order
(alignlab, peer, alignlab, peer, ...), so slow spells of a shared machine hit both sides.

    .venv/bin/python benchmarks/compare_peers.py [--rounds 5] [--only dpo,sampler]
        [--dpo-variants fused_logprobs --sampler-variants inverse_cdf] [--out benchmarks/raw/compare.jsonl]

Jobs (subprocesses; each prints one JSON line):
  dpo per_batch / precomputed: benchmarks/dpo_step.py vs benchmarks/peers/trl_dpo_step.py
  sampler batch 64 / 8:        benchmarks/sampler.py  vs benchmarks/peers/hf_generate.py
  rl rloo / grpo / ppo:        benchmarks/rl_iter.py  vs benchmarks/peers/trl_rl_iter.py (trl 1.16)
                               and benchmarks/peers/trl_ppo_iter.py (trl 1.0, .venv-trl10)
`--dpo-variants` / `--sampler-variants` add alignlab runs with those variants (benchmarks/variants.py) to every round.
Every JSON line is appended to --out with the round, the job and the load average; the
summary (min/median/max of the per-run medians, ratios of medians) is printed at the end
and rebuilt by make_results.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_common as bc  # noqa: E402

JAX_PY = os.path.join(REPO, '.venv', 'bin', 'python')
PEER_PY = os.path.join(HERE, 'peers', '.venv', 'bin', 'python')


def jobs(only: set[str], dpo_variants: list[str], sampler_variants: list[str], dpo_steps: int, dpo_repeats: int, trl_steps: int,
         peak: float, rl_iters: int = 3) -> list[dict]:
  out = []
  if 'dpo' in only:
    for mode in ('per_batch', 'precomputed'):
      for v in ['baseline'] + dpo_variants:
        out.append({'name': f'dpo/{mode}/alignlab/{v}', 'group': f'dpo/{mode}', 'impl': 'alignlab',
                    'variant': v,
                    'cmd': [JAX_PY, 'benchmarks/dpo_step.py', '--mode', mode, '--steps',
                            str(dpo_steps), '--repeats', str(dpo_repeats), '--peak-gflops',
                            str(peak), '--variant', v]})
      out.append({'name': f'dpo/{mode}/trl', 'group': f'dpo/{mode}', 'impl': 'trl',
                  'cmd': [PEER_PY, 'benchmarks/peers/trl_dpo_step.py', '--mode', mode,
                          '--steps', str(trl_steps), '--warmup', '2']})
  if 'sampler' in only:
    for b in (64, 8):
      for v in ['baseline'] + sampler_variants:
        out.append({'name': f'sampler/b{b}/alignlab/{v}', 'group': f'sampler/b{b}',
                    'impl': 'alignlab', 'variant': v,
                    'cmd': [JAX_PY, 'benchmarks/sampler.py', '--batch', str(b), '--repeats', '5',
                            '--variant', v]})
      out.append({'name': f'sampler/b{b}/hf', 'group': f'sampler/b{b}', 'impl': 'hf',
                  'cmd': [PEER_PY, 'benchmarks/peers/hf_generate.py', '--batch', str(b),
                          '--repeats', '5']})
  if 'rl' in only:
    peer10 = os.path.join(HERE, 'peers', '.venv-trl10', 'bin', 'python')
    for algo in ('rloo', 'grpo', 'ppo'):
      shape = ['--prompts', '64', '--k', '1'] if algo == 'ppo' else []  # TRL's PPO: 1 per prompt
      out.append({'name': f'rl/{algo}/alignlab/baseline', 'group': f'rl/{algo}',
                  'impl': 'alignlab', 'variant': 'baseline',
                  'cmd': [JAX_PY, 'benchmarks/rl_iter.py', '--algo', algo, '--iters',
                          str(rl_iters), '--warmup', '1', *shape]})
      peer = ([peer10, 'benchmarks/peers/trl_ppo_iter.py'] if algo == 'ppo' else
              [PEER_PY, 'benchmarks/peers/trl_rl_iter.py', '--algo', algo])
      out.append({'name': f'rl/{algo}/trl', 'group': f'rl/{algo}', 'impl': 'trl',
                  'cmd': [*peer, '--iters', str(rl_iters), '--warmup', '1']})
  return out


def headline(rec: dict) -> float:
  r = rec['result']
  if 'median_steps_per_s' in r:
    return float(r['median_steps_per_s'])
  if 'median_iter_s' in r:  # an RL iteration: iterations per second
    return 1.0 / float(r['median_iter_s'])
  return float(r['median_new_tokens_per_s'])


def summarize(records: list[dict]) -> dict:
  """Per job: stats over runs of each run's median; per group: ratio of medians vs the peer."""
  by_name: dict[str, list[dict]] = {}
  for rec in records:
    if 'result' in rec:
      by_name.setdefault(rec['name'], []).append(rec)
  jobs_out = {}
  for name, recs in by_name.items():
    vals = [headline(r) for r in recs]
    jobs_out[name] = {**bc.stats(vals), 'group': recs[0]['group'], 'impl': recs[0]['impl'],
                      'variant': recs[0].get('variant'), 'cmd': ' '.join(recs[0]['cmd_rel'])}
  ratios = {}
  for name, s in jobs_out.items():
    if s['impl'] != 'alignlab':
      continue
    peer = next((p for p in jobs_out.values() if p['group'] == s['group'] and p['impl'] != 'alignlab'), None)
    if peer:
      ratios[name] = s['median'] / peer['median']
  return {'jobs': jobs_out, 'ratios': ratios}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--only', default='dpo,sampler')
  p.add_argument('--dpo-variants', default='', help='extra alignlab DPO variants (+ joins several)')
  p.add_argument('--sampler-variants', default='', help='extra alignlab sampler variants (+ joins several)')
  p.add_argument('--dpo-steps', type=int, default=5)
  p.add_argument('--dpo-repeats', type=int, default=3)
  p.add_argument('--trl-steps', type=int, default=8)
  p.add_argument('--rl-iters', type=int, default=3, help='timed RL iterations per run')
  p.add_argument('--peak-gflops', type=float, default=0.0,
                 help='0: measure once now (measure_peak.py) and pass it to every alignlab run')
  p.add_argument('--out', default=os.path.join(HERE, 'raw', 'compare.jsonl'))
  args = p.parse_args()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  peak = args.peak_gflops
  if peak <= 0:
    res = subprocess.run([JAX_PY, 'benchmarks/measure_peak.py', '--sizes', '2048', '4096'],
                         cwd=REPO, capture_output=True, text=True, check=True)
    peak_rec = json.loads(res.stdout.strip().splitlines()[-1])
    peak = peak_rec['peak_gflops']
    with open(args.out, 'a') as f:
      f.write(json.dumps({'name': 'measure_peak', 'group': 'peak', 'impl': 'xla',
                          'cmd_rel': ['.venv/bin/python', 'benchmarks/measure_peak.py', '--sizes', '2048', '4096'],
                          'peak': peak_rec, 'time': time.time()}) + '\n')
  split = lambda text: [v.replace('+', ',') for v in text.split(',') if v]
  todo = jobs(set(args.only.split(',')), split(args.dpo_variants), split(args.sampler_variants),
              args.dpo_steps, args.dpo_repeats, args.trl_steps, peak, args.rl_iters)
  records = []
  for rnd in range(args.rounds):
    for job in todo:
      load = bc.loadavg()
      t0 = time.perf_counter()
      res = subprocess.run(job['cmd'], cwd=REPO, capture_output=True, text=True)
      rec = {k: v for k, v in job.items() if k != 'cmd'}
      rec.update(round=rnd, loadavg_before=load, wall_s=time.perf_counter() - t0, time=time.time(),
                 cmd=job['cmd'], cmd_rel=[os.path.relpath(c, REPO) if os.path.isabs(c) else c
                                          for c in job['cmd']])
      lines = [l for l in res.stdout.splitlines() if l.startswith('{')]
      if res.returncode == 0 and lines:
        rec['result'] = json.loads(lines[-1])
        bc.log(f'round {rnd} {job["name"]}: {headline(rec):.4g}  (load {load})')
      else:
        rec['error'] = res.stderr[-2000:]
        bc.log(f'round {rnd} {job["name"]}: FAILED rc={res.returncode}\n{res.stderr[-1500:]}')
      records.append(rec)
      with open(args.out, 'a') as f:
        f.write(json.dumps(rec) + '\n')
  print(json.dumps(summarize(records)), flush=True)


if __name__ == '__main__':
  main()
