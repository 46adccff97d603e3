"""Regenerates benchmarks/RESULTS.md — one command:

    .venv/bin/python benchmarks/make_results.py            # run everything, then write RESULTS.md
    .venv/bin/python benchmarks/make_results.py --from-raw # only re-render from benchmarks/raw/

Running everything = measure_peak.py, compare_peers.py (interleaved alignlab vs TRL / HF, with the
variants under test), foundation.py, and sweep_speed.py when that script exists. Raw JSON lines go
to benchmarks/raw/; the hand-written analysis in benchmarks/findings.md is appended verbatim.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RAW = os.path.join(HERE, 'raw')
sys.path.insert(0, HERE)
import bench_common as bc  # noqa: E402
from compare_peers import summarize  # noqa: E402

JAX_PY = '.venv/bin/python'
IDLE_PEER = {'dpo/per_batch': 0.61, 'dpo/precomputed': 0.61, 'sampler/b64': 2299.0,
             'sampler/b8': 1033.0}  # issue 7 ('measured on this machine'); TRL: per-batch mode
GOALS = {'dpo': 2.0, 'sampler': 4.0, 'mfu': 0.65, 'sweep': 3.0, 'rl': 3.0, 'eval_point': 1.5}
PEAK_CMD = [JAX_PY, 'benchmarks/measure_peak.py', '--sizes', '2048', '4096']
COMPARE_CMDS = [
    ([JAX_PY, 'benchmarks/compare_peers.py', '--only', 'dpo', '--rounds', '5', '--dpo-steps', '3',
      '--dpo-repeats', '3', '--trl-steps', '2'], 'compare.jsonl'),
    # The sampler's rejected variants (flat_cdf, gumbel: findings, sessions 2–3) are not rerun;
    # `--sampler-variants flat_cdf,gumbel` adds them back.
    ([JAX_PY, 'benchmarks/compare_peers.py', '--only', 'sampler', '--rounds', '5'],
     'compare_sampler.jsonl'),
    ([JAX_PY, 'benchmarks/compare_peers.py', '--only', 'rl', '--rounds', '5', '--rl-iters', '3'],
     'compare_rl.jsonl'),
]
EVAL_POINT_CMD = [JAX_PY, 'benchmarks/eval_point.py', '--prompts', '512', '--rounds', '5']
FOUNDATION_CMD = [JAX_PY, 'benchmarks/foundation.py', '--repeats', '5']
SWEEP_CMD = [JAX_PY, 'benchmarks/sweep_speed.py', '--runs', '8', '--steps', '200', '--api']


def run_all() -> None:
  os.makedirs(RAW, exist_ok=True)
  res = subprocess.run(PEAK_CMD, cwd=REPO, capture_output=True, text=True, check=True)
  peak = json.loads(res.stdout.strip().splitlines()[-1])
  with open(os.path.join(RAW, 'peak.jsonl'), 'a') as f:
    f.write(json.dumps({'name': 'measure_peak', 'peak': peak, 'cmd_rel': PEAK_CMD}) + '\n')
  for cmd, name in COMPARE_CMDS:
    out = os.path.join(RAW, name)
    if os.path.exists(out):
      os.replace(out, out + '.old')
    subprocess.run(cmd + ['--peak-gflops', f'{peak["peak_gflops"]:.1f}', '--out', out], cwd=REPO,
                   check=True)
  res = subprocess.run(EVAL_POINT_CMD, cwd=REPO, capture_output=True, text=True, check=True)
  with open(os.path.join(RAW, 'eval_point.json'), 'w') as f:
    f.write(res.stdout.strip().splitlines()[-1] + '\n')
  FOUNDATION_CMD.extend(['--peak-gflops', f'{peak["peak_gflops"]:.1f}'])
  for cmd, name in ((FOUNDATION_CMD, 'foundation.json'), (SWEEP_CMD, 'sweep_speed.json')):
    if not os.path.exists(os.path.join(REPO, cmd[1])):
      continue
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    try:  # one JSON object, possibly pretty-printed over several lines
      obj = json.loads(res.stdout[res.stdout.index('{'):])
    except ValueError:
      lines = [l for l in res.stdout.splitlines() if l.startswith('{')]
      obj = json.loads(lines[-1]) if lines else {'error': res.stderr[-2000:]}
    obj.setdefault('argv', cmd)
    with open(os.path.join(RAW, name), 'w') as f:
      f.write(json.dumps(obj) + '\n')


def sweep_table(obj: dict) -> str:
  """The sweep JSON as a table: seconds min / median / max over the rounds, and the ratios."""
  def fmt(st):
    return f'{st["min"]:.2f} / **{st["median"]:.2f}** / {st["max"]:.2f}'
  goal = GOALS['sweep']
  rows = ['| what ran (R = ' + str(obj['runs']) + ' runs × ' + str(obj['steps'])
          + ' steps) | rounds | seconds min / median / max | compile s | speedup vs sequential '
          '(medians; per-round min–max) | goal ≥ 3× |', '|---|---|---|---|---|---|']
  core = obj['core']
  seq = core['sequential']
  rows.append(f'| core: one jitted step, R runs one after another | {seq["run_s_stats"]["n"]} | '
              f'{fmt(seq["run_s_stats"])} | {seq["compile_s"]:.1f} | — | |')
  for name, label in (('vectorized_vmap', 'core: one program, all R runs vmapped'),
                      ('one_program_chunk1', 'core: one program, runs mapped one at a time')):
    m = core[name]
    pr = m['speedup_run_per_round']
    rows.append(f'| {label} | {m["run_s_stats"]["n"]} | {fmt(m["run_s_stats"])} | '
                f'{m["compile_s"]:.1f} | {m["speedup_run"]:.2f}× ({pr["min"]:.2f}–{pr["max"]:.2f}) | '
                f'{"met" if m["speedup_run"] >= goal else "not met"} |')
  if 'api' in obj:
    a = obj['api']
    pr = a['speedup_per_round']
    rows.append(f'| api: `fit` × R, one process (compiles included) | '
                f'{a["fit_one_after_another_stats"]["n"]} | {fmt(a["fit_one_after_another_stats"])} | '
                f'in the time | — | |')
    # `fit_runs` (train/fit.py) was `sweep.fit_sweep` in JSON written before the redesign.
    api_name = 'fit_runs' if 'fit_runs_stats' in a else 'fit_sweep'
    vec = a[f'{api_name}_stats']
    rows.append(f'| api: `{api_name}` once (compile included) | {vec["n"]} | '
                f'{fmt(vec)} | in the time | {a["speedup"]:.2f}× '
                f'({pr["min"]:.2f}–{pr["max"]:.2f}) | {"met" if a["speedup"] >= goal else "not met"} |')
  rows.append('')
  rows.append(f'Model d_model {obj["model"]["d_model"]}, {obj["model"]["layers"]} layers, '
              f'{obj["batch"]} pairs per step, task {obj["task"]}; load average '
              f'{obj["load_avg_1m"]:.1f} at the start, {obj.get("load_avg_1m_after", float("nan")):.1f} '
              'at the end.')
  return '\n'.join(rows)


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def fmt(x: float, digits: int = 3) -> str:
  return f'{x:.{digits}g}' if abs(x) < 1000 else f'{x:,.0f}'


def mmm(s: dict, digits: int = 3) -> str:
  return f'{fmt(s["min"], digits)} / **{fmt(s["median"], digits)}** / {fmt(s["max"], digits)}'


GPU_CMD = f'{JAX_PY} benchmarks/gpu_suite.py'


def gpu_section(w) -> None:
  """RESULTS.md's `## GPU`: the latest non-smoke GPU run of benchmarks/gpu_suite.py recorded in
  benchmarks/raw/gpu.jsonl, or how to make one. Smoke records and CPU-backend records are never
  rendered as GPU numbers."""
  from gpu_suite import headline
  w('## GPU')
  w('')
  recs = [r for r in read_jsonl(os.path.join(RAW, 'gpu.jsonl'))
          if r.get('suite') == 'gpu_suite' and not r.get('smoke')
          and r.get('backend') not in (None, 'cpu')]
  if not recs:
    w('No GPU has been lent to this project yet, so there are no GPU numbers. On a GPU machine, '
      'one command runs every benchmark (bf16, GPT-2 small shapes, MFU against the bf16 matmul '
      'peak measured there) and appends one JSON line per job to `benchmarks/raw/gpu.jsonl`:')
    w('')
    w('```bash')
    w(GPU_CMD)
    w('```')
    w('')
    w('Through a device lease (the `run` tool), the repo root is the working directory and files '
      'written under `$OUT` come back; the bare machine\'s `python3` has JAX with CUDA but not '
      '`grain`, so carry its wheels in `.whl` (the download command is in the docstring of '
      '`benchmarks/gpu_suite.py`) and run, with `carry: [".whl"]`:')
    w('')
    w('```bash')
    w('PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --wheels .whl --out $OUT/gpu.jsonl')
    w('```')
    w('')
    w('then copy the returned `gpu.jsonl` to `benchmarks/raw/gpu.jsonl` and re-render with '
      f'`{JAX_PY} benchmarks/make_results.py --from-raw`. `--smoke` checks the suite on a CPU '
      '(its records are marked `"smoke": true` and never shown here).')
    w('')
    return
  latest = max(r['suite_id'] for r in recs)
  run = [r for r in recs if r['suite_id'] == latest]
  pre = next((r for r in run if r['job'] == 'preflight'), None)
  info = pre['result'] if pre and pre.get('status') == 'ok' else {}
  n_runs = len({r['suite_id'] for r in recs})
  jobs = [r for r in run if r['job'] != 'preflight']
  ok = sum(r['status'] == 'ok' for r in jobs)
  w(f'`{GPU_CMD}` (raw JSON lines: `benchmarks/raw/gpu.jsonl`), the run of {latest} '
    f'({n_runs} GPU run{"s" if n_runs > 1 else ""} recorded, the latest shown): device '
    f'**{run[0].get("device_kind")}** ({run[0].get("backend")}), jax {info.get("jax_version", "?")}, '
    f'python {info.get("python", "?")}; {ok} of {len(jobs)} jobs ok. bf16 activations, float32 '
    'parameters, GPT-2 small (124M) shapes; MFU against the bf16 matmul peak of the `peak` job.')
  w('')
  peak = next((r for r in jobs if r['job'] == 'peak' and r['status'] == 'ok'), None)
  if peak:
    w(f'- Peak: {headline(peak)}.')
    w('')
  w('| job | headline | wall s | command |')
  w('|---|---|---|---|')
  for r in jobs:
    cmd = ' '.join(r['cmd']) if r.get('cmd') else ''
    wall = f'{r["wall_s"]:.0f}' if r.get('wall_s') is not None else ''
    w(f'| `{r["job"]}` | {headline(r).replace("|", "/")} | {wall} | '
      f'{f"`{cmd}`" if cmd else ""} |')
  w('')


def rl_section(w, records: list[dict]) -> None:
  """`## Online RL iteration vs TRL`: seconds per iteration and its split, both sides."""
  w('## Online RL iteration vs TRL')
  w('')
  recs = [r for r in records if r.get('group', '').startswith('rl/') and 'result' in r]
  if not recs:
    w('not run yet')
    w('')
    return
  w('One iteration = generation + scoring + one optimizer step on the GPT-2-shaped benchmark '
    'model (4 layers, d 256, vocab 8,192), 16 prompts of 8 tokens × 4 completions of exactly 64 '
    'new tokens (PPO: 64 prompts × 1, as TRL\'s PPO trainer samples one per prompt), temperature '
    '1, KL coefficient 0.05, Adam lr 1e-6; RLOO and GRPO score with the same plain function '
    '(the fraction of even token ids), PPO with a reward model and a value model of the '
    'policy\'s shape. TRL: `RLOOTrainer` / `GRPOTrainer` of trl 1.16, the experimental '
    '`PPOTrainer` of trl 1.0 (`benchmarks/peers/`); its buckets are defined in the scripts\' '
    'docstrings (advantages count as scoring there, as update in alignlab). Per process, the '
    'median of its timed iterations (after one untimed warm-up); min / **median** / max over '
    'the interleaved processes; the speed-up divides the medians.')
  w('')
  w('| algorithm | impl | runs | s / iteration min / median / max | generation s | scoring s '
    '| update s | speed-up vs TRL | goal ≥ 3× |')
  w('|---|---|---|---|---|---|---|---|---|')
  for algo in ('rloo', 'grpo', 'ppo'):
    sides = {}
    for impl in ('alignlab', 'trl'):
      mine = [r['result'] for r in recs if r['group'] == f'rl/{algo}' and r['impl'] == impl]
      if mine:
        sides[impl] = mine
    med = {impl: bc.stats([x['median_iter_s'] for x in xs])['median'] for impl, xs in sides.items()}
    for impl, xs in sides.items():
      st = bc.stats([x['median_iter_s'] for x in xs])
      parts = [bc.stats([x[f'median_{k}_s'] for x in xs])['median']
               for k in ('generate', 'score', 'update')]
      speed = med['trl'] / med['alignlab'] if impl == 'alignlab' and 'trl' in med else None
      goal = (f'{"met" if speed >= GOALS["rl"] else "not met"}' if speed is not None else '')
      w(f'| {algo} | {impl} | {st["n"]} | {mmm(st)} | {parts[0]:.2f} | {parts[1]:.2f} | '
        f'{parts[2]:.2f} | {f"{speed:.2f}×" if speed is not None else ""} | {goal} |')
  w('')


def eval_point_section(w) -> None:
  """`## Evaluation point`: one IMDb frontier point split into its parts, against the sampler."""
  w('## Evaluation point (IMDb, quick model, 512 prompts)')
  w('')
  path = os.path.join(RAW, 'eval_point.json')
  if not os.path.exists(path):
    w('not run yet')
    w('')
    return
  r = read_jsonl(path)[-1]
  st = r['stats']
  w(f'`{" ".join(EVAL_POINT_CMD)}`: {r["rounds"][0]["response_tokens"]:.0f} response tokens per '
    f'point ({int(r["n_point"])} prompts), gold reward {r["gold"]}, load average {r["loadavg_start"]} '
    'at the start. Per round, interleaved: the sampler alone on the same prompts, the whole point '
    '(`env["evaluate"]`), then the point again with each part timed apart (each waits for its '
    'result, so they do not overlap). Seconds, min / **median** / max over the rounds.')
  w('')
  w('| part | seconds |')
  w('|---|---|')
  for k, label in (('sampler_s', 'the sampler alone'), ('point_s', '**the whole point**'),
                   ('part/sample', 'part: sampling'),
                   ('part/kl', 'part: π and π_ref forwards, exact per-token KL, k1, k3'),
                   ('part/gold', 'part: gold reward (host)'),
                   ('part/proxy', 'part: reward model (proxy reward)'),
                   ('part/implicit_accuracy', 'part: implicit-reward accuracy, held-out pairs')):
    if k in st:
      w(f'| {label} | {mmm(st[k])} |')
  ratio = r['point_over_sampler']
  w('')
  w(f'A point costs **{ratio["median"]:.2f}×** the sampler alone (per-round min–max '
    f'{ratio["min"]:.2f}–{ratio["max"]:.2f}); goal ≤ {GOALS["eval_point"]:g}× '
    f'({"met" if ratio["median"] <= GOALS["eval_point"] else "not met"}).')
  w('')


def render() -> str:
  records = []
  for _, name in COMPARE_CMDS:
    records += read_jsonl(os.path.join(RAW, name))
  runs = [r for r in records if 'result' in r]
  peak_recs = [r for name in sorted(os.listdir(RAW)) if name.endswith('.jsonl')
               for r in read_jsonl(os.path.join(RAW, name)) if r.get('name') == 'measure_peak']
  summary = summarize(runs)
  loads = [r['loadavg_before'][0] for r in runs if r.get('loadavg_before')]
  first = runs[0]['result'] if runs else {}
  L = []
  w = L.append
  w('# alignlab benchmarks')
  w('')
  w(f'Generated by `{JAX_PY} benchmarks/make_results.py` on '
    f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Raw JSON: `benchmarks/raw/`.')
  w('')
  w('## Machine')
  w('')
  # The tables may come from different sessions on different machines: each names its own,
  # read from the records (the CPU that rendered this file is not the one that measured).
  measured_on = {}
  for r in runs:
    if 'cpu' in r['result']:  # alignlab's records carry it; the peers ran beside them
      measured_on.setdefault(r['group'].split('/')[0], set()).add(r['result']['cpu'])
  point = read_jsonl(os.path.join(RAW, 'eval_point.json'))
  if point:
    measured_on['eval_point'] = {point[-1].get('cpu', '?')}
  w('- CPU of each table\'s runs (from their records): ' + '; '.join(
      f'{k}: {", ".join(sorted(v))}' for k, v in measured_on.items())
    + f'; 2 cores (AVX-512), no GPU; jax {first.get("jax_version", "?")}, XLA:CPU, fp32.')
  if loads:
    busy = sorted(loads)[len(loads) // 2] > 3.0  # the benchmark itself keeps ≈ 2 cores busy
    w(f'- 1-minute load average during the runs: min {min(loads):.1f}, median '
      f'{sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f} on 2 cores (' +
      ('the machine was **shared with other jobs**, so absolute numbers are below idle numbers; '
       'runs are interleaved so that ratios stay meaningful).' if busy else
       'nothing else ran: the load is the benchmark itself).'))
  peaks = [r['peak']['peak_gflops'] for r in peak_recs]
  used = sorted({r['result'].get('peak_gflops') for r in runs if r['result'].get('peak_gflops')})
  if peaks:
    w(f'- fp32 matmul peak through XLA (`{" ".join(PEAK_CMD)}`, median GFLOP/s of the best size), '
      f'measured right before the runs: {peaks[-1]:.0f} GFLOP/s; MFU below uses '
      f'{", ".join(f"{u:.0f}" for u in used)} GFLOP/s (passed as `--peak-gflops`), and 190 GFLOP/s '
      '(the idle peak measured on this machine kind) beside it.')
  w('')
  w('## Commands')
  w('')
  w('```bash')
  w(' '.join(PEAK_CMD))
  for cmd, name in COMPARE_CMDS:
    w(' '.join(cmd) + f' --peak-gflops <peak> --out benchmarks/raw/{name}')
  seen = set()
  for r in runs:
    cmd = ' '.join(r['cmd_rel'])
    key = r['name'].split('/')[0] + r['name'].split('/')[1] + r['impl']
    if r.get('variant') not in (None, 'baseline') or key in seen:
      continue
    seen.add(key)
    w(cmd)
  w(' '.join(FOUNDATION_CMD))
  w('```')
  w('')
  w('Each row: min / **median** / max over the interleaved runs (processes; `runs` column — the '
    'commands ask for 5 rounds, fewer means the session deadline cut the rounds short) of each '
    'process\'s median; DPO in optimizer steps/s, sampler in new tokens/s. "ratio vs peer" divides '
    'the two medians of this run (the peers ran interleaved with alignlab, under the same load; the '
    'load average is in every raw JSON line); "vs idle peer" divides alignlab\'s median by the '
    'peer\'s number quoted in issue 7 (TRL 0.61 steps/s; HF 2,299 / 1,033 new tokens/s).')
  w('')
  for title, prefix, unit, goal_key in (('DPO train step vs TRL DPOTrainer', 'dpo', 'steps/s', 'dpo'),
                                       ('Sampler vs HF generate', 'sampler', 'new tokens/s', 'sampler')):
    w(f'## {title}')
    w('')
    w(f'| job | runs | {unit} min / median / max | ratio vs peer (medians, same run) | vs idle peer | goal |')
    w('|---|---|---|---|---|---|')
    for name, s in sorted(summary['jobs'].items()):
      if not name.startswith(prefix):
        continue
      ratio = summary['ratios'].get(name)
      rtxt = f'{ratio:.2f}×' if ratio is not None else '—'
      gtxt = (f'≥ {GOALS[goal_key]:g}× ({"met" if ratio >= GOALS[goal_key] else "not met"})'
              if ratio is not None else '')
      idle = IDLE_PEER.get(s['group'])
      itxt = f'{s["median"] / idle:.2f}×' if idle and s['impl'] == 'alignlab' else ''
      w(f'| `{name}` | {s["n"]} | {mmm(s)} | {rtxt} | {itxt} | {gtxt} |')
    w('')
    if prefix == 'dpo':
      w('Model FLOPs per step, as computed (formula in `benchmarks/dpo_step.py`): alignlab runs '
        "each pair's shared prompt once, so tokens = B·P + 2·B·R = 1,536 token passes (TRL: "
        '2·B·(P+R) = 2,048); N = L·(4D² + 2DF) = 3.15 M matmul params; attn = L·4·D·T·tokens '
        '(every query against all T slots, masked); head = 2·D·V·2B·R (logits only at response '
        'positions); policy = 3·(2·N·tokens + attn + head); reference (per_batch only) = '
        '2·N·tokens + attn + head.')
      w('')
      w('| job | FLOPs/step | GFLOP/s (median) | MFU vs measured peak | MFU vs 190 GFLOP/s | compile s | goal MFU ≥ 65 % |')
      w('|---|---|---|---|---|---|---|')
      for name in sorted(summary['jobs']):
        if not (name.startswith('dpo') and '/alignlab/' in name):
          continue
        rs = [r['result'] for r in runs if r['name'] == name]
        med = summary['jobs'][name]['median']
        fl = rs[0]['flops_per_step']
        peak = rs[0]['peak_gflops']
        mfu = med * fl / 1e9 / peak
        comp = sorted(r['compile_s'] for r in rs)[len(rs) // 2]
        w(f'| `{name}` | {fl / 1e9:.1f} G | {med * fl / 1e9:.0f} | {100 * mfu:.0f} % | '
          f'{100 * med * fl / 1e9 / 190:.0f} % | {comp:.1f} | {"met" if mfu >= 0.65 else "not met"} |')
      pre = [r['result'] for r in runs if r['name'].startswith('dpo/precomputed/trl')]
      if pre:
        w('')
        w(f'TRL precompute pass (reference over the dataset, timed apart): '
          f'{sorted(p["precompute_time_s"] for p in pre)[len(pre) // 2]:.1f} s median for '
          f'{pre[0]["precompute_examples"]} pairs.')
      w('')
  w('## Vectorized sweep (8 β values, vmapped vs sequential)')
  w('')
  sweep = os.path.join(RAW, 'sweep_speed.json')
  if os.path.exists(os.path.join(HERE, 'sweep_speed.py')) and os.path.exists(sweep):
    w('`' + ' '.join(SWEEP_CMD) + '` (goal ≥ 3×); raw JSON in `benchmarks/raw/sweep_speed.json`.')
    w('')
    obj = json.loads(open(sweep).read())
    if 'error' in obj:
      w(f'The run failed: `{obj["error"][-300:]}`')
    else:
      w(sweep_table(obj))
  elif os.path.exists(os.path.join(HERE, 'sweep_speed.py')):
    w('`benchmarks/sweep_speed.py` (another engineer\'s) now exists but was not run in this session '
      f'(deadline, loaded machine); `make_results.py` runs `{" ".join(SWEEP_CMD)}` and puts its '
      'JSON here. Goal ≥ 3×.')
  else:
    w('Pending: `benchmarks/sweep_speed.py` is being written by another engineer; once it exists, '
      '`make_results.py` runs it and includes its JSON here. Goal ≥ 3×.')
  w('')
  w("## Issue 2 speed check (foundation)")
  w('')
  fpath = os.path.join(RAW, 'foundation.json')
  fd = None
  if os.path.exists(fpath):
    try:
      fd = json.load(open(fpath))
    except ValueError:
      fd = None
  if fd is not None:
    if 'train_step' in fd:
      t = fd['train_step']
      w(f'`{" ".join(fd.get("argv") or FOUNDATION_CMD)}`: LM training step, batch {t["batch"]} × sequence {t["seq"]}: '
        f'tokens/s {mmm(t["tokens_per_s"])}; MFU {mmm({k: 100 * v for k, v in t["mfu"].items()})} % '
        f'(against a peak of {fd["peak_gflops"]:.0f} GFLOP/s); compile '
        f'{t["compile_s"]:.1f} s. Sampler, batch 64: new tokens/s '
        f'{mmm(fd["sampler"]["new_tokens_per_s_stats"])}. Load average at start '
        f'{fd["loadavg_start"]}.')
    else:
      w(f'failed: {fd}')
  else:
    w('not run yet')
  w('')
  rl_section(w, records)
  eval_point_section(w)
  gpu_section(w)
  findings = os.path.join(HERE, 'findings.md')
  if os.path.exists(findings):
    w(open(findings).read().strip())
    w('')
  return '\n'.join(L)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--from-raw', action='store_true')
  args = p.parse_args()
  if not args.from_raw:
    run_all()
  text = render()
  with open(os.path.join(HERE, 'RESULTS.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
