"""Prompt and prefix tuning: masks, positions and outputs against independent computations.

Prompt tuning is checked against the plain model run on a longer input whose first n tokens have exactly the prompt
as their token embeddings (the prompt then IS a token sequence, so the plain model's own masking and positions are
the reference). Prefix tuning is checked against attention over [prefix; keys] computed in numpy, for one layer and
for every attention call inside a whole model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import peft
from plmjax.layers import attention
from tests.peft.helpers import assert_outputs_equal, init_params, model_and_inputs, randomize

N = 3  # prompt / prefix length


def _prompt_as_tokens(params, path, token_ids):
    """Sets the prompt at `path` to the token-table rows of `token_ids` [N]."""
    table = params['base']
    for key in path[:-1] + ('token_embedder',):
        table = table[key]
    prompt = table['embedding'][token_ids]
    tree = params['prompt_tuning']
    for key in path:
        tree = tree[key]
    tree['prompt'] = prompt
    return params


def _concat(prefix, x):
    return jnp.concatenate([jnp.broadcast_to(prefix, (x.shape[0], prefix.shape[-1])).astype(x.dtype), x], 1)


@pytest.mark.parametrize('arch', ['encoder', 'encoder_classifier'])
def test_prompt_tuning_encoder_equals_prompt_tokens(arch):
    module, (ids,), kwargs = model_and_inputs(arch)
    wrapped = peft.wrap(module, 'prompt_tuning', length=N)
    params = init_params(wrapped, (ids,), kwargs)
    stack = ('bert', 'encoder') if arch == 'encoder_classifier' else ('encoder',)
    prompt_ids = jnp.array([7, 8, 9])
    params = _prompt_as_tokens(params, stack, prompt_ids)
    outputs = wrapped.apply({'params': params}, ids, **kwargs)

    long_ids = _concat(prompt_ids[None], ids)  # [batch, N + length]
    reference = module.apply({'params': params['base']}, long_ids, input_mask=long_ids != 0,
                             token_type_ids=_concat(jnp.zeros((1, N), jnp.int32), kwargs['token_type_ids']))
    for key in ('hidden_states', 'logits'):  # the original positions only, the padded row included
        assert outputs[key].shape[1] == ids.shape[1]
        np.testing.assert_allclose(outputs[key], reference[key][:, N:], rtol=0, atol=1e-5, err_msg=key)
    # The pooler reads the original [CLS] position (position 0 of the outputs), not the prompt's first vector.
    bert = params['base']['bert'] if arch == 'encoder_classifier' else params['base']
    pooler = bert['pooler']['dense']
    np.testing.assert_allclose(outputs['pooled'], np.tanh(outputs['hidden_states'][:, 0] @ pooler['kernel']
                                                          + pooler['bias']), rtol=1e-5, atol=1e-5)
    if arch == 'encoder_classifier':
        head = params['base']['classifier']['dense']
        np.testing.assert_allclose(outputs['classification_logits'], outputs['pooled'] @ head['kernel'] + head['bias'],
                                   rtol=1e-5, atol=1e-5)


def test_prompt_tuning_decoder_equals_prompt_tokens():
    """Causal: the prompt comes first, real tokens see it and their past; with a left-padding input mask too."""
    module, (ids,), _ = model_and_inputs('decoder')
    wrapped = peft.wrap(module, 'prompt_tuning', length=N)
    params = _prompt_as_tokens(init_params(wrapped, (ids,), {}), ('decoder',), jnp.array([11, 12, 13]))
    long_ids = _concat(jnp.array([[11, 12, 13]]), ids)
    assert_outputs_equal(wrapped.apply({'params': params}, ids),
                         jax.tree.map(lambda x: x[:, N:], module.apply({'params': params['base']}, long_ids)),
                         atol=1e-5)
    mask = jnp.ones_like(ids).at[0, :4].set(0)  # the first row is left-padded
    assert_outputs_equal(
        wrapped.apply({'params': params}, ids, input_mask=mask),
        jax.tree.map(lambda x: x[:, N:], module.apply({'params': params['base']}, long_ids,
                                                      input_mask=_concat(jnp.ones((1, N), jnp.int32), mask))),
        atol=1e-5)


def test_prompt_tuning_encoder_decoder_prompts_the_encoder_only():
    module, (ids, decoder_ids), _ = model_and_inputs('encoder_decoder')
    wrapped = peft.wrap(module, 'prompt_tuning', length=N)
    params = init_params(wrapped, (ids, decoder_ids), {})
    assert set(params['prompt_tuning']) == {'encoder'}  # the decoder has cross-attention: not prompted
    params = _prompt_as_tokens(params, ('encoder',), jnp.array([20, 21, 22]))
    outputs = wrapped.apply({'params': params}, ids, decoder_ids)

    base = {'params': params['base']}
    long_ids = _concat(jnp.array([[20, 21, 22]]), ids)
    encoded = module.apply(base, long_ids, method=module.encode)[:, N:]
    reference = module.apply(base, encoded, decoder_ids, encoder_mask=ids != 0, method=module.decode)
    assert_outputs_equal(outputs, {'encoder_hidden_states': encoded, **reference}, atol=1e-5)


def test_prompt_tuning_errors():
    module, (ids,), kwargs = model_and_inputs('encoder', max_length=14)
    wrapped = peft.wrap(module, 'prompt_tuning', length=N)
    params = init_params(wrapped, (ids,), kwargs)
    with pytest.raises(ValueError, match='prompt_tuning.length=3'):  # 3 + 12 > max_length 14
        wrapped.apply({'params': params}, ids, **kwargs)
    decoder, (ids,), _ = model_and_inputs('decoder')
    wrapped = peft.wrap(decoder, 'prompt_tuning', length=N)
    params = init_params(wrapped, (ids,), {})
    cache = wrapped.init(jax.random.key(0), ids, decode=True)['cache']
    with pytest.raises(ValueError, match='cached decoding'):
        wrapped.apply({'params': params, 'cache': cache}, ids[:, :1], decode=True, mutable=['cache'])


def test_prompt_from_vocabulary():
    module, (ids,), kwargs = model_and_inputs('encoder_classifier')
    params = init_params(peft.wrap(module, 'prompt_tuning', length=N), (ids,), kwargs)
    params = peft.prompt_from_vocabulary(params, jax.random.key(3), num_candidates=50)
    prompt, table = params['prompt_tuning']['bert']['encoder']['prompt'], params['base']['bert']['token_embedder']
    rows = [int(np.argmin(np.abs(np.asarray(table['embedding'][:50]) - np.asarray(p)).sum(-1))) for p in prompt]
    np.testing.assert_array_equal(prompt, table['embedding'][np.array(rows)])


def _numpy_attention(q_in, kv_in, p, mask, prefix_k, prefix_v, *, bias=None, scale=True):
    """Attention over [prefix; keys] in float64: projections (with biases when the module has them), scores scaled
    by 1/sqrt(kv) when `scale` (T5: not), the additive `bias` [b or 1, heads, q, k] (T5's relative bias; nothing on
    prefix columns), mask [b or 1, 1, q, k] bool (prefix columns always visible)."""
    f = lambda x: np.asarray(x, np.float64)  # noqa: E731

    def proj(x, name):
        return np.einsum('ble,ehd->blhd', f(x), f(p[name]['kernel'])) + f(p[name].get('bias', 0.0))

    q, k, v = proj(q_in, 'query'), proj(kv_in, 'key'), proj(kv_in, 'value')
    b, n, length = q.shape[0], prefix_k.shape[0], kv_in.shape[1]
    k = np.concatenate([np.broadcast_to(f(prefix_k), (b,) + prefix_k.shape), k], 1)
    v = np.concatenate([np.broadcast_to(f(prefix_v), (b,) + prefix_v.shape), v], 1)
    scores = np.einsum('bqhd,bkhd->bhqk', q, k) / (np.sqrt(q.shape[-1]) if scale else 1.0)
    if bias is not None:
        bias = f(bias)
        scores = scores + np.concatenate([np.zeros(bias.shape[:3] + (n,)), bias], -1)
    if mask is not None:
        mask = np.asarray(mask)
        mask = np.concatenate([np.ones(mask.shape[:3] + (n,), bool), np.broadcast_to(mask, mask.shape[:3] + (length,))],
                              -1)
        scores = np.where(mask, scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum('bhqk,bkhd->bqhd', probs, v)
    return np.einsum('bqhd,hde->bqe', out, f(p['out']['kernel'])) + f(p['out'].get('bias', 0.0))


def test_attention_extra_kv_equals_hand_computation():
    """The attention hook: keys/values [prefix; keys], prefix columns always visible (with a padding mask)."""
    layer = attention.MultiHeadAttention(num_heads=2, head_dim=4)
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    mask = attention.make_attention_mask(key_mask=jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    params = nn.meta.unbox(layer.init(jax.random.key(1), x)['params'])
    prefix_k, prefix_v = (jax.random.normal(jax.random.key(i), (N, 2, 4)) for i in (2, 3))
    out = layer.apply({'params': params}, x, mask=mask, extra_kv=(prefix_k[None], prefix_v[None]))
    np.testing.assert_allclose(out, _numpy_attention(x, x, params, np.asarray(mask), prefix_k, prefix_v),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', ['encoder_classifier', 'encoder_decoder'])
def test_prefix_tuning_every_attention_equals_hand_computation(arch):
    """Inside the whole wrapped model, each attention call (self and cross) outputs numpy attention over
    [its prefix; its keys] with the model's mask: recorded by a test interceptor around the wrapper's."""
    module, args, kwargs = model_and_inputs(arch)
    wrapped = peft.wrap(module, 'prefix_tuning', length=N)
    params = init_params(wrapped, args, kwargs)
    calls = []

    def record(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if isinstance(context.module, attention.MultiHeadAttention) and context.method_name == '__call__':
            calls.append((context.module.path[1:], context.module.scale_scores, call_args, call_kwargs, out))
        return out

    with nn.intercept_methods(record):
        wrapped.apply({'params': params}, *args, **kwargs)
    layers = 2 if arch == 'encoder_classifier' else 2 + 2 * 2
    assert len(calls) == layers
    for path, scale, call_args, call_kwargs, out in calls:
        p, prefix = params['base'], params['prefix_tuning']
        for key in path:
            p, prefix = p[key], prefix[key]
        assert prefix['key'].shape == (N, 4, 16)
        kv_in = call_args[1] if len(call_args) > 1 and call_args[1] is not None else call_args[0]
        expected = _numpy_attention(call_args[0], kv_in, p, call_kwargs.get('mask'), prefix['key'], prefix['value'],
                                    bias=call_kwargs.get('bias'), scale=scale)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5, err_msg='/'.join(path))


def test_prefix_tuning_cached_decoding_equals_full_forward():
    """The prefixes join the keys after the cache: decoding token by token gives the full forward's logits."""
    module, (ids,), _ = model_and_inputs('decoder')
    wrapped = peft.wrap(module, 'prefix_tuning', length=N)
    params = init_params(wrapped, (ids,), {})
    full = wrapped.apply({'params': params}, ids)['logits']
    cache = wrapped.init(jax.random.key(0), ids, decode=True)['cache']
    steps = []
    for i in range(ids.shape[1]):
        out, variables = wrapped.apply({'params': params, 'cache': cache}, ids[:, i:i + 1], decode=True,
                                       mutable=['cache'])
        cache = variables['cache']
        steps.append(out['logits'])
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_prefix_reparameterization_folds_to_direct_prefixes():
    module, args, kwargs = model_and_inputs('encoder_decoder')
    reparam = peft.wrap(module, 'prefix_tuning', length=N, reparameterize=True, hidden_size=16)
    params = init_params(reparam, args, kwargs)
    tree = params['prefix_tuning']
    assert tree['embedding'].shape == (N, 64) and tree['hidden']['kernel'].shape == (64, 16)
    assert tree['encoder']['layers_0']['self_attention']['key']['kernel'].shape == (16, 4, 16)
    params = {**params, 'prefix_tuning': randomize(tree, scale=0.3)}
    folded = peft.fold_reparameterization(params)
    assert folded['prefix_tuning']['decoder']['layers_1']['cross_attention']['value'].shape == (N, 4, 16)
    direct = peft.wrap(module, 'prefix_tuning', length=N)
    assert_outputs_equal(reparam.apply({'params': params}, *args, **kwargs),
                         direct.apply({'params': folded}, *args, **kwargs), atol=1e-5)


@pytest.mark.parametrize('method, options', [
    ('prompt_tuning', {'length': N}),
    ('prefix_tuning', {'length': N}),
    ('prefix_tuning', {'length': N, 'reparameterize': True, 'hidden_size': 16}),
])
@pytest.mark.parametrize('arch', ['encoder_classifier', 'encoder_decoder'])
def test_scanned_model_equals_unrolled(arch, method, options):
    """On a scanned base the per-layer prefixes (and their reparameterization's per-layer dense layers) carry the
    layers axis and are sliced per layer by the scan; the shared reparameterization MLP and the prompts stay
    unstacked. With layout.scan_params of the unrolled parameters, the outputs are the unrolled model's."""
    from tests.peft.helpers import FLOAT64, assert_close_to_scale, assert_scanned_init_matches, scanned_twin
    with jax.enable_x64(True):  # float64: the same numbers to ~1e-14 (float32: its last bits)
        module, args, kwargs = model_and_inputs(arch, **FLOAT64)
        wrapped = peft.wrap(module, method, **options)
        params = init_params(wrapped, args, kwargs)
        params = {**params, method: randomize(params[method], scale=0.3)}
        twin, scanned, _, _ = scanned_twin(arch, params, method, FLOAT64, **options)
        assert_scanned_init_matches(twin, args, kwargs, scanned, method)
        assert_close_to_scale(twin.apply({'params': scanned}, *args, **kwargs),
                              wrapped.apply({'params': params}, *args, **kwargs), rtol=1e-12)


def test_prefix_tuning_on_a_scanned_decoder_decodes_and_folds():
    """Scanned decoder: cached decoding with prefixes equals the full forward pass; fold_reparameterization of
    scanned parameters is the unrolled fold, scanned."""
    from plmjax.models import layout
    module, (ids,), _ = model_and_inputs('decoder', scan_layers=True)
    reparam = peft.wrap(module, 'prefix_tuning', length=N, reparameterize=True, hidden_size=16)
    params = init_params(reparam, (ids,), {})
    params = {**params, 'prefix_tuning': randomize(params['prefix_tuning'], scale=0.3)}
    assert params['prefix_tuning']['decoder']['layers']['self_attention']['key']['kernel'].shape == (2, 16, 4, 16)
    folded = peft.fold_reparameterization(params)
    expected = layout.scan_params(peft.fold_reparameterization(layout.unscan_params(params)))
    assert jax.tree.structure(folded) == jax.tree.structure(expected)
    for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(folded)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert folded['prefix_tuning']['decoder']['layers']['self_attention']['value'].shape == (2, N, 4, 16)

    direct = peft.wrap(module, 'prefix_tuning', length=N)
    full = direct.apply({'params': folded}, ids)['logits']
    assert_outputs_equal({'logits': reparam.apply({'params': params}, ids)['logits']}, {'logits': full}, atol=1e-5)
    cache = direct.init(jax.random.key(0), ids, decode=True)['cache']
    steps = []
    for i in range(ids.shape[1]):
        out, variables = direct.apply({'params': folded, 'cache': cache}, ids[:, i:i + 1], decode=True,
                                      mutable=['cache'])
        cache = variables['cache']
        steps.append(out['logits'])
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-5, atol=1e-5)
