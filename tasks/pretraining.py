"""Pre-training tasks: {corpus}_{objective} for the embedded pydoc corpus and WikiText-2, plus
`text_files_task`, a gin configurable that registers a task over the user's own files.

    pydoc_mlm, pydoc_lm, pydoc_span_corruption            embedded corpus, no download
    wikitext2_mlm, wikitext2_lm, wikitext2_span_corruption $PLMJAX_SHARED_DATA/wikitext-2 (clear error if absent)
    wikitext2_mlm_uncased                                  WikiText-2 MLM in BERT's uncased WordPiece vocabulary
                                                           (all-MiniLM-L6-v2's): continued pre-training of MiniLM

Each corpus has one SentencePiece vocabulary (4000 pieces + 96 sentinels = 4096 ids, trained on its train
split on first use and cached); `plmjax.data.pipeline.vocab_size(task)` is the model's `vocab_size`.
"""
import functools
import hashlib
from typing import Optional, Sequence

import gin
import seqio

from plmjax.data import corpora
from plmjax.data import pretraining
from plmjax.data import sources
from plmjax.data import vocabularies
from plmjax.data.finetune import vocab as finetune_vocab


def _register(name: str, **kwargs) -> seqio.Task:
    seqio.TaskRegistry.remove(name)  # re-registering (a second import name, a gin re-call) replaces the task
    return seqio.TaskRegistry.add(name, **kwargs)


PYDOC_VOCABULARY = vocabularies.CorpusSentencePieceVocabulary(
    "pydoc", functools.partial(corpora.pydoc_paragraphs, "train"))
WIKITEXT2_VOCABULARY = vocabularies.CorpusSentencePieceVocabulary(
    "wikitext2", functools.partial(corpora.wikitext2_paragraphs, "train"))

for _objective in pretraining.OBJECTIVES:
    _register(f"pydoc_{_objective}", **pretraining.task_kwargs(_objective, sources.pydoc_source(), PYDOC_VOCABULARY))
    _register(f"wikitext2_{_objective}",
              **pretraining.task_kwargs(_objective, sources.wikitext2_source(), WIKITEXT2_VOCABULARY))
_register("wikitext2_mlm_uncased",
          **pretraining.task_kwargs("mlm", sources.wikitext2_source(), finetune_vocab.english_vocabulary()))


@gin.configurable
def text_files_task(name: str = gin.REQUIRED, train_files: Sequence[str] = gin.REQUIRED,
                    validation_files: Sequence[str] = gin.REQUIRED, text_key: Optional[str] = None,
                    objective: str = "mlm", spm_vocab_size: int = vocabularies.DEFAULT_SPM_VOCAB_SIZE,
                    extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS, wordpiece_vocab_file: Optional[str] = None,
                    lower_case: bool = True) -> str:
    """Registers a pre-training task over local files and returns its name (bind `... = @text_files_task()`).

    Args:
      name: the task name to register.
      train_files, validation_files: plain-text files (one document or paragraph per line), or JSON-lines
        files when `text_key` is set; globs allowed.
      text_key: the JSON field holding the text.
      objective: 'mlm', 'lm' or 'span_corruption'.
      spm_vocab_size, extra_ids: the SentencePiece vocabulary trained on the train files (cached).
      wordpiece_vocab_file, lower_case: use this BERT vocab.txt instead (mlm and lm only).
    """
    source = sources.text_files_source(train_files, validation_files, text_key)
    if wordpiece_vocab_file:
        corpora.check_files_exist([wordpiece_vocab_file], "text_files_task.wordpiece_vocab_file")
        vocabulary = vocabularies.WordPieceVocabulary(wordpiece_vocab_file, lower_case=lower_case)
    else:
        train = corpora.check_files_exist(train_files, "text_files_task.train_files")
        corpus_id = hashlib.sha256(repr((train, text_key)).encode()).hexdigest()[:8]
        vocabulary = vocabularies.CorpusSentencePieceVocabulary(
            f"{name}-{corpus_id}", functools.partial(corpora.read_texts, train, text_key),
            vocab_size=spm_vocab_size, extra_ids=extra_ids)
    _register(name, **pretraining.task_kwargs(objective, source, vocabulary))
    return name
