"""BERT (`BertForMaskedLM`, `BertModel`, `BertForPreTraining`) <-> plmjax `EncoderModel`, and the BERT pieces
(embeddings, post-LN layer, MLM head, pooler) that RoBERTa, ELECTRA, ALBERT and NEZHA reuse.

plmjax                                   Hugging Face (prefix `bert.`)
token_embedder                           embeddings.word_embeddings
encoder/embedder/position_embedder       embeddings.position_embeddings
encoder/embedder/token_type_embedder     embeddings.token_type_embeddings
encoder/embedder/embedding_norm          embeddings.LayerNorm
encoder/layers_i/self_attention          encoder.layer.i.attention.self.{query,key,value}, attention.output.dense
encoder/layers_i/self_attention_norm     encoder.layer.i.attention.output.LayerNorm
encoder/layers_i/mlp/{wi,wo}             encoder.layer.i.intermediate.dense, encoder.layer.i.output.dense
encoder/layers_i/mlp_norm                encoder.layer.i.output.LayerNorm
mlm_head/{transform,transform_norm,bias} cls.predictions.transform.{dense,LayerNorm}, cls.predictions.bias
mlm_head/output (untied only)            cls.predictions.decoder
pooler/dense (when present)              pooler.dense
"""
from typing import Mapping

from plmjax.convert import common
from plmjax.models.config import TransformerConfig

# Buffers, and the output projection when it is tied to the token table (older checkpoints store the copy).
IGNORED = (r'position_ids$', r'token_type_ids$', r'predictions\.decoder\.weight$')


def embedding_rules(config: TransformerConfig, hf: str, positions: bool = True,
                    stack: str = 'encoder') -> list[common.Rule]:
    """Token, position and token-type tables and the embedding LayerNorm under `{hf}.embeddings`."""
    rules = [common.embedding('token_embedder', f'{hf}.embeddings.word_embeddings.weight')]
    if positions:
        rules.append(common.embedding(f'{stack}/embedder/position_embedder',
                                      f'{hf}.embeddings.position_embeddings.weight'))
    if config.type_vocab_size:
        rules.append(common.embedding(f'{stack}/embedder/token_type_embedder',
                                      f'{hf}.embeddings.token_type_embeddings.weight'))
    return rules + common.norm(f'{stack}/embedder/embedding_norm', f'{hf}.embeddings.LayerNorm')


def layer_rules(config: TransformerConfig, param: str, hf: str) -> list[common.Rule]:
    """One post-LN BERT layer `{hf}` <-> plmjax TransformerLayer `{param}`."""
    return [
        *common.attention(f'{param}/self_attention', [f'{hf}.attention.self.query', f'{hf}.attention.self.key',
                                                      f'{hf}.attention.self.value', f'{hf}.attention.output.dense'],
                          config),
        *common.norm(f'{param}/self_attention_norm', f'{hf}.attention.output.LayerNorm'),
        *common.dense(f'{param}/mlp/wi', f'{hf}.intermediate.dense'),
        *common.dense(f'{param}/mlp/wo', f'{hf}.output.dense'),
        *common.norm(f'{param}/mlp_norm', f'{hf}.output.LayerNorm'),
    ]


def mlm_head_rules(config: TransformerConfig, dense: str, layer_norm: str, bias: str,
                   decoder: str) -> list[common.Rule]:
    """MLM head: transform dense + LayerNorm, vocab bias, and the vocab projection when it is not tied.

    Hugging Face keeps the vocab bias twice, `bias` and `decoder.bias` (tied to each other only in a tied model;
    transformers 5 computes with `decoder.bias`): it is read from `decoder.bias` and written to both
    (`prepare_mlm_bias` fills in the one a checkpoint left out)."""
    decoder_bias = f'{decoder}.bias'
    bias_rule = (common.same('mlm_head/bias', bias) if bias == decoder_bias else
                 common.Rule(('mlm_head/bias',), (bias, decoder_bias), lambda b, d: (d,), lambda b: (b, b)))
    rules = [*common.dense('mlm_head/transform', dense), *common.norm('mlm_head/transform_norm', layer_norm),
             bias_rule]
    if not config.tie_embeddings:
        rules += common.dense('mlm_head/output', decoder, bias=False)
    return rules


def prepare_mlm_bias(bias: str, decoder_bias: str):
    """A Family.prepare that completes the pair (bias, decoder.bias) when a checkpoint stores one of them."""
    def prepare(unused_hf_config: Mapping, state: dict) -> dict:
        if (bias in state) != (decoder_bias in state):
            value = state[decoder_bias] if decoder_bias in state else state[bias]
            state = {**state, bias: value, decoder_bias: value}
        return state
    return prepare


def pooler_rules(config: TransformerConfig, hf: str) -> list[common.Rule]:
    return common.dense('pooler/dense', f'{hf}.pooler.dense') if config.pooler else []


def rules(config: TransformerConfig) -> list[common.Rule]:
    return [*embedding_rules(config, 'bert'),
            *(rule for i in range(config.num_encoder_layers)
              for rule in layer_rules(config, f'encoder/layers_{i}', f'bert.encoder.layer.{i}')),
            *mlm_head_rules(config, 'cls.predictions.transform.dense', 'cls.predictions.transform.LayerNorm',
                            'cls.predictions.bias', 'cls.predictions.decoder'),
            *pooler_rules(config, 'bert')]


def encoder_config(hf: Mapping, keys: frozenset, family: str, prefix: str, **fields) -> TransformerConfig:
    """The TransformerConfig of a BERT-like post-LN encoder config.json; `fields` override family specifics."""
    common.require(hf, 'is_decoder', (False, None), family, default=False)
    common.require(hf, 'add_cross_attention', (False, None), family, default=False)
    common.require(hf, 'position_embedding_type', ('absolute',), family, default='absolute')
    hidden, heads = hf['hidden_size'], hf['num_attention_heads']
    common.require(hf, 'num_attention_heads', lambda h: hidden % h == 0, family)
    values = dict(
        vocab_size=hf['vocab_size'], emb_dim=hidden, num_heads=heads, head_dim=hidden // heads,
        mlp_dim=hf['intermediate_size'], num_encoder_layers=hf['num_hidden_layers'], num_decoder_layers=0,
        max_length=hf.get('max_position_embeddings', 512), type_vocab_size=hf.get('type_vocab_size', 2),
        activation=common.activation_from_hf(hf, 'hidden_act', family), gated_mlp=False, norm='layernorm',
        norm_eps=hf.get('layer_norm_eps', 1e-12), pre_norm=False, embedding_norm=True, final_norm=False,
        position='learned', position_offset=0, use_bias=True, scale_attention=True, scale_embeddings=False,
        dropout_rate=hf.get('hidden_dropout_prob', 0.1),
        attention_dropout_rate=hf.get('attention_probs_dropout_prob', 0.1), activation_dropout_rate=0.0,
        tie_embeddings=hf.get('tie_word_embeddings', True), mlm_head_transform=True,
        pooler=f'{prefix}.pooler.dense.weight' in keys, init_std=hf.get('initializer_range', 0.02),
        pad_id=hf.get('pad_token_id') or 0)
    return TransformerConfig(**{**values, **fields})


def encoder_config_to_hf(config: TransformerConfig, family: str) -> dict:
    """The config.json fields every BERT-like family shares."""
    if config.type_vocab_size < 1:
        raise common.UnsupportedArchitectureError(
            f'Hugging Face {family} always has token types; this config has type_vocab_size=0.')
    hf_act = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}[config.activation]
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.emb_dim, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, num_hidden_layers=config.num_encoder_layers,
        max_position_embeddings=config.max_length, type_vocab_size=config.type_vocab_size, hidden_act=hf_act,
        layer_norm_eps=config.norm_eps, hidden_dropout_prob=config.dropout_rate,
        attention_probs_dropout_prob=config.attention_dropout_rate, tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std if config.init_std is not None else 0.02, pad_token_id=config.pad_id)


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    return encoder_config(hf, keys, 'bert', 'bert')


def config_to_hf(config: TransformerConfig) -> dict:
    return {**encoder_config_to_hf(config, 'bert'), 'position_embedding_type': 'absolute'}


FAMILY = common.Family(name='bert', architecture='encoder', hf_class='BertForMaskedLM', prefix='bert',
                       config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules, ignored=IGNORED,
                       prepare=prepare_mlm_bias('cls.predictions.bias', 'cls.predictions.decoder.bias'))
