"""DecoderModel behaviour: causal and prefix-LM masking, padding, cached decoding, PanGu-α's query layer."""
import math
import functools
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402

LENGTH = 10
IDS = np.random.RandomState(0).randint(1, 512, size=(2, LENGTH)).astype(np.int32)
VARIANTS = {
    'gpt2': models.tiny_decoder(),
    'pangu_rotary': models.tiny_decoder(query_layer=True, position='rotary', activation='gelu'),
}


@functools.lru_cache(maxsize=None)  # one init and one compiled apply per config
def _setup(config):
    model = models.DecoderModel(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(IDS))['params']
    return model, params, jax.jit(lambda p, ids, **kw: model.apply({'params': p}, ids, **kw))


def _change(ids, t):
    changed = ids.copy()
    changed[:, t] = changed[:, t] % 500 + 1
    return changed


@pytest.mark.parametrize('name', list(VARIANTS))
def test_causal_masking(name):
    _, params, apply = _setup(VARIANTS[name])
    t = 4
    base = apply(params, jnp.asarray(IDS))['logits']
    changed = apply(params, jnp.asarray(_change(IDS, t + 1)))['logits']
    np.testing.assert_array_equal(base[:, :t + 1], changed[:, :t + 1])
    assert not np.allclose(base[:, t + 1:], changed[:, t + 1:], atol=1e-4)


def test_prefix_lm_sees_the_whole_prefix():
    _, params, apply = _setup(VARIANTS['gpt2'])
    prefix = np.zeros_like(IDS)
    prefix[:, :5] = 1  # positions 0..4 are the prefix
    run = lambda ids: apply(params, jnp.asarray(ids), prefix_mask=jnp.asarray(prefix))['logits']  # noqa: E731
    base = run(IDS)
    inside = run(_change(IDS, 4))  # a prefix token: every position sees it
    assert not np.allclose(base[:, 0], inside[:, 0], atol=1e-4)
    after = run(_change(IDS, 6))  # a target token: only later positions see it
    np.testing.assert_array_equal(base[:, :6], after[:, :6])
    # Without a prefix mask the same model is causal.
    causal = apply(params, jnp.asarray(_change(IDS, 4)))['logits']
    np.testing.assert_array_equal(apply(params, jnp.asarray(IDS))['logits'][:, :4], causal[:, :4])


@pytest.mark.parametrize('name', list(VARIANTS))
def test_padding_does_not_change_real_positions(name):
    _, params, apply = _setup(VARIANTS[name])
    padded = np.concatenate([IDS, np.full((2, 6), 3, np.int32)], axis=1)  # any ids after the sequence
    mask = np.concatenate([np.ones_like(IDS), np.zeros((2, 6), np.int32)], axis=1)
    base = apply(params, jnp.asarray(IDS))['logits']
    np.testing.assert_allclose(apply(params, jnp.asarray(padded))['logits'][:, :LENGTH], base, atol=1e-5)
    masked = apply(params, jnp.asarray(padded), input_mask=jnp.asarray(mask))['logits']
    np.testing.assert_allclose(masked[:, :LENGTH], base, atol=1e-5)


def test_too_long_input_raises():
    model = models.DecoderModel(models.tiny_decoder(max_length=8))
    with pytest.raises(ValueError, match=r'length 10, longer than max_length=8.*tiny_decoder.max_length = 10'):
        model.init(jax.random.key(0), jnp.asarray(IDS))


@pytest.mark.parametrize('config', [
    VARIANTS['gpt2'],
    models.tiny_decoder(query_layer=True, position='rotary', remat_policy='full'),
    models.tiny_decoder(position='sinusoidal', dtype='bfloat16'),
], ids=['learned', 'query_layer_rotary_remat', 'sinusoidal_bf16'])
def test_cached_decoding_matches_the_full_forward_pass(config):
    """Prefill a 3-token prompt (as a prefix LM), then feed one token a step: the logits equal those of one
    full forward pass, position by position."""
    model, params, _ = _setup(config)
    prefix = np.zeros_like(IDS)
    prefix[:, :3] = 1
    full = jax.jit(lambda p, ids, prefix: model.apply({'params': p}, ids, prefix_mask=prefix))(
        params, jnp.asarray(IDS), jnp.asarray(prefix))['logits']
    cache = jax.jit(lambda ids: model.init(jax.random.key(0), ids, decode=True)['cache'])(jnp.zeros_like(IDS))
    step = jax.jit(lambda cache, ids, prefix: model.apply({'params': params, 'cache': cache}, ids, prefix_mask=prefix,
                                                          decode=True, mutable=['cache']))
    out, variables = step(cache, jnp.asarray(IDS[:, :3]), jnp.asarray(prefix[:, :3]))
    logits = [out['logits']]
    for t in range(3, LENGTH):
        out, variables = step(variables['cache'], jnp.asarray(IDS[:, t:t + 1]), jnp.zeros((2, 1), jnp.int32))
        logits.append(out['logits'])
    tolerance = 1e-5 if config.dtype == 'float32' else 0.1
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full, atol=tolerance, rtol=tolerance)
    assert int(variables['cache']['context']['cache_index']) == LENGTH


def test_logits_to_keep_gives_the_last_positions_only():
    model, params, _ = _setup(VARIANTS['gpt2'])
    full = model.apply({'params': params}, jnp.asarray(IDS))
    last = model.apply({'params': params}, jnp.asarray(IDS), logits_to_keep=2)
    assert last['logits'].shape == (IDS.shape[0], 2, full['logits'].shape[-1])
    np.testing.assert_allclose(last['logits'], full['logits'][:, -2:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(last['hidden_states'], full['hidden_states'])


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p['scale'] + p['bias']


def test_pangu_query_layer_matches_a_numpy_reference():
    """PanGu-α: after ln_f, a last layer whose queries are learned embeddings of the positions (not normed),
    keys/values the layer-normed hidden states; pre-LN residuals; tied logits. The hidden states entering it are
    those of the same model without the query layer (a 2-layer GPT with ln_f)."""
    config = models.tiny_decoder(query_layer=True, num_decoder_layers=3, activation='gelu')
    model, params, apply = _setup(config)
    params = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                                    nn.meta.unbox(params))  # nonzero biases, non-unit norm scales
    out = apply(params, jnp.asarray(IDS))
    body = models.DecoderModel(models.tiny_decoder(num_decoder_layers=2, activation='gelu'))
    hidden = np.asarray(body.apply({'params': {k: v for k, v in params.items() if k != 'query_layer'}},
                                   jnp.asarray(IDS))['hidden_states'], np.float64)
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    q_layer, eps, heads, kv = p['query_layer']['layer'], config.norm_eps, config.num_heads, config.head_dim
    attn = q_layer['self_attention']
    h = _layer_norm(hidden, q_layer['self_attention_norm'], eps)
    query_embeddings = p['query_layer']['query_embedder']['embedding'][:LENGTH]  # [length, emb]
    q = np.einsum('te,ehd->thd', query_embeddings, attn['query']['kernel']) + attn['query']['bias']
    k = np.einsum('bte,ehd->bthd', h, attn['key']['kernel']) + attn['key']['bias']
    v = np.einsum('bte,ehd->bthd', h, attn['value']['kernel']) + attn['value']['bias']
    scores = np.einsum('qhd,bkhd->bhqk', q, k) / math.sqrt(kv)
    scores = np.where(np.tril(np.ones((LENGTH, LENGTH), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum('bhqk,bkhd->bqhd', probs, v)
    x = hidden + np.einsum('bqhd,hde->bqe', context, attn['out']['kernel']) + attn['out']['bias']
    m = q_layer['mlp']
    pre = _layer_norm(x, q_layer['mlp_norm'], eps) @ m['wi']['kernel'] + m['wi']['bias']
    erf = np.vectorize(math.erf)
    x = x + (0.5 * pre * (1 + erf(pre / math.sqrt(2)))) @ m['wo']['kernel'] + m['wo']['bias']
    logits = x @ p['token_embedder']['embedding'].T
    assert heads * kv == config.emb_dim
    np.testing.assert_allclose(out['hidden_states'], x, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out['logits'], logits, atol=1e-5, rtol=1e-5)
