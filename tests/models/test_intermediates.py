"""plmjax.models.intermediates: hidden states and attention scores/probabilities sown by every layer, returned in
layer order for the unrolled and the scanned layout, and equal to transformers' output_hidden_states /
output_attentions."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax import models
from plmjax.models import intermediates, layout

IDS = jnp.asarray(np.random.default_rng(0).integers(3, 512, size=(2, 10)), jnp.int32)
MASK = jnp.asarray(np.arange(10)[None, :] < np.array([[10], [6]]), jnp.int32)


def _encoder(config):
    module = models.EncoderModel(config)
    return module, module.init(jax.random.key(0), IDS)


def test_probs_are_the_softmax_of_the_masked_scores_and_the_last_hidden_state_is_the_output():
    config = models.tiny_encoder()
    module, variables = _encoder(config)
    outputs, found = intermediates.capture(module, variables, IDS, input_mask=MASK)
    assert sorted(found) == ['encoder']
    enc = found['encoder']
    layers = config.num_encoder_layers
    assert enc['hidden_states'].shape == (layers + 1, 2, 10, config.emb_dim)
    assert enc['attention_scores'].shape == enc['attention_probs'].shape == (layers, 2, config.num_heads, 10, 10)
    np.testing.assert_array_equal(enc['hidden_states'][-1], outputs['hidden_states'])
    scores = np.asarray(enc['attention_scores'], np.float64)
    probs = np.asarray(enc['attention_probs'], np.float64)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    softmax = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, softmax / softmax.sum(-1, keepdims=True), atol=1e-6)
    # The mask is applied in the scores: padded keys of row 1 hold finfo.min and get probability 0.
    assert np.all(scores[:, 1, :, :, 6:] == np.finfo(np.float32).min)
    assert np.all(probs[:, 1, :, :, 6:] == 0) and np.all(scores[:, :, :, :, :6] > -1e4)
    # Nothing is kept unless 'intermediates' is mutable.
    assert 'intermediates' not in module.apply(variables, IDS, mutable=['cache'])[1]


def _same(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(a)


@pytest.mark.parametrize('arch', ['encoder', 'encoder_decoder'])
def test_the_same_intermediates_unrolled_and_scanned(arch):
    config = models.tiny_encoder() if arch == 'encoder' else models.tiny_encoder_decoder()
    module = models.build_model(arch, config)
    args = (IDS,) if arch == 'encoder' else (IDS, IDS[:, :6])
    kwargs = {'input_mask': MASK} if arch == 'encoder' else {'encoder_mask': MASK}
    variables = module.init(jax.random.key(0), *args)
    scanned_module = models.build_model(arch, dataclasses.replace(config, scan_layers=True))
    _, unrolled = intermediates.capture(module, variables, *args, **kwargs)
    _, scanned = intermediates.capture(scanned_module, layout.scan_params(variables), *args, **kwargs)
    assert sorted(unrolled) == sorted(scanned) == (['encoder'] if arch == 'encoder' else ['decoder', 'encoder'])
    for stack in unrolled:
        assert sorted(unrolled[stack]) == sorted(scanned[stack])
        for name in unrolled[stack]:
            _same(unrolled[stack][name], scanned[stack][name])
    if arch == 'encoder_decoder':
        assert unrolled['decoder']['cross_attention_probs'].shape == (2, 2, config.num_heads, 6, 10)


def test_shared_layers_sow_once_per_layer_and_the_query_layer_has_its_own_entry():
    config = models.tiny_encoder(shared_layers=True, num_encoder_layers=3)
    module, variables = _encoder(config)
    outputs, found = intermediates.capture(module, variables, IDS, what=('hidden_states',))
    assert sorted(found['encoder']) == ['hidden_states']
    assert found['encoder']['hidden_states'].shape[0] == 4
    np.testing.assert_array_equal(found['encoder']['hidden_states'][-1], outputs['hidden_states'])

    pangu = models.DecoderModel(models.tiny_decoder(query_layer=True, num_decoder_layers=3))
    outputs, found = intermediates.capture(pangu, pangu.init(jax.random.key(0), IDS), IDS)
    assert found['decoder']['hidden_states'].shape[0] == 3  # embedder + 2 layers
    assert found['query_layer/layer']['hidden_states'].shape[0] == 1
    np.testing.assert_array_equal(found['query_layer/layer']['hidden_states'][0], outputs['hidden_states'])


def test_hidden_states_and_attentions_match_transformers_bert():
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    from plmjax import convert
    from tests.models.test_models_hf_parity import SMALL, _inputs, _randomize

    with jax.enable_x64(True):
        hf_config = transformers.BertConfig(vocab_size=SMALL['vocab_size'], hidden_size=SMALL['emb_dim'],
                                            num_hidden_layers=2, num_attention_heads=SMALL['num_heads'],
                                            intermediate_size=SMALL['mlp_dim'], max_position_embeddings=64,
                                            attn_implementation='eager')
        hf = transformers.BertModel(hf_config)
        _randomize(hf)
        state = {f'bert.{k}': v.detach().numpy() for k, v in hf.state_dict().items()}
        converted = convert.from_hf(hf_config.to_dict(), state, dtype='float64')
        ids, mask = _inputs()
        module = models.EncoderModel(converted.config)
        _, found = intermediates.capture(module, {'params': converted.params}, jnp.asarray(ids),
                                         input_mask=jnp.asarray(mask))
        with torch.no_grad():
            ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True,
                     output_attentions=True)
        enc = found['encoder']
        assert enc['hidden_states'].shape[0] == len(ref.hidden_states) == 3
        for ours, theirs in zip(enc['hidden_states'], ref.hidden_states):
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-10)
        for ours, theirs in zip(enc['attention_probs'], ref.attentions):
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-10)
