"""Stage artifacts that are either complete and intact or absent, and one-line I/O errors.

An artifact is a directory (a tokenizer, a preference dataset, an SFT checkpoint, ...) that a
later run loads instead of rebuilding. "The directory exists" is not enough to trust it: a
file can be deleted, truncated by a full disk, or altered by hand, and a stage that loads it
would then crash far away or, worse, silently shift results. So every artifact carries a
manifest of its files' sizes and checksums, written last, and is checked against it on load.

    with atomic_dir(target) as tmp:      # build into tmp; on success: manifest, fsync, rename
      write_files(tmp)
    problems = verify(target)            # [] when intact, else one line per problem
    path = ensure(target, build)         # verify, or (re)build with a one-line note
    path = require(target)               # verify, or ArtifactError naming the damage

    write_text_atomic(path, text)        # a reader sees the old file or the new one
    line = user_io_error(exc)            # 'PATH: no space left on the device; ...' or None

Layout: `target/manifest.json` = {relative path: {'size': bytes, 'sha256': hex}} for every
other file under `target`. Files added after the manifest (logs, stray editor files) are not
problems: only what the manifest names is what a loader may rely on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

MANIFEST = 'manifest.json'
TMP_PREFIX = '.tmp-'
TRASH_PREFIX = '.trash-'
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
  """Every regular file under `directory` but the manifest itself, in a stable order."""
  return sorted(p for p in directory.rglob('*') if p.is_file() and not p.is_symlink()
                and p.relative_to(directory).as_posix() != MANIFEST)


def manifest_of(directory: str | os.PathLike[str]) -> dict[str, dict]:
  """{relative path: {'size', 'sha256'}} of the files under `directory` as they are now."""
  directory = Path(directory)
  return {p.relative_to(directory).as_posix(): {'size': p.stat().st_size, 'sha256': file_sha256(p)}
          for p in _files(directory)}


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
  """Writes `path` through a temp file and a rename, so a reader sees the old or the new file,
  never a torn one."""
  path = Path(path)
  tmp = path.with_name(f'{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}')
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_manifest(directory: str | os.PathLike[str]) -> dict[str, dict]:
  """Records the size and sha256 of every file under `directory` in `directory/manifest.json`
  and returns that mapping."""
  entries = manifest_of(directory)
  write_text_atomic(Path(directory) / MANIFEST, json.dumps(entries, indent=1, sort_keys=True))
  return entries


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, dict]:
  """The mapping `write_manifest` wrote; OSError if absent, ValueError if unreadable."""
  entries = json.loads((Path(directory) / MANIFEST).read_text())
  if not isinstance(entries, dict) or not all(
      isinstance(e, dict) and {'size', 'sha256'} <= set(e) for e in entries.values()):
    raise ValueError('not a mapping of path → {size, sha256}')
  return entries


def _problem(path: Path, expected: dict, checksums: bool) -> str | None:
  if not path.is_file():
    return f'{path}: missing'
  size = path.stat().st_size
  if size < expected['size']:
    return f'{path}: truncated ({size} of {expected["size"]} bytes)'
  if size > expected['size']:
    return f'{path}: altered ({size} bytes, {expected["size"]} expected)'
  if checksums and file_sha256(path) != expected['sha256']:
    return f'{path}: altered (sha256 differs from the manifest)'
  return None


def verify(directory: str | os.PathLike[str], *, checksums: bool = True) -> list[str]:
  """One line per problem of the artifact at `directory` (missing directory or manifest,
  missing, truncated or altered file); [] when it is intact. `checksums=False` checks
  presence and sizes only, for a quick look at a large artifact."""
  directory = Path(directory)
  if not directory.is_dir():
    return [f'{directory}: missing']
  try:
    entries = read_manifest(directory)
  except FileNotFoundError:
    return [f'{directory / MANIFEST}: missing (the entry was not finished, or predates manifests)']
  except (OSError, ValueError) as e:
    return [f'{directory / MANIFEST}: unreadable ({e})']
  problems = (_problem(directory / rel, expected, checksums) for rel, expected in entries.items())
  return [p for p in problems if p is not None]


def _fsync_tree(directory: Path) -> None:
  """Flushes every file and directory under `directory` to the disk: a rename is only a
  promise of completeness if the bytes it points at survive a power cut."""
  for path in [*_files(directory), directory / MANIFEST]:
    with open(path, 'rb') as f:
      os.fsync(f.fileno())
  for path in [directory, *(p for p in directory.rglob('*') if p.is_dir())]:
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, manifest: bool = True) -> Iterator[Path]:
  """Yields an empty temp dir beside `target`; if the block succeeds, writes its manifest,
  fsyncs it and renames it to `target`.

  On any exception (KeyboardInterrupt included) the temp dir is removed and the exception
  propagates, so `target` either does not exist or is complete. If another writer finished
  `target` first, its entry is kept and ours is discarded (entries under one key are built
  from the same inputs).
  """
  target = Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  # A plain mkdir (not mkdtemp) so the entry gets the usual umask permissions.
  tmp = target.parent / f'{TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}'
  tmp.mkdir()
  try:
    yield tmp
    if manifest:
      write_manifest(tmp)
      _fsync_tree(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  try:
    os.rename(tmp, target)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not target.is_dir():
      raise
    return
  _fsync_dir(target.parent)


def discard(target: str | os.PathLike[str]) -> None:
  """Removes an artifact so that no half-removed copy is ever seen under its name: renamed
  aside in one step, then deleted."""
  target = Path(target)
  trash = target.parent / f'{TRASH_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}'
  try:
    os.rename(target, trash)
  except FileNotFoundError:
    return
  shutil.rmtree(trash, ignore_errors=True)


class ArtifactError(ValueError):
  """An artifact that is missing or damaged and cannot be rebuilt here."""


def _summary(problems: list[str]) -> str:
  return problems[0] + (f' (+{len(problems) - 1} more)' if len(problems) > 1 else '')


def require(target: str | os.PathLike[str], *, checksums: bool = True) -> Path:
  """`target` if it is intact; else an ArtifactError, one line naming the damage, for an
  artifact no stage here can rebuild (one the user supplied)."""
  target = Path(target)
  problems = verify(target, checksums=checksums)
  if problems:
    raise ArtifactError(f'{_summary(problems)}; restore {target} from its source, or delete it '
                        'to have it rebuilt')
  return target


def ensure(target: str | os.PathLike[str], build: Callable[[Path], None], *,
           checksums: bool = True) -> Path:
  """`target` if it is intact; else builds it with `build(tmp_dir)` inside `atomic_dir`. An
  entry that exists but fails `verify` is discarded and rebuilt with a one-line note on
  stderr naming what was wrong."""
  target = Path(target)
  if target.exists():
    problems = verify(target, checksums=checksums)
    if not problems:
      return target
    print(f'alignlab: rebuilding {target}: {_summary(problems)}', file=sys.stderr)
    discard(target)
  with atomic_dir(target) as tmp:
    build(tmp)
  return target


# ----------------------------------------------------------------------------- user I/O errors

# What the user can do about each errno; the path and the problem come first in the line.
_ADVICE = {
    errno.ENOSPC: ('no space left on the device', 'free some space (or point --out / '
                   '$ALIGNLAB_CACHE at another disk) and run the same command again to resume'),
    errno.EDQUOT: ('disk quota exceeded', 'free some space or raise the quota, then run the same '
                   'command again to resume'),
    errno.EFBIG: ('file too large for this file system or its size limit (ulimit -f)',
                  'raise the limit or choose another disk, then run the same command again'),
    errno.EACCES: ('permission denied', 'fix its permissions or choose a location you can write'),
    errno.EPERM: ('operation not permitted', 'fix its permissions or choose a location you can '
                  'write'),
    errno.EROFS: ('read-only file system', 'choose a location on a writable disk'),
    errno.ENOENT: ('no such file or directory', 'check the path'),
    errno.ENOTDIR: ('a part of this path is a file, not a directory', 'remove or rename that file, '
                    'or choose another path'),
    errno.EEXIST: ('already exists', 'remove or rename it, or choose another path'),
    errno.EISDIR: ('is a directory where a file is expected', 'choose a file path'),
}
# Errors libraries report only as text (tensorstore: `... No space left on device
# [os_error_code='28']`); only codes that are about the disk, never about our own logic.
_TEXT_CODES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS)
_CODE_IN_TEXT = re.compile(r"os_error_code='(\d+)'|\[Errno (\d+)\]")
_PATH_IN_TEXT = re.compile(r'"(/[^"]+)"|\'(/[^\']+)\'')
_TEXT_ERRNOS = {'No space left on device': errno.ENOSPC, 'Disk quota exceeded': errno.EDQUOT}


def _errno_in_text(text: str) -> tuple[int, str | None] | None:
  """(errno, the last absolute path quoted) of an I/O failure described in an error message;
  the last path is the most specific (tensorstore names the database, then the file)."""
  codes = [int(a or b) for a, b in _CODE_IN_TEXT.findall(text)]
  codes += [code for phrase, code in _TEXT_ERRNOS.items() if phrase in text]
  code = next((c for c in codes if c in _TEXT_CODES), None)
  if code is None:
    return None
  paths = [a or b for a, b in _PATH_IN_TEXT.findall(text)]
  return code, paths[-1] if paths else None


def _io_errno(exc: BaseException) -> tuple[int, str | None] | None:
  """(errno, file name) of the user-fixable I/O failure behind `exc`, following `raise ...
  from` and implicit chaining: libraries (orbax, tensorstore) wrap a full disk in their own
  errors, sometimes only as text."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _ADVICE:
      return exc.errno, exc.filename
    found = _errno_in_text(str(exc))
    if found is not None:
      return found
    exc = exc.__cause__ or exc.__context__
  return None


def user_io_error(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str | None:
  """One line naming the file and what to do, if `exc` is an I/O failure the user can fix
  (disk full, no permission, missing path, a file where a directory belongs); else None, and
  the caller keeps the traceback of what is then an internal error. `path` names the file
  when the error itself does not."""
  found = _io_errno(exc)
  if found is None:
    return None
  code, filename = found
  where = filename if filename is not None else path
  problem, advice = _ADVICE[code]
  if code == errno.EEXIST and where is not None and Path(where).is_file():
    problem = 'is a file where a directory is expected'
  return f'{where if where is not None else "(unknown path)"}: {problem}; {advice}'
