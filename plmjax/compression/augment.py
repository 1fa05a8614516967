"""TinyBERT's data augmentation (Jiao et al. 2020, Algorithm 1), as the released `data_augmentation.py` does it.

A sentence is split into words by BERT's basic tokenizer (lower-cased, punctuation split). Every word made of
letters only and not in the stop-word list gets candidates:
- a word that is ONE piece of the MLM's vocabulary: the MLM's K most probable pieces at the word's position, the
  input being `[CLS] sentence-with-the-word-masked [SEP] sentence [SEP]` with token types 0 up to the first
  [SEP] and 1 after it (the released code shows the MLM the original sentence as segment B); pieces that do not
  spell a whole word (continuations, `##ing` / `ing`) are dropped;
- a word of several pieces: the paper uses GloVe neighbours, which are not available offline; here the MLM again,
  with the word's pieces replaced by one [MASK] (docs/compression.md);
- no candidate at all (the masked position lies beyond the MLM's length): the word itself.
Then N times: each candidate word is replaced, with probability p, by one of its candidates drawn uniformly; a copy
is kept if it is new. The output of a sentence is the sentence itself followed by at most N distinct copies.

Where plmjax differs from the released code (and why):
- the candidates of a word exclude the MLM's special tokens ([UNK], [SEP], ...: text no tokenizer should see);
  punctuation pieces stay candidates, as in the code;
- a copy equal to the original's words (nothing replaced) is not kept (the code compares it with the raw string,
  so it keeps an unchanged copy whenever the raw spacing differs from the joined words);
- the random numbers come from numpy, one generator per sentence seeded by (seed, sentence index), so the output
  is deterministic and independent of batching.
"""
import dataclasses
import re
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

# The released code's list (NLTK's English stop words with "'s" and "'re").
STOP_WORDS = frozenset((
    "i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his "
    "himself she she's her hers herself it it's its itself they them their theirs themselves this that that'll "
    "these those am is are was were be been being have has had having do does did doing a an the and but if or "
    "because as until while of at by for with about against between into through during before after above below "
    "to from up down in out on off over under again further then once here there all any both each few more most "
    "other some such no nor not only own same so than too very s t can will just don don't should should've now d "
    "ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't "
    "isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren "
    "weren't won won't wouldn wouldn't 's 're").split())


@dataclasses.dataclass(frozen=True)
class Options:
    num_candidates: int = 15  # K: the MLM's most probable pieces a word may become (the code's M)
    replace_prob: float = 0.4  # p: the chance that a candidate word is replaced in a copy
    copies: int = 20  # N: attempts per sentence (the code: 20 for SST-2, 10 for MNLI/QQP, 30 for small sets)
    seed: int = 0
    lower_case: bool = True  # BERT's basic tokenizer lower-cases (an uncased model's)

    def __post_init__(self):
        if self.num_candidates < 1 or self.copies < 0 or not 0.0 <= self.replace_prob <= 1.0:
            raise ValueError(f'augmentation options {self}: need num_candidates >= 1, copies >= 0 and '
                             f'0 <= replace_prob <= 1.')


@dataclasses.dataclass
class MaskedLM:
    """What augmentation needs of a masked language model and its tokenizer."""
    encode: Callable[[str], list[int]]  # text -> piece ids, no special tokens
    decode: Callable[[list[int]], str]  # ids -> text, special tokens dropped
    logits: Callable[[np.ndarray, Optional[np.ndarray], np.ndarray], np.ndarray]  # ids [b, l], token types
    # [b, l] (None: the model has none), positions [b] -> the MLM logits at those positions [b, vocab]
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    max_length: int
    token_types: bool = True
    _spelled: dict = dataclasses.field(default_factory=dict, repr=False)

    def word_of(self, piece: int) -> Optional[str]:
        """The word a piece spells on its own (decode then encode gives the piece back), else None: a continuation
        piece (`##ing`, or `ing` after SentencePiece's word start) or a special token."""
        if piece not in self._spelled:
            text = self.decode([piece]).strip()
            self._spelled[piece] = text if text and self.encode(text) == [piece] else None
        return self._spelled[piece]


def words(text: str, lower_case: bool = True) -> list[str]:
    """BERT's basic tokenizer (whitespace, then punctuation split; lower-casing strips accents) via `tokenizers`."""
    from tokenizers import normalizers, pre_tokenizers
    normalized = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=lower_case).normalize_str(text)
    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normalized)]


def replaceable(word: str) -> bool:
    """The released code's test: letters a-z only (any case), and not a stop word."""
    return re.fullmatch('[a-z]+', word.lower()) is not None and word.lower() not in STOP_WORDS


def query(mlm: MaskedLM, pieces: Sequence[Sequence[int]], index: int) -> Optional[tuple[list, list, int]]:
    """The MLM input asking for word `index` of a sentence (`pieces`: each word's piece ids): (ids, token types,
    the [MASK]'s position), cut at the MLM's length; None when the [MASK] would fall beyond it."""
    masked = [p for i, word in enumerate(pieces) for p in ([mlm.mask_id] if i == index else word)]
    original = [p for word in pieces for p in word]
    ids = [mlm.cls_id, *masked, mlm.sep_id, *original, mlm.sep_id]
    types = [0] * (len(masked) + 2) + [1] * (len(original) + 1)
    position = 1 + sum(len(word) for word in pieces[:index])
    if position >= mlm.max_length:
        return None
    return ids[:mlm.max_length], types[:mlm.max_length], position


def candidates(mlm: MaskedLM, sentences: Sequence[Sequence[str]], options: Options, batch_size: int = 64,
               progress: Optional[Callable[[int], None]] = None) -> list[dict[int, list[str]]]:
    """For each sentence (its words), {word index: candidate words} of its replaceable words."""
    pieces = [[mlm.encode(w) for w in sentence] for sentence in sentences]
    jobs, out = [], [dict() for _ in sentences]
    for s, sentence in enumerate(sentences):
        for i, word in enumerate(sentence):
            if replaceable(word):
                asked = query(mlm, pieces[s], i) if pieces[s][i] else None
                if asked is None:
                    out[s][i] = [word]
                else:
                    jobs.append((s, i, *asked))
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        length = -(-max(len(j[2]) for j in chunk) // 16) * 16
        ids = np.full((batch_size, length), mlm.pad_id, np.int32)  # a fixed batch: one compile per length
        types = np.zeros((batch_size, length), np.int32)
        positions = np.zeros((batch_size,), np.int32)
        for row, (_, _, row_ids, row_types, position) in enumerate(chunk):
            ids[row, :len(row_ids)], types[row, :len(row_types)], positions[row] = row_ids, row_types, position
        logits = np.asarray(mlm.logits(ids, types if mlm.token_types else None, positions))  # [b, vocab]
        k = min(options.num_candidates, logits.shape[-1])
        part = np.argpartition(-logits[:len(chunk)], k - 1, axis=-1)[:, :k]  # [b, k]: the top k, unordered
        for row, (s, i, *_) in enumerate(chunk):
            top = part[row][np.lexsort((part[row], -logits[row, part[row]]))]  # by logit, ties by id
            found = [w for w in (mlm.word_of(int(t)) for t in top) if w is not None]
            out[s][i] = found or [sentences[s][i]]
        if progress:
            progress(len(chunk))
    return out


def copies(sentence_words: Sequence[str], choices: dict[int, list[str]], options: Options,
           rng: np.random.Generator) -> list[str]:
    """Up to N distinct copies of a sentence (Algorithm 1's sampling): each candidate word is replaced with
    probability p by a uniformly drawn candidate."""
    original = ' '.join(sentence_words)
    seen, out = {original}, []
    for _ in range(options.copies):
        new = list(sentence_words)
        for index, words_ in choices.items():
            word = words_[rng.integers(len(words_))]
            if rng.random() < options.replace_prob:
                new[index] = word
        text = ' '.join(new)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def augment(mlm: MaskedLM, texts: Iterable[str], options: Options = Options(), batch_size: int = 64,
            progress: Optional[Callable[[int], None]] = None) -> list[list[str]]:
    """For each text: [the text, its augmented copies...] (deterministic given options.seed)."""
    texts = list(texts)
    if options.copies == 0:  # the originals alone (a subset's baseline): no MLM query
        return [[t] for t in texts]
    split = [words(t, options.lower_case) for t in texts]
    choices = candidates(mlm, split, options, batch_size, progress)
    return [[text, *copies(split[k], choices[k], options, np.random.default_rng([options.seed, k]))]
            for k, text in enumerate(texts)]
