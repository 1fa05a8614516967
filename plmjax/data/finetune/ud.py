"""Universal Dependencies part-of-speech tagging (UPOS) from a CoNLL-U treebank, parsed with `conllu`.

The shared data holds only UD English-EWT's dev treebank, so `ud_en_pos` splits that one file: sentence i (in
file order, from 0) is 'validation' when i % 5 == 4, else 'train' (a deterministic 80/20 split, 1,601 / 400
sentences). Words are the syntactic words (multiword-token ranges such as `1-2 Today's` and empty nodes
such as `8.1` are skipped); tags are ids into the 17 UPOS tags.
"""
import functools
import os

from plmjax.data.finetune import readers
from plmjax.data.finetune.spec import DatasetSpec

UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ",
        "SYM", "VERB", "X")
VALIDATION_EVERY = 5  # sentence i is validation when i % 5 == 4
SPLITS = ("train", "validation")
EN_EWT_DEV = os.path.join("ud", "en_ewt-ud-dev.conllu")
UD_HELP = ("Point the environment variable PLMJAX_SHARED_DATA at the folder that holds ud/en_ewt-ud-dev.conllu, or "
           "register the task on another treebank with the gin configurable ud_pos_task(conllu_file=...).")

SPEC = DatasetSpec(name="ud_en_pos", benchmark="ud", kind="tagging", prefix="pos", label_names=UPOS,
                   metrics=("accuracy",))


def default_conllu_file() -> str:
    from plmjax.data import corpora  # pylint: disable=import-outside-toplevel
    return str(corpora.shared_data_dir() / EN_EWT_DEV)


def _blocks(path: str):
    """(first line number, text) of each sentence block of a CoNLL-U file."""
    lines, start = [], 1
    for number, line in readers.text_lines(path):
        if line.strip():
            lines.append(line)
            continue
        if lines:
            yield start, "".join(lines)
        lines, start = [], number + 1
    if lines:
        yield start, "".join(lines)


def read_sentences(path: str) -> list[dict]:
    """Every sentence as {'words', 'tags', 'idx'} (idx = sentence number in the file)."""
    import conllu  # pylint: disable=import-outside-toplevel
    sentences = []
    for start, block in _blocks(path):
        try:
            (tokens,) = conllu.parse(block)
        except Exception as e:  # conllu's ParseException and friends: a malformed line
            raise readers.format_error(path, start, f"malformed CoNLL-U sentence ({e})",
                                       "Fix the sentence: 10 tab-separated columns per word line") from None
        words, tags = [], []
        offset = sum(1 for line in block.splitlines() if line.startswith("#"))
        for position, token in enumerate(tokens):
            if not isinstance(token["id"], int):
                continue  # a multiword range or an empty node
            if token["upos"] not in UPOS:
                line = start + offset + position
                raise readers.format_error(path, line, f"unknown label {token['upos']!r} (UPOS tags are {UPOS})",
                                           "Fix the tag in column 4")
            words.append(token["form"])
            tags.append(UPOS.index(token["upos"]))
        if words:
            sentences.append({"words": words, "tags": tags, "idx": len(sentences)})
    return sentences


def read_split(conllu_file: readers.DataDir, split: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"ud_en_pos has no split {split!r}; it has {SPLITS}.")
    path = readers.check_file(readers.resolve_dir(conllu_file) or default_conllu_file(), "CoNLL-U treebank", UD_HELP)
    held_out = split == "validation"
    return [s for s in read_sentences(path) if (s["idx"] % VALIDATION_EVERY == VALIDATION_EVERY - 1) == held_out]


def reader(conllu_file: readers.DataDir = None):
    return functools.partial(read_split, conllu_file)
