"""TinyBERT through `plmjax train` (`train.distill`): a fine-tuned tiny teacher read from its checkpoint, task
distillation stage 1 (attention + hidden) then stage 2 (prediction) from stage 1's saved student; the teacher stays
bit-identical, the losses fall, the student alone is evaluated with the task's official metric and saved as a
checkpoint that `plmjax eval` reads; misconfigured runs stop with one message naming the gin binding."""
import dataclasses
import functools
import json
import os
import shutil

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest
from flax import traverse_util

from plmjax import launch, sharding
from plmjax.compression import distill
from plmjax.train import optim, saved_model
from plmjax.train.setup import ConfigError, setup
from tests.train import tiny_classification
from tests.train.finetune_checkpoint import save_random_encoder, tiny
from tests.train.saved_state import load_saved_state

TASK, LENGTHS = tiny_classification.TASK, {"inputs": 16}
TEACHER = dict()  # tiny(): 2 layers, 32 wide, 2 heads of 16
STUDENT = dict(emb_dim=16, head_dim=8, mlp_dim=32, num_encoder_layers=1)


@pytest.fixture(scope="module", autouse=True)
def tiny_task():
    tiny_classification.register()
    yield
    tiny_classification.remove()


def _train(model_dir, steps, config, learning_rate=3e-3, **kwargs):
    return launch.train(
        str(model_dir), model_config=config, architecture="encoder_classifier", objective="classification",
        task=TASK, task_feature_lengths=LENGTHS, batch_size=16, num_steps=steps,
        optimizer=optim.make_optimizer("adamw", learning_rate=learning_rate, warmup_ratio=0.1, total_steps=steps),
        mesh=sharding.create_mesh(devices=jax.devices()[:1]), log_every=5, eval_batches=None,
        checkpoint_every=steps, progress=False, **kwargs)


def _losses(model_dir, name="loss"):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [row[name] for row in map(json.loads, f) if row["split"] == "train"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny classifier fine-tuned from a random encoder: its dir and its final dev accuracy."""
    encoder, _ = save_random_encoder(tmp_path_factory.mktemp("encoder"), seed=7)
    model_dir = tmp_path_factory.mktemp("teacher")
    final = _train(model_dir, 60, tiny(**TEACHER), init_checkpoint=encoder)
    return str(model_dir), final["accuracy"]


@pytest.mark.slow  # ~70 s on 2 cores: the teacher's fine-tuning and two distillation runs
def test_two_stage_task_distillation_through_the_trainer(teacher, tmp_path, capsys):
    teacher_dir, teacher_accuracy = teacher
    assert teacher_accuracy > 85, teacher_accuracy
    settings = distill.DistillRun(teacher_config=tiny(**TEACHER), teacher_checkpoint=teacher_dir)
    stage1 = tmp_path / "intermediate"
    _train(stage1, 40, tiny(**STUDENT), learning_rate=1e-2, distill=settings)
    out = capsys.readouterr().out
    assert "into the model's teacher" in out and "Student saved to" in out
    loss, att, rep = _losses(stage1), _losses(stage1, "att_loss"), _losses(stage1, "rep_loss")
    np.testing.assert_allclose(np.add(att, rep), loss, rtol=1e-5)  # stage 1: attention + hidden, nothing else
    assert loss[-1] < 0.7 * loss[0] and rep[-1] < 0.7 * rep[0] and att[-1] < att[0], (att, rep)
    # the teacher in the run's checkpoint is the fine-tuned one, bit for bit
    saved_teacher = saved_model.load_saved_model(teacher_dir).params
    state = load_saved_state(stage1, 40)
    assert set(state["params"]) == {"teacher", "student", "projection"}
    run_teacher = traverse_util.flatten_dict(state["params"]["teacher"], sep="/")
    for name, value in traverse_util.flatten_dict(saved_teacher, sep="/").items():
        np.testing.assert_array_equal(np.asarray(run_teacher[name]), value, err_msg=name)
    student = saved_model.load_saved_model(str(stage1 / "student"))
    assert student.architecture == "encoder_classifier" and student.config.emb_dim == 16
    for a, b in zip(jax.tree.leaves(student.params), jax.tree.leaves(state["params"]["student"])):
        np.testing.assert_array_equal(a, np.asarray(b))

    stage2 = tmp_path / "prediction"
    final = _train(stage2, 60, tiny(**STUDENT), init_checkpoint=str(stage1 / "student"),
                   distill=distill.DistillRun(teacher_config=tiny(**TEACHER), teacher_checkpoint=teacher_dir,
                                              stage="prediction"))
    assert "its (all) into the model's student" in capsys.readouterr().out  # the stage-1 student, head included
    losses = _losses(stage2, "cls_loss")
    assert losses[-1] < losses[0], losses
    assert final["accuracy"] > 80, final  # the student alone, official metric on the whole dev split (chance ~50)
    assert json.loads((stage2 / "summary.json").read_text())["student"] == str(stage2 / "student")
    again = launch.evaluate(str(stage2 / "student"), str(tmp_path / "eval"), model_config=tiny(**STUDENT),
                            architecture="encoder_classifier", objective="classification", task=TASK,
                            task_feature_lengths=LENGTHS, batch_size=16,
                            mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    assert again["accuracy"] == final["accuracy"]


@pytest.mark.slow  # ~40 s on 2 cores (with the teacher fixture's fine-tuning, shared with the test above)
def test_ternary_student_trains_and_its_packed_file_evaluates_the_same(teacher, tmp_path, capsys):
    """TernaryBERT: the teacher's own copy as the student, ternary weights and 8-bit activations, all three losses
    (stage 'all'), hidden states compared without a projection; the packed 2-bit file scores the dev split exactly
    as the run's quantization-aware student did."""
    from plmjax import evaluation
    from plmjax.compression import packing, quantize
    teacher_dir, _ = teacher
    settings = distill.DistillRun(teacher_config=tiny(**TEACHER), teacher_checkpoint=teacher_dir, stage="all",
                                  fit_dense=False, quantize="ternary", activation_bits=8)
    final = _train(tmp_path, 30, tiny(**TEACHER), learning_rate=1e-3, init_checkpoint=teacher_dir, distill=settings)
    out = capsys.readouterr().out
    assert "Packed ternary student" in out
    loss, cls, att, rep = (_losses(tmp_path, name) for name in ("loss", "cls_loss", "att_loss", "rep_loss"))
    np.testing.assert_allclose(np.add(np.add(cls, att), rep), loss, rtol=1e-5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    # a tiny model: its float32 position table, norms and biases weigh as much as its 2-bit kernels
    assert summary["packed_bytes"] < summary["float32_bytes"] / 1.5, summary
    assert os.path.getsize(summary["student_packed"]) == summary["packed_bytes"]
    assert set(load_saved_state(tmp_path, 30)["params"]) == {"teacher", "student"}  # fit_dense=False: no projection
    method, weights = packing.load_packed(summary["student_packed"])
    run = setup(tiny(**TEACHER), "encoder_classifier", "classification", LENGTHS,
                sharding.create_mesh(devices=jax.devices()[:1]), task=TASK)  # the plain student
    run = dataclasses.replace(run, module=quantize.quantized_model(run.module, None, activation_bits=8))
    unpacked = evaluation.evaluate_params(weights, run, TASK, "validation", batch_size=16)
    assert method == "ternary" and unpacked["accuracy"] == final["accuracy"], (unpacked, final)
    # `plmjax eval` of the saved student reads its `quantize` metadata and scores it quantized, as trained
    again = launch.evaluate(str(tmp_path / "student"), str(tmp_path / "eval"), model_config=tiny(**TEACHER),
                            architecture="encoder_classifier", objective="classification", task=TASK,
                            task_feature_lengths=LENGTHS, batch_size=16,
                            mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    assert "evaluated quantized" in capsys.readouterr().out and again["accuracy"] == final["accuracy"]
    # ... and `plmjax eval --checkpoint <student>/packed.npz` scores the packed 2-bit file the same
    from_file = launch.evaluate(summary["student_packed"], str(tmp_path / "packed_eval"), model_config=tiny(**TEACHER),
                                architecture="encoder_classifier", objective="classification", task=TASK,
                                task_feature_lengths=LENGTHS, batch_size=16,
                                mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    assert "evaluated its packed weights" in capsys.readouterr().out
    assert from_file["accuracy"] == final["accuracy"], (from_file, final)

    # BinaryBERT: the ternary student split (`plmjax convert --tws`) evaluates as the ternary one (float32 halves:
    # at most one example's decision may move), then binary fine-tuning from it packs and evaluates the same
    from plmjax import cli
    tws_dir = tmp_path / "tws"
    assert cli.main(["convert", "--tws", "--model_dir", str(tmp_path / "student"), "--out", str(tws_dir)]) in (0, None)
    evaluate = functools.partial(launch.evaluate, model_config=tiny(**TEACHER), architecture="encoder_classifier",
                                 objective="classification", task=TASK, task_feature_lengths=LENGTHS, batch_size=16,
                                 mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    split = evaluate(str(tws_dir), str(tmp_path / "tws_eval"))
    assert abs(split["accuracy"] - final["accuracy"]) <= 100 / split["num_examples"] + 1e-9, (split, final)
    binary_dir = tmp_path / "binary"
    settings = dataclasses.replace(settings, quantize="split_binary")
    binary = _train(binary_dir, 10, tiny(**TEACHER), learning_rate=1e-3, init_checkpoint=str(tws_dir),
                    distill=settings)
    assert "Packed split_binary student" in capsys.readouterr().out
    method, weights = packing.load_packed(json.loads((binary_dir / "summary.json").read_text())["student_packed"])
    unpacked = evaluation.evaluate_params(weights, run, TASK, "validation", batch_size=16)
    assert method == "split_binary" and unpacked["accuracy"] == binary["accuracy"], (unpacked, binary)
    assert evaluate(str(binary_dir / "student"), str(tmp_path / "binary_eval"))["accuracy"] == binary["accuracy"]
    packed = str(binary_dir / "student" / "packed.npz")
    assert evaluate(packed, str(tmp_path / "binary_packed_eval"))["accuracy"] == binary["accuracy"]
    # a packed file beside a model that was not trained quantized: one message naming it
    plain = tmp_path / "plain"
    shutil.copytree(teacher_dir, plain)
    shutil.copy(packed, plain / "packed.npz")
    with pytest.raises(ConfigError, match="not a quantized one"):
        evaluate(str(plain / "packed.npz"), str(tmp_path / "plain_eval"))


@pytest.mark.slow  # ~20 s on 2 cores (with the teacher fixture's fine-tuning, shared with the tests above)
def test_a_run_that_died_writing_its_student_writes_it_again_when_resumed(teacher, tmp_path, monkeypatch):
    """The run's end: the student saved, then the packed export fails (as a kill there would stop it). Resumed,
    the run finds its last checkpoint at the final step and writes the student again over its own earlier one
    (which it did not restore from); a student with clip=None (nothing clipped) keeps that setting."""
    from plmjax.compression import packing
    teacher_dir, _ = teacher
    settings = distill.DistillRun(teacher_config=tiny(**TEACHER), teacher_checkpoint=teacher_dir, stage="all",
                                  fit_dense=False, quantize="ternary", activation_bits=8, clip=None)
    export = packing.export_packed

    def dies(*args, **kwargs):
        raise OSError("disk full (test)")
    monkeypatch.setattr(packing, "export_packed", dies)
    with pytest.raises(OSError, match="disk full"):
        _train(tmp_path, 12, tiny(**TEACHER), learning_rate=1e-3, init_checkpoint=teacher_dir, distill=settings)
    assert saved_model.load_saved_model(str(tmp_path / "student")).metadata["quantize"]["clip"] is None
    assert not (tmp_path / "student" / "packed.npz").exists()
    monkeypatch.setattr(packing, "export_packed", export)
    final = _train(tmp_path, 12, tiny(**TEACHER), learning_rate=1e-3, init_checkpoint=teacher_dir, distill=settings)
    student = saved_model.load_saved_model(str(tmp_path / "student"))
    assert sorted(os.listdir(tmp_path / "student" / "checkpoints")) == ["1"]  # the new one, the old one deleted
    run_student = traverse_util.flatten_dict(load_saved_state(tmp_path, 12)["params"]["student"], sep="/")
    for name, value in traverse_util.flatten_dict(student.params, sep="/").items():
        np.testing.assert_array_equal(np.asarray(run_student[name]), value, err_msg=name)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert os.path.getsize(summary["student_packed"]) == summary["packed_bytes"]
    again = launch.evaluate(str(tmp_path / "student"), str(tmp_path / "eval_again"), model_config=tiny(**TEACHER),
                            architecture="encoder_classifier", objective="classification", task=TASK,
                            task_feature_lengths=LENGTHS, batch_size=16,
                            mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    assert again["accuracy"] == final["accuracy"], (again, final)


@pytest.mark.slow  # ~40 s on 2 cores
def test_dynabert_trains_every_subnetwork_and_scores_each(teacher, tmp_path):
    """DynaBERT through the trainer: the student starts as the teacher's copy, widths (1, 0.5) x depths (1, 0.5)
    train in one step; at the end each sub-network is cut out and scored alone, the full one as the run's own."""
    teacher_dir, _ = teacher
    settings = distill.DistillRun(teacher_config=tiny(**TEACHER), teacher_checkpoint=teacher_dir, method="dynabert",
                                  width_mults=(1.0, 0.5), depth_mults=(1.0, 0.5), lambda2=1.0)
    final = _train(tmp_path, 20, tiny(**TEACHER), learning_rate=1e-3, init_checkpoint=teacher_dir, distill=settings)
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0], losses
    with open(tmp_path / "metrics.jsonl") as f:
        first = next(row for row in map(json.loads, f) if row["split"] == "train")
    # the full student starts as the teacher (its hidden states equal), the cut ones do not
    assert first["rep_loss/w1_d1"] < 0.05 * first["rep_loss/w0.5_d0.5"], first
    results = json.loads((tmp_path / "eval" / "subnetworks.json").read_text())
    assert sorted(results) == ["w0.5_d0.5", "w0.5_d1", "w1_d0.5", "w1_d1"]
    assert results["w1_d1"]["accuracy"] == final["accuracy"]
    assert results["w0.5_d0.5"]["parameters"] < results["w1_d0.5"]["parameters"] < results["w1_d1"]["parameters"]
    assert "| 0.5 |" in (tmp_path / "eval" / "subnetworks.md").read_text()


@pytest.mark.slow  # the teacher fixture's fine-tuning (shared with the tests above), then a few seconds
def test_plmjax_convert_rewire_keeps_the_function_and_orders_heads_by_importance(teacher, tmp_path):
    from plmjax import cli, models
    from plmjax.convert import rewire
    teacher_dir, _ = teacher
    out = tmp_path / "rewired"
    assert cli.main(["convert", "--rewire", "--task", TASK, "--sequence_length", "16", f"--model_dir={teacher_dir}",
                     f"--out={out}"]) == 0
    before, after = saved_model.load_saved_model(teacher_dir), saved_model.load_saved_model(str(out))
    model = models.build_model("encoder_classifier", before.config, num_labels=2)
    tokens = np.asarray(tiny_classification._examples(8, 3)["inputs"])
    logits = [np.asarray(model.apply({"params": m.params}, tokens, deterministic=True)["classification_logits"])
              for m in (before, after)]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-5, atol=1e-6)
    summary = rewire.rewire_checkpoint(teacher_dir, str(tmp_path / "again"), TASK, sequence_length=16)
    for line in summary["head_order"]:  # 'layer 0: 1,0': the heads moved as reported
        layer, order = line.removeprefix("layer ").split(": ")
        key = ("bert", "encoder", f"layers_{layer}", "self_attention", "out", "kernel")
        np.testing.assert_array_equal(traverse_util.flatten_dict(after.params)[key],
                                      traverse_util.flatten_dict(before.params)[key][[int(h) for h in order.split(",")]])


def _setup(objective="classification", architecture="encoder_classifier", **settings):
    defaults = dict(teacher_config=tiny(**TEACHER), teacher_checkpoint="runs/teacher")
    return setup(tiny(**STUDENT), architecture, objective, LENGTHS, sharding.create_mesh(devices=jax.devices()[:1]),
                 task=TASK if architecture == "encoder_classifier" else None,
                 distill=distill.DistillRun(**{**defaults, **settings}))


def test_the_run_is_the_pair_and_the_student_keeps_its_objective():
    run = _setup()
    assert isinstance(run.module, distill.Distillation) and run.objective.name == "tinybert_intermediate"
    assert run.student.objective.name == "classification" and run.student.module == run.module.student.module
    assert _setup(stage="prediction").objective.name == "tinybert_prediction"


@pytest.mark.parametrize("settings, message", [
    (dict(teacher_config=None), "distill.teacher_config is not set"),
    (dict(teacher_checkpoint=None), "distill.teacher_checkpoint is not set"),
    (dict(stage="final"), "distill.stage='final'"),
    (dict(teacher_config=tiny(vocab_size=128)), "vocab_size: teacher 128, student 64"),
    (dict(teacher_config=tiny(max_length=8)), "longer than the model allows"),
    (dict(stage="general"), "distils an encoder on MLM batches"),
])
def test_misconfigured_runs_give_one_message(settings, message):
    with pytest.raises((ConfigError, distill.DistillationConfigError), match=message.replace("(", r"\(")):
        _setup(**settings)


def test_distillation_and_peft_do_not_combine():
    with pytest.raises(ConfigError, match="train.distill and train.peft"):
        setup(tiny(**STUDENT), "encoder_classifier", "classification", LENGTHS,
              sharding.create_mesh(devices=jax.devices()[:1]), task=TASK, peft="lora",
              distill=distill.DistillRun(teacher_config=tiny(), teacher_checkpoint="runs/teacher"))
