"""Words to word pieces for Perturbed Masking: each word tokenized on its own, so the pieces of a word are known
without re-aligning a tokenized sentence (BERT's basic tokenizer splits at whitespace first, so WordPiece gives
the same pieces either way; a byte-level BPE word after the first is encoded with its leading space)."""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Optional

import seqio
import tokenizers

from plmjax.data import bpe, vocabularies


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    """Encodes words one at a time; carries the ids Perturbed Masking needs."""
    encode_word: object  # (word: str, first: bool) -> list[int]
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    unk_id: Optional[int] = None

    def pieces(self, words: Sequence[str]) -> list[list[int]]:
        """The pieces of each word; a word that encodes to nothing (a control character) becomes [UNK]."""
        out = []
        for index, word in enumerate(words):
            ids = list(self.encode_word(word, index == 0))
            if not ids and self.unk_id is not None:
                ids = [self.unk_id]
            out.append(ids)
        return out


def from_vocabulary(vocab: seqio.Vocabulary) -> WordTokenizer:
    """A plmjax/seqio vocabulary (WordPiece, SentencePiece, or a task's) as a WordTokenizer."""
    special = vocabularies.special_tokens(vocab)
    missing = [name for name in ('mask_id', 'cls_id', 'sep_id') if getattr(special, name) is None]
    if missing:
        raise ValueError(f'the vocabulary {vocab} has no {", ".join(missing)}: Perturbed Masking needs [MASK], '
                         f'[CLS] and [SEP] (an encoder\'s vocabulary).')
    byte_level = isinstance(vocab, bpe.ByteLevelBpeVocabulary)
    unk = getattr(vocab, 'unk_id', None)

    def encode_word(word, first):
        return vocab.encode(word if first or not byte_level else ' ' + word)

    return WordTokenizer(encode_word, special.cls_id, special.sep_id, special.mask_id, vocab.pad_id, unk)


def from_tokenizer_dir(path: str) -> WordTokenizer:
    """A Hugging Face tokenizer directory (a converted checkpoint's `tokenizer/`): `tokenizer.json` (any
    tokenizer, RoBERTa's byte-level BPE included) or a BERT `vocab.txt`."""
    config = {}
    if os.path.isfile(os.path.join(path, 'tokenizer_config.json')):
        with open(os.path.join(path, 'tokenizer_config.json'), encoding='utf-8') as f:
            config = json.load(f)
    if os.path.isfile(os.path.join(path, 'vocab.txt')):
        return from_vocabulary(vocabularies.WordPieceVocabulary(os.path.join(path, 'vocab.txt'),
                                                                lower_case=config.get('do_lower_case', True)))
    if not os.path.isfile(os.path.join(path, 'tokenizer.json')):
        raise FileNotFoundError(f'{path} holds neither vocab.txt nor tokenizer.json; pass --vocab (a vocab.txt or '
                                f'SentencePiece model) or --task (the task the encoder was trained on).')
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(path, 'tokenizer.json'))

    def token_id(names, default):
        for name in names:
            value = config.get(name)
            if isinstance(value, dict):
                value = value.get('content')
            if value is not None and tokenizer.token_to_id(value) is not None:
                return tokenizer.token_to_id(value)
        for token in default:
            if tokenizer.token_to_id(token) is not None:
                return tokenizer.token_to_id(token)
        raise ValueError(f'the tokenizer in {path} has none of the tokens {default} ({names[0]}).')

    byte_level = 'ByteLevel' in json.dumps(json.loads(tokenizer.to_str()).get('pre_tokenizer'))

    def encode_word(word, first):
        return tokenizer.encode(word if first or not byte_level else ' ' + word, add_special_tokens=False).ids

    return WordTokenizer(encode_word, cls_id=token_id(['cls_token', 'bos_token'], ['[CLS]', '<s>']),
                         sep_id=token_id(['sep_token', 'eos_token'], ['[SEP]', '</s>']),
                         mask_id=token_id(['mask_token'], ['[MASK]', '<mask>']),
                         pad_id=token_id(['pad_token'], ['[PAD]', '<pad>']),
                         unk_id=tokenizer.token_to_id(config.get('unk_token') or '[UNK]'))
