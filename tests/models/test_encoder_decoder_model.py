"""EncoderDecoderModel behaviour: causal decoder, padding on both sides, encode/decode, cached decoding."""
import functools
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402

rng = np.random.RandomState(0)
ENC = rng.randint(1, 512, size=(2, 7)).astype(np.int32)
ENC[1, 5:] = 0  # the second input is padded
DEC = rng.randint(1, 512, size=(2, 6)).astype(np.int32)
DEC[:, 0] = 0  # decoder inputs start with id 0, as T5's do
VARIANTS = {
    't5': models.tiny_encoder_decoder(),
    'bart': models.tiny_encoder_decoder(position='learned', position_offset=2, norm='layernorm', norm_eps=1e-5,
                                        pre_norm=False, final_norm=False, embedding_norm=True, use_bias=True,
                                        activation='gelu', gated_mlp=False, tie_embeddings=True, lm_head_bias=True,
                                        scale_attention=True, init_std=0.02, pad_id=1),
}


@functools.lru_cache(maxsize=None)  # one init and one compiled apply per config
def _setup(config):
    model = models.EncoderDecoderModel(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(ENC), jnp.asarray(DEC))['params']
    apply = jax.jit(lambda p, enc, dec, **kw: model.apply({'params': p}, enc, dec, **kw))
    return model, params, apply


def _encoder_mask(config, enc):
    return jnp.asarray(enc != config.pad_id)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_decoder_is_causal(name):
    config = VARIANTS[name]
    _, params, apply = _setup(config)
    mask = _encoder_mask(config, ENC)
    base = apply(params, jnp.asarray(ENC), jnp.asarray(DEC), encoder_mask=mask)['logits']
    changed_dec = DEC.copy()
    changed_dec[:, 3] += 1
    changed = apply(params, jnp.asarray(ENC), jnp.asarray(changed_dec), encoder_mask=mask)['logits']
    np.testing.assert_array_equal(base[:, :3], changed[:, :3])
    assert not np.allclose(base[:, 3:], changed[:, 3:], atol=1e-4)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_padding_on_both_sides_does_not_change_real_positions(name):
    config = VARIANTS[name]
    _, params, apply = _setup(config)
    pad = config.pad_id
    enc = np.where(ENC == 0, pad, ENC)
    base = apply(params, jnp.asarray(enc), jnp.asarray(DEC), encoder_mask=_encoder_mask(config, enc))
    enc_padded = np.concatenate([enc, np.full((2, 5), pad, np.int32)], axis=1)
    enc_padded[1, 5:] = 9  # garbage under the encoder mask
    enc_mask = np.concatenate([enc != pad, np.zeros((2, 5), bool)], axis=1)
    dec_padded = np.concatenate([DEC, np.full((2, 4), pad, np.int32)], axis=1)
    padded = apply(params, jnp.asarray(enc_padded), jnp.asarray(dec_padded), encoder_mask=jnp.asarray(enc_mask))
    np.testing.assert_allclose(padded['logits'][:, :6], base['logits'], atol=1e-5)
    real = np.asarray(enc_mask[:, :7])
    np.testing.assert_allclose(np.asarray(padded['encoder_hidden_states'])[:, :7][real],
                               np.asarray(base['encoder_hidden_states'])[real], atol=1e-5)


def test_encode_then_decode_equals_call():
    """The same computation (compared in float64, where only rounding-order noise of ~1e-15 could differ)."""
    with jax.enable_x64(True):
        config = models.tiny_encoder_decoder(dtype='float64', param_dtype='float64')
        model, params, apply = _setup(config)
        full = apply(params, jnp.asarray(ENC), jnp.asarray(DEC))
        encoded = jax.jit(lambda p, enc: model.apply({'params': p}, enc, method=model.encode))(params, jnp.asarray(ENC))
        decoded = jax.jit(lambda p, enc, dec, mask: model.apply({'params': p}, enc, dec, encoder_mask=mask,
                                                                method=model.decode))(
            params, encoded, jnp.asarray(DEC), _encoder_mask(config, ENC))
    np.testing.assert_allclose(encoded, full['encoder_hidden_states'], atol=1e-12)
    np.testing.assert_allclose(decoded['logits'], full['logits'], atol=1e-12)
    assert set(full) == {'encoder_hidden_states', 'hidden_states', 'logits'}


@pytest.mark.parametrize('name', list(VARIANTS))
def test_cached_decoding_matches_the_full_forward_pass(name):
    """One decoder token a step against the cache (T5: relative bias of the step's position) equals the full
    teacher-forced forward pass."""
    config = VARIANTS[name]
    model, params, apply = _setup(config)
    mask = _encoder_mask(config, ENC)
    full = apply(params, jnp.asarray(ENC), jnp.asarray(DEC), encoder_mask=mask)['logits']
    init_cache = jax.jit(lambda enc, dec: model.init(jax.random.key(0), enc, dec, decode=True)['cache'])
    cache = init_cache(jnp.asarray(ENC), jnp.zeros_like(DEC))
    encoded = jax.jit(lambda p, enc: model.apply({'params': p}, enc, encoder_mask=mask, method=model.encode))(
        params, jnp.asarray(ENC))
    step = jax.jit(lambda cache, ids: model.apply({'params': params, 'cache': cache}, encoded, ids, encoder_mask=mask,
                                                  decode=True, mutable=['cache'], method=model.decode))
    logits = []
    for t in range(DEC.shape[1]):
        out, variables = step(cache, jnp.asarray(DEC[:, t:t + 1]))
        cache = variables['cache']
        logits.append(out['logits'])
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_decoder_input_raises():
    model = models.EncoderDecoderModel(models.tiny_encoder_decoder(max_length=5))
    with pytest.raises(ValueError, match=r'decoder input sequence has length 6, longer than max_length=5'):
        model.init(jax.random.key(0), jnp.asarray(ENC[:, :5]), jnp.asarray(DEC))
