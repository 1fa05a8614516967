"""Fine-tuning models against transformers' BertFor{SequenceClassification,MultipleChoice,QuestionAnswering,
TokenClassification}: a small random PyTorch model is saved, its encoder read by `plmjax.convert.load_hf`, its
task head's (random) weights copied across, and both compute the same logits on a padded batch with token types.
Also: the wrappers leave EncoderModel unchanged, every parameter has logical axis names, dropout acts in training
only, and bad head options are clear errors."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import convert, models
from plmjax.models.encoder import EncoderModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from plmjax.convert import parity  # noqa: E402

LOGITS_RTOL = 1e-5  # relative to the largest |logit|, as tests/convert/test_hf_parity.py
BATCH, LENGTH, CHOICES = 2, 12, 3


def _hf_model(cls_name: str, tmp_path, **config_overrides):
    config = parity.tiny_hf_config("bert")
    for key, value in config_overrides.items():
        setattr(config, key, value)
    reference = parity.perturb(getattr(transformers, cls_name)(config), seed=1)
    reference.save_pretrained(tmp_path / "hf")
    return reference, convert.load_hf(str(tmp_path / "hf"))


def _dense(linear) -> dict:
    """A torch Linear as a flax Dense's parameters (kernel [in, out])."""
    return {"kernel": linear.weight.detach().numpy().T, "bias": linear.bias.detach().numpy()}


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, parity.VOCAB, size=shape).astype(np.int64)
    mask = np.ones_like(ids)
    mask[..., 1, -4:] = 0  # the second row (of each example, for choices) is right-padded
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[..., LENGTH // 2:] = 1
    types[mask == 0] = 0
    return ids, mask, types


def _check(ours, theirs):
    theirs = theirs.detach().float().numpy()
    scale = np.abs(theirs).max()
    assert np.abs(np.asarray(ours) - theirs).max() <= LOGITS_RTOL * scale, (ours, theirs)


def _apply(arch, converted, head, ids, mask, types, **options):
    model = models.build_model(arch, converted.config, **options)
    params = {"bert": converted.params, **head}
    return model.apply({"params": params}, jnp.asarray(ids, jnp.int32), input_mask=jnp.asarray(mask, jnp.int32),
                       token_type_ids=jnp.asarray(types, jnp.int32))


@pytest.mark.parametrize("num_labels", [3, 1])
def test_classifier_equals_bert_for_sequence_classification(num_labels, tmp_path):
    reference, converted = _hf_model("BertForSequenceClassification", tmp_path, num_labels=num_labels)
    assert converted.config.pooler and set(converted.unused) == {"classifier.weight", "classifier.bias"}
    ids, mask, types = _inputs((BATCH, LENGTH))
    out = _apply("encoder_classifier", converted, {"classifier": {"dense": _dense(reference.classifier)}},
                 ids, mask, types, num_labels=num_labels)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types)).logits
    assert out["classification_logits"].shape == (BATCH, num_labels)
    _check(out["classification_logits"], expected)


def test_multiple_choice_equals_bert_for_multiple_choice(tmp_path):
    reference, converted = _hf_model("BertForMultipleChoice", tmp_path)
    ids, mask, types = _inputs((BATCH, CHOICES, LENGTH))  # transformers: [batch, choices, length]

    def flat(x):  # ours: choice-major [batch, choices * length]
        return x.reshape(BATCH, CHOICES * LENGTH)

    out = _apply("encoder_multiple_choice", converted, {"classifier": {"dense": _dense(reference.classifier)}},
                 flat(ids), flat(mask), flat(types), num_choices=CHOICES)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types)).logits
    assert out["choice_logits"].shape == (BATCH, CHOICES)
    _check(out["choice_logits"], expected)


def test_span_model_equals_bert_for_question_answering(tmp_path):
    reference, converted = _hf_model("BertForQuestionAnswering", tmp_path)
    ids, mask, types = _inputs((BATCH, LENGTH))
    out = _apply("encoder_span", converted, {"span_head": {"dense": _dense(reference.qa_outputs)}}, ids, mask, types)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types))
    _check(out["start_logits"], expected.start_logits)
    _check(out["end_logits"], expected.end_logits)


def test_tagger_equals_bert_for_token_classification(tmp_path):
    reference, converted = _hf_model("BertForTokenClassification", tmp_path, num_labels=5)
    ids, mask, types = _inputs((BATCH, LENGTH))
    out = _apply("encoder_tagger", converted, {"classifier": {"dense": _dense(reference.classifier)}},
                 ids, mask, types, num_labels=5)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types)).logits
    assert out["tag_logits"].shape == (BATCH, LENGTH, 5)
    _check(out["tag_logits"], expected)


# ------------------------------------------------------------------------------------------- without a reference

def tiny(**overrides):
    return models.tiny_encoder(vocab_size=50, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, max_length=32,
                               **overrides)


ARCHS = {"encoder_classifier": {"num_labels": 3}, "encoder_span": {}, "encoder_multiple_choice": {"num_choices": 2},
         "encoder_tagger": {"num_labels": 4}}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_has_logical_axes_and_the_encoder_is_unchanged(arch):
    config = tiny(dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model(arch, config, **ARCHS[arch])
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 50, size=(2, 8)), jnp.int32)
    boxed = model.init(jax.random.key(0), ids)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    params = nn.meta.unbox(boxed)
    assert "bert" in params and len(params) == 2
    out = model.apply({"params": params}, ids)
    plain_ids = ids.reshape(-1, 4) if arch == "encoder_multiple_choice" else ids  # [b * choices, length]
    plain = EncoderModel(config).apply({"params": params["bert"]}, plain_ids)
    for key in plain:
        np.testing.assert_array_equal(out[key], plain[key])


def test_classifier_without_pooler_reads_the_cls_hidden_state():
    config = tiny(pooler=False, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=2)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 50, size=(3, 8)), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.key(0), ids)["params"])
    out = model.apply({"params": params}, ids)
    dense = params["classifier"]["dense"]
    expected = np.asarray(out["hidden_states"][:, 0]) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(out["classification_logits"], expected, rtol=1e-5, atol=1e-6)


def test_head_dropout_acts_only_in_training():
    config = tiny(dropout_rate=0.5, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=2)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 50, size=(4, 8)), jnp.int32)
    variables = model.init(jax.random.key(0), ids)
    eval_a, eval_b = model.apply(variables, ids), model.apply(variables, ids)
    np.testing.assert_array_equal(eval_a["classification_logits"], eval_b["classification_logits"])
    train = model.apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(train["classification_logits"], eval_a["classification_logits"])


def test_multiple_choice_errors_and_head_option_errors():
    model = models.build_model("encoder_multiple_choice", tiny(), num_choices=3)
    variables = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))  # any length initializes
    with pytest.raises(ValueError, match="not a multiple of num_choices=3"):
        model.apply(variables, jnp.ones((2, 10), jnp.int32))
    assert model.apply(variables, jnp.ones((2, 12), jnp.int32))["choice_logits"].shape == (2, 3)
    with pytest.raises(ValueError, match="missing \\['num_labels'\\]"):
        models.build_model("encoder_classifier", tiny())
    with pytest.raises(ValueError, match="unknown \\['num_labels'\\]"):
        models.build_model("encoder", tiny(), num_labels=2)
    with pytest.raises(ValueError, match="positive integer"):
        models.build_model("encoder_tagger", tiny(), num_labels=0)


def test_head_outputs_are_the_heads_own_and_drop_the_mlm_head_from_the_compiled_forward():
    """Inference returns a classifier's logits alone, so the jitted forward has no [batch, length, vocab] product."""
    from plmjax.models.finetune import head_outputs
    config = models.tiny_encoder(vocab_size=4096, dropout_rate=0.0)
    module = models.build_model("encoder_classifier", config, num_labels=3)
    ids = jnp.ones((BATCH, LENGTH), jnp.int32)
    params = nn.meta.unbox(module.init(jax.random.key(0), ids)["params"])
    outputs = module.apply({"params": params}, ids)
    assert set(head_outputs(outputs)) == {"classification_logits"} and "logits" in outputs
    encoder = {"hidden_states": 1, "logits": 2}
    assert head_outputs(encoder) == encoder  # a model without a head: everything

    def flops(fn):
        return jax.jit(fn).lower(params, ids).compile().cost_analysis()["flops"]

    full = flops(lambda p, x: module.apply({"params": p}, x))
    head = flops(lambda p, x: head_outputs(module.apply({"params": p}, x)))
    mlm_head = 2 * BATCH * LENGTH * config.emb_dim * config.vocab_size  # the tied vocabulary projection alone
    assert full - head >= mlm_head, (full, head, mlm_head)
