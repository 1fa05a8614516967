"""The encoder format equals transformers' BertTokenizerFast (an independent reference on the same vocab.txt):
ids and token types of real SST-2 sentences and FewCLUE pairs through the registered tasks, truncation lengths
of pairs, and the first-piece positions of tagged words."""
import json

import numpy as np
import pytest
import seqio

import plmjax.tasks  # noqa: F401  (registers the tasks)
from plmjax.data import feature_converters
from plmjax.data.finetune import encoding, ud
from plmjax.tasks import finetune as finetune_tasks


def task_batches(task, length, family="classification", split="validation", **kwargs):
    """Every converted example of a split, in file order (no shuffling, no batching)."""
    ds = seqio.get_dataset(task, task_feature_lengths={"inputs": length}, dataset_split=split, shuffle=False,
                           num_epochs=1, feature_converter=feature_converters.make_feature_converter(family, **kwargs))
    return list(ds.as_numpy_iterator())


def reference_rows(reference, texts_a, texts_b, length):
    out = reference(texts_a, texts_b, truncation=True, max_length=length, padding="max_length")
    return np.asarray(out["input_ids"]), np.asarray(out["token_type_ids"])


def test_pair_truncation_lengths_equal_tokenizers(english_reference):
    """Every (len a, len b, room) up to 12: the kept lengths of our rule are the Rust tokenizers' longest-first."""
    cases = [(a, b, room) for a in range(1, 13) for b in range(1, 13) for room in range(2, 16)]
    for a, b, room in cases:
        out = english_reference(" ".join(["cat"] * a), " ".join(["dog"] * b), truncation=True,
                                max_length=room + 3)["input_ids"]
        cat, dog = english_reference.convert_tokens_to_ids(["cat", "dog"])
        assert encoding.pair_lengths(a, b, room) == (out.count(cat), out.count(dog)), (a, b, room)


def test_sst2_ids_equal_bert_tokenizer_fast(shared_data, english_reference):
    with open(shared_data / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    examples = task_batches("glue_sst2_tsv", 24)
    assert len(examples) == len(rows) == 872
    ids, types = reference_rows(english_reference, [r[0] for r in rows], None, 24)
    np.testing.assert_array_equal(np.stack([e["encoder_input_tokens"] for e in examples]), ids)
    np.testing.assert_array_equal(np.stack([e["encoder_token_types"] for e in examples]), types)
    np.testing.assert_array_equal([e["labels"][0] for e in examples], [int(r[1]) for r in rows])
    np.testing.assert_array_equal([e["example_ids"][0] for e in examples], np.arange(872))
    assert (ids[:, -1] != 0).sum() > 100  # many sentences were truncated at 24 tokens


@pytest.mark.parametrize("task,fields", [("ocnli", ("sentence1", "sentence2")), ("bustm", ("sentence1", "sentence2")),
                                         ("tnews", ("sentence",))])
def test_fewclue_ids_equal_bert_tokenizer_fast(shared_data, chinese_reference, task, fields):
    with open(shared_data / "fewclue" / task / "dev_few_all.json", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    length = 20  # short: truncates one or both texts of most pairs
    examples = task_batches(f"fewclue_{task}", length)
    texts_b = [r[fields[1]] for r in records] if len(fields) == 2 else None
    ids, types = reference_rows(chinese_reference, [r[fields[0]] for r in records], texts_b, length)
    np.testing.assert_array_equal(np.stack([e["encoder_input_tokens"] for e in examples]), ids)
    np.testing.assert_array_equal(np.stack([e["encoder_token_types"] for e in examples]), types)
    np.testing.assert_array_equal([e["example_ids"][0] for e in examples], [r["id"] for r in records])
    labels = finetune_tasks.fewclue.SPECS[task].label_names
    expected = [labels.index(str(r["label"])) for r in records]
    np.testing.assert_array_equal([e["labels"][0] for e in examples], expected)


def test_tagging_first_pieces_equal_word_ids(shared_data, english_reference):
    sentences = ud.read_split(None, "validation")
    examples = task_batches("ud_en_pos", 48, family="tagging")
    assert len(examples) == len(sentences) == 400
    for sentence, example in zip(sentences[:100], examples):
        out = english_reference(sentence["words"], is_split_into_words=True, truncation=True, max_length=48,
                                padding="max_length")
        np.testing.assert_array_equal(example["encoder_input_tokens"], out["input_ids"])
        word_ids = out.word_ids()
        expected_labels, expected_weights = np.zeros(48, np.int32), np.zeros(48, np.float32)
        for position, word in enumerate(word_ids):
            if word is not None and (position == 0 or word_ids[position - 1] != word):
                expected_labels[position], expected_weights[position] = sentence["tags"][word], 1.0
        np.testing.assert_array_equal(example["tag_labels"], expected_labels)
        np.testing.assert_array_equal(example["tag_weights"], expected_weights)


def test_multiple_choice_rows_are_choice_major(shared_data, chinese_reference):
    with open(shared_data / "fewclue" / "chid" / "dev_few_all.json", encoding="utf-8") as f:
        records = [json.loads(line) for line in f][:5]
    examples = task_batches("fewclue_chid", 40, family="multiple_choice", num_choices=7)
    for record, example in zip(records, examples):
        ids, types = reference_rows(chinese_reference, record["candidates"], [record["content"]] * 7, 40)
        assert example["encoder_input_tokens"].shape == (7 * 40,)
        np.testing.assert_array_equal(example["encoder_input_tokens"].reshape(7, 40), ids)  # [choices, length]
        np.testing.assert_array_equal(example["encoder_token_types"].reshape(7, 40), types)
        assert example["labels"][0] == record["answer"]
