"""The further pre-training tasks: batches in the interface's layout, deterministic for a seed across runs and
across a resume (`skip_batches`), and the English + Chinese mixture sampled at its rates."""
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gin
import numpy as np
import pytest
import seqio

import plmjax.tasks  # noqa: F401
from plmjax.data import corpora, feature_converters, objective_tasks, pipeline

LENGTH = 32
BATCH = 8
FEATURES = {  # model features per converter family, beyond the family's base features
    "encoder": {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights"},
    "encoder_sentence_pair": {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights",
                              "encoder_token_types", "encoder_sentence_labels"},
    "encoder_span_boundary": {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights",
                              "encoder_span_left", "encoder_span_right", "encoder_span_positions"},
    "encoder_decoder": {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                        "decoder_loss_weights"},
    "prefix_lm": {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                  "decoder_causal_attention"},
}


def batches(task, objective, seed=0, skip=0, num=2, split="train"):
    family = objective_tasks.MODEL_FAMILY[objective]
    ds = pipeline.get_dataset(task, task_feature_lengths=objective_tasks.task_feature_lengths(objective, LENGTH),
                              feature_converter=feature_converters.make_feature_converter(family), split=split,
                              batch_size=BATCH, shuffle=True, seed=seed, skip_batches=skip)
    return list(ds.take(num).as_numpy_iterator())


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("objective", objective_tasks.OBJECTIVES)
def test_batches_are_deterministic_across_runs_and_a_resume(objective):
    task = f"pydoc_{objective}"
    first = batches(task, objective, num=4)
    family = objective_tasks.MODEL_FAMILY[objective]
    for batch in first:
        assert set(batch) == FEATURES[family]
        for key, value in batch.items():
            assert value.dtype == (np.float32 if key.endswith("loss_weights") else np.int32), key
            assert value.shape == ((BATCH, 1) if key == "encoder_sentence_labels" else (BATCH, LENGTH)), key
        assert batch[next(k for k in batch if k.endswith("target_tokens"))].max() < pipeline.vocab_size(task)
    assert_same(first, batches(task, objective, num=4))  # a second run
    assert_same(first[2:], batches(task, objective, skip=2, num=2))  # a run resumed after 2 batches
    other = batches(task, objective, seed=1, num=1)[0]
    assert any((other[k] != first[0][k]).any() for k in other)


def test_unknown_objective_and_segmenter_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown pre-training objective 'bert'"):
        objective_tasks.task_feature_lengths("bert", 32)
    with pytest.raises(ValueError, match="segmenter='jieba' is not available for 'pmlm'"):
        objective_tasks.task_kwargs("pmlm", None, None, segmenter="jieba")


@pytest.fixture(scope="module")
def shared_corpora():
    for path in ("fewclue/tnews/unlabeled.json", "wikitext-2/valid.txt"):
        if not (corpora.shared_data_dir() / path).is_file():
            pytest.skip(f"{path} not found under {corpora.shared_data_dir()} (set PLMJAX_SHARED_DATA)")


def test_mixture_samples_english_and_chinese_at_its_rates(shared_corpora):
    mixture = seqio.get_mixture_or_task(plmjax.tasks.objectives.MIXTURE)
    assert {t.name for t in mixture.tasks} == set(plmjax.tasks.objectives.MIXTURE_RATES)
    vocab = pipeline.vocabulary(mixture.name)
    assert vocab.vocab_size == 8192
    ds = pipeline.get_dataset(mixture.name, task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
                              feature_converter=feature_converters.make_feature_converter("encoder"), split="train",
                              batch_size=50, seed=3)
    chinese = total = 0
    for batch in ds.take(12).as_numpy_iterator():
        for row in batch["encoder_target_tokens"]:
            text = vocab.decode(row.tolist())
            cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
            latin = len(re.findall(r"[A-Za-z]", text))
            chinese += cjk > latin / 4  # Chinese text quotes a few Latin words, WikiText a rare Chinese name
            total += 1
    assert abs(chinese / total - 0.5) < 0.07, chinese / total  # 600 draws: 3.5 standard deviations


def test_fewclue_and_wikitext2_tasks(shared_corpora):
    for task, objective in (("fewclue_whole_word_mlm", "whole_word_mlm"), ("wikitext2_nsp", "nsp"),
                            ("wikitext2_bart_denoising", "bart_denoising")):
        batch = batches(task, objective, num=1, split="validation")[0]
        assert set(batch) == FEATURES[objective_tasks.MODEL_FAMILY[objective]]


def test_objective_text_files_task_from_gin(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMJAX_CACHE", str(tmp_path / "cache"))
    paragraphs = corpora.pydoc_paragraphs("validation")
    (tmp_path / "train.txt").write_text("\n".join(paragraphs[:1200]))
    (tmp_path / "valid.txt").write_text("\n".join(paragraphs[1200:]))
    gin.clear_config()
    try:
        gin.parse_config([
            "objective_text_files_task.name = 'my_corpus_span_masking'",
            f"objective_text_files_task.train_files = ['{tmp_path}/train.txt']",
            f"objective_text_files_task.validation_files = ['{tmp_path}/valid.txt']",
            "objective_text_files_task.objective = 'span_masking'",
            "objective_text_files_task.spm_vocab_size = 500",
            "objective_text_files_task.extra_ids = 12",
        ])
        name = plmjax.tasks.objectives.objective_text_files_task()
    finally:
        gin.clear_config()
    assert pipeline.vocab_size(name) == 512
    batch = batches(name, "span_masking", num=1, split="validation")[0]
    assert set(batch) == FEATURES["encoder_span_boundary"] and batch["encoder_loss_weights"].sum() > 0
    with pytest.raises(FileNotFoundError, match="objective_text_files_task.train_files"):
        plmjax.tasks.objectives.objective_text_files_task(
            name="x", train_files=[str(tmp_path / "missing.txt")], validation_files=[str(tmp_path / "valid.txt")])


def test_masking_is_dynamic_across_epochs():
    """RoBERTa's dynamic masking: when the stream repeats, the same text is masked anew."""
    ds = pipeline.get_dataset("pydoc_mlm", task_feature_lengths={"inputs": 128, "targets": 128},
                              feature_converter=feature_converters.make_feature_converter("encoder"), split="validation",
                              batch_size=16, shuffle=False, repeat=True)
    stacked = list(ds.take(30).as_numpy_iterator())
    targets = np.concatenate([b["encoder_target_tokens"] for b in stacked])
    weights = np.concatenate([b["encoder_loss_weights"] for b in stacked])
    window = tuple(targets[0, 1:21])
    later = [(i, j) for i in range(1, len(targets)) for j in range(100) if tuple(targets[i, j:j + 20]) == window]
    assert later, "the first example's text should come back in the second epoch"
    i, j = later[0]
    n = min(128 - j, 127)
    np.testing.assert_array_equal(targets[i, j:j + 40], targets[0, 1:41])
    first = weights[0, 1:1 + n] == 1
    assert first.sum() > 5 and (weights[i, j:j + n][first] == 1).mean() < 0.5  # about 15%: a fresh draw
