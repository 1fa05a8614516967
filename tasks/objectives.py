"""Tasks of the further pre-training objectives (`plmjax.data.objective_tasks`) and a bilingual mixture.

    {pydoc,wikitext2}_{whole_word_mlm,pmlm,span_masking,nsp,sop,electra,bart_denoising,prefix_lm}
        on the embedded corpus and WikiText-2, with the corpora's SentencePiece vocabularies (tasks/pretraining.py)
    fewclue_whole_word_mlm      Chinese whole-word masking (jieba) on FewCLUE's unlabeled text
    wikitext2_fewclue_whole_word_mlm = the mixture of
        wikitext2_en_zh_whole_word_mlm (rate 0.5) and fewclue_en_zh_whole_word_mlm (rate 0.5),
        two tasks sharing one SentencePiece vocabulary trained on both corpora

FewCLUE's unlabeled text is the `sentence` field of `$PLMJAX_SHARED_DATA/fewclue/{tnews,eprstmt}/unlabeled.json`
(about 40k sentences); one sentence in ten (by a hash of the sentence) is held out as the validation split.
Missing data gives a clear error when the task is read, never at import. `objective_text_files_task` (gin)
registers any of these objectives over the user's own text files.
"""
import functools
import hashlib
import zlib
from typing import Optional, Sequence

import gin
import seqio

from plmjax.data import corpora
from plmjax.data import objective_tasks
from plmjax.data import sources
from plmjax.data import vocabularies

from . import pretraining

FEWCLUE_UNLABELED = ("tnews", "eprstmt")
MIXTURE = "wikitext2_fewclue_whole_word_mlm"
MIXTURE_RATES = {"wikitext2_en_zh_whole_word_mlm": 0.5, "fewclue_en_zh_whole_word_mlm": 0.5}


def fewclue_unlabeled_sentences(split: str) -> list[str]:
    """FewCLUE's unlabeled Chinese sentences of one split (validation: crc32(sentence) % 10 == 0)."""
    if split not in corpora.SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {corpora.SPLITS}.")
    directory = corpora.shared_data_dir() / "fewclue"
    files = [directory / task / "unlabeled.json" for task in FEWCLUE_UNLABELED]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"FewCLUE unlabeled text not found: {', '.join(missing)}. Point the environment "
                                "variable PLMJAX_SHARED_DATA at the folder that holds fewclue/.")
    sentences = corpora.read_json_lines_texts([str(f) for f in files], "sentence")
    held_out = split == "validation"
    return [s for s in sentences if (zlib.crc32(s.encode("utf-8")) % 10 == 0) == held_out]


def _fewclue_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None):
    texts = fewclue_unlabeled_sentences(split)
    return sources._texts_dataset(texts, shuffle_files, seed)  # pylint: disable=protected-access


def fewclue_source() -> seqio.DataSource:
    return sources.InMemoryTextSource(_fewclue_dataset, splits=corpora.SPLITS)


def _bilingual_texts() -> list[str]:
    return corpora.wikitext2_paragraphs("train") + fewclue_unlabeled_sentences("train")


FEWCLUE_VOCABULARY = vocabularies.CorpusSentencePieceVocabulary(
    "fewclue", functools.partial(fewclue_unlabeled_sentences, "train"))
BILINGUAL_VOCABULARY = vocabularies.CorpusSentencePieceVocabulary("wikitext2_fewclue", _bilingual_texts,
                                                                  vocab_size=8000, extra_ids=192)

for _objective in objective_tasks.OBJECTIVES:
    pretraining._register(  # pylint: disable=protected-access
        f"pydoc_{_objective}",
        **objective_tasks.task_kwargs(_objective, sources.pydoc_source(), pretraining.PYDOC_VOCABULARY))
    pretraining._register(  # pylint: disable=protected-access
        f"wikitext2_{_objective}",
        **objective_tasks.task_kwargs(_objective, sources.wikitext2_source(), pretraining.WIKITEXT2_VOCABULARY))

pretraining._register(  # pylint: disable=protected-access
    "fewclue_whole_word_mlm",
    **objective_tasks.task_kwargs("whole_word_mlm", fewclue_source(), FEWCLUE_VOCABULARY, segmenter="jieba"))
pretraining._register(  # pylint: disable=protected-access
    "wikitext2_en_zh_whole_word_mlm",
    **objective_tasks.task_kwargs("whole_word_mlm", sources.wikitext2_source(), BILINGUAL_VOCABULARY))
pretraining._register(  # pylint: disable=protected-access
    "fewclue_en_zh_whole_word_mlm",
    **objective_tasks.task_kwargs("whole_word_mlm", fewclue_source(), BILINGUAL_VOCABULARY, segmenter="jieba"))
seqio.MixtureRegistry.remove(MIXTURE)
seqio.MixtureRegistry.add(MIXTURE, list(MIXTURE_RATES.items()))


@gin.configurable
def objective_text_files_task(name: str = gin.REQUIRED, train_files: Sequence[str] = gin.REQUIRED,
                              validation_files: Sequence[str] = gin.REQUIRED, text_key: Optional[str] = None,
                              objective: str = "whole_word_mlm", segmenter: str = "pieces",
                              spm_vocab_size: int = vocabularies.DEFAULT_SPM_VOCAB_SIZE,
                              extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS) -> str:
    """Registers a task of one of `objective_tasks.OBJECTIVES` over local files and returns its name
    (`TASK = @objective_text_files_task()`); the files and vocabulary options are `text_files_task`'s, and
    `segmenter='jieba'` finds Chinese words for whole_word_mlm."""
    binding = "objective_text_files_task"
    source = sources.text_files_source(train_files, validation_files, text_key, binding=binding)
    train = corpora.check_files_exist(train_files, f"{binding}.train_files")
    corpus_id = hashlib.sha256(repr((train, text_key)).encode()).hexdigest()[:8]
    vocabulary = vocabularies.CorpusSentencePieceVocabulary(
        f"{name}-{corpus_id}", functools.partial(corpora.read_texts, train, text_key), vocab_size=spm_vocab_size,
        extra_ids=extra_ids)
    pretraining._register(  # pylint: disable=protected-access
        name, **objective_tasks.task_kwargs(objective, source, vocabulary, segmenter=segmenter))
    return name
