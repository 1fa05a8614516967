"""T5 v1.0 and v1.1 (`T5ForConditionalGeneration`) and mT5 (`MT5ForConditionalGeneration`) <-> plmjax
`EncoderDecoderModel`.

plmjax                                   Hugging Face (no prefix)
token_embedder                           shared
{encoder,decoder}/relative_attention_bias  {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias
encoder/layers_i/self_attention(_norm)   encoder.block.i.layer.0.SelfAttention.{q,k,v,o}, .layer.0.layer_norm
encoder/layers_i/mlp(_norm)              encoder.block.i.layer.1.DenseReluDense.{wi | wi_0, wi_1, wo}, .layer_norm
decoder/layers_i/cross_attention(_norm)  decoder.block.i.layer.1.EncDecAttention, .layer.1.layer_norm
decoder/layers_i/mlp(_norm)              decoder.block.i.layer.2
{encoder,decoder}/final_norm             {encoder,decoder}.final_layer_norm
lm_head/output (v1.1, mT5: untied)       lm_head
T5 has no biases and no layer-norm bias; its norms are RMS norms. Tied logits are scaled by d_model**-0.5.
"""
from typing import Mapping

import numpy as np

from plmjax.convert import common
from plmjax.models.config import TransformerConfig


def _mlp_rules(config: TransformerConfig, param: str, hf: str) -> list[common.Rule]:
    names = ('wi_0', 'wi_1', 'wo') if config.gated_mlp else ('wi', 'wo')
    return [rule for name in names for rule in common.dense(f'{param}/mlp/{name}', f'{hf}.DenseReluDense.{name}',
                                                            bias=False)]


def _attention(config, param, hf):
    return common.attention(param, [f'{hf}.q', f'{hf}.k', f'{hf}.v', f'{hf}.o'], config, bias=False)


def _stack_rules(config: TransformerConfig, side: str) -> list[common.Rule]:
    num_layers = config.num_encoder_layers if side == 'encoder' else config.num_decoder_layers
    rules = [common.embedding(f'{side}/relative_attention_bias',
                              f'{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'),
             *common.norm(f'{side}/final_norm', f'{side}.final_layer_norm', bias=False)]
    for i in range(num_layers):
        p, h = f'{side}/layers_{i}', f'{side}.block.{i}.layer'
        rules += [*_attention(config, f'{p}/self_attention', f'{h}.0.SelfAttention'),
                  *common.norm(f'{p}/self_attention_norm', f'{h}.0.layer_norm', bias=False)]
        mlp = 1
        if side == 'decoder':
            rules += [*_attention(config, f'{p}/cross_attention', f'{h}.1.EncDecAttention'),
                      *common.norm(f'{p}/cross_attention_norm', f'{h}.1.layer_norm', bias=False)]
            mlp = 2
        rules += [*_mlp_rules(config, p, f'{h}.{mlp}'),
                  *common.norm(f'{p}/mlp_norm', f'{h}.{mlp}.layer_norm', bias=False)]
    return rules


def rules(config: TransformerConfig) -> list[common.Rule]:
    rules_ = [common.embedding('token_embedder', 'shared.weight'), *_stack_rules(config, 'encoder'),
              *_stack_rules(config, 'decoder')]
    if not config.tie_embeddings:
        rules_ += common.dense('lm_head/output', 'lm_head', bias=False)
    return rules_


def _activation(hf: Mapping, family: str) -> tuple[str, bool]:
    """feed_forward_proj ('relu', 'gated-silu', ...) -> (plmjax activation, gated), read as Hugging Face's
    T5Config reads it: 'gated-gelu' means the tanh GELU, a plain 'gelu' the erf GELU."""
    proj = hf.get('feed_forward_proj', 'relu')
    if proj == 'gated-gelu':
        return 'gelu_new', True
    gate, _, name = proj.rpartition('-')  # 'gated-silu' -> ('gated', 'silu'); 'relu' -> ('', 'relu')
    common.require(hf, 'feed_forward_proj', lambda _: gate in ('', 'gated') and common.HF_ACTIVATIONS.get(name),
                   family)
    return common.HF_ACTIVATIONS[name], gate == 'gated'


def config_from_hf(hf: Mapping, keys: frozenset, family: str = 't5') -> TransformerConfig:
    common.require(hf, 'is_decoder', (False, None), family, default=False)
    activation, gated = _activation(hf, family)
    # transformers 5 always ties lm_head to shared (unless the checkpoint holds both, different) and scales T5's
    # logits when `scale_decoder_outputs` (older configs: `tie_word_embeddings`), mT5's never.
    tied = 'lm_head.weight' not in keys  # `prepare` dropped a stored copy of shared.weight
    scaled = family == 't5' and hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True) is not False)
    if scaled and not tied:
        raise common.UnsupportedArchitectureError(
            f'The {family} checkpoint has an untied lm_head with scale_decoder_outputs=True (or '
            'tie_word_embeddings=True); plmjax scales only tied logits. Convert a checkpoint whose lm_head equals '
            'shared.weight, or without the scaling.')
    dropout = hf.get('dropout_rate', 0.1)
    return TransformerConfig(
        vocab_size=hf['vocab_size'], emb_dim=hf['d_model'], num_heads=hf['num_heads'], head_dim=hf['d_kv'],
        mlp_dim=hf['d_ff'], num_encoder_layers=hf['num_layers'],
        num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'], max_length=hf.get('n_positions', 512),
        type_vocab_size=0, activation=activation, gated_mlp=gated, norm='rmsnorm',
        norm_eps=hf.get('layer_norm_epsilon', 1e-6), pre_norm=True, embedding_norm=False, final_norm=True,
        position='t5_relative', relative_num_buckets=hf.get('relative_attention_num_buckets', 32),
        relative_max_distance=hf.get('relative_attention_max_distance', 128), use_bias=False,
        scale_attention=False, scale_embeddings=False, dropout_rate=dropout, attention_dropout_rate=dropout,
        activation_dropout_rate=dropout, tie_embeddings=tied, scale_tied_logits=tied and scaled, lm_head_bias=False,
        init_std=None, pad_id=hf.get('pad_token_id', 0))


def config_to_hf(config: TransformerConfig) -> dict:
    if config.activation == 'gelu_new' and config.gated_mlp:
        proj = 'gated-gelu'
    else:
        if config.activation == 'gelu_new':
            raise common.UnsupportedArchitectureError(
                'Hugging Face T5 has the tanh GELU only gated (feed_forward_proj="gated-gelu"); this config has '
                'activation=\'gelu_new\' without gated_mlp.')
        proj = ('gated-' if config.gated_mlp else '') + config.activation
    return dict(vocab_size=config.vocab_size, d_model=config.emb_dim, num_heads=config.num_heads,
                d_kv=config.head_dim, d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers, n_positions=config.max_length,
                feed_forward_proj=proj, layer_norm_epsilon=config.norm_eps,
                relative_attention_num_buckets=config.relative_num_buckets,
                relative_attention_max_distance=config.relative_max_distance, dropout_rate=config.dropout_rate,
                tie_word_embeddings=config.tie_embeddings,
                scale_decoder_outputs=config.tie_embeddings and config.scale_tied_logits, pad_token_id=config.pad_id,
                eos_token_id=1,
                decoder_start_token_id=config.pad_id, is_encoder_decoder=True, initializer_factor=1.0)


def prepare(hf: Mapping, state: dict) -> dict:
    """Drops lm_head.weight when it is a stored copy of the tied shared.weight (PyTorch .bin checkpoints)."""
    if 'lm_head.weight' in state and np.array_equal(state['lm_head.weight'], state.get('shared.weight')):
        state = {k: v for k, v in state.items() if k != 'lm_head.weight'}
    return state


_IGNORED = (r'^(encoder|decoder)\.embed_tokens\.weight$', r'^lm_head\.weight$')
FAMILY = common.Family(name='t5', architecture='encoder_decoder', hf_class='T5ForConditionalGeneration', prefix='',
                       config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules, ignored=_IGNORED,
                       prepare=prepare)
MT5_FAMILY = common.Family(name='mt5', architecture='encoder_decoder', hf_class='MT5ForConditionalGeneration',
                           prefix='', config_from_hf=lambda hf, keys: config_from_hf(hf, keys, 'mt5'),
                           config_to_hf=config_to_hf, rules=rules, ignored=_IGNORED, prepare=prepare)
