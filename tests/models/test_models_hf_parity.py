"""Tiny plmjax models against the Hugging Face PyTorch references, with every weight copied across.

Every weight of the reference (including norm scales and biases, and BART's final_logits_bias) is drawn at
random first, so a misplaced norm, a wrong GELU or a missing bias cannot hide behind the default init. This is a
light version of the converters' parity tests: it maps the tensors by hand, for the math of plmjax.models only.

Both sides run in float64, so any difference in the math shows up far above rounding: the outputs agree to
1e-10 (float64 rounding leaves ~1e-14), whereas float32 rounding alone, amplified by these random weights
through a few layers, reaches ~1e-5 and would blur a real but small mismatch (a wrong epsilon, a tanh-GELU for
an erf-GELU).
"""
import os
import sys
import unittest.mock

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from plmjax import models  # noqa: E402
from plmjax.layers import position  # noqa: E402

ATOL = RTOL = 1e-10
F64 = dict(dtype='float64', param_dtype='float64')
BATCH, LENGTH = 2, 12
E, HEADS, HEAD_DIM, MLP, VOCAB = 32, 4, 8, 37, 99


@pytest.fixture(autouse=True)
def float64():
    """jax and torch in float64 for every test of this file (torch.double() is applied per model)."""
    with jax.enable_x64(True):
        yield


def _randomize(module: 'torch.nn.Module', seed: int = 0) -> None:
    """In float64, draw every float tensor (weights, biases, norm scales, buffers such as final_logits_bias)."""
    module.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float64) * 0.2
                tensor.copy_(1.0 + noise if name.endswith(('LayerNorm.weight', 'layer_norm.weight', 'ln_1.weight',
                                                           'ln_2.weight', 'ln_f.weight', 'layernorm_embedding.weight'))
                             else noise)
    module.eval()


def _np(t):
    return t.detach().numpy().astype(np.float64)


def _linear(sd, prefix, bias=True):
    """torch Linear [out, in] -> flax Dense kernel [in, out]."""
    out = {'kernel': _np(sd[prefix + '.weight']).T}
    if bias:
        out['bias'] = _np(sd[prefix + '.bias'])
    return out


def _attention(sd, q, k, v, o, bias=True):
    """Four torch Linears -> plmjax MultiHeadAttention: kernels [E, heads, kv] and [heads, kv, E]."""
    params = {}
    for name, prefix in (('query', q), ('key', k), ('value', v)):
        p = _linear(sd, prefix, bias)
        params[name] = {'kernel': p['kernel'].reshape(E, HEADS, HEAD_DIM)}
        if bias:
            params[name]['bias'] = p['bias'].reshape(HEADS, HEAD_DIM)
    p = _linear(sd, o, bias)
    params['out'] = {'kernel': p['kernel'].reshape(HEADS, HEAD_DIM, E), **({'bias': p['bias']} if bias else {})}
    return params


def _norm(sd, prefix, bias=True):
    out = {'scale': _np(sd[prefix + '.weight'])}
    if bias:
        out['bias'] = _np(sd[prefix + '.bias'])
    return out


def _embed(sd, name):
    return {'embedding': _np(sd[name])}


def _check_tree(model, params, *args):
    """The mapped tree has exactly the parameters (names, shapes) the plmjax model creates."""
    expected = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)['params'])
    expected = jax.tree_util.tree_map(lambda x: x.shape, expected)
    assert jax.tree_util.tree_map(np.shape, params) == expected


def _inputs(pad_id=0, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, size=(BATCH, LENGTH))
    mask = np.ones((BATCH, LENGTH), np.int64)
    mask[1, LENGTH - 4:] = 0  # the second example is padded
    ids[1, LENGTH - 4:] = pad_id
    return ids, mask


def _close(actual, expected, mask=None):
    actual, expected = np.asarray(actual), _np(expected)
    if mask is not None:  # compare real positions only
        actual, expected = actual[mask.astype(bool)], expected[mask.astype(bool)]
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL)


def _bert_layer(sd, p):
    return {
        'self_attention': _attention(sd, f'{p}.attention.self.query', f'{p}.attention.self.key',
                                     f'{p}.attention.self.value', f'{p}.attention.output.dense'),
        'self_attention_norm': _norm(sd, f'{p}.attention.output.LayerNorm'),
        'mlp': {'wi': _linear(sd, f'{p}.intermediate.dense'), 'wo': _linear(sd, f'{p}.output.dense')},
        'mlp_norm': _norm(sd, f'{p}.output.LayerNorm'),
    }


def test_bert_matches_transformers():
    hf_config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=E, num_hidden_layers=2, num_attention_heads=HEADS,
                                        intermediate_size=MLP, max_position_embeddings=64)
    hf = transformers.BertForPreTraining(hf_config)
    _randomize(hf)
    sd = hf.state_dict()
    config = models.tiny_encoder(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP,
                                 max_length=64, **F64)
    params = {
        'token_embedder': _embed(sd, 'bert.embeddings.word_embeddings.weight'),
        'encoder': {
            'embedder': {'position_embedder': _embed(sd, 'bert.embeddings.position_embeddings.weight'),
                         'token_type_embedder': _embed(sd, 'bert.embeddings.token_type_embeddings.weight'),
                         'embedding_norm': _norm(sd, 'bert.embeddings.LayerNorm')},
            **{f'layers_{i}': _bert_layer(sd, f'bert.encoder.layer.{i}') for i in range(2)}},
        'mlm_head': {'transform': _linear(sd, 'cls.predictions.transform.dense'),
                     'transform_norm': _norm(sd, 'cls.predictions.transform.LayerNorm'),
                     'bias': _np(sd['cls.predictions.bias'])},
        'pooler': {'dense': _linear(sd, 'bert.pooler.dense')},
    }
    ids, mask = _inputs()
    types = np.zeros_like(ids)
    types[:, LENGTH // 2:] = 1
    model = models.EncoderModel(config)
    _check_tree(model, params, jnp.asarray(ids))
    out = model.apply({'params': params}, jnp.asarray(ids), input_mask=jnp.asarray(mask),
                      token_type_ids=jnp.asarray(types))
    with torch.no_grad():
        ref = hf.bert(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
        logits = hf.cls.predictions(ref.last_hidden_state)
    _close(out['hidden_states'], ref.last_hidden_state)
    _close(out['logits'], logits)
    _close(out['pooled'], ref.pooler_output)


def test_roberta_matches_transformers():
    """Pad id 1, one token type, positions starting at 2 (right padding)."""
    hf_config = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=E, num_hidden_layers=2,
                                           num_attention_heads=HEADS, intermediate_size=MLP,
                                           max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                                           layer_norm_eps=1e-5)  # roberta-base's value
    hf = transformers.RobertaForMaskedLM(hf_config)
    _randomize(hf)
    sd = hf.state_dict()
    config = models.roberta_base(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP,
                                 num_encoder_layers=2, max_length=64, pooler=False, **F64)
    params = {
        'token_embedder': _embed(sd, 'roberta.embeddings.word_embeddings.weight'),
        'encoder': {
            'embedder': {'position_embedder': _embed(sd, 'roberta.embeddings.position_embeddings.weight'),
                         'token_type_embedder': _embed(sd, 'roberta.embeddings.token_type_embeddings.weight'),
                         'embedding_norm': _norm(sd, 'roberta.embeddings.LayerNorm')},
            **{f'layers_{i}': _bert_layer(sd, f'roberta.encoder.layer.{i}') for i in range(2)}},
        'mlm_head': {'transform': _linear(sd, 'lm_head.dense'), 'transform_norm': _norm(sd, 'lm_head.layer_norm'),
                     'bias': _np(sd['lm_head.bias'])},
    }
    ids, mask = _inputs(pad_id=1)
    model = models.EncoderModel(config)
    _check_tree(model, params, jnp.asarray(ids))
    out = model.apply({'params': params}, jnp.asarray(ids))  # mask from pad_id=1
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    _close(out['hidden_states'], ref.hidden_states[-1], mask)
    _close(out['logits'], ref.logits, mask)


def test_electra_generator_matches_transformers():
    """Factorized embeddings (16 wide) projected to 32; the MLM head maps back to 16 for the tied projection."""
    hf_config = transformers.ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=E, num_hidden_layers=2,
                                           num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=64)
    hf = transformers.ElectraForMaskedLM(hf_config)
    _randomize(hf)
    sd = hf.state_dict()
    config = models.electra_small(vocab_size=VOCAB, emb_dim=E, embedding_size=16, num_heads=HEADS,
                                  head_dim=HEAD_DIM, mlp_dim=MLP, num_encoder_layers=2, max_length=64, **F64)
    params = {
        'token_embedder': _embed(sd, 'electra.embeddings.word_embeddings.weight'),
        'encoder': {
            'embedder': {'position_embedder': _embed(sd, 'electra.embeddings.position_embeddings.weight'),
                         'token_type_embedder': _embed(sd, 'electra.embeddings.token_type_embeddings.weight'),
                         'embedding_norm': _norm(sd, 'electra.embeddings.LayerNorm'),
                         'embedding_projection': _linear(sd, 'electra.embeddings_project')},
            **{f'layers_{i}': _bert_layer(sd, f'electra.encoder.layer.{i}') for i in range(2)}},
        'mlm_head': {'transform': _linear(sd, 'generator_predictions.dense'),
                     'transform_norm': _norm(sd, 'generator_predictions.LayerNorm'),
                     'bias': _np(sd['generator_lm_head.bias'])},
    }
    ids, mask = _inputs()
    model = models.EncoderModel(config)
    _check_tree(model, params, jnp.asarray(ids))
    out = model.apply({'params': params}, jnp.asarray(ids), input_mask=jnp.asarray(mask))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    _close(out['hidden_states'], ref.hidden_states[-1])
    _close(out['logits'], ref.logits)


def _gpt2_params(sd, num_layers):
    params = {'token_embedder': _embed(sd, 'transformer.wte.weight'),
              'decoder': {'embedder': {'position_embedder': _embed(sd, 'transformer.wpe.weight')},
                          'final_norm': _norm(sd, 'transformer.ln_f')}}
    for i in range(num_layers):
        p = f'transformer.h.{i}'
        qkv_w, qkv_b = _np(sd[f'{p}.attn.c_attn.weight']), _np(sd[f'{p}.attn.c_attn.bias'])  # Conv1D: [in, 3 * E]
        attn = {name: {'kernel': qkv_w[:, j * E:(j + 1) * E].reshape(E, HEADS, HEAD_DIM),
                       'bias': qkv_b[j * E:(j + 1) * E].reshape(HEADS, HEAD_DIM)}
                for j, name in enumerate(('query', 'key', 'value'))}
        attn['out'] = {'kernel': _np(sd[f'{p}.attn.c_proj.weight']).reshape(HEADS, HEAD_DIM, E),
                       'bias': _np(sd[f'{p}.attn.c_proj.bias'])}
        params['decoder'][f'layers_{i}'] = {
            'self_attention_norm': _norm(sd, f'{p}.ln_1'), 'self_attention': attn, 'mlp_norm': _norm(sd, f'{p}.ln_2'),
            'mlp': {'wi': {'kernel': _np(sd[f'{p}.mlp.c_fc.weight']), 'bias': _np(sd[f'{p}.mlp.c_fc.bias'])},
                    'wo': {'kernel': _np(sd[f'{p}.mlp.c_proj.weight']), 'bias': _np(sd[f'{p}.mlp.c_proj.bias'])}}}
    return params


def test_gpt2_matches_transformers():
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=E, n_layer=2, n_head=HEADS, n_positions=64,
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config)
    _randomize(hf)
    config = models.tiny_decoder(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=4 * E,
                                 max_length=64, **F64)
    params = _gpt2_params(hf.state_dict(), 2)
    ids, mask = _inputs()
    model = models.DecoderModel(config)
    _check_tree(model, params, jnp.asarray(ids))
    out = model.apply({'params': params}, jnp.asarray(ids))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    _close(out['hidden_states'], ref.hidden_states[-1], mask)
    _close(out['logits'], ref.logits, mask)


def _t5_params(sd, config):
    gated = config.gated_mlp

    def ff(p):
        names = ('wi_0', 'wi_1') if gated else ('wi',)
        wi = {name: _linear(sd, f'{p}.DenseReluDense.{name}', False) for name in names}
        return {**wi, 'wo': _linear(sd, f'{p}.DenseReluDense.wo', False)}

    def attn(p):
        return _attention(sd, f'{p}.q', f'{p}.k', f'{p}.v', f'{p}.o', bias=False)

    params = {'token_embedder': _embed(sd, 'shared.weight'),
              'encoder': {'relative_attention_bias': _embed(sd, 'encoder.block.0.layer.0.SelfAttention.'
                                                                'relative_attention_bias.weight'),
                          'final_norm': _norm(sd, 'encoder.final_layer_norm', False)},
              'decoder': {'relative_attention_bias': _embed(sd, 'decoder.block.0.layer.0.SelfAttention.'
                                                                'relative_attention_bias.weight'),
                          'final_norm': _norm(sd, 'decoder.final_layer_norm', False)}}
    for i in range(config.num_encoder_layers):
        p = f'encoder.block.{i}.layer'
        params['encoder'][f'layers_{i}'] = {
            'self_attention_norm': _norm(sd, f'{p}.0.layer_norm', False),
            'self_attention': attn(f'{p}.0.SelfAttention'),
            'mlp_norm': _norm(sd, f'{p}.1.layer_norm', False), 'mlp': ff(f'{p}.1')}
    for i in range(config.num_decoder_layers):
        p = f'decoder.block.{i}.layer'
        params['decoder'][f'layers_{i}'] = {
            'self_attention_norm': _norm(sd, f'{p}.0.layer_norm', False),
            'self_attention': attn(f'{p}.0.SelfAttention'),
            'cross_attention_norm': _norm(sd, f'{p}.1.layer_norm', False),
            'cross_attention': attn(f'{p}.1.EncDecAttention'),
            'mlp_norm': _norm(sd, f'{p}.2.layer_norm', False), 'mlp': ff(f'{p}.2')}
    if not config.tie_embeddings:
        params['lm_head'] = {'output': _linear(sd, 'lm_head', False)}
    return params


@pytest.mark.parametrize('version', ['v1_0', 'v1_1'])
def test_t5_matches_transformers(version):
    """v1.0: ReLU, tied logits scaled by d_model**-0.5. v1.1: gated tanh-GELU, untied. Both: unscaled attention,
    relative bias computed in layer 0 and shared, RMS norm."""
    v1_1 = version == 'v1_1'
    hf_config = transformers.T5Config(vocab_size=VOCAB, d_model=E, d_kv=HEAD_DIM, d_ff=MLP, num_layers=2,
                                      num_heads=HEADS, relative_attention_num_buckets=8,
                                      relative_attention_max_distance=20,
                                      feed_forward_proj='gated-gelu' if v1_1 else 'relu', tie_word_embeddings=not v1_1)
    hf = transformers.T5ForConditionalGeneration(hf_config)
    _randomize(hf)
    preset = models.t5_v1_1_small if v1_1 else models.t5_small
    config = preset(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP, num_encoder_layers=2,
                    num_decoder_layers=2, relative_num_buckets=8, relative_max_distance=20, max_length=64, **F64)
    params = _t5_params(hf.state_dict(), config)
    enc_ids, enc_mask = _inputs()
    dec_ids, dec_mask = _inputs(seed=1)
    dec_ids[:, 0] = 0  # decoder start token = pad id, as T5 does
    model = models.EncoderDecoderModel(config)
    _check_tree(model, params, jnp.asarray(enc_ids), jnp.asarray(dec_ids))
    out = model.apply({'params': params}, jnp.asarray(enc_ids), jnp.asarray(dec_ids))
    with torch.no_grad(), unittest.mock.patch.object(transformers.models.t5.modeling_t5.T5LayerNorm, 'forward',
                                                     _t5_layer_norm_float64):
        ref = hf(input_ids=torch.tensor(enc_ids), attention_mask=torch.tensor(enc_mask),
                 decoder_input_ids=torch.tensor(dec_ids), output_hidden_states=True)
    _close(out['encoder_hidden_states'], ref.encoder_last_hidden_state, enc_mask)
    _close(out['hidden_states'], ref.decoder_hidden_states[-1], dec_mask)
    _close(out['logits'], ref.logits, dec_mask)


def _t5_layer_norm_float64(self, hidden_states):
    """T5LayerNorm's formula, weight * x / sqrt(mean(x^2) + eps), without its cast of the variance to float32
    (which would cap a float64 comparison at float32 precision)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _bart_params(sd, config):
    def attn(p):
        return _attention(sd, f'{p}.q_proj', f'{p}.k_proj', f'{p}.v_proj', f'{p}.out_proj')

    def stack(side, n):
        p = f'model.{side}'
        out = {'embedder': {'position_embedder': _embed(sd, f'{p}.embed_positions.weight'),
                            'embedding_norm': _norm(sd, f'{p}.layernorm_embedding')}}
        for i in range(n):
            q = f'{p}.layers.{i}'
            out[f'layers_{i}'] = {'self_attention': attn(f'{q}.self_attn'),
                                  'self_attention_norm': _norm(sd, f'{q}.self_attn_layer_norm'),
                                  'mlp': {'wi': _linear(sd, f'{q}.fc1'), 'wo': _linear(sd, f'{q}.fc2')},
                                  'mlp_norm': _norm(sd, f'{q}.final_layer_norm')}
            if side == 'decoder':
                out[f'layers_{i}'].update(cross_attention=attn(f'{q}.encoder_attn'),
                                          cross_attention_norm=_norm(sd, f'{q}.encoder_attn_layer_norm'))
        return out

    return {'token_embedder': _embed(sd, 'model.shared.weight'),
            'encoder': stack('encoder', config.num_encoder_layers),
            'decoder': stack('decoder', config.num_decoder_layers),
            'lm_head': {'bias': _np(sd['final_logits_bias'])[0]}}


def test_bart_matches_transformers():
    """Post-LN, layernorm_embedding, learned positions offset by 2, tied logits + final_logits_bias."""
    hf_config = transformers.BartConfig(vocab_size=VOCAB, d_model=E, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                        encoder_ffn_dim=MLP, decoder_ffn_dim=MLP, max_position_embeddings=64)
    hf = transformers.BartForConditionalGeneration(hf_config)
    _randomize(hf)
    config = models.bart_base(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP,
                              num_encoder_layers=2, num_decoder_layers=2, max_length=64, **F64)
    params = _bart_params(hf.state_dict(), config)
    enc_ids, enc_mask = _inputs(pad_id=1)
    dec_ids, dec_mask = _inputs(pad_id=1, seed=1)
    model = models.EncoderDecoderModel(config)
    _check_tree(model, params, jnp.asarray(enc_ids), jnp.asarray(dec_ids))
    out = model.apply({'params': params}, jnp.asarray(enc_ids), jnp.asarray(dec_ids))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(enc_ids), attention_mask=torch.tensor(enc_mask),
                 decoder_input_ids=torch.tensor(dec_ids), output_hidden_states=True)
    _close(out['encoder_hidden_states'], ref.encoder_last_hidden_state, enc_mask)
    _close(out['hidden_states'], ref.decoder_hidden_states[-1], dec_mask)
    _close(out['logits'], ref.logits, dec_mask)


def _nezha_reference():
    """NezhaForMaskedLM from transformers 4.x (NEZHA left the library in 5). Point PLMJAX_TRANSFORMERS4 at a
    directory made with `pip install --no-deps --target DIR transformers==4.57.6 tokenizers==0.22.2
    huggingface_hub==0.36.2`."""
    path = os.environ.get('PLMJAX_TRANSFORMERS4')
    if not path or not os.path.isdir(path):
        pytest.skip('set PLMJAX_TRANSFORMERS4 to a transformers 4.x install to compare NEZHA')
    import subprocess  # transformers 4 and 5 cannot share one interpreter: run the reference in a child process
    return path, subprocess


NEZHA_SCRIPT = r'''
import math, sys, numpy as np, torch
from transformers.models.deprecated.nezha import NezhaConfig, NezhaForMaskedLM
cfg = NezhaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, max_relative_position=5)
model = NezhaForMaskedLM(cfg).eval().double()
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
  for name, t in model.state_dict().items():
    if t.is_floating_point() and 'relative_positions' not in name:
      noise = torch.randn(t.shape, generator=gen, dtype=torch.float64) * 0.2
      t.copy_(1.0 + noise if name.endswith('LayerNorm.weight') else noise)
# HF builds the relative table in float32; keep that one, then rebuild it with the same formula in float64.
encodings = [layer.attention.self.relative_positions_encoding for layer in model.nezha.encoder.layer]
table32 = encodings[0].positions_encoding.float().numpy()
k, depth, length = cfg.max_relative_position, 8, cfg.max_position_embeddings
position = torch.arange(0, 2 * k + 1, dtype=torch.float64).unsqueeze(1)
div_term = torch.exp(torch.arange(0, depth, 2, dtype=torch.float64) * (-math.log(10000.0) / depth))
table = torch.zeros(2 * k + 1, depth, dtype=torch.float64)
table[:, 0::2], table[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
distance = torch.arange(length)[None, :] - torch.arange(length)[:, None]
for encoding in encodings:
  encoding.positions_encoding = table[torch.clamp(distance, -k, k) + k]
data = dict(np.load(sys.argv[1]))
with torch.no_grad():
  out = model(torch.tensor(data['ids']), attention_mask=torch.tensor(data['mask']),
              token_type_ids=torch.tensor(data['types']), output_hidden_states=True)
np.savez(sys.argv[2], logits=out.logits.numpy(), hidden=out.hidden_states[-1].numpy(), table32=table32,
         **{k: v.numpy() for k, v in model.state_dict().items() if v.is_floating_point()})
'''


def test_nezha_matches_transformers4(tmp_path):
    """Functional relative positions (k=5 here, so clipping is exercised), as HF 4.x NezhaModel computes them.

    HF builds its sinusoid table in float32 whatever the model dtype; the child process checks that table against
    plmjax's at float32 precision, then rebuilds it in float64 (same formula) for the float64 model comparison."""
    path, subprocess = _nezha_reference()
    ids, mask = _inputs()
    types = np.zeros_like(ids)
    np.savez(tmp_path / 'in.npz', ids=ids, mask=mask, types=types)
    env = {**os.environ, 'PYTHONPATH': path, 'USE_TF': '0', 'USE_FLAX': '0'}
    subprocess.run([sys.executable, '-c', NEZHA_SCRIPT, str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz')],
                   check=True, env=env)
    ref = dict(np.load(tmp_path / 'out.npz'))
    # HF's own float32 table: the same entries as plmjax's, up to float32 sin/cos rounding.
    positions = jnp.arange(64)
    table = position.nezha_relative_positions(positions, positions, max_relative_position=5, depth=HEAD_DIM)
    np.testing.assert_allclose(np.asarray(table), ref['table32'], atol=1e-6, rtol=0)
    sd = {k: torch.tensor(v) for k, v in ref.items() if k not in ('logits', 'hidden', 'table32')}
    config = models.nezha_base(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP,
                               num_encoder_layers=2, max_length=64, nezha_max_relative_position=5, pooler=False, **F64)
    params = {
        'token_embedder': _embed(sd, 'nezha.embeddings.word_embeddings.weight'),
        'encoder': {
            'embedder': {'token_type_embedder': _embed(sd, 'nezha.embeddings.token_type_embeddings.weight'),
                         'embedding_norm': _norm(sd, 'nezha.embeddings.LayerNorm')},
            **{f'layers_{i}': _bert_layer(sd, f'nezha.encoder.layer.{i}') for i in range(2)}},
        'mlm_head': {'transform': _linear(sd, 'cls.predictions.transform.dense'),
                     'transform_norm': _norm(sd, 'cls.predictions.transform.LayerNorm'),
                     'bias': _np(sd['cls.predictions.bias'])},
    }
    model = models.EncoderModel(config)
    _check_tree(model, params, jnp.asarray(ids))
    out = model.apply({'params': params}, jnp.asarray(ids), input_mask=jnp.asarray(mask),
                      token_type_ids=jnp.asarray(types))
    _close(out['hidden_states'], torch.tensor(ref['hidden']))
    _close(out['logits'], torch.tensor(ref['logits']))
