"""Fine-tuning tasks: GLUE, CLUE, FewCLUE and UD POS tagging, in BERT's encoder format and as text to text.

Registered on import (nothing is read until a task's data is asked for):

    glue_{cola,sst2,mrpc,qqp,stsb,mnli,mnli_mismatched,qnli,rte,wnli,ax}        TFDS glue/*
    glue_{...}_tsv                 the official GLUE TSV folders in GLUE_DIR (default <repo>/../shared/data/glue)
    clue_{afqmc,tnews,iflytek,cmnli,ocnli,cluewsc2020,csl,cmrc2018,chid,c3}      CLUE files in CLUE_DIR (no default)
    fewclue_{bustm,chid,cluewsc,csl,csldcp,eprstmt,iflytek,ocnli,tnews}         FEWCLUE_DIR (default
                                   <repo>/../shared/data/fewclue); splits train, validation, test (+ unlabeled)
    ud_en_pos                      UPOS tagging on UD English-EWT dev (an 80/20 train/validation split of it)
    <each of the above>_t2t        the same data as text to text (GPT-2 BPE)

GLUE_DIR, CLUE_DIR and FEWCLUE_DIR are gin macros (`CLUE_DIR = '/data/clue'`) or environment variables, looked up
when the data is read. English encoder tasks use all-MiniLM-L6-v2's vocab.txt, Chinese ones cn-clip's BERT
vocab.txt. Each task's metadata is `plmjax.data.finetune.get_task_info(name)`, the raw examples of a file-based
task `plmjax.data.finetune.read_examples(name, split)`. The gin configurables
`glue_task`, `clue_task`, `fewclue_task` and `ud_pos_task` register a task with other folders or vocabularies
and return its name (`TASK = @clue_task()`).
"""
import functools
import os
from typing import Optional

import gin
import seqio

from plmjax.data.finetune import clue
from plmjax.data.finetune import definitions
from plmjax.data.finetune import fewclue
from plmjax.data.finetune import glue
from plmjax.data.finetune import info
from plmjax.data.finetune import spec as spec_lib
from plmjax.data.finetune import ud
from plmjax.data.finetune import vocab

# The default vocab.txt files, for gin (e.g. `text_files_task.wordpiece_vocab_file = @chinese_bert_vocab_file()`).
gin.external_configurable(vocab.minilm_vocab_file, "minilm_vocab_file")
gin.external_configurable(vocab.chinese_bert_vocab_file, "chinese_bert_vocab_file")

ENGLISH_VOCABULARY = vocab.english_vocabulary()
CHINESE_VOCABULARY = vocab.chinese_vocabulary()
TEXT_TO_TEXT_VOCABULARY = vocab.text_to_text_vocabulary()


def _register(spec: spec_lib.DatasetSpec, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
              text_to_text: bool, normalize=None, read_fn=None) -> str:
    name = spec.name + ("_t2t" if text_to_text else "")
    seqio.TaskRegistry.remove(name)  # re-registering (a gin re-call) replaces the task
    seqio.TaskRegistry.add(name, **definitions.task_kwargs(spec, source, vocabulary, text_to_text, normalize))
    info.register_task_info(spec.task_info(name, text_to_text))
    if read_fn:
        info.register_examples_reader(name, read_fn)
    return name


def _data_dir(macro: str) -> Optional[str]:
    """The gin macro `macro` if bound, else the environment variable of the same name (looked up at read time)."""
    try:
        return gin.query_parameter(f"%{macro}")
    except ValueError:
        return os.environ.get(macro) or None


def _vocabulary(vocabulary, text_to_text: bool, default):
    return vocabulary or (TEXT_TO_TEXT_VOCABULARY if text_to_text else default)


@gin.configurable
def glue_task(task: str = gin.REQUIRED, glue_dir: Optional[str] = None, tfds: bool = False,
              tfds_data_dir: Optional[str] = None, name: Optional[str] = None,
              vocabulary: Optional[seqio.Vocabulary] = None, text_to_text: bool = False) -> str:
    """Registers a GLUE task and returns its name.

    Args:
      task: cola, sst2, mrpc, qqp, stsb, mnli, mnli_mismatched, qnli, rte, wnli or ax.
      glue_dir: the folder of the GLUE TSV task folders (default: the GLUE_DIR macro / env var, else
        <repo>/../shared/data/glue); ignored with tfds=True.
      tfds, tfds_data_dir: read TFDS's glue/<task> instead (from tfds_data_dir, default TFDS's).
      name: the task name (default glue_<task>_tsv, or glue_<task> from TFDS; + _t2t for text to text).
      vocabulary: a WordPieceVocabulary (encoder format) or any seqio vocabulary (text to text); default
        all-MiniLM-L6-v2's vocab.txt, GPT-2's BPE for text to text.
      text_to_text: register the text-to-text format.
    """
    if task not in glue.TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; expected one of {sorted(glue.TASKS)}.")
    definition = glue.TASKS[task]
    spec = definition.spec.with_name(name or (definition.spec.name if tfds else f"{definition.spec.name}_tsv"))
    vocabulary = _vocabulary(vocabulary, text_to_text, ENGLISH_VOCABULARY)
    if tfds:
        source = glue.TfdsSource(tfds_name=definition.tfds_name, splits=definition.tfds_splits,
                                 tfds_data_dir=tfds_data_dir)
        return _register(spec, source, vocabulary, text_to_text, functools.partial(glue.normalize_tfds, spec=spec))
    read_fn = glue.tsv_reader(definition, glue_dir or _glue_dir)
    source = spec_lib.examples_source(spec, read_fn, definition.files)
    return _register(spec, source, vocabulary, text_to_text, read_fn=read_fn)


@gin.configurable
def clue_task(task: str = gin.REQUIRED, clue_dir: Optional[str] = None, name: Optional[str] = None,
              vocabulary: Optional[seqio.Vocabulary] = None, text_to_text: bool = False) -> str:
    """Registers a CLUE task over the official files in `clue_dir` (default: the CLUE_DIR macro / env var) and
    returns its name (default clue_<task>); task: afqmc, tnews, iflytek, cmnli, ocnli, cluewsc2020, csl,
    cmrc2018, chid or c3. Vocabularies as `glue_task` (default the Chinese BERT vocab.txt)."""
    if task not in clue.SPECS:
        raise ValueError(f"Unknown CLUE task {task!r}; expected one of {sorted(clue.SPECS)}.")
    spec = clue.SPECS[task].with_name(name or clue.SPECS[task].name)
    read_fn = clue.reader(task, clue_dir or _clue_dir)
    source = spec_lib.examples_source(spec, read_fn, tuple(clue.SPLIT_FILES))
    return _register(spec, source, _vocabulary(vocabulary, text_to_text, CHINESE_VOCABULARY), text_to_text,
                     read_fn=read_fn)


@gin.configurable
def fewclue_task(task: str = gin.REQUIRED, fewclue_dir: Optional[str] = None, name: Optional[str] = None,
                 vocabulary: Optional[seqio.Vocabulary] = None, text_to_text: bool = False) -> str:
    """Registers a FewCLUE task (default folder: the FEWCLUE_DIR macro / env var, else
    <repo>/../shared/data/fewclue) and returns its name (default fewclue_<task>); task: bustm, chid, cluewsc,
    csl, csldcp, eprstmt, iflytek, ocnli or tnews. Vocabularies as `clue_task`."""
    if task not in fewclue.SPECS:
        raise ValueError(f"Unknown FewCLUE task {task!r}; expected one of {sorted(fewclue.SPECS)}.")
    spec = fewclue.SPECS[task].with_name(name or fewclue.SPECS[task].name)
    read_fn = fewclue.reader(task, fewclue_dir or _fewclue_dir)
    source = spec_lib.examples_source(spec, read_fn, fewclue.splits(task))
    return _register(spec, source, _vocabulary(vocabulary, text_to_text, CHINESE_VOCABULARY), text_to_text,
                     read_fn=read_fn)


@gin.configurable
def ud_pos_task(conllu_file: Optional[str] = None, name: str = "ud_en_pos",
                vocabulary: Optional[seqio.Vocabulary] = None, text_to_text: bool = False) -> str:
    """Registers UPOS tagging on a CoNLL-U file (default UD English-EWT dev in the shared data), split 80/20
    into train/validation by sentence number (plmjax.data.finetune.ud), and returns its name."""
    spec = ud.SPEC.with_name(name)
    read_fn = ud.reader(conllu_file)
    source = spec_lib.examples_source(spec, read_fn, ud.SPLITS)
    return _register(spec, source, _vocabulary(vocabulary, text_to_text, ENGLISH_VOCABULARY), text_to_text,
                     read_fn=read_fn)


DATA_DIR_MACROS = ("GLUE_DIR", "CLUE_DIR", "FEWCLUE_DIR")  # read by code (gin.query_parameter), not %NAME
_glue_dir = functools.partial(_data_dir, "GLUE_DIR")
_clue_dir = functools.partial(_data_dir, "CLUE_DIR")
_fewclue_dir = functools.partial(_data_dir, "FEWCLUE_DIR")

for _t2t in (False, True):
    for _task in glue.TASKS:
        glue_task(_task, tfds=True, text_to_text=_t2t)
        glue_task(_task, text_to_text=_t2t)
    for _task in clue.SPECS:
        clue_task(_task, text_to_text=_t2t)
    for _task in fewclue.SPECS:
        fewclue_task(_task, text_to_text=_t2t)
    ud_pos_task(text_to_text=_t2t)
