"""Sentences to parse: CoNLL-U treebanks (through `conllu`) or plain text, as words with their gold trees.

A sentence's words are CoNLL-U's syntactic words (integer ids; multi-word tokens such as "don't" = "do" + "n't"
and empty nodes skipped, as the ids of the tree are), numbered 1..n; node 0 is ROOT. `max_words` counts every
syntactic word, punctuation included.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Optional

import conllu
import numpy as np

from plmjax.data.finetune import readers

PUNCT = 'PUNCT'


class TreebankError(ValueError):
    """A treebank or text file that cannot be read: the message names the file, the line and the fix."""


@dataclasses.dataclass(frozen=True)
class Sentence:
    sent_id: str
    words: tuple[str, ...]
    heads: Optional[tuple[int, ...]] = None  # gold head of words 1..n (0 = ROOT); None for plain text
    upos: Optional[tuple[str, ...]] = None
    deprels: Optional[tuple[str, ...]] = None

    def __len__(self) -> int:
        return len(self.words)

    @property
    def gold_heads(self) -> np.ndarray:
        """[n + 1] int: -1 for ROOT, then the gold head of each word."""
        if self.heads is None:
            raise ValueError(f'Sentence {self.sent_id!r} comes from plain text: it has no gold tree to score.')
        return np.asarray((-1, *self.heads), np.int64)

    @property
    def gold_root(self) -> int:
        """The first word whose gold head is ROOT (the released code's `find_root`)."""
        return 1 + list(self.heads).index(0)

    @property
    def scored(self) -> np.ndarray:
        """[n + 1] bool: the dependents that count in UAS (every word whose gold UPOS is not PUNCT)."""
        upos = self.upos or ('X',) * len(self.words)
        return np.asarray((False, *(tag != PUNCT for tag in upos)))


def read_conllu(path: str, max_words: Optional[int] = None, limit: Optional[int] = None) -> list[Sentence]:
    """The sentences of a CoNLL-U file with at most `max_words` syntactic words (the first `limit` of them)."""
    text = _read(path)
    sentences = []
    for number, token_list in enumerate(_parse(text, path)):
        words = [token for token in token_list if isinstance(token['id'], int)]
        if max_words is not None and len(words) > max_words:
            continue
        sent_id = token_list.metadata.get('sent_id', str(number + 1))
        ids = [token['id'] for token in words]
        if ids != list(range(1, len(ids) + 1)):
            raise TreebankError(f'{path}: sentence {sent_id} numbers its words {ids[:8]}...; CoNLL-U word ids run '
                                f'1, 2, ... (fix the file).')
        heads = [token['head'] for token in words]
        if any(not isinstance(h, int) or not 0 <= h <= len(words) for h in heads):
            raise TreebankError(f'{path}: sentence {sent_id} has a head outside 0..{len(words)}: {heads} (every '
                                f'word needs an integer HEAD column).')
        sentences.append(Sentence(sent_id, tuple(t['form'] for t in words), tuple(heads),
                                  tuple(t['upos'] or '_' for t in words), tuple(t['deprel'] or '_' for t in words)))
        if limit is not None and len(sentences) >= limit:
            break
    if not sentences:
        raise TreebankError(f'{path}: no sentence{f" of at most {max_words} words" if max_words else ""} in it.')
    return sentences


def read_text(path: str, max_words: Optional[int] = None, limit: Optional[int] = None) -> list[Sentence]:
    """One sentence a line, words separated by whitespace (tokenize the text first as the model's treebank
    would); blank lines skipped."""
    sentences = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        words = line.split()
        if words and (max_words is None or len(words) <= max_words):
            sentences.append(Sentence(f'line-{number}', tuple(words)))
            if limit is not None and len(sentences) >= limit:
                break
    if not sentences:
        raise TreebankError(f'{path}: no sentence{f" of at most {max_words} words" if max_words else ""} in it.')
    return sentences


def write_conllu(path: str, sentences: Sequence[Sentence], heads: Sequence[np.ndarray]) -> None:
    """The sentences with predicted heads (HEAD column; DEPREL 'dep', gold UPOS kept), one CoNLL-U file."""
    with open(path, 'w', encoding='utf-8') as f:
        for sentence, predicted in zip(sentences, heads):
            f.write(f'# sent_id = {sentence.sent_id}\n# text = {" ".join(sentence.words)}\n')
            upos = sentence.upos or ('_',) * len(sentence)
            for i, (word, tag) in enumerate(zip(sentence.words, upos), 1):
                f.write(f'{i}\t{word}\t_\t{tag}\t_\t_\t{int(predicted[i])}\tdep\t_\t_\n')
            f.write('\n')


def _read(path: str) -> str:
    if not os.path.isfile(path):
        raise TreebankError(f'{path}: no such file (pass an existing CoNLL-U file to --conllu or text to --text).')
    try:
        return readers.read_text(path)
    except readers.DataFormatError as error:
        raise TreebankError(str(error)) from None


def _parse(text: str, path: str) -> Iterator[conllu.TokenList]:
    """conllu's parser, with a malformed line reported by file and line number."""
    line_number = 1
    for block in text.split('\n\n'):
        if block.strip():
            for offset, line in enumerate(block.split('\n')):
                if line and not line.startswith('#') and len(line.split('\t')) != 10:
                    raise TreebankError(f'{path}:{line_number + offset}: a CoNLL-U word line has 10 tab-separated '
                                        f'columns, this one has {len(line.split(chr(9)))}: {line[:60]!r}')
            try:
                yield from conllu.parse(block + '\n\n')
            except conllu.exceptions.ParseException as error:
                raise TreebankError(f'{path}:{line_number}: malformed CoNLL-U sentence: {error}') from None
        line_number += block.count('\n') + 2
