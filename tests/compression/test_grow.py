"""bert2BERT growth (plmjax/compression/grow.py): FPI preserves the small model's function, AKI does not (by
design), depth growth stacks, and a config that is not a growth is one error."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from plmjax import models
from plmjax.compression import grow

SMALL = models.tiny_encoder(vocab_size=64, max_length=16, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                            num_encoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0)


def _model_and_params(arch, config, seed=0):
    model = models.build_model(arch, config, **({"num_labels": 3} if arch == "encoder_classifier" else {}))
    variables = model.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed)},
                           jnp.ones((1, 8), jnp.int32), deterministic=True)
    return model, nn.meta.unbox(variables["params"])


def _outputs(model, params, batch):
    return model.apply({"params": params}, batch["tokens"], input_mask=batch["mask"], deterministic=True)


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 64, (4, 8)).astype(np.int32)
    mask = (np.arange(8)[None] < np.array([8, 5, 3, 7])[:, None]).astype(np.int32)
    return {"tokens": jnp.asarray(tokens * mask), "mask": jnp.asarray(mask)}


def _grown(arch, large, **options):
    small_model, small_params = _model_and_params(arch, SMALL)
    large_model, large_template = _model_and_params(arch, large, seed=1)
    params = grow.grow_params(small_params, SMALL, large, **options)
    assert jax.tree.structure(params) == jax.tree.structure(large_template)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(large_template)))
    return _outputs(small_model, small_params, _batch()), _outputs(large_model, params, _batch()), params


def _close(a, b):  # float32 outputs compared in float64, relative to their scale
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_fpi_more_heads_and_neurons_is_the_same_function():
    """Heads 2 -> 3 and FFN 16 -> 27 with random copies (uneven counts): MLM logits and hidden states equal."""
    large = dataclasses.replace(SMALL, num_heads=3, mlp_dim=27)
    small, grown, _ = _grown("encoder", large, method="fpi", mapping="random", seed=3)
    _close(small["logits"], grown["logits"])
    _close(small["hidden_states"], grown["hidden_states"])


def test_fpi_wider_hidden_copies_every_unit_and_keeps_the_classifier():
    """Hidden 8 -> 16 (each unit twice: LayerNorm's statistics unchanged), heads 2 -> 4, FFN 16 -> 32: every
    hidden unit of the grown encoder equals its source unit, the classifier's logits are equal, and the tied MLM
    logits (less their bias) are twice the small model's (module docstring)."""
    large = dataclasses.replace(SMALL, emb_dim=16, num_heads=4, mlp_dim=32)
    small, grown, params = _grown("encoder_classifier", large, method="fpi", mapping="cyclic")
    g = np.arange(16) % 8
    _close(small["hidden_states"][..., g], grown["hidden_states"])
    _close(small["classification_logits"], grown["classification_logits"])
    bias = params["bert"]["mlm_head"]["bias"]
    _close(2 * (small["logits"] - bias), grown["logits"] - bias)


def test_fpi_uneven_hidden_growth_is_only_close():
    """Hidden 8 -> 12: units copied unevenly shift LayerNorm's statistics (the paper's remark): not equal."""
    large = dataclasses.replace(SMALL, emb_dim=12)
    small, grown, _ = _grown("encoder_classifier", large, method="fpi", seed=0)
    assert not np.allclose(small["classification_logits"], grown["classification_logits"], rtol=1e-5, atol=1e-6)


def test_aki_takes_the_new_units_from_the_layer_above_and_is_not_the_same_function():
    large = dataclasses.replace(SMALL, num_heads=3, mlp_dim=24)
    _, small_params = _model_and_params("encoder", SMALL)
    fpi = grow.grow_params(small_params, SMALL, large, method="fpi", seed=5)
    aki = grow.grow_params(small_params, SMALL, large, method="aki", seed=5)
    layer0, layer1 = small_params["encoder"]["layers_0"], small_params["encoder"]["layers_1"]
    wi_fpi = fpi["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    wi_aki = aki["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    np.testing.assert_array_equal(wi_aki[:, :16], wi_fpi[:, :16])  # the small model's own neurons: as FPI
    assert wi_aki.shape == (8, 24) and not np.array_equal(wi_aki[:, 16:], wi_fpi[:, 16:])
    # each new neuron's incoming weights are a neuron of layer 1 (the layer above), not of layer 0
    for column in np.asarray(wi_aki[:, 16:]).T:
        assert any(np.array_equal(column, c) for c in np.asarray(layer1["mlp"]["wi"]["kernel"]).T)
        assert not any(np.array_equal(column, c) for c in np.asarray(layer0["mlp"]["wi"]["kernel"]).T)
    top_fpi, top_aki = fpi["encoder"]["layers_1"], aki["encoder"]["layers_1"]  # the top layer copies itself
    jax.tree.map(np.testing.assert_array_equal, top_fpi, top_aki)
    small_model, _ = _model_and_params("encoder", SMALL)
    large_model, _ = _model_and_params("encoder", large)
    small = _outputs(small_model, small_params, _batch())["logits"]
    assert not np.allclose(small, _outputs(large_model, aki, _batch())["logits"], rtol=1e-3, atol=1e-4)


def test_depth_growth_stacks_the_grown_layers():
    large = dataclasses.replace(SMALL, num_encoder_layers=5, mlp_dim=32)
    _, small_params = _model_and_params("encoder", SMALL)
    params = grow.grow_params(small_params, SMALL, large, mapping="cyclic")
    layers = params["encoder"]
    for i in range(5):
        jax.tree.map(np.testing.assert_array_equal, layers[f"layers_{i}"], layers[f"layers_{i % 2}"])
    flat = traverse_util.flatten_dict(params)
    assert sum(1 for k in flat if k[1].startswith("layers_")) == 5 * sum(
        1 for k in traverse_util.flatten_dict(small_params) if k[1] == "layers_0")


@pytest.mark.parametrize("change, message", [
    (dict(head_dim=8), r"head_dim differs \(4 -> 8\)"),
    (dict(emb_dim=4), r"emb_dim shrinks \(8 -> 4\)"),
    (dict(vocab_size=65, num_encoder_layers=1), r"vocab_size differs \(64 -> 65\); num_encoder_layers shrinks"),
])
def test_a_config_that_is_not_a_growth_is_one_error(change, message):
    _, small_params = _model_and_params("encoder", SMALL)
    with pytest.raises(grow.GrowthError, match=message):
        grow.grow_params(small_params, SMALL, dataclasses.replace(SMALL, **change))


def test_unit_maps_keep_the_small_units_first():
    g = grow.unit_map(5, 12, "random", np.random.default_rng(0))
    assert list(g[:5]) == [0, 1, 2, 3, 4] and g.max() < 5 and len(g) == 12
    assert list(grow.unit_map(4, 8, "cyclic", None)) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_plmjax_convert_grow_writes_a_checkpoint_every_command_reads(tmp_path, capsys):
    from plmjax import cli
    from plmjax.convert import checkpoint
    _, small_params = _model_and_params("encoder", SMALL)
    checkpoint.save_checkpoint(str(tmp_path / "small"), "encoder", SMALL, small_params)
    status = cli.main(["convert", "--grow", "fpi", f"--model_dir={tmp_path / 'small'}", f"--out={tmp_path / 'big'}",
                       "--grow_to", "num_heads=3,mlp_dim=24", "--grow_mapping", "cyclic"])
    assert status == 0
    assert "method" in capsys.readouterr().out
    grown = checkpoint.load_checkpoint(str(tmp_path / "big"))
    assert (grown.config.num_heads, grown.config.mlp_dim, grown.architecture) == (3, 24, "encoder")
    expected = grow.grow_params(small_params, SMALL, grown.config, mapping="cyclic")
    jax.tree.map(np.testing.assert_array_equal, grown.params, expected)
    assert "MODEL_CONFIG" in (tmp_path / "big" / "config.gin").read_text()

    status = cli.main(["convert", "--grow", "aki", f"--model_dir={tmp_path / 'small'}", f"--out={tmp_path / 'x'}",
                       "--grow_to", "head_dim=8"])
    assert status == 2
    assert "only emb_dim, num_heads, mlp_dim and num_encoder_layers grow" in capsys.readouterr().err
