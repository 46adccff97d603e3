"""Stage artifacts: atomic, manifested, verified on load; user-fixable I/O errors as one line."""

import errno
import hashlib
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alignlab import artifacts
from alignlab.artifacts import (MANIFEST, ArtifactError, atomic_dir, ensure, require, user_io_error,
                                verify, write_manifest)
from alignlab.checkpoint import restore_params, save_params
from alignlab.data import cache
from alignlab.runs import lock_dir


def _entry(root):
  (root / 'sub').mkdir(parents=True)
  (root / 'params.npz').write_bytes(bytes(range(256)) * 40)
  (root / 'sub' / 'key.json').write_text('{"beta": 0.1}')
  return root


def test_manifest_records_size_and_sha256_of_every_file(tmp_path):
  entry = _entry(tmp_path / 'entry')
  entries = write_manifest(entry)
  assert set(entries) == {'params.npz', 'sub/key.json'}
  data = (entry / 'params.npz').read_bytes()
  assert entries['params.npz'] == {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
  assert json.loads((entry / MANIFEST).read_text()) == entries
  assert verify(entry) == []


def _delete(path):
  path.unlink()


def _truncate(path):
  path.write_bytes(path.read_bytes()[:-100])


def _alter(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 1
  path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage, word', [(_delete, 'missing'), (_truncate, 'truncated'),
                                          (_alter, 'altered')])
def test_damaged_file_is_detected_and_named(tmp_path, damage, word):
  entry = _entry(tmp_path / 'entry')
  write_manifest(entry)
  damage(entry / 'params.npz')
  problems = verify(entry)
  assert len(problems) == 1
  assert problems[0].startswith(f'{entry / "params.npz"}: {word}')


def test_size_only_check_skips_checksums(tmp_path):
  entry = _entry(tmp_path / 'entry')
  write_manifest(entry)
  _alter(entry / 'params.npz')
  assert verify(entry, checksums=False) == []
  _truncate(entry / 'params.npz')
  assert verify(entry, checksums=False)


def test_missing_or_torn_manifest_and_missing_dir(tmp_path):
  entry = _entry(tmp_path / 'entry')
  assert verify(entry) == [f'{entry / MANIFEST}: missing (the entry was not finished, or '
                           'predates manifests)']
  (entry / MANIFEST).write_text('{"params.npz": {"si')
  assert verify(entry)[0].startswith(f'{entry / MANIFEST}: unreadable')
  assert verify(tmp_path / 'nothing') == [f'{tmp_path / "nothing"}: missing']


def test_atomic_dir_writes_a_verified_entry(tmp_path):
  target = tmp_path / 'kind' / 'abc'
  with atomic_dir(target) as tmp:
    assert tmp.parent == target.parent and not target.exists()
    _entry(tmp)
  assert verify(target) == []
  assert sorted(p.name for p in target.parent.iterdir()) == ['abc']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_leaves_nothing_on_failure(tmp_path, error):
  target = tmp_path / 'kind' / 'abc'
  with pytest.raises(error):
    with atomic_dir(target) as tmp:
      _entry(tmp)
      raise error
  assert list(target.parent.iterdir()) == []


def test_atomic_dir_leaves_nothing_when_the_manifest_cannot_be_written(tmp_path, monkeypatch):
  def full(directory):
    raise OSError(errno.ENOSPC, 'No space left on device', str(directory / MANIFEST))
  monkeypatch.setattr(artifacts, 'write_manifest', full)
  target = tmp_path / 'kind' / 'abc'
  with pytest.raises(OSError):
    with atomic_dir(target) as tmp:
      _entry(tmp)
  assert list(target.parent.iterdir()) == []


def test_cache_atomic_dir_is_the_artifacts_one():
  assert cache.atomic_dir is artifacts.atomic_dir


def test_ensure_builds_once_and_rebuilds_a_damaged_entry(tmp_path, capsys):
  target = tmp_path / 'kind' / 'abc'
  builds = []

  def build(tmp):
    builds.append(tmp)
    _entry(tmp)

  assert ensure(target, build) == target
  assert ensure(target, build) == target
  assert len(builds) == 1 and capsys.readouterr().err == ''
  _truncate(target / 'params.npz')
  ensure(target, build)
  assert len(builds) == 2 and verify(target) == []
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert err.startswith(f'alignlab: rebuilding {target}: {target / "params.npz"}: truncated')
  assert sorted(p.name for p in target.parent.iterdir()) == ['abc']


def test_require_names_the_damage_in_one_line(tmp_path):
  entry = _entry(tmp_path / 'entry')
  write_manifest(entry)
  assert require(entry) == entry
  _alter(entry / 'sub' / 'key.json')
  with pytest.raises(ArtifactError) as info:
    require(entry)
  message = str(info.value)
  assert '\n' not in message
  assert message.startswith(f'{entry / "sub" / "key.json"}: altered (sha256 differs')


def test_restoring_a_checkpoint_artifact_leaves_it_intact(tmp_path):
  # Orbax must not touch a stored checkpoint on read, or every load would look "altered".
  params = {'w': jnp.arange(12.0).reshape(3, 4), 'b': jnp.ones(4)}
  target = tmp_path / 'sft'
  with atomic_dir(target) as tmp:
    save_params(tmp / 'params', params, {'model': 'tiny'})
  restored = restore_params(target / 'params', params, {'model': 'tiny'})
  assert np.array_equal(np.asarray(restored['w']), np.asarray(params['w']))
  assert verify(target) == []


# ----------------------------------------------------------------------------- user I/O errors

def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch):
  target = tmp_path / 'kind' / 'abc'

  def full(directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / 'params.npz'))
  monkeypatch.setattr(artifacts, 'write_manifest', full)
  with pytest.raises(OSError) as info:
    with atomic_dir(target):
      pass
  line = user_io_error(info.value)
  assert '\n' not in line
  assert 'params.npz: no space left on the device; free some space' in line


def test_wrapped_disk_full_is_found_behind_library_errors(tmp_path):
  # Orbax / tensorstore report a full disk as their own error, chained or only as text.
  try:
    try:
      raise OSError(errno.ENOSPC, 'No space left on device', '/ckpt/3/state')
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as e:
    chained = e
  assert user_io_error(chained).startswith('/ckpt/3/state: no space left')
  tensorstore = ValueError(
      'OUT_OF_RANGE: Error writing "w/0.0.0" in OCDBT database at local file "/ckpt/3/state/": '
      'Failed writing: "/ckpt/3/state/d/836e": Failed to write 14458880 bytes to file 11: No '
      "space left on device [os_error_code='28']")
  assert user_io_error(tensorstore).startswith('/ckpt/3/state/d/836e: no space left')
  text_only = ValueError('UNKNOWN: Error writing "d/abc": [Errno 28] No space left on device')
  assert user_io_error(text_only, tmp_path) == (
      f'{tmp_path}: no space left on the device; free some space (or point --out / '
      '$ALIGNLAB_CACHE at another disk) and run the same command again to resume')


def test_real_path_mistakes_are_one_line(tmp_path):
  a_file = tmp_path / 'results.csv'
  a_file.write_text('x')
  with pytest.raises(OSError) as info:  # --out naming an existing file
    with lock_dir(a_file):
      pass
  assert user_io_error(info.value) == (f'{a_file}: is a file where a directory is expected; '
                                       'remove or rename it, or choose another path')
  with pytest.raises(OSError) as info:  # a path through a file
    (a_file / 'run').mkdir(parents=True)
  assert user_io_error(info.value).startswith(
      f'{a_file / "run"}: a part of this path is a file, not a directory')
  with pytest.raises(OSError) as info:
    (tmp_path / 'none.json').read_text()
  assert user_io_error(info.value) == (f'{tmp_path / "none.json"}: no such file or directory; '
                                       'check the path')


def test_permission_denied_is_one_line():
  line = user_io_error(PermissionError(errno.EACCES, 'Permission denied', '/data/out'))
  assert line == ('/data/out: permission denied; fix its permissions or choose a location you '
                  'can write')


def test_internal_errors_are_not_user_io_errors():
  assert user_io_error(ValueError('shapes (3,) and (4,) do not match')) is None
  # A missing file named only in a library's text may be our own bug: it keeps its traceback.
  assert user_io_error(ValueError('NOT_FOUND: "/ckpt/3/x" [os_error_code=\'2\']')) is None
  assert user_io_error(OSError(errno.EBADF, 'Bad file descriptor')) is None
