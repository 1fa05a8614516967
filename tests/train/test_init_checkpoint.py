"""`train.init_checkpoint`: a saved encoder's parameters land bit for bit in params['bert'] of a fine-tuning
model (params['base']['bert'] under PEFT), on a sharded mesh; the head keeps its fresh initialization; the run
says which subtrees came from where; mismatches are one clear error."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from plmjax import convert, models, peft, sharding
from plmjax.convert.hf import Converted
from plmjax.train import init as init_lib
from plmjax.models import layout
from plmjax.train import optim, state as state_lib
from tests.train.finetune_checkpoint import save_random_encoder, tiny

LENGTHS = {"inputs": 16}


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory):
    return save_random_encoder(tmp_path_factory.mktemp("encoder"), seed=123)


def _abstract(module):
    return nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_encoder_checkpoint_initializes_the_classifier_bit_for_bit_on_a_sharded_mesh(encoder_checkpoint):
    path, saved = encoder_checkpoint
    mesh = sharding.create_mesh(data=2, fsdp=2, tensor=2)
    module = models.build_model("encoder_classifier", tiny(), num_labels=3)
    tx, _ = optim.make_optimizer("adamw", learning_rate=1e-3, schedule="constant")
    state, shardings = state_lib.create_train_state(module, tx, "encoder_classifier", LENGTHS, mesh, seed=0)
    fresh_head = jax.tree.map(np.asarray, state.params["classifier"])
    logs = []
    new = init_lib.init_from_checkpoint(state, shardings, tx, path, architecture="encoder_classifier",
                                        model_config=tiny(), log=logs.append)
    loaded = _flat(new.params["bert"])
    assert loaded.keys() == _flat(saved).keys()
    for name, value in _flat(saved).items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), value, err_msg=name)  # bitwise
        assert loaded[name].sharding == _flat(shardings.params["bert"])[name], name
    for a, b in zip(jax.tree.leaves(fresh_head), jax.tree.leaves(new.params["classifier"])):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(new.opt_state) if x.ndim > 0)
    message = "\n".join(logs)
    assert "its (all) into the model's bert" in message, message
    assert "loaded: bert\n" in message and "freshly initialized: classifier" in message, message


def test_a_checkpoint_of_the_other_layer_layout_converts_on_a_sharded_mesh(encoder_checkpoint, tmp_path):
    """An unrolled checkpoint initializes a scan_layers run (its layers stacked), and a scanned one an unrolled
    run, bit for bit and in the run's shardings."""
    path, saved = encoder_checkpoint
    mesh = sharding.create_mesh(data=2, fsdp=2, tensor=2)
    tx, _ = optim.make_optimizer("adamw", learning_rate=1e-3, schedule="constant")

    def init(config, checkpoint):
        module = models.build_model("encoder_classifier", config, num_labels=3)
        state, shardings = state_lib.create_train_state(module, tx, "encoder_classifier", LENGTHS, mesh, seed=0)
        logs = []
        new = init_lib.init_from_checkpoint(state, shardings, tx, checkpoint, architecture="encoder_classifier",
                                            model_config=config, log=logs.append)
        assert "loaded: bert\n" in logs[0] and "freshly initialized: classifier" in logs[0], logs[0]
        return new.params["bert"], shardings.params["bert"]

    scanned, scanned_shardings = init(tiny(scan_layers=True), path)
    expected = _flat(layout.scan_params(saved))
    assert _flat(scanned).keys() == expected.keys() and any("/layers/" in name for name in expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(_flat(scanned)[name]), value, err_msg=name)
        assert _flat(scanned)[name].sharding == _flat(scanned_shardings)[name], name

    convert.save_checkpoint(str(tmp_path / "scanned"), "encoder", tiny(scan_layers=True),
                            jax.tree.map(np.asarray, scanned), source="test")
    unrolled, unrolled_shardings = init(tiny(), str(tmp_path / "scanned"))
    assert _flat(unrolled).keys() == _flat(saved).keys()
    for name, value in _flat(saved).items():
        np.testing.assert_array_equal(np.asarray(_flat(unrolled)[name]), value, err_msg=name)
        assert _flat(unrolled)[name].sharding == _flat(unrolled_shardings)[name], name


def test_peft_loads_into_the_wrapped_base():
    base = models.build_model("encoder_classifier", tiny(), num_labels=2)
    module = peft.wrap(base, "lora")
    fresh = _abstract(module)
    source = jax.tree.map(lambda x: np.full(x.shape, 0.5, x.dtype), _abstract(models.build_model("encoder", tiny())))
    params, report = init_lib.merge_checkpoint_params(
        fresh, Converted("encoder", tiny(), source, "bert", [], []), "encoder_classifier", tiny(), peft="lora")
    assert report["target"] == "base/bert" and report["loaded"] == ["base/bert"]
    assert set(report["initialized"]) == {"base/classifier", "lora"}
    for name, leaf in _flat(params["base"]["bert"]).items():
        assert isinstance(leaf, np.ndarray) and (leaf == 0.5).all(), name
    assert params["lora"] is fresh["lora"] and params["base"]["classifier"] is fresh["base"]["classifier"]


def test_same_architecture_replaces_the_whole_tree_and_reports_unused_parameters():
    fresh = _abstract(models.build_model("encoder_classifier", tiny(pooler=True), num_labels=2))
    source = jax.tree.map(lambda x: np.ones(x.shape, x.dtype), fresh)
    source["extra_head"] = {"kernel": np.ones((2, 2), np.float32)}
    params, report = init_lib.merge_checkpoint_params(
        fresh, Converted("encoder_classifier", tiny(), source, None, [], []), "encoder_classifier", tiny())
    assert report == {"target": "(all)", "source": "(all)", "loaded": ["(all)"], "initialized": [],
                      "unused": ["extra_head"]}
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))


def test_shape_and_config_mismatches_are_clear_errors(encoder_checkpoint):
    path, _ = encoder_checkpoint
    converted = convert.load_checkpoint(path)
    wider = tiny(mlp_dim=128)
    fresh = _abstract(models.build_model("encoder_classifier", wider, num_labels=2))
    with pytest.raises(init_lib.InitCheckpointError,
                       match=r"bert/encoder/layers_0/mlp/wi/bias has shape \(64,\) in the checkpoint but \(128,\) "
                             r"in the model.*mlp_dim.*\(64, 128\)"):
        init_lib.merge_checkpoint_params(fresh, converted, "encoder_classifier", wider, where=path)
    relu = tiny(activation="relu")
    fresh = _abstract(models.build_model("encoder_classifier", relu, num_labels=2))
    with pytest.raises(init_lib.InitCheckpointError, match=r"activation.*'gelu', 'relu'.*config.gin"):
        init_lib.merge_checkpoint_params(fresh, converted, "encoder_classifier", relu, where=path)
    decoder = Converted("decoder", models.tiny_decoder(), {"decoder": {}}, None, [], [])
    with pytest.raises(init_lib.InitCheckpointError, match="'decoder' model, which cannot initialize"):
        init_lib.merge_checkpoint_params(fresh, decoder, "encoder_classifier", relu, where="x")
