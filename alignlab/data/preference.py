"""Preference pairs on disk (TFDS, array_record) and the batch loader for preference training.

On disk, a dataset directory is one prepared TFDS dataset version (`dataset_info.json`,
`features.json`, `*.array_record-*` shards, plus our `alignlab_meta.json`), readable without
TensorFlow through `read_pairs` or `tfds.builder_from_directory(dir).as_data_source(split)`.
Examples keep their written order (the loader shuffles); fields as in docs/architecture.md:
`prompt`, `chosen`, `rejected` (int32 ids), `chosen_score`, `rejected_score` (float32).

`PreferenceLoader` turns a source into batches in the canonical layout: prompts left-padded
to a bucket P, both responses right-padded to one bucket R, so chosen and rejected have the
same `(B, P + R)` shape and can be concatenated into one forward pass.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from alignlab.data.cache import atomic_dir

FIELDS = ('prompt', 'chosen', 'rejected', 'chosen_score', 'rejected_score')
SEQUENCE_FIELDS = ('prompt', 'chosen', 'rejected')
META_FILE = 'alignlab_meta.json'
_BUILD_DIR = '_tfds_build'


class PreferencePairsBuilder(tfds.core.GeneratorBasedBuilder):
  """Writes the examples given to the constructor; `{split: iterable of example dicts}`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'prompt/chosen/rejected int32 ids, chosen/rejected float32 scores.'}
  # TFDS looks for a download-checksums file beside a builder's code; finding that path for a
  # package module imports the `importlib_resources` backport, not installed here. There is
  # nothing to download, so there is no code path to look in.
  code_path = None

  def __init__(self, *, splits: Mapping[str, Iterable[Mapping[str, Any]]] | None = None, **kwargs: Any):
    self._splits = dict(splits or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    ids = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)
    features = tfds.features.FeaturesDict({
        'prompt': ids(), 'chosen': ids(), 'rejected': ids(),
        'chosen_score': tfds.features.Scalar(dtype=np.float32),
        'rejected_score': tfds.features.Scalar(dtype=np.float32)})
    # disable_shuffling keeps the written order, so a dataset reads back as it was built.
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    return {name: self._generate_examples(examples) for name, examples in self._splits.items()}

  def _generate_examples(self, examples: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, example in enumerate(examples):
      yield i, _to_features(example)


def _to_features(example: Mapping[str, Any]) -> dict[str, Any]:
  missing = [f for f in FIELDS if f not in example]
  if missing:
    raise ValueError(f'preference example is missing {missing}')
  out: dict[str, Any] = {f: np.asarray(example[f], np.int32).reshape(-1) for f in SEQUENCE_FIELDS}
  out['chosen_score'] = np.float32(example['chosen_score'])
  out['rejected_score'] = np.float32(example['rejected_score'])
  return out


def write_pairs(examples: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Mapping[str, Any]]],
                directory: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None) -> Path:
  """Writes preference examples as a TFDS array_record dataset at `directory`, atomically.

  `examples` is an iterable of example dicts (split 'train') or `{split: iterable}`; it is
  consumed lazily, so it may be a generator that samples as it goes. `metadata` (JSON-ready)
  is stored beside the data and read back by `read_metadata`. `directory` must not exist.
  """
  directory = Path(directory)
  if directory.exists():
    raise FileExistsError(f'{directory} already exists')
  splits = dict(examples) if isinstance(examples, Mapping) else {'train': examples}
  with atomic_dir(directory) as tmp:
    builder = PreferencePairsBuilder(splits=splits, data_dir=str(tmp / _BUILD_DIR), file_format='array_record')
    builder.download_and_prepare()
    # Lift the prepared version dir (<build>/<name>/<version>/) to the top of the entry.
    for item in Path(builder.data_dir).iterdir():
      shutil.move(str(item), str(tmp / item.name))
    shutil.rmtree(tmp / _BUILD_DIR)
    counts = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
    meta = {'num_examples': counts, **dict(metadata or {})}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
  return directory


def read_pairs(directory: str | os.PathLike[str], split: str = 'train') -> Sequence[dict[str, Any]]:
  """A random-access source (`len`, `src[i]`) of the examples in `directory`."""
  return tfds.builder_from_directory(str(directory)).as_data_source(split=split)


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
  return json.loads((Path(directory) / META_FILE).read_text())


def _bucket(length: int, buckets: Sequence[int], what: str) -> int:
  for size in buckets:
    if length <= size:
      return size
  raise ValueError(f'a {what} of {length} tokens exceeds the largest bucket {buckets[-1]}; '
                   f'truncate the data or add a larger bucket')


def collate(examples: Sequence[Mapping[str, Any]], *, prompt_buckets: Sequence[int],
            response_buckets: Sequence[int], pad_id: int = 0) -> dict[str, np.ndarray]:
  """One batch in the canonical layout (see the module docstring)."""
  prompts = [np.asarray(e['prompt'], np.int32) for e in examples]
  responses = {side: [np.asarray(e[side], np.int32) for e in examples] for side in ('chosen', 'rejected')}
  p = _bucket(max(len(x) for x in prompts), prompt_buckets, 'prompt')
  r = _bucket(max(len(x) for side in responses.values() for x in side), response_buckets, 'response')
  batch: dict[str, np.ndarray] = {}
  for side, resps in responses.items():
    tokens_BxT = np.full((len(examples), p + r), pad_id, np.int32)
    attention_BxT = np.zeros((len(examples), p + r), np.int32)
    response_BxT = np.zeros((len(examples), p + r), np.int32)
    for row, (prompt, response) in enumerate(zip(prompts, resps)):
      tokens_BxT[row, p - len(prompt):p] = prompt
      tokens_BxT[row, p:p + len(response)] = response
      attention_BxT[row, p - len(prompt):p + len(response)] = 1
      response_BxT[row, p:p + len(response)] = 1
    batch[f'{side}_tokens'] = tokens_BxT
    batch[f'{side}_attention_mask'] = attention_BxT
    batch[f'{side}_response_mask'] = response_BxT
    batch[f'{side}_score'] = np.asarray([e[f'{side}_score'] for e in examples], np.float32)
  return batch
