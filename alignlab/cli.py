"""`alignlab`: run experiments, evaluate runs, plot results.

    alignlab run EXPERIMENT [--variant V] [--set key=value ...] [--out DIR] [--quiet]
    alignlab eval RUN_DIR [--recompute]
    alignlab plot RESULTS [--out FILE] [--method M ...] [--kind frontier|gap|win_rate]
    alignlab list
    alignlab convert --from-hf HF_DIR --out MODEL_DIR | --to-hf RUN_DIR|MODEL_DIR --out HF_DIR

Every command takes --coordinator HOST:PORT --num-processes N --process-id I to run as one of
N processes of one program (docs/multihost.md); on SLURM and TPU pods they are detected.

A mistake the user can fix (an unknown experiment, variant or --set key, a run dir without
results, a plot with nothing to plot) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

EPILOG = """examples:
  alignlab list
  alignlab run exact_frontier --variant tiny
  alignlab run exact_frontier --variant quick --set train.steps=200 --set sweeps.dpo=[0.1,1.0]
  alignlab run bandit --variant quick
  alignlab run path/to/my_pipeline.py --variant tiny --out runs/mine
  alignlab eval runs/exact_frontier-quick/dpo-beta0.1-seed0 --recompute
  alignlab plot runs/exact_frontier-quick/results.csv --method dpo --method best_of_n --out dpo.png
  alignlab run exact_frontier --coordinator host0:1234 --num-processes 2 --process-id 0
      (and --process-id 1 on the other host; docs/multihost.md)

Run directories: OUT/<method>-<hparam><value>-seed<k>/ with config.json, metrics.jsonl,
eval.jsonl and checkpoints/; OUT/results.csv is the tidy table of every evaluation point.
Running the same command again resumes: complete runs are skipped, partial ones continue
from their checkpoints. Shared stages (π_ref, pairs, reward model) are cached under
$ALIGNLAB_CACHE (default ~/.cache/alignlab). Default OUT: $ALIGNLAB_RUNS/<experiment>-<variant>
($ALIGNLAB_RUNS defaults to ./runs)."""


class UsageError(Exception):
  """A one-line error for the user; exit status 2."""


class _Parser(argparse.ArgumentParser):

  def error(self, message: str):
    raise UsageError(f'{message} (see `{self.prog} --help`)')


def _distributed_flags() -> argparse.ArgumentParser:
  """The flags of one process among several (every command takes them): `distributed.py`."""
  flags = _Parser(add_help=False)
  group = flags.add_argument_group('multi-process (docs/multihost.md)')
  group.add_argument('--coordinator', default=None, metavar='HOST:PORT',
                     help="process 0's address, the same for every process")
  group.add_argument('--num-processes', type=int, default=None, metavar='N',
                     help='how many processes run this program')
  group.add_argument('--process-id', type=int, default=None, metavar='I',
                     help="this process's index in [0, N)")
  return flags


def build_parser() -> argparse.ArgumentParser:
  common = [_distributed_flags()]
  parser = _Parser(
      prog='alignlab', epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
      description='Measure how well RLHF (reward model + PPO) and DPO optimize '
                  'J_β(π) = E[r] − β·KL(π‖π_ref).')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
  run = sub.add_parser('run', help='run (or resume) an experiment',
                       description='Run or resume an experiment; ends with the plot paths, the best '
                                   'point per method and the computed verdict (summary.md).', epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter, parents=common)
  run.add_argument('experiment', help='a name in experiments/ (see `alignlab list`) or a .py file')
  run.add_argument('--variant', default='quick',
                   help='tiny | quick | standard | paper, as the experiment defines (default: quick)')
  run.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config field, e.g. --set train.steps=100 (repeatable)')
  run.add_argument('--out', type=Path, default=None, help='output directory')
  run.add_argument('--quiet', action='store_true', help='no progress bars')
  ev = sub.add_parser('eval', help="show (or recompute) a run's evaluation",
                      description='Print the evaluation points of a run dir (or the best points '
                                  'of an experiment dir).', parents=common)
  ev.add_argument('run_dir', type=Path)
  ev.add_argument('--recompute', action='store_true',
                  help="re-evaluate the run's latest checkpoint with its experiment")
  plot = sub.add_parser('plot', help='plot a results table',
                        description='Plot results.csv (or an experiment dir).', parents=common)
  plot.add_argument('results', type=Path, help='results.csv or an experiment output dir')
  plot.add_argument('--out', type=Path, default=None, help='PNG file (default: beside RESULTS)')
  plot.add_argument('--method', action='append', default=[], help='only these methods (repeatable)')
  plot.add_argument('--kind', default='frontier', choices=('frontier', 'gap', 'win_rate'))
  sub.add_parser('list', help='list experiments and their variants', parents=common)
  convert = sub.add_parser(
      'convert', help='Hugging Face checkpoints in and out', parents=common,
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CONVERT_EPILOG,
      description='Convert between Hugging Face checkpoint directories (config.json + '
                  '*.safetensors + tokenizer.json; GPT-2, Llama, Qwen2, Mistral) and alignlab '
                  '(docs/pretrained.md).')
  way = convert.add_mutually_exclusive_group(required=True)
  way.add_argument('--from-hf', type=Path, metavar='HF_DIR',
                   help='import: write an alignlab model dir (params checkpoint, model.json, '
                        'tokenizer) at --out')
  way.add_argument('--to-hf', type=Path, metavar='RUN_DIR|MODEL_DIR',
                   help="export a run dir's trained policy (latest checkpoint), or a model dir "
                        'of --from-hf, as a checkpoint transformers loads')
  convert.add_argument('--out', type=Path, required=True, help='the directory to write (new)')
  convert.add_argument('--reward-model', action='store_true',
                       help="with --to-hf RUN_DIR (or the experiment's out dir): export the "
                            "experiment's reward model instead, as a one-label "
                            '*ForSequenceClassification')
  return parser


CONVERT_EPILOG = """examples:
  alignlab convert --from-hf gpt2 --out models/gpt2
  alignlab convert --to-hf runs/imdb_frontier-tiny/dpo-beta0.1-seed0 --out exported/dpo
  alignlab convert --to-hf runs/imdb_frontier-tiny --reward-model --out exported/rm
  alignlab convert --to-hf models/gpt2 --out exported/gpt2   (bitwise the weights imported)

A run dir is rebuilt as `alignlab eval --recompute` does: its experiment (experiment.json one
level up) gives the model config and tokenizer, read from the stage cache (a missing stage is
rebuilt), and the checkpoint the policy. Best-of-N runs hold no policy of their own; a
reference (sft) run exports pi_ref. Transformers loads the result with AutoModelForCausalLM
(or AutoModelForSequenceClassification for --reward-model; add alignlab_score_offset from its
config.json to its scores)."""


# ----------------------------------------------------------------------------- commands


def cmd_list() -> int:
  from alignlab import pipeline
  found = pipeline.list_experiments()
  if not found:
    print('no experiments found in ' + ', '.join(map(str, pipeline.experiments_dirs())))
  for name, variants in found.items():
    print(f'{name:24s} variants: {", ".join(variants)}')
  return 0


def _experiment_of(run_dir: Path):
  from alignlab import pipeline
  record_path = run_dir.parent / 'experiment.json'
  if not record_path.exists():
    raise UsageError(f'{run_dir.parent} has no experiment.json: cannot tell which experiment '
                     'made this run')
  record = json.loads(record_path.read_text())
  module = pipeline.load_experiment(record['experiment'])
  return module, pipeline.make_config(module, record['variant'], record.get('overrides', []))


def cmd_eval(args) -> int:
  from alignlab import pipeline, runs
  run_dir = args.run_dir
  if not run_dir.is_dir():
    raise UsageError(f'{run_dir} is not a directory')
  points = runs.read_jsonl(run_dir / 'eval.jsonl')
  if not points and not (run_dir / 'config.json').exists():
    if runs.run_dirs(run_dir):
      df = pipeline.load_results(run_dir)
      cfg = None
      if (run_dir / 'experiment.json').exists():  # its task's BEST_BY
        record = json.loads((run_dir / 'experiment.json').read_text())
        cfg = pipeline.make_config(pipeline.load_experiment(record['experiment']),
                                   record['variant'], record.get('overrides', []))
      print(pipeline.summary(cfg, df))
      return 0
    raise UsageError(f'{run_dir} holds no evaluation results (no eval.jsonl, no run dirs); '
                     'a run dir is OUT/<method>-<hparam><value>-seed<k>/')
  if args.recompute:
    _, cfg = _experiment_of(run_dir)
    row = pipeline.evaluate_run(cfg, run_dir)
    print(json.dumps(row, indent=1))
    return 0
  if not points:
    raise UsageError(f'{run_dir} has no evaluation results yet (eval.jsonl is missing or '
                     'empty); run its experiment first')
  import pandas as pd
  columns = [c for c in ('step', 'gold_reward', 'gold_reward_stderr', 'kl', 'kl_k1', 'kl_k3',
                         'objective', 'beta', 'gap', 'gap_fraction', 'proxy_reward')
             if any(c in p for p in points)]
  print(f'{run_dir.name}: {len(points)} evaluation points'
        + (' (complete)' if runs.is_complete(run_dir) else ' (not complete)'))
  print(pd.DataFrame(points)[columns].to_string(index=False, float_format=lambda v: f'{v:.4g}'))
  win = runs.read_jsonl(run_dir / 'win_rate.jsonl')
  if win:
    print('win rate vs π_ref: ' + ', '.join(f'T={w["temperature"]:g}: {w["win_rate"]:.3f}' for w in win))
  return 0


IMAGE_FORMATS = ('png', 'pdf', 'svg', 'jpg', 'jpeg', 'eps', 'ps', 'tif', 'tiff', 'webp')


def cmd_plot(args) -> int:
  import pandas as pd
  from alignlab import pipeline, plots
  base = args.results if args.results.is_dir() else args.results.parent
  if args.kind == 'win_rate':
    path = base / 'win_rates.csv'
    if not path.exists():
      raise UsageError(f'no win rates at {path}')
    df = pd.read_csv(path)
  else:
    df = pipeline.load_results(args.results)
  if not len(df):
    raise UsageError(f'{args.results} has no evaluation points to plot')
  methods = sorted(df['method'].dropna().unique())
  if args.method:
    df = df[df['method'].isin(args.method)]
    if not len(df):
      raise UsageError(f'no runs of {", ".join(args.method)} in {args.results}; methods there: '
                       f'{", ".join(methods)}')
  out = args.out or base / f'{args.kind}.png'
  if out.is_dir():  # a directory: the default name inside it
    out = out / f'{args.kind}.png'
  if out.suffix and out.suffix[1:].lower() not in IMAGE_FORMATS:
    raise UsageError(f'--out {out}: {out.suffix} is not an image format matplotlib writes; use '
                     'one of ' + ', '.join(f'.{f}' for f in IMAGE_FORMATS))
  if args.kind == 'frontier':
    frontier_csv = base / 'frontier.csv'
    frontier = pd.read_csv(frontier_csv) if frontier_csv.exists() else None
    path = plots.plot_frontier(df, out, frontier)
  elif args.kind == 'gap':
    if df['gap_fraction'].isna().all():
      raise UsageError(f'{args.results} has no gap (only the exact task computes it)')
    path = plots.plot_gap(df, out)
  else:
    path = plots.plot_win_rates(df, out)
  print(f'plot: {path}')
  return 0


def _model_to_export(path: Path, reward_model: bool):
  """(model config, graphdef, params, tokenizer or None, what it is) for `convert --to-hf`."""
  from alignlab import hf, methods, pipeline, runs
  if hf.is_model_dir(path):
    if reward_model:
      raise UsageError(f'--reward-model reads an experiment; {path} is a model dir of '
                       '`alignlab convert --from-hf` (export it without --reward-model)')
    cfg, graphdef, params, tok = hf.load_model_dir(path)
    return cfg, graphdef, params, tok, f'the model in {path}'
  run_dir = path
  if reward_model and (path / 'experiment.json').is_file():  # an experiment's out dir
    run_dir = next(iter(runs.run_dirs(path)), path / '<no run dir>')
  if not (run_dir / 'config.json').is_file():
    raise UsageError(f'{path} is neither a run dir of `alignlab run` (config.json, checkpoints/) '
                     'nor a model dir of `alignlab convert --from-hf` (model.json)')
  _, cfg = _experiment_of(run_dir)
  record = json.loads((run_dir / 'config.json').read_text())
  _, env = pipeline.setup(cfg, progress=False)
  if reward_model:
    rm = env['reward_model']()
    return env['model_cfg'], rm.graphdef, rm.params, env.get('tokenizer'), 'the reward model'
  spec = methods.METHODS[record['method']]
  if spec['train'] is methods.best_of_n:
    raise UsageError(f'{run_dir.name} is a Best-of-N run: it samples pi_ref and trains no policy '
                     '(export the reference run instead)')
  if spec['train'] is methods.reference:
    return env['model_cfg'], env['graphdef'], env['ref_params'], env.get('tokenizer'), 'pi_ref'
  step, params = methods.restore_policy(env, record['method'], run_dir, cfg)
  return (env['model_cfg'], env['graphdef'], params, env.get('tokenizer'),
          f'the policy of {run_dir.name} at step {step}')


def cmd_convert(args) -> int:
  from alignlab import hf
  source = args.from_hf or args.to_hf
  if not source.is_dir():
    raise UsageError(f'{source} is not a directory')
  if args.reward_model and args.from_hf:
    raise UsageError('--reward-model goes with --to-hf (an imported classifier is a model dir '
                     'like any other)')
  if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
    raise UsageError(f'--out {args.out} already exists and is not empty; choose another or '
                     'delete it')
  try:
    if args.from_hf:
      cfg, _, params, tok = hf.load_pretrained(source)
      if args.out.exists():
        args.out.rmdir()  # an empty dir: written whole, by a rename
      hf.save_model_dir(args.out, cfg, params, tok, source=str(source))
      kind = 'reward model' if 'w_head' in params else 'causal LM'
      print(f'{args.out}: alignlab {kind} ({hf.family_of(cfg)}: {cfg.n_layers} layers, d_model '
            f'{cfg.d_model}, vocab {cfg.vocab_size}, {cfg.param_dtype})'
            + (' and its tokenizer' if tok else ', no tokenizer'))
      return 0
    cfg, graphdef, params, tok, what = _model_to_export(source, args.reward_model)
    hf.save_pretrained(args.out, cfg, graphdef, params, tok)
  except hf.HFFormatError as e:
    raise UsageError(str(e)) from None
  config = json.loads((args.out / hf.CONFIG).read_text())
  print(f'{args.out}: {config["architectures"][0]} of {what}'
        + ('' if tok else ' (no tokenizer)'))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  from alignlab import distributed
  from alignlab.artifacts import ArtifactError, user_io_error
  from alignlab.config import ConfigError
  from alignlab.pipeline import ExperimentError, RunsFailed
  from alignlab.runs import RunDirError
  from alignlab.train.fit import TrainingDiverged
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
    if args.command is None:
      parser.print_help()
      return 2
    try:  # before any JAX computation
      distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
      raise UsageError(str(e)) from None
    if not distributed.is_writer():  # process 0 prints and draws for all of them
      if args.command in ('list', 'plot'):  # host work only: nothing to compute together
        return 0
      sys.stdout = open(os.devnull, 'w')  # noqa: SIM115 (for the rest of this process)
    if args.command == 'list':
      return cmd_list()
    if args.command == 'run':  # straight to the pipeline: it prints the verdict and plots
      from alignlab import pipeline
      cfg = pipeline.make_config(pipeline.load_experiment(args.experiment), args.variant,
                                 args.overrides)
      pipeline.run(cfg, args.out or pipeline.default_out_dir(args.experiment, args.variant),
                   source={'experiment': args.experiment, 'variant': args.variant,
                           'overrides': args.overrides}, progress=not args.quiet)
      return 0
    return {'eval': cmd_eval, 'plot': cmd_plot, 'convert': cmd_convert}[args.command](args)
  except (UsageError, ExperimentError, ConfigError, RunDirError, ArtifactError,
          TrainingDiverged) as e:
    message = ' '.join(str(e).split())  # one line, whatever the message held
    print(f'alignlab: error: {message}', file=sys.stderr)
    return 2
  except RunsFailed as e:  # the experiment ran; some of its runs diverged
    print(f'alignlab: error: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  except Exception as e:  # disk full, permissions, a file where a directory belongs: one line
    line = user_io_error(e)  # (also behind a library's own error); else the traceback stays
    if line is None:
      raise
    print(f'alignlab: error: {line}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('alignlab: interrupted; run the same command again to resume', file=sys.stderr)
    return 130
  finally:
    distributed.watch_exit()


if __name__ == '__main__':
  sys.exit(main())
