"""Whole-word masking on real text: English (pydoc, SentencePiece pieces) and Chinese (FewCLUE, jieba words).

Word boundaries are recomputed here independently of the preprocessor (from piece strings; from jieba's own
segmentation and decoded prefixes), and no selected unit may split a word; rates and the 80/10/10 split are
measured on thousands of sentences.
"""
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

import plmjax.tasks  # noqa: F401
from plmjax.data import pipeline, vocabularies, whole_word_masking
from plmjax.data import corpora

LENGTH = 128


def task_examples(task_name, split, num_examples, seed=0):
    """Task features (before conversion) of the first examples of an unshuffled pass."""
    task = plmjax.tasks.pretraining.seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset({"inputs": LENGTH, "targets": LENGTH}, split=split, shuffle=False, seed=seed)
    examples = list(ds.take(num_examples).as_numpy_iterator())
    assert len(examples) >= min(num_examples, 500), "expected hundreds of packed examples"
    return examples


def check_bert_rates(examples, vocab):
    special = vocabularies.special_tokens(vocab)
    selected = np.concatenate([e["masked_lm_weights"] for e in examples]) == 1
    targets = np.concatenate([e["targets"] for e in examples])
    inputs = np.concatenate([e["inputs"] for e in examples])
    candidates = ~np.isin(targets, special.special_ids)
    assert not (selected & ~candidates).any(), "a special token was selected"
    assert ((inputs != targets) <= selected).all()
    rate = selected.sum() / candidates.sum()
    assert abs(rate - 0.15) < 0.01, rate
    n = selected.sum()
    masked = (selected & (inputs == special.mask_id)).sum() / n
    kept = (selected & (inputs == targets)).sum() / n
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01


def check_units_whole(starts, selected):
    """No unit (run from one start to the next) is partly selected; returns #selected units of >= 2 tokens."""
    begins = np.flatnonzero(starts)
    sizes = np.diff(np.append(begins, len(starts)))
    low, high = np.minimum.reduceat(selected, begins), np.maximum.reduceat(selected, begins)
    np.testing.assert_array_equal(low, high)
    return int(np.sum(high & (sizes > 1)))


@functools.cache
def english_examples():
    return task_examples("pydoc_whole_word_mlm", "train", 1000)


def test_english_whole_words_are_never_split():
    vocab = pipeline.vocabulary("pydoc_whole_word_mlm")
    special = np.array(vocabularies.special_tokens(vocab).special_ids)
    # Independently of the preprocessor's table: a word starts at a "▁" piece or next to a special token.
    begins_word = np.array([vocab.tokenizer.IdToPiece(i).startswith("▁") for i in range(vocab.vocab_size)])
    multi_piece_words_selected = 0
    for example in english_examples():
        targets, selected = example["targets"], example["masked_lm_weights"] == 1
        is_special = np.isin(targets, special)
        starts = begins_word[targets] | is_special
        starts[0] = True
        starts[1:] |= is_special[:-1]
        multi_piece_words_selected += check_units_whole(starts, selected)
    assert multi_piece_words_selected > 500  # the property is exercised, not vacuous


def test_english_rates_match_bert():
    check_bert_rates(english_examples(), pipeline.vocabulary("pydoc_whole_word_mlm"))


def test_word_start_table_of_a_wordpiece_vocabulary(tmp_path):
    texts = corpora.pydoc_paragraphs("validation")[:300]
    vocab = vocabularies.WordPieceVocabulary(vocabularies.train_wordpiece(texts, str(tmp_path), vocab_size=600))
    table = whole_word_masking.word_start_table(vocab)
    tokens = vocab.tokenizer.get_vocab()
    assert all(table[i] != token.startswith("##") for token, i in tokens.items() if not token.startswith("["))
    assert all(table[i] for token, i in tokens.items() if token.startswith("["))


# ----------------------------------------------------------------------------------------------- Chinese


@pytest.fixture(scope="module")
def fewclue(request):
    if not (corpora.shared_data_dir() / "fewclue" / "tnews" / "unlabeled.json").is_file():
        pytest.skip(f"FewCLUE not found under {corpora.shared_data_dir()} (set PLMJAX_SHARED_DATA)")
    return pipeline.vocabulary("fewclue_whole_word_mlm")


def test_chinese_units_are_unions_of_jieba_words(fewclue):
    """Every unit boundary is a jieba word boundary: checked from decoded prefixes against jieba's own cut."""
    jieba = whole_word_masking._jieba()  # pylint: disable=protected-access
    sentences = plmjax.tasks.objectives.fewclue_unlabeled_sentences("validation")
    checked = multi_char_words = 0
    for text in sentences[:3000]:
        ids = fewclue.encode(text)
        if " " in text or len(fewclue.decode(ids)) != len(text) or fewclue.unk_id in ids:
            continue  # decoded lengths must line up with the text's characters
        word_boundaries = set(np.cumsum([len(w) for w in jieba.cut(text)]))
        got_ids, starts = whole_word_masking.jieba_word_starts(fewclue, text)
        assert got_ids == ids
        for k in np.flatnonzero(starts)[1:]:
            assert len(fewclue.decode(ids[:k])) in word_boundaries, (text, k)
        multi_char_words += sum(len(w) > 1 for w in jieba.cut(text))
        checked += 1
    assert checked > 2000 and multi_char_words > 5000


def test_chinese_whole_words_are_never_split_and_rates_match(fewclue):
    examples = task_examples("fewclue_whole_word_mlm", "validation", 10_000)
    special = set(vocabularies.special_tokens(fewclue).special_ids)
    multi_token_units = 0
    for example in examples:
        targets, selected = example["targets"], example["masked_lm_weights"] == 1
        is_special = np.isin(targets, list(special))
        starts = example["word_starts"].astype(bool) | is_special
        starts[0] = True
        starts[1:] |= is_special[:-1]
        multi_token_units += check_units_whole(starts, selected)
    assert multi_token_units > 1000
    check_bert_rates(examples, fewclue)
