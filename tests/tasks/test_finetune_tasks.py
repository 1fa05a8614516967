"""The registered fine-tuning tasks: metadata, batches of every GLUE (TFDS mock data and TSV), CLUE (official-
format fixtures) and FewCLUE (real files) task in both formats, lazy registration and clear errors."""
import gin
import numpy as np
import pytest
import tensorflow_datasets as tfds

import plmjax.tasks  # noqa: F401
from plmjax.data import feature_converters, pipeline
from plmjax.data.finetune import clue, encoding, fewclue, get_task_info, glue, read_examples, readers, task_names, vocab
from plmjax.tasks import finetune as finetune_tasks
from tests.data.finetune import fixtures

LENGTH = 32
METRICS = {"accuracy", "f1", "matthews_corrcoef", "pearson", "spearman", "exact_match", "span_f1"}
FAMILY = {"classification": "classification", "regression": "classification", "span_extraction": "span_extraction",
          "multiple_choice": "multiple_choice", "tagging": "tagging"}


def first_batch(task, split="validation", batch_size=2, length=LENGTH):
    info = get_task_info(task)
    if info.kind == "text_to_text":
        converter, lengths = feature_converters.make_feature_converter("encoder_decoder"), {"inputs": 96,
                                                                                            "targets": 48}
    else:
        kwargs = {"num_choices": info.num_choices} if info.kind == "multiple_choice" else {}
        converter, lengths = feature_converters.make_feature_converter(FAMILY[info.kind], **kwargs), {"inputs": length}
    ds = pipeline.get_dataset(task, task_feature_lengths=lengths, feature_converter=converter, split=split,
                              batch_size=batch_size, shuffle=False, repeat=False)
    return next(ds.as_numpy_iterator())


def check_encoder_batch(batch, info, batch_size=2):
    width = LENGTH * (info.num_choices or 1)
    expected = {"encoder_input_tokens": (batch_size, width), "encoder_token_types": (batch_size, width),
                "example_ids": (batch_size, 1)}
    if info.kind in ("classification", "regression"):
        expected.update(labels=(batch_size, 1), label_values=(batch_size, 1))
    elif info.kind == "span_extraction":
        expected.update(start_positions=(batch_size, 1), end_positions=(batch_size, 1))
    elif info.kind == "multiple_choice":
        expected.update(labels=(batch_size, 1))
    elif info.kind == "tagging":
        expected.update(tag_labels=(batch_size, width), tag_weights=(batch_size, width))
    assert {k: v.shape for k, v in batch.items()} == expected
    for name, value in batch.items():
        assert value.dtype == (np.float32 if name in ("label_values", "tag_weights") else np.int32), name
    assert (batch["encoder_input_tokens"][:, 0] != 0).all()  # every row (choice) starts with [CLS]
    if "labels" in batch:
        assert (batch["labels"] >= -1).all() and (batch["labels"] < max(info.num_labels, info.num_choices)).all()


def test_task_infos():
    names = task_names()
    for spec in [*(t.spec for t in glue.TASKS.values()), *clue.SPECS.values(), *fewclue.SPECS.values()]:
        assert spec.name in names and f"{spec.name}_t2t" in names
    assert "glue_sst2_tsv" in names and "glue_mnli_mismatched_tsv_t2t" in names and "ud_en_pos" in names
    for name in names:
        info = get_task_info(name)
        assert set(info.metrics) <= METRICS, name
        if name.startswith(("glue_", "clue_", "fewclue_")):  # other tests register their own toy tasks
            assert info.submission_name, name
    assert get_task_info("glue_stsb").num_labels == 1 and get_task_info("fewclue_csldcp").num_labels == 67
    assert get_task_info("clue_chid").num_choices == 10 and get_task_info("fewclue_chid").num_choices == 7
    assert get_task_info("glue_mnli_mismatched").submission_name == "MNLI-mm.tsv"
    assert get_task_info("glue_sst2_t2t").label_words == ("negative", "positive")
    with pytest.raises(ValueError, match="No fine-tuning task 'glue_nope'.*glue_sst2"):
        get_task_info("glue_nope")


def test_glue_label_order_is_tfds(tmp_path):
    """Label ids are TFDS's ClassLabel ids, so TSV and TFDS tasks agree (the text-to-text words are its names)."""
    for prefix, task in glue.TASKS.items():
        if task.spec.kind == "classification":
            names = tfds.builder(task.tfds_name.split(":")[0]).info.features["label"].names
            assert list(task.spec.label_words or task.spec.label_names) == names, prefix


@pytest.mark.parametrize("prefix", sorted(glue.TASKS))
def test_glue_tfds_mock_batches(prefix):
    split = "test" if prefix == "ax" else "validation"
    with tfds.testing.mock_data(num_examples=4):
        batch = first_batch(f"glue_{prefix}", split)
        check_encoder_batch(batch, get_task_info(f"glue_{prefix}"))
        if prefix in ("stsb", "mnli"):
            t2t = first_batch(f"glue_{prefix}_t2t", split)
            assert t2t["encoder_input_tokens"].shape == (2, 96) and (t2t["decoder_target_tokens"][:, 0] != 0).all()


def test_glue_tsv_tasks(tmp_path, monkeypatch):
    glue_dir = fixtures.write_glue(tmp_path)
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))  # the default tasks read GLUE_DIR when data is asked for
    for prefix, task in glue.TASKS.items():  # every split of every task is read in tests/data/finetune
        split = "test" if prefix == "ax" else "validation"
        batch = first_batch(f"glue_{prefix}_tsv", split, batch_size=1)
        check_encoder_batch(batch, get_task_info(f"glue_{prefix}_tsv"), batch_size=1)
    assert first_batch("glue_mnli_mismatched_tsv", "test", batch_size=1)["labels"].tolist() == [[-1]]
    t2t = first_batch("glue_stsb_tsv_t2t", "validation", batch_size=1)
    vocabulary = finetune_tasks.TEXT_TO_TEXT_VOCABULARY
    assert vocabulary.decode(t2t["encoder_input_tokens"][0].tolist()) == (
        "stsb sentence1: A man with a hard hat is dancing. sentence2: A man wearing a hard hat is dancing.")
    assert vocabulary.decode(t2t["decoder_target_tokens"][0].tolist()) == "3.8"


def test_glue_dir_gin_macro(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    fixtures.write_glue(tmp_path)
    with gin.unlock_config():
        gin.parse_config(f"GLUE_DIR = '{tmp_path}'")
    try:
        assert first_batch("glue_rte_tsv", "train", batch_size=1)["labels"].tolist() == [[1]]
    finally:
        gin.clear_config()


def test_clue_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUE_DIR", str(fixtures.write_clue(tmp_path)))
    for prefix in clue.SPECS:  # every split is read in tests/data/finetune
        check_encoder_batch(first_batch(f"clue_{prefix}", "train"), get_task_info(f"clue_{prefix}"))
    assert (first_batch("clue_chid", "test")["labels"] == -1).all()
    for prefix in ("cmrc2018", "c3", "cluewsc2020"):
        batch = first_batch(f"clue_{prefix}_t2t")
        assert (batch["decoder_target_tokens"][:, 0] != 0).all()


def test_cmrc2018_positions_decode_to_the_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUE_DIR", str(fixtures.write_clue(tmp_path)))
    batch = first_batch("clue_cmrc2018", "train", batch_size=3, length=64)
    vocabulary = finetune_tasks.CHINESE_VOCABULARY
    for row, answer in enumerate(fixtures.CMRC_ANSWERS):
        start, end = batch["start_positions"][row, 0], batch["end_positions"][row, 0]
        assert 0 < start <= end and batch["encoder_token_types"][row, start] == 1
        span = vocabulary.decode(batch["encoder_input_tokens"][row, start:end + 1].tolist())
        assert span.replace(" ", "") == answer.lower()
    short = first_batch("clue_cmrc2018", "train", batch_size=3, length=24)  # a 19-piece context window
    assert short["start_positions"][:2, 0].tolist() == short["end_positions"][:2, 0].tolist() == [0, 0]  # cut: [CLS]
    np.testing.assert_array_equal(short["start_positions"][2], batch["start_positions"][2])  # at the start: kept
    test = first_batch("clue_cmrc2018", "test", batch_size=3, length=64)
    assert (test["start_positions"] == 0).all()
    examples = read_examples("clue_cmrc2018", "train")  # what an evaluator maps predicted positions back with
    assert [e["idx"] for e in examples] == batch["example_ids"][:, 0].tolist()
    encoder = encoding.encoder_format(vocabulary)
    for row, example in enumerate(examples):
        start, end = batch["start_positions"][row, 0], batch["end_positions"][row, 0]
        assert encoder.span_text(example["question"], example["context"], start, end, 64) == example["answer"]
    assert encoder.span_text(examples[0]["question"], examples[0]["context"], 0, 0, 64) == ""


@pytest.mark.parametrize("prefix", sorted(fewclue.SPECS))
def test_fewclue_tasks(shared_data, prefix):
    check_encoder_batch(first_batch(f"fewclue_{prefix}", "train"), get_task_info(f"fewclue_{prefix}"))
    if prefix not in ("chid", "csldcp", "ocnli", "tnews"):  # every line of both splits is read in tests/data
        return
    batch = first_batch(f"fewclue_{prefix}_t2t")
    words = get_task_info(f"fewclue_{prefix}_t2t").label_words
    target = finetune_tasks.TEXT_TO_TEXT_VOCABULARY.decode(batch["decoder_target_tokens"][0].tolist())
    assert target in words if words else target


def test_fewclue_unlabeled_and_ud(shared_data):
    assert (first_batch("fewclue_tnews", "unlabeled")["labels"] == -1).all()
    batch = first_batch("ud_en_pos", "train")
    check_encoder_batch(batch, get_task_info("ud_en_pos"))
    t2t = first_batch("ud_en_pos_t2t", "train", batch_size=1)
    tags = finetune_tasks.TEXT_TO_TEXT_VOCABULARY.decode(t2t["decoder_target_tokens"][0].tolist()).split()
    assert tags and set(tags) <= set(get_task_info("ud_en_pos").label_names)


def test_registration_is_lazy_and_errors_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("CLUE_DIR", raising=False)
    missing = str(tmp_path / "nowhere")
    monkeypatch.setenv("PLMJAX_SHARED_DATA", missing)
    name = finetune_tasks.fewclue_task("tnews", name="lazy_fewclue_tnews")  # reads nothing
    assert finetune_tasks.glue_task("sst2", glue_dir=missing, name="lazy_sst2") == "lazy_sst2"
    lazy = vocab.LazyWordPieceVocabulary(lambda: missing)  # no file is opened until the vocabulary is used
    assert finetune_tasks.ud_pos_task(conllu_file=missing, name="lazy_ud", vocabulary=lazy) == "lazy_ud"
    with pytest.raises(FileNotFoundError, match="FEWCLUE_DIR"):
        first_batch(name)
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        first_batch("lazy_sst2")
    with pytest.raises(FileNotFoundError, match="No CLUE data folder is set for clue_afqmc.*CLUE_DIR"):
        first_batch("clue_afqmc")


def test_malformed_line_error_reaches_the_user(tmp_path):
    (tmp_path / "afqmc").mkdir()
    (tmp_path / "afqmc" / "dev.json").write_text('{"sentence1": "a", "sentence2": "b", "label": "1"}\n{oops\n')
    name = finetune_tasks.clue_task("afqmc", clue_dir=str(tmp_path), name="broken_afqmc")
    with pytest.raises(readers.DataFormatError, match=r"afqmc/dev.json, line 2: malformed JSON"):
        first_batch(name)


def test_multiple_choice_converter_checks_num_choices(shared_data):
    converter = feature_converters.make_feature_converter("multiple_choice", num_choices=4)
    with pytest.raises(ValueError, match="7 choices per example but the converter was built with num_choices=4"):
        pipeline.get_dataset("fewclue_chid", task_feature_lengths={"inputs": 16}, feature_converter=converter,
                             split="validation", batch_size=2, shuffle=False, repeat=False)
    inferred = feature_converters.make_feature_converter("multiple_choice")  # num_choices from the data's shape
    ds = pipeline.get_dataset("fewclue_chid", task_feature_lengths={"inputs": 16}, feature_converter=inferred,
                              split="validation", batch_size=2, shuffle=False, repeat=False)
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (2, 7 * 16)
