"""Tiny plmjax models against the Hugging Face PyTorch references in float64: the math of plmjax.models.

Every weight of the reference (including norm scales and biases, and BART's final_logits_bias) is drawn at
random first, so a misplaced norm, a wrong GELU or a missing bias cannot hide behind the default init. The
weights are mapped by `plmjax.convert` (the one place that maps them; its own float32 tests are in
tests/convert), and each converted config is checked against the plmjax preset it should equal, so these tests
also prove the presets describe their families.

Both sides run in float64, so any difference in the math shows up far above rounding: the outputs agree to
1e-10 (float64 rounding leaves ~1e-14), whereas float32 rounding alone, amplified by these random weights
through a few layers, reaches ~1e-5 and would blur a real but small mismatch (a wrong epsilon, a tanh-GELU for
an erf-GELU).
"""
import json
import os
import subprocess
import sys
import unittest.mock

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from plmjax import convert, models  # noqa: E402
from plmjax.convert import common, parity  # noqa: E402
from plmjax.layers import position  # noqa: E402

ATOL = RTOL = 1e-10
BATCH, LENGTH = 2, 12
E, HEADS, HEAD_DIM, MLP, VOCAB = 32, 4, 8, 37, 99
SMALL = dict(vocab_size=VOCAB, emb_dim=E, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP, max_length=64)


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


def _convert(hf_model, expected_config: models.TransformerConfig) -> convert.Converted:
    """The float64 plmjax twin of `hf_model`, whose config must describe the same network as `expected_config`."""
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    converted = convert.from_hf(hf_model.config.to_dict(), state, dtype='float64')
    assert common.config_differences(converted.config, expected_config) == {}
    assert converted.initialized == []
    return converted


def _np(t):
    return t.detach().numpy().astype(np.float64)


def _inputs(pad_id=0, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, size=(BATCH, LENGTH))
    mask = np.ones((BATCH, LENGTH), np.int64)
    mask[1, LENGTH - 4:] = 0  # the second example is padded
    ids[1, LENGTH - 4:] = pad_id
    return ids, mask


def _close(actual, expected, mask=None):
    actual, expected = np.asarray(actual), _np(expected) if isinstance(expected, torch.Tensor) else expected
    if mask is not None:  # compare real positions only
        actual, expected = actual[mask.astype(bool)], expected[mask.astype(bool)]
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL)


def _check_masked_lm(converted: convert.Converted, hf) -> None:
    """Runs the converted EncoderModel and the HF masked-LM model on one padded batch: hidden states and logits."""
    ids, mask = _inputs()
    out = models.EncoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(ids),
                                                      input_mask=jnp.asarray(mask))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    _close(out['hidden_states'], ref.hidden_states[-1])
    _close(out['logits'], ref.logits)


def test_bert_matches_transformers():
    hf_config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=E, num_hidden_layers=2, num_attention_heads=HEADS,
                                        intermediate_size=MLP, max_position_embeddings=64)
    hf = transformers.BertForPreTraining(hf_config)
    _randomize(hf)
    converted = _convert(hf, models.tiny_encoder(**SMALL))
    ids, mask = _inputs()
    types = np.zeros_like(ids)
    types[:, LENGTH // 2:] = 1
    out = models.EncoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(ids),
                                                      input_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types))
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
    converted = _convert(hf, models.roberta_base(**SMALL, num_encoder_layers=2, pooler=False))
    ids, mask = _inputs(pad_id=1)
    out = models.EncoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(ids))  # pad_id=1
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
    converted = _convert(hf, models.electra_small(**SMALL, embedding_size=16, num_encoder_layers=2))
    _check_masked_lm(converted, hf)


def test_albert_matches_transformers():
    """One shared layer applied three times (shared_layers=True), factorized embeddings, tanh GELU."""
    hf_config = transformers.AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=E, num_hidden_layers=3,
                                          num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=64)
    hf = transformers.AlbertForMaskedLM(hf_config)
    _randomize(hf)
    converted = _convert(hf, models.tiny_encoder(**SMALL, embedding_size=16, num_encoder_layers=3, shared_layers=True,
                                                 activation='gelu_new', pooler=False))
    _check_masked_lm(converted, hf)


def test_gpt2_matches_transformers():
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=E, n_layer=2, n_head=HEADS, n_positions=64,
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config)
    _randomize(hf)
    converted = _convert(hf, models.tiny_decoder(**{**SMALL, 'mlp_dim': 4 * E}))
    ids, mask = _inputs()
    out = models.DecoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(ids))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    _close(out['hidden_states'], ref.hidden_states[-1], mask)
    _close(out['logits'], ref.logits, mask)


@pytest.mark.parametrize('version', ['v1_0', 'v1_1'])
def test_t5_matches_transformers(version):
    """v1.0: ReLU, tied logits scaled by d_model**-0.5. v1.1: gated tanh-GELU, its own output layer. Both:
    unscaled attention, relative bias computed in layer 0 and shared, RMS norm."""
    v1_1 = version == 'v1_1'
    hf_config = transformers.T5Config(vocab_size=VOCAB, d_model=E, d_kv=HEAD_DIM, d_ff=MLP, num_layers=2,
                                      num_heads=HEADS, relative_attention_num_buckets=8,
                                      relative_attention_max_distance=20,
                                      feed_forward_proj='gated-gelu' if v1_1 else 'relu', tie_word_embeddings=not v1_1)
    hf = transformers.T5ForConditionalGeneration(hf_config)
    if v1_1:  # transformers 5 ties lm_head at construction; T5 v1.1 checkpoints have their own
        hf.lm_head.weight = torch.nn.Parameter(hf.shared.weight.detach().clone())
    _randomize(hf)
    preset = models.t5_v1_1_small if v1_1 else models.t5_small
    converted = _convert(hf, preset(**{**SMALL, 'max_length': 512}, num_encoder_layers=2, num_decoder_layers=2,
                                    relative_num_buckets=8, relative_max_distance=20))  # T5: no position table
    enc_ids, enc_mask = _inputs()
    dec_ids, dec_mask = _inputs(seed=1)
    dec_ids[:, 0] = 0  # decoder start token = pad id, as T5 does
    out = models.EncoderDecoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(enc_ids),
                                                             jnp.asarray(dec_ids))
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


def test_bart_matches_transformers():
    """Post-LN, layernorm_embedding, learned positions offset by 2, tied logits + final_logits_bias."""
    hf_config = transformers.BartConfig(vocab_size=VOCAB, d_model=E, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                        encoder_ffn_dim=MLP, decoder_ffn_dim=MLP, max_position_embeddings=64)
    hf = transformers.BartForConditionalGeneration(hf_config)
    _randomize(hf)
    converted = _convert(hf, models.bart_base(**SMALL, num_encoder_layers=2, num_decoder_layers=2,
                                              activation_dropout_rate=0.0, attention_dropout_rate=0.0))
    enc_ids, enc_mask = _inputs(pad_id=1)
    dec_ids, dec_mask = _inputs(pad_id=1, seed=1)
    out = models.EncoderDecoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(enc_ids),
                                                             jnp.asarray(dec_ids))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(enc_ids), attention_mask=torch.tensor(enc_mask),
                 decoder_input_ids=torch.tensor(dec_ids), output_hidden_states=True)
    _close(out['encoder_hidden_states'], ref.encoder_last_hidden_state, enc_mask)
    _close(out['hidden_states'], ref.decoder_hidden_states[-1], dec_mask)
    _close(out['logits'], ref.logits, dec_mask)


NEZHA_SCRIPT = r'''
import json, math, sys, numpy as np, torch
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
         **{'state/' + k: v.numpy() for k, v in model.state_dict().items() if v.is_floating_point()})
with open(sys.argv[3], 'w') as f:
  json.dump(cfg.to_dict(), f)
'''


@pytest.mark.slow
def test_nezha_matches_transformers4(tmp_path):
    """Functional relative positions (k=5 here, so clipping is exercised), as HF 4.x NezhaModel computes them.

    transformers 4 and 5 cannot share one interpreter: the reference runs in a child process with transformers
    4.57.6 (`plmjax.convert.parity.transformers4_dir`, installed once under the plmjax cache). HF builds its
    sinusoid table in float32 whatever the model dtype; the child checks that table against plmjax's at float32
    precision, then rebuilds it in float64 (same formula) for the float64 model comparison."""
    ids, mask = _inputs()
    types = np.zeros_like(ids)
    np.savez(tmp_path / 'in.npz', ids=ids, mask=mask, types=types)
    env = {**os.environ, 'PYTHONPATH': parity.transformers4_dir(), 'USE_TF': '0', 'USE_FLAX': '0',
           'TRANSFORMERS_VERBOSITY': 'error'}
    subprocess.run([sys.executable, '-c', NEZHA_SCRIPT, str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz'),
                    str(tmp_path / 'config.json')], check=True, env=env)
    ref = dict(np.load(tmp_path / 'out.npz'))
    # HF's own float32 table: the same entries as plmjax's, up to float32 sin/cos rounding.
    positions = jnp.arange(64)
    table = position.nezha_relative_positions(positions, positions, max_relative_position=5, depth=HEAD_DIM,
                                              dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(table), ref['table32'], atol=1e-6, rtol=0)
    state = {k[len('state/'):]: v for k, v in ref.items() if k.startswith('state/')}
    converted = convert.from_hf(json.loads((tmp_path / 'config.json').read_text()), state, dtype='float64')
    assert common.config_differences(converted.config, models.nezha_base(
        **SMALL, num_encoder_layers=2, nezha_max_relative_position=5, pooler=False)) == {}
    out = models.EncoderModel(converted.config).apply({'params': converted.params}, jnp.asarray(ids),
                                                      input_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types))
    _close(out['hidden_states'], ref['hidden'])
    _close(out['logits'], ref['logits'])
