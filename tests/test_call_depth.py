"""From `alignlab run` to a loss is a short walk: the frames of alignlab's own code between
`cli.main` and `losses.preference.dpo`, recorded inside the loss while the CLI runs the exact
task's DPO (JAX's tracing frames between them are not alignlab's and are not counted)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import alignlab
from alignlab import cli
from alignlab.losses import preference as losses

PACKAGE = Path(alignlab.__file__).resolve().parent
MAX_FRAMES = 8


class _Reached(Exception):
  pass


def test_cli_to_the_dpo_loss_is_at_most_eight_frames(monkeypatch, tmp_path):
  seen: list[list[str]] = []
  real = losses.PREFERENCE_LOSSES['dpo']

  def recording_dpo(**kwargs):
    frames = [f for f in inspect.stack()[1:] if Path(f.filename).resolve().is_relative_to(PACKAGE)]
    names = [f'{Path(f.filename).relative_to(PACKAGE)}:{f.function}' for f in reversed(frames)]
    seen.append(names)
    raise _Reached

  monkeypatch.setitem(losses.PREFERENCE_LOSSES, 'dpo', recording_dpo)
  with pytest.raises(_Reached):
    cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--quiet', '--out', str(tmp_path),
              '--set', "methods=['dpo']", '--set', 'sweeps.dpo=[1.0]',
              '--set', 'task.sft.steps=2'])
  assert real is not recording_dpo
  names = seen[0]
  assert names[0] == 'cli.py:main', names
  between = names[1:]
  assert len(between) <= MAX_FRAMES, '\n'.join(between)
