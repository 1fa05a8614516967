"""seqio data sources of raw text: every example is {'text': tf.string}, with 'train' and 'validation' splits.

- `pydoc_source()`: the embedded corpus (Python's help topics and stdlib docstrings), one document each;
- `wikitext2_source()`: WikiText-2 lines from `$PLMJAX_SHARED_DATA/wikitext-2` (valid.txt is 'train');
- `text_files_source(train_files, validation_files, text_key)`: plain-text or JSON-lines files.
"""
import functools
from typing import Optional, Sequence

import seqio
import tensorflow as tf

from plmjax.data import corpora


def _texts_dataset(texts: Sequence[str], shuffle: bool, seed: Optional[int]) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices({"text": tf.constant(list(texts), tf.string)})
    if shuffle:  # a full shuffle of the documents, a new order every epoch (deterministic for a seed)
        dataset = dataset.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    return dataset


class InMemoryTextSource(seqio.FunctionDataSource):
    """A FunctionDataSource over texts held in memory, fully shuffled per epoch with the seed.

    seqio warns that uncached function sources shuffle poorly on restarts; that concerns streaming
    functions, not a seeded shuffle of the whole corpus, so the warning is skipped. Hosts shard examples.
    """

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, **unused_kwargs) -> tf.data.Dataset:
        dataset = self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)
        if shard_info and shard_info.num_shards > 1:
            dataset = dataset.shard(shard_info.num_shards, shard_info.index)
        return dataset


def _pydoc_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    return _texts_dataset(corpora.pydoc_documents(split), shuffle_files, seed)


def pydoc_source() -> seqio.DataSource:
    """The embedded corpus: ~640 train and ~70 held-out validation documents (help topics, modules)."""
    return InMemoryTextSource(_pydoc_dataset, splits=corpora.SPLITS)


def _text_lines(path: tf.Tensor) -> tf.data.Dataset:
    """Non-empty lines of a text file as {'text': stripped line}."""
    lines = tf.data.TextLineDataset(path).map(tf.strings.strip)
    return lines.filter(lambda line: tf.strings.length(line) > 0).map(lambda line: {"text": line})


def _wikitext_lines(path: tf.Tensor) -> tf.data.Dataset:
    """WikiText paragraphs: `_text_lines` without the ` = Title = ` heading lines."""
    return _text_lines(path).filter(lambda ex: ~tf.strings.regex_full_match(ex["text"], r"=.*="))


class WikiText2Source(seqio.FileDataSource):
    """WikiText-2 (raw tokens with <unk>): valid.txt as 'train', test.txt as 'validation'.

    The folder is looked up when data is read, so the task is always registered and a missing folder gives
    one clear error naming PLMJAX_SHARED_DATA.
    """

    def __init__(self):
        super().__init__(read_file_fn=_wikitext_lines, split_to_filepattern=dict(corpora.WIKITEXT2_FILES))

    def list_shards(self, split: str) -> Sequence[str]:
        return [str(corpora.wikitext2_dir() / corpora.WIKITEXT2_FILES[split])]


def wikitext2_source() -> seqio.DataSource:
    return WikiText2Source()


def _json_lines_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None, *, files, text_key):
    return _texts_dataset(corpora.read_json_lines_texts(files[split], text_key), shuffle_files, seed)


def text_files_source(train_files: Sequence[str], validation_files: Sequence[str],
                      text_key: Optional[str] = None, binding: str = "text_files_task") -> seqio.DataSource:
    """Plain-text files (one document or paragraph per line) or, with `text_key`, JSON-lines files.

    Missing files raise FileNotFoundError naming the path and the gin binding (`<binding>.train_files`).
    JSON lines are parsed when data is first read; a malformed line names its file and line number.
    """
    files = {"train": corpora.check_files_exist(train_files, f"{binding}.train_files"),
             "validation": corpora.check_files_exist(validation_files, f"{binding}.validation_files")}
    if text_key:
        return InMemoryTextSource(
            functools.partial(_json_lines_dataset, files=files, text_key=text_key), splits=corpora.SPLITS)
    return seqio.FileDataSource(read_file_fn=_text_lines,
                                split_to_filepattern={k: corpora.check_utf8_text(v) for k, v in files.items()})
