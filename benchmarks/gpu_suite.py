"""Every alignlab benchmark on a GPU in one command; each job's JSON line is appended to a file.

    .venv/bin/python benchmarks/gpu_suite.py                  # on a GPU machine with the venv
    .venv/bin/python benchmarks/gpu_suite.py --smoke          # anywhere: tiny sizes, float32, CPU ok

Jobs, in order (subprocesses of the existing scripts, each prints one JSON object):

  peak         measure_peak.py --dtype bfloat16 --sizes 4096 8192       the bf16 matmul peak
  dpo/per_batch, dpo/precomputed
               dpo_step.py --config gpt2_small --dtype bfloat16 --peak-gflops <that peak>  (MFU)
  sampler/b64, sampler/b8
               sampler.py --config gpt2_small --dtype bfloat16 --batch 64 | 8
  sweep        sweep_speed.py --config gpt2_small --dtype bfloat16 --runs 8 (core timing only:
               8 runs in one program vs 8 runs one after another)
  rl/rloo, rl/grpo, rl/ppo
               rl_iter.py --config gpt2_small --dtype bfloat16 (PPO with TRL's 64 × 1 shape, as
               compare_peers.py runs it)
  peer/hf_b64, peer/hf_b8
               benchmarks/peers/hf_generate.py, only where the peer env (benchmarks/peers/.venv)
               exists and its torch sees CUDA; otherwise recorded as "peer not available". (The
               peer script builds its model on the CPU, fp32: where it runs, its record says so.)

eval_point.py is left out: it needs the IMDb stages, which a bare GPU machine does not have.

Each record (one JSON line in --out, default benchmarks/raw/gpu.jsonl; smoke runs default to
`alignlab_gpu_smoke.jsonl` in the system's temporary directory) holds the job, its command, the
device kind and backend, a UTC timestamp, the suite run's id, `"smoke"`, a status ('ok', 'failed', 'timeout', 'skipped') and the
script's JSON (`result`) or the stderr tail. A failed job is recorded and the suite goes on.
A first `preflight` record says which device JAX sees and whether the alignlab modules import.
`--timeout` bounds each job, `--budget-s` the whole suite (jobs that would start after it are
recorded as skipped; a job's timeout is cut to the budget left). The default budget, 480 s,
fits a 15-minute device lease with its start-up. A short summary is printed at the end;
`benchmarks/make_results.py` renders the latest non-smoke GPU run in RESULTS.md's `## GPU`.
Without `--smoke` the suite refuses a CPU backend (gpt2_small would take hours) unless
`--allow-cpu`; such records are not rendered as GPU numbers either.

Through a device lease (the `run` tool): the repo root is the working directory, the machine is
bare and offline, and what is written under `$OUT` comes back. Its `python3` holds JAX with CUDA
but not `grain` (imported by alignlab.train.batches), so carry wheels for Python 3.12 once:

    echo /.whl/ >> .git/info/exclude
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        grain==0.2.18 array-record==0.8.6 portpicker==1.6.0

then one call, carry [".whl"], timeout_s 600:

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --wheels .whl --out $OUT/gpu.jsonl

`--wheels DIR` (default `.whl` when that folder exists) pip-installs DIR/*.whl (no index, no
deps) into a temporary folder put on the jobs' PYTHONPATH. Copy the returned gpu.jsonl to
benchmarks/raw/gpu.jsonl and run `.venv/bin/python benchmarks/make_results.py --from-raw`.
Jobs run with this interpreter (`--python` to choose another). `--only dpo,sampler` runs a
subset (job names or their prefixes: peak, dpo, sampler, sweep, rl, peer).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEER_PY = os.path.join(HERE, 'peers', '.venv', 'bin', 'python')
DEFAULT_OUT = os.path.join('benchmarks', 'raw', 'gpu.jsonl')
SMOKE_OUT = os.path.join(tempfile.gettempdir(), 'alignlab_gpu_smoke.jsonl')
GROUPS = ('peak', 'dpo', 'sampler', 'sweep', 'rl', 'peer')
MIN_JOB_S = 15.0  # a job is not started with less budget than this left

PREFLIGHT = r'''
import json, sys
out = {'python': sys.version.split()[0]}
try:
  import jax
  d = jax.devices()[0]
  out.update(jax_version=jax.__version__, backend=jax.default_backend(),
             device_kind=str(d.device_kind), n_devices=jax.device_count())
except Exception as e:
  out['jax_error'] = f'{type(e).__name__}: {e}'
missing = {}
for mod in ('flax', 'optax', 'alignlab.sampling', 'alignlab.train.preference', 'alignlab.train.ppo',
            'alignlab.train.fit', 'alignlab.tasks.exact_math'):
  try:
    __import__(mod)
  except Exception as e:
    missing[mod] = f'{type(e).__name__}: {e}'
out['import_errors'] = missing
print(json.dumps(out))
'''

PEER_CHECK = 'import json, torch; print(json.dumps([torch.__version__, torch.cuda.is_available()]))'


class Skip(Exception):
  """A job that is not run; its message is recorded."""


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def log(*a) -> None:
  print(*a, file=sys.stderr, flush=True)


def parse_json(stdout: str):
  """The script's JSON object: its last JSON line, else one object printed over several lines."""
  for line in reversed(stdout.strip().splitlines()):
    if line.startswith('{'):
      try:
        return json.loads(line)
      except ValueError:
        pass
  if '{' in stdout:
    return json.loads(stdout[stdout.index('{'):])
  raise ValueError('no JSON object on stdout')


def sizes(smoke: bool) -> dict:
  """Per-job arguments: the GPU suite, or the smoke suite (gpt2_bench, float32, the fewest
  repeats/steps the scripts take, tiny shapes)."""
  if smoke:
    model = ['--config', 'gpt2_bench', '--dtype', 'float32']
    return {
        'peak': ['--dtype', 'float32', '--sizes', '512', '--repeats', '1'],
        'dpo': model + ['--steps', '1', '--repeats', '1', '--pairs', '2', '--prompt-len', '16',
                        '--response-len', '16'],
        'sampler': model + ['--repeats', '1', '--new-tokens', '8'],
        'sweep': model + ['--runs', '2', '--steps', '1', '--rounds', '1', '--pairs-per-prompt', '8',
                          '--batch', '16'],
        'rl': model + ['--iters', '1', '--warmup', '1', '--new-tokens', '8'],
        'rl_shape': {'rloo': ['--prompts', '2', '--k', '2'], 'grpo': ['--prompts', '2', '--k', '2'],
                     'ppo': ['--prompts', '4', '--k', '1']},
        'peer': ['--repeats', '1', '--new-tokens', '8'],
    }
  model = ['--config', 'gpt2_small', '--dtype', 'bfloat16']
  return {
      'peak': ['--dtype', 'bfloat16', '--sizes', '4096', '8192', '--repeats', '5'],
      'dpo': model + ['--steps', '10', '--repeats', '3'],
      'sampler': model + ['--repeats', '3'],
      'sweep': model + ['--runs', '8', '--steps', '50', '--rounds', '3'],
      'rl': model + ['--iters', '3', '--warmup', '1'],
      'rl_shape': {'rloo': [], 'grpo': [], 'ppo': ['--prompts', '64', '--k', '1']},
      'peer': ['--repeats', '3'],
  }


def peer_available(py: str, env: dict) -> str:
  """'' when the peer env's torch sees CUDA, else why the peer is not available."""
  if not os.path.exists(py):
    return f'peer not available: no peer env ({os.path.relpath(py, REPO)} is missing)'
  try:
    res = subprocess.run([py, '-c', PEER_CHECK], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=env)
    version, cuda = json.loads(res.stdout.strip().splitlines()[-1])
  except Exception as e:  # noqa: BLE001 (no torch, a broken env, a timeout: all "not available")
    return f'peer not available: torch does not import in the peer env ({type(e).__name__})'
  if not cuda:
    return f'peer not available: the peer env\'s torch {version} sees no CUDA device'
  return ''


def plan(args, py: str) -> list[tuple[str, object]]:
  """(job name, builder): a builder takes the suite's context and returns the command (argv
  after the interpreter is included), or raises Skip."""
  s = sizes(args.smoke)
  jobs = [('peak', lambda ctx: [py, 'benchmarks/measure_peak.py', *s['peak']])]

  def dpo(mode):
    def build(ctx):
      peak = ctx.get('peak_gflops')
      extra = ['--peak-gflops', f'{peak:.1f}'] if peak else []  # else dpo_step measures fp32
      return [py, 'benchmarks/dpo_step.py', '--mode', mode, *s['dpo'], *extra]
    return build

  jobs += [(f'dpo/{m}', dpo(m)) for m in ('per_batch', 'precomputed')]
  jobs += [(f'sampler/b{b}', (lambda b: lambda ctx: [py, 'benchmarks/sampler.py', '--batch', str(b),
                                                     *s['sampler']])(b)) for b in (64, 8)]
  jobs.append(('sweep', lambda ctx: [py, 'benchmarks/sweep_speed.py', *s['sweep']]))
  jobs += [(f'rl/{a}', (lambda a: lambda ctx: [py, 'benchmarks/rl_iter.py', '--algo', a, *s['rl'],
                                               *s['rl_shape'][a]])(a)) for a in ('rloo', 'grpo', 'ppo')]

  def peer(b):
    def build(ctx):
      if 'peer_status' not in ctx:
        ctx['peer_status'] = peer_available(args.peer_python, ctx['env'])
      if ctx['peer_status']:
        raise Skip(ctx['peer_status'])
      return [args.peer_python, 'benchmarks/peers/hf_generate.py', '--batch', str(b), *s['peer']]
    return build

  jobs += [(f'peer/hf_b{b}', peer(b)) for b in (64, 8)]
  if args.only:
    want = [w.strip() for w in args.only.split(',') if w.strip()]
    jobs = [(n, f) for n, f in jobs if any(n == w or n.split('/')[0] == w for w in want)]
  return jobs


def rel_cmd(cmd: list[str]) -> list[str]:
  return [os.path.relpath(c, REPO) if os.path.isabs(c) and c.startswith(REPO + os.sep) else c
          for c in cmd]


def tail(text: str, n: int = 3000) -> str:
  return text[-n:] if text else ''


def run_job(cmd: list[str], timeout: float, env: dict) -> dict:
  """Runs one script in its own process group; the fields of its record."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, start_new_session=True)
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    try:
      os.killpg(proc.pid, 9)  # the group this job's own process leads
    except ProcessLookupError:
      pass
    stdout, stderr = proc.communicate()
    return {'status': 'timeout', 'wall_s': time.perf_counter() - t0, 'timeout_s': timeout,
            'error': f'timed out after {timeout:.0f} s', 'stderr_tail': tail(stderr),
            'stdout_tail': tail(stdout, 1000)}
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    lines = [l for l in (stderr or '').strip().splitlines() if l.strip()]
    return {'status': 'failed', 'wall_s': wall, 'returncode': proc.returncode,
            'error': lines[-1][:300] if lines else f'exit status {proc.returncode}',
            'stderr_tail': tail(stderr), 'stdout_tail': tail(stdout, 1000)}
  try:
    result = parse_json(stdout)
  except ValueError as e:
    return {'status': 'failed', 'wall_s': wall, 'returncode': 0, 'error': f'output: {e}',
            'stderr_tail': tail(stderr), 'stdout_tail': tail(stdout, 1000)}
  return {'status': 'ok', 'wall_s': wall, 'result': result}


def install_wheels(folder: str, py: str, env: dict) -> str:
  """pip-installs folder/*.whl (no index, no deps) into a temporary folder; returns it."""
  wheels = sorted(glob.glob(os.path.join(folder, '*.whl')))
  if not wheels:
    return ''
  target = tempfile.mkdtemp(prefix='alignlab_wheels_')
  res = subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
                        '--no-cache-dir', '--upgrade', '--target', target, *wheels], cwd=REPO,
                       capture_output=True, text=True, env=env)
  if res.returncode != 0:
    log(f'installing the wheels of {folder} failed:\n{tail(res.stderr, 1500)}')
    return ''
  log(f'installed {len(wheels)} wheels from {folder} into {target}')
  return target


# The headline of a job's record, for the summary here and RESULTS.md's ## GPU.

def _num(x: float, digits: int = 3) -> str:
  return f'{x:,.0f}' if abs(x) >= 1000 else f'{x:.{digits}g}'


def _flops(gflops: float) -> str:
  return f'{gflops / 1000:.1f} TFLOP/s' if gflops >= 1000 else f'{gflops:.3g} GFLOP/s'


def headline(rec: dict) -> str:
  """One line for one record: the job's numbers, or why there are none."""
  st = rec.get('status')
  if st == 'skipped':
    return f'skipped: {rec.get("reason", "")}'
  if st != 'ok':
    return f'{st}: {rec.get("error", "")}'
  r, job = rec['result'], rec['job']
  try:
    if job == 'preflight':
      bad = r.get('import_errors') or {}
      return (f'{r.get("device_kind", "?")} ({r.get("backend", "?")}), jax {r.get("jax_version", "?")}, '
              f'python {r.get("python", "?")}' +
              (f'; import errors: {"; ".join(f"{k}: {v}" for k, v in bad.items())}' if bad else ''))
    if job == 'peak':
      return (f'{r["dtype"]} matmul peak {_flops(r["peak_gflops"])} (median per size: ' +
              ', '.join(f'{n}: {_flops(v["median"])}' for n, v in r['per_size'].items()) + ')')
    if job.startswith('dpo/'):
      return (f'{r["median_steps_per_s"]:.3g} steps/s, {_flops(r["achieved_gflops"]["median"])}, '
              f'MFU {100 * r["mfu"]["median"]:.1f} % of {_flops(r["peak_gflops"])}, '
              f'compile {r["compile_s"]:.1f} s')
    if job.startswith('sampler/'):
      return (f'{_num(r["median_new_tokens_per_s"])} new tokens/s (batch {r["batch"]}), '
              f'compile {r["compile_s"]:.1f} s')
    if job == 'sweep':
      c = r['core']
      v, one = c['vectorized_vmap'], c['one_program_chunk1']
      return (f'{r["runs"]} runs in one program (vmap) {v["speedup_run"]:.2f}× vs {r["runs"]} '
              f'sequential runs ({v["run_steps_per_s"]:.0f} vs {c["sequential"]["run_steps_per_s"]:.0f}'
              f' run-steps/s; mapped one at a time {one["speedup_run"]:.2f}×; with compile, one '
              f'process {v["speedup_with_compile_one_process"]:.2f}×)')
    if job.startswith('rl/'):
      return (f'{r["median_iter_s"]:.3g} s/iteration (generate {r["median_generate_s"]:.3g}, score '
              f'{r["median_score_s"]:.3g}, update {r["median_update_s"]:.3g}; '
              f'{r["prompts"]}×{r["k"]} sequences)')
    if job.startswith('peer/'):
      return (f'{_num(r["median_new_tokens_per_s"])} new tokens/s (batch {r["batch"]}, HF generate, '
              f'{r.get("dtype", "?")} on the CPU)')
  except (KeyError, TypeError, ZeroDivisionError) as e:
    return f'ok (no headline: {type(e).__name__} {e})'
  return 'ok'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--smoke', action='store_true',
                 help='gpt2_bench, float32, fewest steps: checks the plumbing (CPU is fine)')
  p.add_argument('--out', default=None, help=f'JSON lines to append to (default {DEFAULT_OUT}; '
                 f'with --smoke {SMOKE_OUT})')
  p.add_argument('--timeout', type=float, default=300.0, help='seconds per job')
  p.add_argument('--budget-s', type=float, default=None,
                 help='seconds for the whole suite; later jobs are skipped (default 480, smoke 900)')
  p.add_argument('--only', default='', help=f'comma list of jobs or groups ({", ".join(GROUPS)})')
  p.add_argument('--python', default=sys.executable, help='interpreter of the alignlab jobs')
  p.add_argument('--peer-python', default=PEER_PY, help='interpreter of the HF peer')
  p.add_argument('--wheels', default=None,
                 help='folder of wheels to install for the jobs (default .whl when it exists)')
  p.add_argument('--allow-cpu', action='store_true', help='run the full suite on a CPU backend')
  args = p.parse_args(argv)
  out = args.out or (SMOKE_OUT if args.smoke else DEFAULT_OUT)
  out = out if os.path.isabs(out) else os.path.join(REPO, out)
  budget = args.budget_s if args.budget_s is not None else (900.0 if args.smoke else 480.0)
  suite_id = utc_now()
  t_start = time.perf_counter()

  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([REPO] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  wheels = args.wheels if args.wheels is not None else ('.whl' if os.path.isdir(os.path.join(REPO, '.whl')) else '')
  if wheels:
    target = install_wheels(wheels if os.path.isabs(wheels) else os.path.join(REPO, wheels),
                            args.python, env)
    if target:
      env['PYTHONPATH'] = target + os.pathsep + env['PYTHONPATH']

  os.makedirs(os.path.dirname(out), exist_ok=True)
  records = []

  def record(job: str, cmd, fields: dict) -> dict:
    rec = {'suite': 'gpu_suite', 'suite_id': suite_id, 'job': job, 'smoke': args.smoke,
           'time_utc': utc_now(), 'device_kind': ctx.get('device_kind'),
           'backend': ctx.get('backend'), 'cmd': rel_cmd(cmd) if cmd else None, **fields}
    with open(out, 'a') as f:
      f.write(json.dumps(rec) + '\n')
    records.append(rec)
    return rec

  ctx = {'env': env}
  pre_cmd = [args.python, '-c', PREFLIGHT]
  pre = run_job(pre_cmd, 300.0, env)
  res = pre.get('result') or {}
  ctx['device_kind'], ctx['backend'] = res.get('device_kind'), res.get('backend')
  rec = record('preflight', [args.python, '-c', '<preflight: jax devices, alignlab imports>'], pre)
  log(f'preflight: {headline(rec)}')
  if pre['status'] != 'ok' or 'jax_error' in res:
    log(f'JAX does not start ({res.get("jax_error") or pre.get("error")}); nothing else to run.')
    return 1
  if ctx['backend'] == 'cpu' and not (args.smoke or args.allow_cpu):
    log('JAX sees no accelerator: the full suite would take hours on a CPU. Use --smoke, or '
        '--allow-cpu to run it anyway.')
    return 2
  if res.get('import_errors'):
    log('some alignlab modules do not import; the jobs that need them will fail (see --wheels).')

  for name, build in plan(args, args.python):
    left = budget - (time.perf_counter() - t_start)
    try:
      if left < MIN_JOB_S:
        raise Skip(f'suite budget of {budget:.0f} s spent')
      cmd = build(ctx)
    except Skip as e:
      rec = record(name, None, {'status': 'skipped', 'reason': str(e)})
      log(f'{name}: {headline(rec)}')
      continue
    timeout = min(args.timeout, left)
    log(f'{name}: {" ".join(rel_cmd(cmd))}  (timeout {timeout:.0f} s)')
    fields = run_job(cmd, timeout, env)
    if name.startswith('peer/') and fields['status'] == 'ok':
      fields['note'] = 'hf_generate.py builds its model on the CPU (fp32, gpt2_bench shapes)'
    rec = record(name, cmd, fields)
    if name == 'peak' and rec['status'] == 'ok':
      ctx['peak_gflops'] = rec['result']['peak_gflops']
    log(f'{name}: {headline(rec)}  [{fields["wall_s"]:.0f} s]')

  total = time.perf_counter() - t_start
  n_ok = sum(r['status'] == 'ok' for r in records[1:])
  print(f'alignlab GPU suite{" (SMOKE: not GPU numbers)" if args.smoke else ""}: '
        f'{ctx["device_kind"]} ({ctx["backend"]}), {n_ok}/{len(records) - 1} jobs ok, '
        f'{total:.0f} s; records appended to {os.path.relpath(out, REPO) if out.startswith(REPO) else out}')
  if not ctx.get('peak_gflops'):
    print('  (no peak measured: dpo_step measured its own fp32 peak for MFU)')
  for r in records[1:]:
    print(f'  {r["job"]:<16} {headline(r)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
