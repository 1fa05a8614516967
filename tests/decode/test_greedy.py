"""Greedy KV-cache decoding: the same tokens as `transformers`' generate and as a loop of full forward passes."""
import functools
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402
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
    kernels = weights.kernels['decoder']['layers_0']
    for name, out_in in (('query', (1, 2, 0)), ('out', (2, 0, 1))):  # [emb, heads, kv] and [heads, kv, emb]
        kernel = layer['self_attention'][name]['kernel']
        np.testing.assert_array_equal(np.asarray(kernels['self_attention'][name]['kernel_t']),
                                      np.asarray(jnp.transpose(kernel, out_in).astype(jnp.bfloat16)))
    assert kernels['mlp']['wi']['kernel_t'].shape == layer['mlp']['wi']['kernel'].shape[::-1]
    assert weights.params['token_embedder']['embedding'].dtype == jnp.bfloat16
    prompt = np.random.default_rng(3).integers(5, config.vocab_size, (2, PROMPT)).astype(np.int32)
    decode = greedy.jit_greedy_decode(module, NEW)
    np.testing.assert_array_equal(np.asarray(decode(weights, prompt)), np.asarray(decode(params, prompt)))
