"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) <-> plmjax `DecoderModel`.

plmjax                                   Hugging Face (prefix `transformer.`)
token_embedder                           wte
decoder/embedder/position_embedder       wpe
decoder/layers_i/self_attention_norm     h.i.ln_1
decoder/layers_i/self_attention          h.i.attn.c_attn (query, key, value side by side), h.i.attn.c_proj
decoder/layers_i/mlp_norm, mlp/{wi,wo}   h.i.ln_2, h.i.mlp.c_fc, h.i.mlp.c_proj
decoder/final_norm                       ln_f
lm_head/output (untied only)             lm_head
GPT-2's Conv1D stores weights as [in, out], as flax does.
"""
from typing import Mapping

from plmjax.convert import common
from plmjax.models.config import TransformerConfig


def _qkv_rule(config: TransformerConfig, param: str, hf: str, kind: str) -> common.Rule:
    """c_attn's [emb, 3 * emb] kernel (or [3 * emb] bias) <-> query, key, value [emb, heads, kv] ([heads, kv])."""
    heads, kv = config.num_heads, config.head_dim
    width = heads * kv
    params = tuple(f'{param}/{name}/{kind}' for name in ('query', 'key', 'value'))
    head_shape = (heads, kv)

    def to_params(x):
        return tuple(x[..., j * width:(j + 1) * width].reshape(x.shape[:-1] + head_shape) for j in range(3))

    def to_hf(*xs):  # kernels [emb, heads, kv] or biases [heads, kv] -> [emb, 3 * width] or [3 * width]
        return (common.concatenate([x.reshape(x.shape[:-2] + (width,)) for x in xs], axis=-1),)

    return common.Rule(params, (f'{hf}.{"weight" if kind == "kernel" else "bias"}',), to_params, to_hf)


def _layer_rules(config: TransformerConfig, i: int) -> list[common.Rule]:
    p, h = f'decoder/layers_{i}', f'transformer.h.{i}'
    heads, kv = config.num_heads, config.head_dim
    out = common.Rule((f'{p}/self_attention/out/kernel',), (f'{h}.attn.c_proj.weight',),
                      lambda w: (w.reshape(heads, kv, w.shape[-1]),),  # [heads, kv, emb]
                      lambda k: (k.reshape(heads * kv, k.shape[-1]),))
    return [*common.norm(f'{p}/self_attention_norm', f'{h}.ln_1'),
            _qkv_rule(config, f'{p}/self_attention', f'{h}.attn.c_attn', 'kernel'),
            _qkv_rule(config, f'{p}/self_attention', f'{h}.attn.c_attn', 'bias'),
            out, common.same(f'{p}/self_attention/out/bias', f'{h}.attn.c_proj.bias'),
            *common.norm(f'{p}/mlp_norm', f'{h}.ln_2'),
            *common.conv1d(f'{p}/mlp/wi', f'{h}.mlp.c_fc'), *common.conv1d(f'{p}/mlp/wo', f'{h}.mlp.c_proj')]


def rules(config: TransformerConfig) -> list[common.Rule]:
    rules_ = [common.embedding('token_embedder', 'transformer.wte.weight'),
              common.embedding('decoder/embedder/position_embedder', 'transformer.wpe.weight'),
              *(rule for i in range(config.num_decoder_layers) for rule in _layer_rules(config, i)),
              *common.norm('decoder/final_norm', 'transformer.ln_f')]
    if not config.tie_embeddings:
        rules_ += common.dense('lm_head/output', 'lm_head', bias=False)
    return rules_


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    for field in ('scale_attn_by_inverse_layer_idx', 'add_cross_attention'):
        common.require(hf, field, (False, None), 'gpt2', default=False)
    common.require(hf, 'scale_attn_weights', (True, None), 'gpt2', default=True)
    width, heads = hf['n_embd'], hf['n_head']
    common.require(hf, 'n_head', lambda h: width % h == 0, 'gpt2')
    return TransformerConfig(
        vocab_size=hf['vocab_size'], emb_dim=width, num_heads=heads, head_dim=width // heads,
        mlp_dim=hf.get('n_inner') or 4 * width, num_encoder_layers=0, num_decoder_layers=hf['n_layer'],
        max_length=hf.get('n_positions', 1024), type_vocab_size=0,
        activation=common.activation_from_hf(hf, 'activation_function', 'gpt2'), gated_mlp=False, norm='layernorm',
        norm_eps=hf.get('layer_norm_epsilon', 1e-5), pre_norm=True, embedding_norm=False, final_norm=True,
        position='learned', position_offset=0, use_bias=True, scale_attention=True, scale_embeddings=False,
        dropout_rate=hf.get('resid_pdrop', 0.1), attention_dropout_rate=hf.get('attn_pdrop', 0.1),
        activation_dropout_rate=0.0, tie_embeddings=hf.get('tie_word_embeddings', True), lm_head_bias=False,
        mlm_head_transform=False, query_layer=False, init_std=hf.get('initializer_range', 0.02))


def config_to_hf(config: TransformerConfig) -> dict:
    hf_act = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}[config.activation]
    special = min(50256, config.vocab_size - 1)  # <|endoftext|> in GPT-2's vocabulary
    return dict(vocab_size=config.vocab_size, n_embd=config.emb_dim, n_head=config.num_heads, n_inner=config.mlp_dim,
                n_layer=config.num_decoder_layers, n_positions=config.max_length, activation_function=hf_act,
                layer_norm_epsilon=config.norm_eps, resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate,
                attn_pdrop=config.attention_dropout_rate, tie_word_embeddings=config.tie_embeddings,
                initializer_range=config.init_std if config.init_std is not None else 0.02,
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, bos_token_id=special,
                eos_token_id=special)


FAMILY = common.Family(name='gpt2', architecture='decoder', hf_class='GPT2LMHeadModel', prefix='transformer',
                       config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules,
                       ignored=(r'\.attn\.(bias|masked_bias)$', r'^lm_head\.weight$'))
