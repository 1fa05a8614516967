"""Vocabularies as `seqio.Vocabulary`: SentencePiece trained on a corpus and cached, and BERT WordPiece.

Both reserve id 0 for padding. The SentencePiece models follow seqio/T5 (pad=0, eos=1, unk=2, sentinel
`<extra_id_k>` = vocab_size - 1 - k) and add BERT's `[MASK]`, `[CLS]`, `[SEP]` as control symbols (ids 3,
4, 5: never produced from text). `special_tokens(vocab)` gives the ids the masking preprocessors need for
any of these vocabularies.
"""
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import io
import logging
import os
import pathlib
import tempfile
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf
import tokenizers

from plmjax.data.finetune import readers

BERT_CONTROL_SYMBOLS = ("[MASK]", "[CLS]", "[SEP]")
DEFAULT_SPM_VOCAB_SIZE = 4000
DEFAULT_EXTRA_IDS = 96  # 4000 + 96 = 4096 ids: a multiple of 128 for the embedding/softmax matmuls
_MAX_TRAINING_SENTENCES = 2_000_000
# Bump when the trainer options below change, so stale cached models are not reused.
_TRAINER_VERSION = "spm-unigram-v3"
# Every printable ASCII character gets a piece, however rare in the corpus (coverage alone drops "Z", "!").
_REQUIRED_CHARS = "".join(chr(c) for c in range(33, 127))
# SentencePiece's advice: character_coverage 1.0 for small alphabets, 0.9995 for rich ones (Chinese, Japanese).
_RICH_ALPHABET = 1000


def cache_dir() -> pathlib.Path:
    """`$PLMJAX_CACHE`, else `~/.cache/plmjax`."""
    return pathlib.Path(os.environ.get("PLMJAX_CACHE") or pathlib.Path.home() / ".cache" / "plmjax")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids the pre-training preprocessors treat specially (None when the vocabulary lacks the token)."""
    mask_id: Optional[int]
    cls_id: Optional[int]
    sep_id: Optional[int]
    special_ids: tuple[int, ...]  # never masked and never drawn as a random replacement token


def special_tokens(vocab: seqio.Vocabulary) -> SpecialTokens:
    """The special token ids of a SentencePiece or WordPiece vocabulary."""
    if isinstance(vocab, WordPieceVocabulary):
        return vocab.special_tokens
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        return _sentencepiece_special_tokens(vocab)
    raise TypeError(f"No special-token table for {type(vocab).__name__}; use a SentencePiece or WordPiece "
                    "vocabulary from plmjax.data.vocabularies.")


def _sentencepiece_special_tokens(vocab: seqio.SentencePieceVocabulary) -> SpecialTokens:
    key = (vocab.sentencepiece_model_file, vocab.extra_ids)
    if key not in _SENTENCEPIECE_SPECIALS:
        _SENTENCEPIECE_SPECIALS[key] = _find_sentencepiece_special_tokens(vocab)
    return _SENTENCEPIECE_SPECIALS[key]


_SENTENCEPIECE_SPECIALS: dict[tuple[str, int], SpecialTokens] = {}


def _find_sentencepiece_special_tokens(vocab: seqio.SentencePieceVocabulary) -> SpecialTokens:
    sp = vocab.tokenizer
    base = sp.GetPieceSize() - vocab.extra_ids  # seqio appends the sentinels after the trained pieces
    special = [i for i in range(base) if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i)]
    special += range(base, sp.GetPieceSize())

    def piece_id(piece):
        i = sp.PieceToId(piece)
        return i if sp.IdToPiece(i) == piece else None

    mask_id, cls_id, sep_id = (piece_id(p) for p in BERT_CONTROL_SYMBOLS)
    return SpecialTokens(mask_id, cls_id, sep_id, tuple(sorted(set(special))))


# ------------------------------------------------------------------------------------------ SentencePiece


class CorpusSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A seqio SentencePiece vocabulary trained on `corpus_fn()` on first use and cached on disk.

    The model file is `<cache_dir>/sentencepiece/<corpus_name>-<fingerprint>-<vocab_size>.model`, where the
    fingerprint hashes the training text and options, so a changed corpus trains a new model. Training holds
    a file lock (concurrent processes train once) and writes atomically (a killed run leaves no partial
    model). `vocab_size` counts the trained pieces; `extra_ids` sentinels are added on top, so the seqio
    `vocab_size` property is `vocab_size + extra_ids`.
    """

    def __init__(self, corpus_name: str, corpus_fn: Callable[[], Iterable[str]],
                 vocab_size: int = DEFAULT_SPM_VOCAB_SIZE, extra_ids: int = DEFAULT_EXTRA_IDS):
        self._corpus_name = corpus_name
        self._corpus_fn = corpus_fn  # a module-level function or functools.partial: must pickle (gin copies)
        self._spm_vocab_size = vocab_size
        super().__init__(sentencepiece_model_file="", extra_ids=extra_ids)

    @property
    def sentencepiece_model_file(self) -> str:
        if not self._sentencepiece_model_file:
            self._sentencepiece_model_file = str(train_sentencepiece(
                self._corpus_name, self._corpus_fn(), vocab_size=self._spm_vocab_size))
        return self._sentencepiece_model_file

    def _model_context(self):
        _ = self.sentencepiece_model_file  # trains or finds the cached model first
        return super()._model_context()

    def __getstate__(self):
        state = super().__getstate__()
        state["_sentencepiece_model_file"] = ""  # pickles stay valid when the cache moves; found again on use
        return state

    def __eq__(self, other):
        return isinstance(other, CorpusSentencePieceVocabulary) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _key(self):
        return (self._corpus_name, self._spm_vocab_size, self.extra_ids)

    @property
    def mask_id(self) -> int:
        return special_tokens(self).mask_id

    @property
    def cls_id(self) -> int:
        return special_tokens(self).cls_id

    @property
    def sep_id(self) -> int:
        return special_tokens(self).sep_id

    def __str__(self) -> str:
        return (f"CorpusSentencePieceVocabulary(corpus={self._corpus_name}, vocab_size={self._spm_vocab_size}, "
                f"extra_ids={self.extra_ids})")


def train_sentencepiece(corpus_name: str, texts: Iterable[str], vocab_size: int) -> pathlib.Path:
    """Trains (or finds cached) a unigram SentencePiece model with T5's ids and BERT's control symbols."""
    texts = [t for t in (" ".join(text.split()) for text in texts) if t]
    if len(texts) > _MAX_TRAINING_SENTENCES:  # an evenly strided, deterministic sample
        texts = texts[::len(texts) // _MAX_TRAINING_SENTENCES + 1]
    fingerprint = hashlib.sha256(_TRAINER_VERSION.encode())
    for text in texts:
        fingerprint.update(text.encode("utf-8") + b"\n")
    path = cache_dir() / "sentencepiece" / f"{corpus_name}-{fingerprint.hexdigest()[:16]}-{vocab_size}.model"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_suffix(".lock")):
        if path.is_file():  # another process trained it while we waited
            return path
        logging.info("Training a %d-piece SentencePiece model on %s (%d texts) -> %s",
                     vocab_size, corpus_name, len(texts), path)
        model = io.BytesIO()
        alphabet_size = len(set().union(*map(set, texts)))
        coverage = 1.0 if alphabet_size <= _RICH_ALPHABET else 0.9995
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
                pad_id=0, eos_id=1, unk_id=2, bos_id=-1, control_symbols=list(BERT_CONTROL_SYMBOLS),
                character_coverage=coverage, required_chars=_REQUIRED_CHARS, max_sentence_length=1 << 14,
                num_threads=1,  # one thread: the same model on every machine
                minloglevel=2)
        except RuntimeError as e:
            raise ValueError(f"SentencePiece training on corpus {corpus_name!r} failed: {e}. A small corpus "
                             "needs a smaller vocab size (the spm_vocab_size argument of the task).") from None
        _atomic_write(path, model.getvalue())
    return path


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600; a shared cache must be readable by all
    os.replace(f.name, path)


# ------------------------------------------------------------------------------------------------ WordPiece


class TokenizersVocabulary(seqio.Vocabulary):
    """A seqio vocabulary on a Hugging Face `tokenizers` tokenizer (the `tokenizer` property of a subclass):
    Python and TensorFlow encoding and decoding, without special tokens added on encoding."""

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        raise NotImplementedError

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """A scalar string -> [length] int32; a [n] string vector -> a [n, (length)] int32 RaggedTensor."""
        def encode(strings: np.ndarray):  # [n] bytes -> ([sum of lengths] int32 ids, [n] int64 lengths)
            texts = [x.decode("utf-8") for x in strings]
            ids = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
            flat = np.fromiter((i for row in ids for i in row), dtype=np.int32)
            return flat, np.array([len(row) for row in ids], np.int64)

        if s.shape.rank not in (0, 1):
            raise ValueError(f"{type(self).__name__}.encode_tf takes a scalar or a vector of strings, got {s.shape}.")
        values, lengths = tf.numpy_function(encode, [tf.reshape(s, [-1])], (tf.int32, tf.int64), stateful=False)
        values = tf.ensure_shape(values, [None])
        if s.shape.rank == 0:
            return values
        return tf.RaggedTensor.from_row_lengths(values, tf.ensure_shape(lengths, [None]))

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(batch: np.ndarray) -> np.ndarray:  # [n, length] -> [n] bytes
            return np.array([self._decode(row).encode("utf-8") for row in batch], dtype=object)

        if ids.shape.rank == 1:
            text = tf.numpy_function(lambda x: decode(x[None])[0], [ids], tf.string, stateful=False)
            return tf.ensure_shape(text, [])
        flat = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
        texts = tf.numpy_function(decode, [flat], tf.string, stateful=False)
        return tf.reshape(texts, tf.shape(ids)[:-1])


class WordPieceVocabulary(TokenizersVocabulary):
    """BERT WordPiece (a `vocab.txt`) on HF `tokenizers`, ids identical to transformers' BertTokenizerFast.

    Encoding adds no [CLS]/[SEP] (the preprocessors do); decoding drops special tokens. There is no EOS.
    """

    def __init__(self, vocab_file: str, lower_case: bool = True, strip_accents: Optional[bool] = None):
        super().__init__(extra_ids=0)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"WordPiece vocab file not found: {vocab_file!r}.")
        self._vocab_file = os.fspath(vocab_file)
        self._lower_case = lower_case
        self._strip_accents = strip_accents
        _ = self.special_tokens  # fails early on a vocab.txt whose [PAD] is not id 0

    def __eq__(self, other):
        return isinstance(other, WordPieceVocabulary) and self.__dict__ == other.__dict__

    def __hash__(self):
        return hash((self._vocab_file, self._lower_case, self._strip_accents))

    def _cache_key(self):
        stat = os.stat(self._vocab_file)  # a rewritten vocab.txt is loaded again
        return (self._vocab_file, stat.st_mtime_ns, stat.st_size, self._lower_case, self._strip_accents)

    @property
    def tokenizer(self) -> tokenizers.BertWordPieceTokenizer:
        return _load_wordpiece(*self._cache_key())

    @property
    def special_tokens(self) -> SpecialTokens:
        return _wordpiece_special_tokens(*self._cache_key())

    @property
    def mask_id(self) -> Optional[int]:
        return self.special_tokens.mask_id

    @property
    def cls_id(self) -> Optional[int]:
        return self.special_tokens.cls_id

    @property
    def sep_id(self) -> Optional[int]:
        return self.special_tokens.sep_id

    @property
    def eos_id(self) -> Optional[int]:
        return None

    @property
    def unk_id(self) -> Optional[int]:
        return self.tokenizer.token_to_id("[UNK]")

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __str__(self) -> str:
        return f"WordPieceVocabulary(vocab_file={self._vocab_file}, lower_case={self._lower_case})"


@functools.lru_cache(maxsize=None)
def _wordpiece_special_tokens(vocab_file: str, *key) -> SpecialTokens:
    vocab = _load_wordpiece(vocab_file, *key).get_vocab()
    if vocab.get("[PAD]") != 0:
        where = "missing" if "[PAD]" not in vocab else f"on line {vocab['[PAD]'] + 1}"
        raise readers.format_error(vocab_file, None, f"[PAD] must have id 0 (the first line: plmjax pads with 0); "
                                   f"it is {where}", "Use a BERT vocab.txt: [PAD] first, one token per line")
    # [PAD] [UNK] [CLS] [SEP] [MASK] and every [unusedN]: bracketed entries are BERT's reserved tokens.
    special = sorted(i for token, i in vocab.items() if token.startswith("[") and token.endswith("]"))
    return SpecialTokens(vocab.get("[MASK]"), vocab.get("[CLS]"), vocab.get("[SEP]"), tuple(special))


@functools.lru_cache(maxsize=None)
def _load_wordpiece(vocab_file: str, unused_mtime: int, unused_size: int, lower_case: bool,
                    strip_accents: Optional[bool]):
    for _ in readers.text_lines(vocab_file):  # a byte that is not UTF-8: DataFormatError naming its line
        pass
    try:
        return tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=lower_case, strip_accents=strip_accents)
    except Exception as e:  # TypeError "sep_token not found in the vocabulary", the Rust side's own errors
        raise readers.format_error(vocab_file, None, f"not a BERT vocab.txt ({e})",
                                   "It needs one token per line, with [PAD] [UNK] [CLS] [SEP] [MASK]") from None


def train_wordpiece(texts: Iterable[str], directory: str, vocab_size: int = 8000, lower_case: bool = True) -> str:
    """Trains a BERT WordPiece vocabulary with HF `tokenizers`; writes `directory/vocab.txt`, returns its path."""
    tokenizer = tokenizers.BertWordPieceTokenizer(lowercase=lower_case)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    os.makedirs(directory, exist_ok=True)
    return tokenizer.save_model(directory)[0]
