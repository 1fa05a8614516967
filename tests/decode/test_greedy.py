"""Greedy KV-cache decoding: the same tokens as `transformers`' generate and as a loop of full forward passes."""
import functools
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flax import traverse_util  # noqa: E402

from plmjax import models, sharding  # noqa: E402
from plmjax.decode import greedy  # noqa: E402

PROMPT, NEW = 5, 12


def _hf_and_converted():
    pytest.importorskip('torch')
    from plmjax.convert import hf, parity
    hf_model = parity.tiny_hf_model('gpt2')
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return hf_model, hf.from_hf(hf_model.config.to_dict(), state), parity.VOCAB


def test_greedy_matches_transformers_generate():
    import torch
    hf_model, converted, vocab = _hf_and_converted()
    prompt = np.random.default_rng(0).integers(3, vocab, (3, PROMPT)).astype(np.int32)
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor(prompt, dtype=torch.long), attention_mask=torch.ones(prompt.shape),
                                     max_new_tokens=NEW, do_sample=False, num_beams=1, eos_token_id=None,
                                     pad_token_id=0)[:, PROMPT:].numpy()
    module = models.build_model('decoder', converted.config)
    tokens = greedy.jit_greedy_decode(module, NEW)(converted.params, prompt)
    assert tokens.shape == (3, NEW)
    np.testing.assert_array_equal(np.asarray(tokens), expected)


def test_greedy_matches_uncached_argmax_loop_and_stops_at_eos():
    config = models.tiny_decoder()
    module = models.build_model('decoder', config)
    params = module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))['params']
    prompt = np.random.default_rng(1).integers(5, config.vocab_size, (2, PROMPT)).astype(np.int32)
    ids = prompt
    for _ in range(NEW):  # no cache: the whole sequence every step
        logits = module.apply({'params': params}, ids)['logits'][:, -1]
        ids = np.concatenate([ids, np.asarray(jnp.argmax(logits, -1), np.int32)[:, None]], axis=1)
    expected = ids[:, PROMPT:]
    np.testing.assert_array_equal(np.asarray(greedy.greedy_decode(module, params, prompt, NEW)), expected)

    eos = int(expected[0, 3])  # row 0 produces it at step 3: everything after is padding
    stopped = np.asarray(greedy.greedy_decode(module, params, prompt, NEW, eos_id=eos, pad_id=0))
    first = [int(np.argmax(row == eos)) if (row == eos).any() else NEW for row in expected]
    for row, out, stop in zip(expected, stopped, first):
        np.testing.assert_array_equal(out[:stop + 1], row[:stop + 1])
        assert (out[stop + 1:] == 0).all()


def _assert_no_near_tie(logits):
    """The premise of comparing bf16 decoding's tokens with the uncached loop's: the two paths' logits differ by
    about bf16's unit roundoff 2^-8 times max|logit| (2.1e-3 of 0.98 measured on AMD EPYC), and an argmax can only
    differ where the top two are within twice that; keep 2x more room, whatever the CPU's summation order."""
    top = np.sort(np.asarray(logits, np.float64), axis=-1)
    assert np.all(top[:, -1] - top[:, -2] > 4 * 2.0 ** -8 * np.max(np.abs(top))), 'a near tie: pick another seed'


def test_bf16_matmul_decoding_matches_the_uncached_loop_on_rounded_weights():
    """matmul_dtype='bfloat16' rounds the weight matrices once before the loop: the tokens are those of full
    forward passes of the bf16-matmul model whose matrices were rounded the same way. (Decoding keeps its
    attention products over the cache in float32, so the logits differ within bf16 rounding; here no token
    is near a tie.)"""
    config = models.tiny_decoder(matmul_dtype='bfloat16')
    module = models.build_model('decoder', config)
    params = module.init(jax.random.key(2), jnp.ones((1, 8), jnp.int32))['params']
    rounded = jax.tree.map(lambda p: p.astype(jnp.bfloat16) if p.ndim >= 2 else p, params)
    prompt = np.random.default_rng(2).integers(5, config.vocab_size, (2, PROMPT)).astype(np.int32)
    ids = prompt
    for _ in range(NEW):
        logits = module.apply({'params': rounded}, ids)['logits'][:, -1]
        _assert_no_near_tie(logits)
        ids = np.concatenate([ids, np.asarray(jnp.argmax(logits, -1), np.int32)[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(greedy.jit_greedy_decode(module, NEW)(params, prompt)),
                                  ids[:, PROMPT:])


def test_prepared_weights_hold_out_in_kernels_and_decode_the_same_tokens():
    """`prepare` makes decoding's layout once (each kernel [out..., in...] in its product's dtype, the tables in
    matmul_dtype); decoding from it gives the tokens of decoding from the params."""
    config = models.tiny_decoder(matmul_dtype='bfloat16')
    module = models.build_model('decoder', config)
    params = nn.meta.unbox(module.init(jax.random.key(3), jnp.ones((1, 8), jnp.int32))['params'])
    weights = jax.jit(functools.partial(greedy.prepare, module))(params)
    layer = params['decoder']['layers_0']
    kernels = nn.meta.unbox(weights.kernels)['decoder']['layers_0']  # kernel_t boxed with its axis names
    for name, out_in in (('query', (1, 2, 0)), ('out', (2, 0, 1))):  # [emb, heads, kv] and [heads, kv, emb]
        kernel = layer['self_attention'][name]['kernel']
        np.testing.assert_array_equal(np.asarray(kernels['self_attention'][name]['kernel_t']),
                                      np.asarray(jnp.transpose(kernel, out_in).astype(jnp.bfloat16)))
    assert kernels['mlp']['wi']['kernel_t'].shape == layer['mlp']['wi']['kernel'].shape[::-1]
    assert weights.params['token_embedder']['embedding'].dtype == jnp.bfloat16
    prompt = np.random.default_rng(3).integers(5, config.vocab_size, (2, PROMPT)).astype(np.int32)
    decode = greedy.jit_greedy_decode(module, NEW)
    np.testing.assert_array_equal(np.asarray(decode(weights, prompt)), np.asarray(decode(params, prompt)))


# The decoding layout ('decoding_weights', made by `prepare` from the params only).

CONFIGS = {'gpt2_f32': {}, 'gpt2_bf16': {'matmul_dtype': 'bfloat16'},
           'pangu_f32': {'query_layer': True, 'activation': 'gelu'},
           'pangu_bf16': {'query_layer': True, 'activation': 'gelu', 'matmul_dtype': 'bfloat16'},
           'gpt2_scan_layers': {'scan_layers': True}}


def _uncached_tokens(module, params, prompt, new):
    """Greedy tokens from full forward passes (no cache, no decoding layout): step t takes the argmax of the logits
    at the last filled position of a zero-padded [batch, prompt + new] input (causal: later positions do not
    affect it), so one compiled forward serves every step."""
    if module.config.matmul_dtype is not None:  # the matrices rounded as decoding rounds them once
        params = jax.tree.map(lambda p: p.astype(module.config.matmul_dtype) if p.ndim >= 2 else p, params)
    forward = jax.jit(lambda ids, last: module.apply({'params': params}, ids)['logits'][:, last])
    ids = np.zeros((prompt.shape[0], prompt.shape[1] + new), np.int32)
    ids[:, :prompt.shape[1]] = prompt
    for t in range(prompt.shape[1], prompt.shape[1] + new):
        logits = forward(ids, t - 1)
        if module.config.matmul_dtype is not None:
            _assert_no_near_tie(logits)
        ids[:, t] = np.asarray(jnp.argmax(logits, -1))
    return ids[:, prompt.shape[1]:]


def _setup(overrides, seed):
    config = models.tiny_decoder(**overrides)
    module = models.build_model('decoder', config)
    params = nn.meta.unbox(module.init(jax.random.key(seed), jnp.ones((1, 8), jnp.int32))['params'])
    prompt = np.random.default_rng(seed).integers(5, config.vocab_size, (2, PROMPT)).astype(np.int32)
    return module, params, prompt


@pytest.mark.parametrize('name', CONFIGS)
def test_prepared_weights_raw_params_and_the_uncached_loop_give_the_same_tokens(name):
    # Seed 7: no near tie in the bf16 cases (_assert_no_near_tie; seed 4 had one in pangu_bf16).
    module, params, prompt = _setup(CONFIGS[name], seed=7)
    weights = jax.jit(functools.partial(greedy.prepare, module))(params)
    decode = greedy.jit_greedy_decode(module, NEW)
    expected = _uncached_tokens(module, params, prompt, NEW)
    np.testing.assert_array_equal(np.asarray(decode(weights, prompt)), expected)
    np.testing.assert_array_equal(np.asarray(decode(params, prompt)), expected)


def test_every_kernel_t_is_its_kernel_transposed_with_its_axis_names():
    """PanGu-style (a query layer) with bf16 products: every Projection's kernel has a kernel_t beside it, equal
    to the kernel with its input axes moved last, in the product's dtype, and named the same way."""
    module, _, _ = _setup(CONFIGS['pangu_bf16'], seed=5)
    variables = module.init(jax.random.key(5), jnp.ones((1, 8), jnp.int32))
    assert 'decoding_weights' not in variables  # made by `prepare` only, never by init
    boxed = variables['params']
    weights = greedy.prepare(module, boxed)
    kernels = traverse_util.flatten_dict(weights.kernels)
    params = traverse_util.flatten_dict(boxed)
    assert {path[:-1] for path in kernels} == {path[:-1] for path in params if path[-1] == 'kernel'}
    assert any('query_layer' in '/'.join(path) for path in kernels), sorted(kernels)
    for path, kernel_t in kernels.items():
        kernel = params[path[:-1] + ('kernel',)]
        assert path[-1] == 'kernel_t' and kernel_t.value.dtype == jnp.bfloat16
        ndim = kernel.value.ndim
        # the number of input axes n: kernel [in..., out...] -> kernel_t [out..., in...], names alike
        matches = [n for n in range(1, ndim) if kernel_t.names == kernel.names[n:] + kernel.names[:n]
                   and np.array_equal(np.asarray(kernel_t.value), np.asarray(jnp.transpose(
                       kernel.value, (*range(n, ndim), *range(n))).astype(jnp.bfloat16)))]
        assert matches, path


def test_decoding_other_params_is_never_done_with_old_weights():
    """Preparing params A and then decoding params B decodes B; DecodingWeights decode their own params; they
    cannot be assembled by hand from other params; and the cache carries no weights from one call to another."""
    module, params_a, prompt = _setup({}, seed=6)
    params_b = nn.meta.unbox(module.init(jax.random.key(7), jnp.ones((1, 8), jnp.int32))['params'])
    tokens_a, tokens_b = (_uncached_tokens(module, p, prompt, NEW) for p in (params_a, params_b))
    assert (tokens_a != tokens_b).any()
    decode = greedy.jit_greedy_decode(module, NEW)
    weights_a = greedy.prepare(module, params_a)
    np.testing.assert_array_equal(np.asarray(decode(weights_a, prompt)), tokens_a)
    np.testing.assert_array_equal(np.asarray(decode(params_b, prompt)), tokens_b)
    np.testing.assert_array_equal(np.asarray(decode(weights_a, prompt)), tokens_a)
    with pytest.raises(TypeError, match='prepare'):
        greedy.DecodingWeights(params_b, weights_a.kernels)
    with pytest.raises(AttributeError):
        weights_a.params = params_b

    cache = greedy.init_cache(module, 2, PROMPT + NEW)
    cache_names = {path[-1] for path in traverse_util.flatten_dict(cache)}
    assert cache_names == {'cached_key', 'cached_value', 'key_mask', 'key_prefix', 'cache_index'}, cache_names
    _, variables = module.apply({'params': params_a, 'cache': cache}, jnp.asarray(prompt), decode=True,
                                mutable=['cache'])  # a decoding call with the params writes no kernels either
    assert {path[-1] for path in traverse_util.flatten_dict(variables['cache'])} == cache_names


def test_weights_prepared_for_another_module_are_refused():
    module, params, prompt = _setup({}, seed=8)
    other = models.build_model('decoder', models.tiny_decoder(matmul_dtype='bfloat16'))
    with pytest.raises(ValueError, match='prepare'):
        greedy.greedy_decode(other, greedy.prepare(module, params), prompt, 2)


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
def test_decoding_weights_are_sharded_like_their_kernels_on_8_devices():
    """On a (data=2, fsdp=2, tensor=2) mesh, jitted `prepare` of sharded params gives every kernel_t the sharding
    its permuted axis names map to (and some are really split); decoding on the mesh gives the 1-device tokens."""
    module, _, prompt = _setup(CONFIGS['pangu_f32'], seed=9)
    mesh = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    rules = sharding.LOGICAL_AXIS_RULES
    init = functools.partial(module.init, jax.random.key(9), jnp.ones((1, 8), jnp.int32))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = sharding.logical_to_sharding(nn.get_partition_spec(jax.eval_shape(init)), mesh, rules)
        params = jax.jit(init, out_shardings=shardings)()['params']
        weights = jax.jit(functools.partial(greedy.prepare, module))(params)
        tokens = greedy.jit_greedy_decode(module, NEW)(weights, prompt)
    split = 0
    for path, kernel_t in traverse_util.flatten_dict(weights.kernels).items():
        expected = sharding.logical_to_sharding(nn.get_partition_spec(kernel_t), mesh, rules)
        assert kernel_t.value.sharding.is_equivalent_to(expected, kernel_t.value.ndim), (path, kernel_t.names)
        split += kernel_t.value.sharding.shard_shape(kernel_t.value.shape) != kernel_t.value.shape
    assert split >= 4, split
    unsharded = nn.meta.unbox(jax.device_get(params))
    np.testing.assert_array_equal(np.asarray(tokens), _uncached_tokens(module, unsharded, prompt, NEW))
