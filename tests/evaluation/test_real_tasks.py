"""predict / evaluate_params on DATA's real fine-tuning tasks: CMRC2018 from tiny files in the official format
(answers cut from the original context, every gold answer, official string ids in the submission) and the real
FewCLUE eprstmt dev split (every example once, accuracy equal to sklearn's on the unsharded model)."""

import json

import jax
import numpy as np
import pytest
import seqio
from sklearn import metrics as sk_metrics

from plmjax.data import feature_converters, pipeline
from plmjax.data.finetune import encoding, get_task_info, read_examples
from plmjax.evaluation import evaluate_params
from plmjax.evaluation.predict import predict
from plmjax.tasks import finetune as finetune_tasks
from tests.data.finetune import fixtures
from tests.evaluation import fakes


def converted_split(name, length, family, split):
    """Every converted example of a split (seqio directly, unbatched), stacked."""
    ds = seqio.get_dataset(name, task_feature_lengths={"inputs": length}, dataset_split=split, shuffle=False,
                           num_epochs=1, feature_converter=feature_converters.make_feature_converter(family))
    rows = list(ds.as_numpy_iterator())
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


@pytest.mark.slow
def test_cmrc2018_answers_gold_and_official_ids(tmp_path):
    root = fixtures.write_clue(tmp_path / "clue")
    name = finetune_tasks.clue_task(task="cmrc2018", clue_dir=str(root), name="eval_test_cmrc2018")
    info, length = get_task_info(name), 48
    run, params = fakes.make_run("encoder_span", "span_extraction", "span_extraction", {"inputs": length},
                                 vocab_size=pipeline.vocabulary(name, "inputs").vocab_size)
    preds = predict(params, run, name, "validation", 8, task_info=info)

    examples = read_examples(name, "validation")
    assert list(preds.example_ids) == [e["idx"] for e in examples]
    assert preds.official_ids == [e["id"] for e in examples]
    assert preds.targets == [[answer] for answer in fixtures.CMRC_ANSWERS]
    # The unsharded model's best span, brute force, cut from the context by DATA's encoder.
    batch = converted_split(name, length, "span_extraction", "validation")
    out = jax.device_get(run.module.apply({"params": jax.device_get(params)}, batch["encoder_input_tokens"],
                                          token_type_ids=batch["encoder_token_types"]))
    encoder = encoding.encoder_format(pipeline.vocabulary(name, "inputs"))
    for i, example in enumerate(examples):
        s, e = fakes.brute_force_span(out["start_logits"][i], out["end_logits"][i], batch["encoder_input_tokens"][i],
                                      batch["encoder_token_types"][i], max_answer_length=30)
        expected = encoder.span_text(example["question"], example["context"], s, e, length)
        assert preds.predictions[i] == expected and expected in fixtures.CMRC_CONTEXT

    results = evaluate_params(params, run, name, "test", batch_size=8, out_dir=str(tmp_path / "eval"), task_info=info)
    assert results == {"num_examples": len(fixtures.CMRC_ANSWERS)}  # the test split has no answers
    with open(tmp_path / "eval" / "submission" / "test" / info.submission_name, encoding="utf-8") as f:
        submission = json.load(f)
    assert list(submission) == [e["id"] for e in read_examples(name, "test")]
    assert all(answer in fixtures.CMRC_CONTEXT for answer in submission.values())


@pytest.mark.slow
def test_fewclue_eprstmt_dev_accuracy(shared_data, tmp_path):
    name = finetune_tasks.fewclue_task(task="eprstmt", fewclue_dir=str(shared_data / "fewclue"),
                                       name="eval_test_eprstmt")
    info, length = get_task_info(name), 64
    run, params = fakes.make_run("encoder_classifier", "classification", "classification", {"inputs": length},
                                 vocab_size=pipeline.vocabulary(name, "inputs").vocab_size, num_labels=info.num_labels)
    batch = converted_split(name, length, "classification", "validation")
    rows = [{"inputs": ids, "encoder_token_types": types}
            for ids, types in zip(batch["encoder_input_tokens"], batch["encoder_token_types"])]
    params = fakes.spread_classifier(run, params, rows)
    results = evaluate_params(params, run, name, "validation", batch_size=16, out_dir=str(tmp_path), task_info=info)

    assert results["num_examples"] == len(read_examples(name, "validation")) == len(rows)
    reference = np.argmax(fakes.reference_outputs(run, params, rows)["classification_logits"], -1)
    assert len(set(reference)) > 1
    assert results["accuracy"] == pytest.approx(100 * sk_metrics.accuracy_score(batch["labels"][:, 0], reference))
    assert info.metrics == ("accuracy",)
