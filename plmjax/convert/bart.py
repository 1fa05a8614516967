"""BART (`BartForConditionalGeneration`, `BartModel`) <-> plmjax `EncoderDecoderModel`.

plmjax                                   Hugging Face (prefix `model.`)
token_embedder                           shared (= encoder.embed_tokens = decoder.embed_tokens)
{encoder,decoder}/embedder/position_embedder  {encoder,decoder}.embed_positions (offset by 2 rows)
{encoder,decoder}/embedder/embedding_norm     {encoder,decoder}.layernorm_embedding
*/layers_i/self_attention(_norm)         */layers.i.self_attn.{q,k,v,out}_proj, */layers.i.self_attn_layer_norm
decoder/layers_i/cross_attention(_norm)  decoder.layers.i.encoder_attn, decoder.layers.i.encoder_attn_layer_norm
*/layers_i/mlp/{wi,wo}, mlp_norm         */layers.i.fc1, fc2, final_layer_norm
lm_head/bias                             final_logits_bias ([1, vocab]; no prefix)
lm_head/output (untied only)             lm_head
"""
from typing import Mapping

import numpy as np

from plmjax.convert import common
from plmjax.models.config import TransformerConfig

_OFFSET = 2  # BartLearnedPositionalEmbedding's fixed offset
_TOKEN_TABLES = ('model.shared.weight', 'model.encoder.embed_tokens.weight', 'model.decoder.embed_tokens.weight')


def _stack_rules(config: TransformerConfig, side: str) -> list[common.Rule]:
    num_layers = config.num_encoder_layers if side == 'encoder' else config.num_decoder_layers
    h0 = f'model.{side}'
    rules = [common.embedding(f'{side}/embedder/position_embedder', f'{h0}.embed_positions.weight'),
             *common.norm(f'{side}/embedder/embedding_norm', f'{h0}.layernorm_embedding')]
    for i in range(num_layers):
        p, h = f'{side}/layers_{i}', f'{h0}.layers.{i}'
        attention = lambda name, hf: common.attention(  # noqa: E731
            f'{p}/{name}', [f'{hf}.q_proj', f'{hf}.k_proj', f'{hf}.v_proj', f'{hf}.out_proj'], config)
        rules += [*attention('self_attention', f'{h}.self_attn'),
                  *common.norm(f'{p}/self_attention_norm', f'{h}.self_attn_layer_norm')]
        if side == 'decoder':
            rules += [*attention('cross_attention', f'{h}.encoder_attn'),
                      *common.norm(f'{p}/cross_attention_norm', f'{h}.encoder_attn_layer_norm')]
        rules += [*common.dense(f'{p}/mlp/wi', f'{h}.fc1'), *common.dense(f'{p}/mlp/wo', f'{h}.fc2'),
                  *common.norm(f'{p}/mlp_norm', f'{h}.final_layer_norm')]
    return rules


def rules(config: TransformerConfig) -> list[common.Rule]:
    # One input table. transformers 5 ties the stacks' tables to `shared` only in a tied model: all three are written.
    rules_ = [common.Rule(('token_embedder/embedding',), _TOKEN_TABLES, lambda shared, *_: (shared,),
                          lambda table: (table,) * 3), *_stack_rules(config, 'encoder'),
              *_stack_rules(config, 'decoder'),
              common.Rule(('lm_head/bias',), ('final_logits_bias',), lambda b: (b.reshape(b.shape[-1]),),
                          lambda b: (b.reshape(1, b.shape[-1]),))]  # [1, vocab] <-> [vocab]
    if not config.tie_embeddings:
        rules_ += common.dense('lm_head/output', 'lm_head', bias=False)
    return rules_


def prepare(unused_hf_config: Mapping, state: dict) -> dict:
    """Fills in the stacks' token tables a checkpoint left out (tied to `shared`); refuses tables of their own."""
    shared = state.get(_TOKEN_TABLES[0])
    if shared is None:
        return state
    state = dict(state)
    for key in _TOKEN_TABLES[1:]:
        if key not in state:
            state[key] = shared
        elif not np.array_equal(state[key], shared):
            raise common.UnsupportedArchitectureError(
                f'The bart checkpoint has a {key} different from model.shared.weight (an untied transformers 5 '
                'model); plmjax gives the encoder and the decoder one input token table.')
    return state


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    for field in ('normalize_before', 'add_final_layer_norm'):  # mBART-style pre-LN variants
        common.require(hf, field, (False, None), 'bart', default=False)
    heads, mlp = hf['encoder_attention_heads'], hf['encoder_ffn_dim']
    for encoder_field, value in (('encoder_attention_heads', heads), ('encoder_ffn_dim', mlp)):
        decoder_field = encoder_field.replace('encoder', 'decoder')
        if hf.get(decoder_field, value) != value:
            raise common.UnsupportedArchitectureError(
                f'The bart checkpoint has {encoder_field}={value} but {decoder_field}={hf[decoder_field]}; plmjax '
                'gives both stacks one num_heads and one mlp_dim.')
    width = hf['d_model']
    common.require(hf, 'encoder_attention_heads', lambda h: width % h == 0, 'bart')
    return TransformerConfig(
        vocab_size=hf['vocab_size'], emb_dim=width, num_heads=heads, head_dim=width // heads, mlp_dim=mlp,
        num_encoder_layers=hf['encoder_layers'], num_decoder_layers=hf['decoder_layers'],
        max_length=hf.get('max_position_embeddings', 1024), type_vocab_size=0,
        activation=common.activation_from_hf(hf, 'activation_function', 'bart'), gated_mlp=False,
        norm='layernorm', norm_eps=1e-5, pre_norm=False, embedding_norm=True, final_norm=False, position='learned',
        position_offset=_OFFSET, use_bias=True, scale_attention=True,
        scale_embeddings=bool(hf.get('scale_embedding', False)), dropout_rate=hf.get('dropout', 0.1),
        attention_dropout_rate=hf.get('attention_dropout', 0.0),
        activation_dropout_rate=hf.get('activation_dropout', 0.0), tie_embeddings=hf.get('tie_word_embeddings', True),
        scale_tied_logits=False, lm_head_bias=True, init_std=hf.get('init_std', 0.02),
        pad_id=hf.get('pad_token_id', 1))


def config_to_hf(config: TransformerConfig) -> dict:
    hf_act = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}[config.activation]
    return dict(vocab_size=config.vocab_size, d_model=config.emb_dim, encoder_layers=config.num_encoder_layers,
                decoder_layers=config.num_decoder_layers, encoder_attention_heads=config.num_heads,
                decoder_attention_heads=config.num_heads, encoder_ffn_dim=config.mlp_dim,
                decoder_ffn_dim=config.mlp_dim, max_position_embeddings=config.max_length,
                activation_function=hf_act, scale_embedding=config.scale_embeddings, dropout=config.dropout_rate,
                attention_dropout=config.attention_dropout_rate, activation_dropout=config.activation_dropout_rate,
                tie_word_embeddings=config.tie_embeddings, pad_token_id=config.pad_id, bos_token_id=0, eos_token_id=2,
                decoder_start_token_id=2, forced_eos_token_id=2, is_encoder_decoder=True,
                init_std=config.init_std if config.init_std is not None else 0.02)


FAMILY = common.Family(name='bart', architecture='encoder_decoder', hf_class='BartForConditionalGeneration',
                       prefix='model', config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules,
                       ignored=(r'^lm_head\.weight$', r'\.version$'), prepare=prepare)
