"""dynabert.py: importance equals what the released code reads from PyTorch (transformers' BertModel head_mask
gradient and its neuron formula), rewiring preserves the function, the depth rule, and extracted == masked."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models
from plmjax.compression import dynabert

CONFIG = models.tiny_encoder(vocab_size=64, max_length=16, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=16,
                             num_encoder_layers=3, dropout_rate=0.0, attention_dropout_rate=0.0)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 64, (4, 8)).astype(np.int32)
    mask = (np.arange(8)[None] < np.array([8, 6, 3, 7])[:, None]).astype(np.int32)
    return tokens * mask, mask


def _model(config=CONFIG, arch="encoder_classifier"):
    model = models.build_model(arch, config, **({"num_labels": 3} if arch == "encoder_classifier" else {}))
    tokens, _ = _batch()
    params = nn.meta.unbox(model.init({"params": jax.random.key(0)}, jnp.asarray(tokens), deterministic=True)[
        "params"])
    return model, params


def _hidden(model, params, seed=0):
    tokens, mask = _batch(seed)
    out = model.apply({"params": params}, jnp.asarray(tokens), input_mask=jnp.asarray(mask), deterministic=True)
    return np.asarray(out["hidden_states"], np.float64), out


def test_importance_equals_the_released_codes_reading_of_pytorch(tmp_path):
    """A random transformers BertModel converted to plmjax; loss = sum(last hidden state * R). Head importance
    equals |head_mask.grad| of the PyTorch model, neuron importance the code's formula on PyTorch's gradients."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from plmjax.convert import hf
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    reference = transformers.BertModel(hf_config).eval()
    reference.save_pretrained(tmp_path)
    converted = hf.load_hf(str(tmp_path))
    model = models.build_model(converted.architecture, converted.config)
    tokens, mask = _batch()
    weights = np.random.default_rng(1).standard_normal((4, 8, 16)).astype(np.float32)

    # The code's head mask multiplies each head's attention probabilities, i.e. its context vector: scale the
    # context (the input of the attention output projection) head by head (transformers 5 ignores head_mask).
    head_mask = torch.ones(3, 4, requires_grad=True)
    for i, layer in enumerate(reference.encoder.layer):
        layer.attention.output.dense.register_forward_pre_hook(
            lambda module, args, i=i: (args[0] * head_mask[i].repeat_interleave(4),))
    hidden = reference(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    (hidden * torch.tensor(weights)).sum().backward()
    heads_torch = head_mask.grad.abs().numpy()
    neurons_torch = np.stack([
        ((layer.intermediate.dense.weight * layer.intermediate.dense.weight.grad).sum(dim=1)
         + layer.intermediate.dense.bias * layer.intermediate.dense.bias.grad).abs().detach().numpy()
        + (layer.output.dense.weight * layer.output.dense.weight.grad).sum(dim=0).abs().detach().numpy()
        for layer in reference.encoder.layer])

    def loss(params, batch):
        out = model.apply({"params": params}, batch[0], input_mask=batch[1], deterministic=True)
        return jnp.sum(out["hidden_states"] * weights)
    heads, neurons = dynabert.importance(loss, converted.params, [(jnp.asarray(tokens), jnp.asarray(mask))],
                                         converted.config)
    # float32 gradients of two implementations: agreement to 1e-4 of the largest value
    np.testing.assert_allclose(heads, heads_torch, rtol=1e-4, atol=1e-4 * heads_torch.max())
    np.testing.assert_allclose(neurons, neurons_torch, rtol=1e-4, atol=1e-4 * neurons_torch.max())
    assert heads.shape == (3, 4) and neurons.shape == (3, 24) and heads.min() > 0


def test_rewiring_keeps_the_function_and_sorts_by_importance():
    model, params = _model()
    rng = np.random.default_rng(2)
    heads, neurons = rng.random((3, 4)), rng.random((3, 16))
    rewired = dynabert.rewire(params, CONFIG, heads, neurons)
    before, out_before = _hidden(model, params)
    after, out_after = _hidden(model, rewired)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_after["classification_logits"], out_before["classification_logits"],
                               rtol=1e-5, atol=1e-6)
    layer = params["bert"]["encoder"]["layers_1"]
    order = np.argsort(-heads[1])
    np.testing.assert_array_equal(rewired["bert"]["encoder"]["layers_1"]["self_attention"]["query"]["kernel"],
                                  np.asarray(layer["self_attention"]["query"]["kernel"])[:, order])


def test_the_depth_rule_is_the_released_codes():
    assert dynabert.kept_layers(12, 1.0) == list(range(12))
    assert dynabert.kept_layers(12, 0.75) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert dynabert.kept_layers(12, 0.5) == [0, 2, 4, 6, 8, 10]
    assert dynabert.kept_layers(6, 0.5) == [0, 2, 4]


@pytest.mark.parametrize("width", [0.75, 0.5, 0.25])
def test_extracted_sub_network_equals_the_masked_one(width):
    model, params = _model()
    small_config, small_params = dynabert.extract(params, CONFIG, width)
    assert (small_config.num_heads, small_config.mlp_dim) == (round(4 * width), round(16 * width))
    small_model = models.build_model("encoder_classifier", small_config, num_labels=3)
    extracted, out_extracted = _hidden(small_model, small_params)
    masked, out_masked = _hidden(model, dynabert.width_mask(params, CONFIG, width))
    full, _ = _hidden(model, params)
    np.testing.assert_allclose(extracted, masked, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_extracted["classification_logits"], out_masked["classification_logits"],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(extracted, full, atol=1e-3)  # something was dropped
    size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(small_params) < size(params)


def test_depth_extraction_keeps_the_rule_s_layers():
    config = dataclasses.replace(CONFIG, num_encoder_layers=4)
    _, params = _model(config)
    small_config, small_params = dynabert.extract(params, config, 1.0, 0.5)
    assert small_config.num_encoder_layers == 2
    for j, i in enumerate([0, 2]):
        jax.tree.map(np.testing.assert_array_equal, small_params["bert"]["encoder"][f"layers_{j}"],
                     params["bert"]["encoder"][f"layers_{i}"])
    assert "layers_2" not in small_params["bert"]["encoder"]
    small_model = models.build_model("encoder_classifier", small_config, num_labels=3)
    hidden, _ = _hidden(small_model, small_params)
    assert np.isfinite(hidden).all()


def test_plmjax_convert_extract_writes_a_smaller_checkpoint(tmp_path):
    from plmjax import cli
    from plmjax.convert import checkpoint
    config = dataclasses.replace(CONFIG, num_encoder_layers=4)
    model, params = _model(config)
    checkpoint.save_checkpoint(str(tmp_path / "full"), "encoder_classifier", config, params,
                               head_options={"num_labels": 3})
    assert cli.main(["convert", "--extract", "--width_mult", "0.5", "--depth_mult", "0.5",
                     f"--model_dir={tmp_path / 'full'}", f"--out={tmp_path / 'sub'}"]) == 0
    sub = checkpoint.load_checkpoint(str(tmp_path / "sub"))
    expected_config, expected = dynabert.extract(params, config, 0.5, 0.5)
    assert (sub.config.num_heads, sub.config.mlp_dim, sub.config.num_encoder_layers) == (2, 8, 2)
    jax.tree.map(np.testing.assert_array_equal, sub.params, expected)
    small_model = models.build_model(sub.architecture, sub.config, num_labels=3)
    assert np.isfinite(_hidden(small_model, sub.params)[0]).all()


def test_keep_layers_cuts_a_student_from_its_teacher(tmp_path):
    """`plmjax convert --extract --keep_layers 1,3,4`: TinyBERT's student initialized from chosen teacher layers."""
    from plmjax import cli
    from plmjax.convert import checkpoint
    config = dataclasses.replace(CONFIG, num_encoder_layers=4)
    _, params = _model(config)
    checkpoint.save_checkpoint(str(tmp_path / "teacher"), "encoder_classifier", config, params,
                               head_options={"num_labels": 3})
    assert cli.main(["convert", "--extract", "--keep_layers", "1,3,4", f"--model_dir={tmp_path / 'teacher'}",
                     f"--out={tmp_path / 'student'}"]) == 0
    student = checkpoint.load_checkpoint(str(tmp_path / "student"))
    assert student.config.num_encoder_layers == 3 and student.config.num_heads == config.num_heads
    for j, i in enumerate([0, 2, 3]):
        jax.tree.map(np.testing.assert_array_equal, student.params["bert"]["encoder"][f"layers_{j}"],
                     params["bert"]["encoder"][f"layers_{i}"])
    jax.tree.map(np.testing.assert_array_equal, student.params["classifier"], params["classifier"])
    with pytest.raises(ValueError, match="give layers in 1..4"):
        dynabert.extract(params, config, 1.0, layers=[0, 2])
