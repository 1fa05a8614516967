"""bert2BERT's two-stage pre-training (compression/two_stage.py) in the trainer's step: a sub-model of k l_b
layers is the model cut to its bottom k l_b layers; a stage-1 step changes only the sampled sub-model's top block
and the MLM head (every other parameter and its AdamW moments bit-identical, even after that block trained in an
earlier step), the sampled depth follows the seed-and-step rule and is uniform; after stage 1 every parameter
group trains, each bias-corrected with its own update count (the head as the ordinary step moves it); a
misconfigured run stops with one message naming the gin binding."""
import dataclasses
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

from plmjax import cli, models, sharding
from plmjax.compression import two_stage
from plmjax.objectives import mlm
from plmjax.train import loop, optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib
from plmjax.train.setup import ConfigError

CONFIG = models.tiny_encoder(vocab_size=64, max_length=16, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                             num_encoder_layers=6, dropout_rate=0.0, attention_dropout_rate=0.0)
SCHEDULE = two_stage.TwoStage(block_layers=2, stage1_steps=5)  # sub-models of 2, 4 and 6 layers
# The steps' tests: 3 layers in blocks of 1 (sub-models of 1, 2 and 3 layers: four branches of the switch to
# compile), the MLM loss on full logits (the sparse head's inputs are the sub-model test's).
STEP_CONFIG = dataclasses.replace(CONFIG, num_encoder_layers=3)
STEP_SCHEDULE = two_stage.TwoStage(block_layers=1, stage1_steps=5)
OBJECTIVE = dataclasses.replace(mlm.MLM, sparse_model_inputs=None)
LENGTHS = {"inputs": 8}


def _batch(seed):
    """An MLM batch: random tokens, 2-3 predicted positions a row."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(5, 64, (8, 8)).astype(np.int32)
    weights = (rng.random((8, 8)) < 0.3).astype(np.float32)
    weights[:, 0] = 1.0
    inputs = np.where(weights > 0, 3, targets).astype(np.int32)
    return {"encoder_input_tokens": inputs, "encoder_target_tokens": targets, "encoder_loss_weights": weights,
            "encoder_token_types": np.zeros_like(inputs)}


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree))


def test_a_sub_model_is_the_model_cut_to_its_bottom_layers():
    """Depth k l_b through `SubModel` (the full parameter tree in) = a model built with k l_b layers from the
    full tree with the layers above removed by hand, MLM logits at every position and at gathered positions."""
    module = models.build_model("encoder", CONFIG)
    params = jax.jit(lambda key: module.init(key, jnp.ones((1, 8), jnp.int32))["params"])(jax.random.key(1))
    params = jax.tree.map(np.asarray, jax.device_get(nn.meta.unbox(params)))
    batch = _batch(0)
    inputs = {"input_ids": batch["encoder_input_tokens"], "token_type_ids": batch["encoder_token_types"]}
    sparse, _ = mlm.sparse_model_inputs(batch)
    for sub in SCHEDULE.sub_models(module):
        cut = models.build_model("encoder", dataclasses.replace(CONFIG, num_encoder_layers=sub.depth))
        kept = {**params, "encoder": {k: v for k, v in params["encoder"].items()
                                      if not k.startswith("layers_") or int(k.split("_")[1]) < sub.depth}}
        for kwargs in (inputs, sparse):
            got = np.asarray(sub.apply({"params": params}, **kwargs, deterministic=True)["logits"], np.float64)
            want = np.asarray(cut.apply({"params": kept}, **kwargs, deterministic=True)["logits"], np.float64)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert [sub.depth for sub in SCHEDULE.sub_models(module)] == [2, 4, 6]


@pytest.fixture(scope="module")
def steps():
    """Six steps of the two-stage step (five in stage 1), each with its sampled branch and the parameters and AdamW
    moments before and after it; the ordinary step from the state the sixth step starts from; the final state."""
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    module = models.build_model("encoder", STEP_CONFIG)
    adamw, schedule = optim.make_optimizer("adamw", learning_rate=1e-2, warmup_steps=0, total_steps=20,
                                           weight_decay=0.1)
    tx = two_stage.optimizer(adamw, STEP_SCHEDULE, STEP_CONFIG)
    state, shardings = state_lib.create_train_state(module, tx, "encoder", LENGTHS, mesh, seed=3)
    two = step_lib.jit_train_step(module, OBJECTIVE, tx, schedule, mesh, shardings, two_stage=STEP_SCHEDULE)

    def snapshot(state):  # optax.chain(clip, (scale_by_adam, ...)): the moments are inner[1][0]
        adam = state.opt_state.inner[1][0]
        return _flat(state.params), _flat(adam.mu), _flat(adam.nu)

    history = []
    for i in range(STEP_SCHEDULE.stage1_steps + 1):
        index = int(STEP_SCHEDULE.branch(jax.random.fold_in(state.rng, state.step), state.step, STEP_CONFIG))
        if i == STEP_SCHEDULE.stage1_steps:  # the ordinary AdamW step from the same state, its count the step's
            _, plain_shardings = state_lib.state_shardings(module, adamw, "encoder", LENGTHS, mesh)
            plain = step_lib.jit_train_step(module, OBJECTIVE, adamw, schedule, mesh, plain_shardings)
            inner = optax.tree_utils.tree_set(state.opt_state.inner, count=state.step)
            ordinary = _flat(plain(jax.tree.map(jnp.copy, state.replace(opt_state=inner)), _batch(i))[0].params)
            group_updates = np.asarray(state.opt_state.updates)
        before = snapshot(state)
        state, metrics = two(state, _batch(i))
        history.append((index, before, snapshot(state), float(metrics["sub_model_layers"][0])))
    return module, history, ordinary, group_updates, float(schedule(STEP_SCHEDULE.stage1_steps))


def test_a_stage1_step_changes_only_the_sampled_top_block_and_the_head(steps):
    """Parameters outside the sampled sub-model's top block and the head, and their AdamW moments, stay
    bit-identical (weight decay 0.1, learning rate 1e-2: they would move), also when they trained in an earlier
    step (non-zero moments); every parameter of the block and the head moves; the branch is the seed-and-step
    rule's (`TwoStage.branch` on the state's key and step), the logged depth its sub-model's."""
    module, history, *_ = steps
    subs = STEP_SCHEDULE.sub_models(module)
    frozen_with_momentum = 0
    for index, before, after, depth in history[:STEP_SCHEDULE.stage1_steps]:
        sub = subs[index]
        assert depth == sub.depth
        trainable = traverse_util.flatten_dict(sub.trainable(traverse_util.unflatten_dict(before[0])))
        for path, train in trainable.items():
            assert train == ((path[:2] == ("encoder", f"layers_{sub.depth - 1}")) or path[0] == "mlm_head"), path
            if train:
                assert np.any(before[0][path] != after[0][path]), path
                continue
            for old, new in zip(before, after):  # parameter, first and second moments
                np.testing.assert_array_equal(old[path], new[path], err_msg="/".join(path))
            frozen_with_momentum += bool(np.any(before[1][path] != 0))
        assert not trainable[("token_embedder", "embedding")]  # the tied vocabulary projection: an embedding
    assert frozen_with_momentum, [index for index, *_ in history]  # the point of masking the optimizer


def test_the_sampled_depth_follows_the_seed_and_step_rule_and_is_uniform():
    """Over 3,000 steps each of 3 sub-models is drawn; Pearson's chi-square (2 degrees of freedom) below its 0.1%
    critical value 13.8. The draw depends only on the key and the step: the same again, another seed not."""
    def drawn(seed):
        key = jax.random.key(seed)
        return np.asarray(jax.vmap(lambda s: two_stage.sample(jax.random.fold_in(key, s), 3))(jnp.arange(3000)))
    first = drawn(0)
    counts = np.bincount(first, minlength=3)
    assert counts.min() > 0 and np.sum((counts - 1000.0) ** 2 / 1000.0) < 13.8, counts
    np.testing.assert_array_equal(first, drawn(0))
    assert np.any(first != drawn(1))


def test_after_stage1_every_group_trains_each_with_its_own_adam_count(steps):
    """The sixth step trains the full model. The head (updated at every step: its count is the step's) moves as
    the ordinary AdamW step moves it; the word embeddings, never updated in stage 1, take Adam's first step: each
    entry the learning rate in size, less weight decay (a global count would bias-correct them as if trained five
    times). The groups' counts after stage 1: each block the times its sub-model was drawn, the head 5, the rest 0."""
    _, history, ordinary, group_updates, lr = steps
    index, before, after, depth = history[STEP_SCHEDULE.stage1_steps]
    assert index == len(STEP_SCHEDULE.depths(STEP_CONFIG)) and depth == STEP_CONFIG.num_encoder_layers
    drawn = np.bincount([i for i, *_ in history[:STEP_SCHEDULE.stage1_steps]], minlength=3)
    np.testing.assert_array_equal(group_updates, [*drawn, STEP_SCHEDULE.stage1_steps, 0])
    for path, value in after[0].items():
        if path[0] != "pooler":  # no MLM gradient reaches the pooler
            assert np.any(before[0][path] != value), path
        if path[0] == "mlm_head":
            np.testing.assert_allclose(value, ordinary[path], rtol=1e-6, atol=1e-7, err_msg="/".join(path))
    table = ("token_embedder", "embedding")
    step = after[0][table] - before[0][table] + lr * 0.1 * before[0][table]  # the Adam part: -lr m_hat / sqrt(v_hat)
    used = np.unique(_batch(STEP_SCHEDULE.stage1_steps)["encoder_input_tokens"])
    size = np.abs(step[used]) / lr  # |g| / (|g| + eps): 1 where the gradient is not tiny
    assert size.max() <= 1 + 1e-5 and np.median(size) > 0.999, (size.max(), np.median(size))


@pytest.mark.parametrize("settings, message", [
    (dict(two_stage=two_stage.TwoStage(4, 5)), "two_stage.block_layers=4 does not divide the model's 6 layers"),
    (dict(two_stage=two_stage.TwoStage(2, 50)), "two_stage.stage1_steps=50 is outside 0..train.num_steps=10"),
    (dict(two_stage=two_stage.TwoStage(2, 5), architecture="encoder_classifier", objective="classification"),
     "train.two_stage trains sub-models of an encoder on MLM batches"),
    (dict(two_stage=two_stage.TwoStage(2, 5), peft="lora"), "train.two_stage and train.peft cannot be combined"),
])
def test_misconfigured_runs_give_one_message(tmp_path, settings, message):
    run = {**dict(model_config=CONFIG, architecture="encoder", objective="mlm", task="pydoc_mlm",
                  task_feature_lengths=LENGTHS, num_steps=10), **settings}
    with pytest.raises((ConfigError, two_stage.TwoStageConfigError), match=message):
        loop.train(str(tmp_path / "run"), **run)
    assert not (tmp_path / "run").exists()


def test_a_bad_gin_binding_is_one_line_from_plmjax_train(tmp_path, capsys):
    try:
        status = cli.main(["train", "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin",
                           f"--model_dir={tmp_path}/r", "--gin_param=train.two_stage = @two_stage()",
                           "--gin_param=two_stage.block_layers = 3", "--gin_param=two_stage.stage1_steps = 10"])
    finally:
        gin.clear_config()  # the recipe's bindings (tiny_encoder.vocab_size, ...) must not reach later tests
    assert status == 2
    assert "two_stage.block_layers=3 does not divide the model's 2 layers" in capsys.readouterr().err
