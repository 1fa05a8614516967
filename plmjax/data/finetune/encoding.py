"""BERT's encoder format in Python on the vocabulary's HF `tokenizers` WordPiece: ids, token types, truncation,
answer spans through the tokenizer's character offsets, and word-level tags.

    [CLS] a [SEP]          token types 0 ... 0
    [CLS] a [SEP] b [SEP]  token types 0 through the first [SEP], 1 after

Pairs are truncated longest-first exactly as `tokenizers` (and so transformers' BertTokenizerFast with
`truncation=True`) does: if both texts do not fit, the shorter keeps its length when it takes at most half of
the room, and otherwise each gets half, the odd token going to the longer (to b on a tie).
The TF preprocessors (preprocessors.py) call these through `tf.numpy_function`.
"""
import functools
from typing import Optional, Sequence

import numpy as np

from plmjax.data import vocabularies

NUM_SPECIAL_SINGLE = 2  # [CLS] a [SEP]
NUM_SPECIAL_PAIR = 3  # [CLS] a [SEP] b [SEP]


def pair_lengths(length_a: int, length_b: int, room: int) -> tuple[int, int]:
    """The kept lengths of a and b under longest-first truncation to `room` tokens (tokenizers' rule)."""
    if length_a + length_b <= room:
        return length_a, length_b
    short, long_ = sorted((length_a, length_b))
    if 2 * short <= room:
        kept_short, kept_long = short, room - short
    else:
        kept_short, kept_long = room // 2, room // 2 + room % 2
    return (kept_long, kept_short) if length_a > length_b else (kept_short, kept_long)


class EncoderFormat:
    """Encodes examples for a BERT-style encoder with one WordPiece vocabulary."""

    def __init__(self, vocabulary: vocabularies.WordPieceVocabulary):
        if not isinstance(vocabulary, vocabularies.WordPieceVocabulary):
            raise TypeError(f"The encoder format needs a plmjax.data.vocabularies.WordPieceVocabulary (BERT's "
                            f"[CLS]/[SEP]), got {type(vocabulary).__name__}; use the text-to-text task (<name>_t2t) "
                            "for other vocabularies.")
        self.tokenizer = vocabulary.tokenizer
        self.cls_id, self.sep_id = vocabulary.cls_id, vocabulary.sep_id

    def pieces(self, text: str):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _join(self, a: Sequence[int], b: Optional[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.cls_id, *a, self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            types += [1] * (len(b) + 1)
        return np.asarray(ids, np.int32), np.asarray(types, np.int32)

    def encode(self, a: str, b: Optional[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """([CLS] a [SEP] (b [SEP]) ids, token types), at most max_length tokens (longest-first truncation)."""
        ids_a = self.pieces(a).ids
        if b is None:
            return self._join(ids_a[:max(max_length - NUM_SPECIAL_SINGLE, 0)], None)
        ids_b = self.pieces(b).ids
        keep_a, keep_b = pair_lengths(len(ids_a), len(ids_b), max(max_length - NUM_SPECIAL_PAIR, 0))
        return self._join(ids_a[:keep_a], ids_b[:keep_b])

    def encode_span(self, question: str, context: str, answer: str, answer_start: int, max_length: int,
                    max_question_length: int = 64) -> tuple[np.ndarray, np.ndarray, int, int]:
        """[CLS] question [SEP] context [SEP] and the answer's first/last token positions in it.

        The question keeps at most `max_question_length` pieces, the context is cut to what is left (one window,
        no doc stride). The answer's characters [answer_start, answer_start + len(answer)) map to the pieces
        whose offsets overlap them; (0, 0) points at [CLS] when there is no answer or it was cut away.
        """
        question_ids = self.pieces(question).ids[:max_question_length]
        context_encoding = self.pieces(context)
        room = max(max_length - NUM_SPECIAL_PAIR - len(question_ids), 0)
        context_ids = context_encoding.ids[:room]
        ids, types = self._join(question_ids, context_ids)
        start = end = 0
        if answer_start >= 0 and answer:
            answer_end = answer_start + len(answer)
            covering = [i for i, (s, e) in enumerate(context_encoding.offsets[:room])
                        if s < answer_end and e > answer_start]
            every = [i for i, (s, e) in enumerate(context_encoding.offsets) if s < answer_end and e > answer_start]
            if covering and covering[-1] == every[-1]:  # the whole answer fits
                first_context_position = len(question_ids) + 2
                start, end = first_context_position + covering[0], first_context_position + covering[-1]
        return ids, types, start, end

    def span_text(self, question: str, context: str, start: int, end: int, max_length: int,
                  max_question_length: int = 64) -> str:
        """The context text of the input positions start..end of `encode_span`'s input ('' for [CLS] or outside
        the context): what a predicted span means, cut from the original context through the piece offsets."""
        question_length = len(self.pieces(question).ids[:max_question_length])
        room = max(max_length - NUM_SPECIAL_PAIR - question_length, 0)
        offsets = self.pieces(context).offsets[:room]
        first, last = start - question_length - 2, end - question_length - 2  # positions -> context pieces
        if not 0 <= first <= last < len(offsets):
            return ""
        return context[offsets[first][0]:offsets[last][1]]

    def encode_choices(self, firsts: Sequence[str], seconds: Sequence[str],
                       max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """[num_choices, longest] ids and token types of each (first, second) pair, zero-padded."""
        rows = [self.encode(a, b, max_length) for a, b in zip(firsts, seconds)]
        width = max(len(ids) for ids, _ in rows)
        ids = np.zeros([len(rows), width], np.int32)  # [choices, length]
        types = np.zeros([len(rows), width], np.int32)
        for i, (row_ids, row_types) in enumerate(rows):
            ids[i, :len(row_ids)], types[i, :len(row_types)] = row_ids, row_types
        return ids, types

    def encode_words(self, words: Sequence[str], tags: Sequence[int],
                     max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """[CLS] pieces of the words [SEP], token types (0), the tag of each word at its first piece, weights.

        Pieces past max_length - 2 are cut; a word cut away or with no pieces (e.g. only control characters)
        is not predicted (weight 0)."""
        encoding = self.tokenizer.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        keep = max(max_length - NUM_SPECIAL_SINGLE, 0)
        ids, types = self._join(encoding.ids[:keep], None)
        tag_labels = np.zeros(len(ids), np.int32)
        tag_weights = np.zeros(len(ids), np.float32)
        previous = None
        for position, word in enumerate(encoding.word_ids[:keep], start=1):
            if word is not None and word != previous:
                tag_labels[position], tag_weights[position] = tags[word], 1.0
            previous = word
        return ids, types, tag_labels, tag_weights


@functools.lru_cache(maxsize=16)
def encoder_format(vocabulary: vocabularies.WordPieceVocabulary) -> EncoderFormat:
    return EncoderFormat(vocabulary)
