"""ALBERT (`AlbertForMaskedLM`, `AlbertModel`) <-> plmjax `EncoderModel` with `shared_layers=True`: one post-LN
layer (Hugging Face's single layer group with a single layer) applied `num_hidden_layers` times, factorized
embeddings projected by `embedding_hidden_mapping_in`, and an MLM head that maps back to `embedding_size`."""
from typing import Mapping

from plmjax.convert import bert, common
from plmjax.models.config import TransformerConfig

_LAYER = 'albert.encoder.albert_layer_groups.0.albert_layers.0'


def _layer_rules(config: TransformerConfig) -> list[common.Rule]:
    p = 'encoder/layers_0'
    return [
        *common.attention(f'{p}/self_attention', [f'{_LAYER}.attention.query', f'{_LAYER}.attention.key',
                                                  f'{_LAYER}.attention.value', f'{_LAYER}.attention.dense'], config),
        *common.norm(f'{p}/self_attention_norm', f'{_LAYER}.attention.LayerNorm'),
        *common.dense(f'{p}/mlp/wi', f'{_LAYER}.ffn'),
        *common.dense(f'{p}/mlp/wo', f'{_LAYER}.ffn_output'),
        *common.norm(f'{p}/mlp_norm', f'{_LAYER}.full_layer_layer_norm'),
    ]


def rules(config: TransformerConfig) -> list[common.Rule]:
    return [*bert.embedding_rules(config, 'albert'),
            *common.dense('encoder/embedder/embedding_projection', 'albert.encoder.embedding_hidden_mapping_in'),
            *_layer_rules(config),
            *bert.mlm_head_rules(config, 'predictions.dense', 'predictions.LayerNorm', 'predictions.bias',
                                 'predictions.decoder'),
            *(common.dense('pooler/dense', 'albert.pooler') if config.pooler else [])]


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    common.require(hf, 'num_hidden_groups', (1,), 'albert', default=1)
    common.require(hf, 'inner_group_num', (1,), 'albert', default=1)
    # plmjax projects embeddings only when the widths differ; ALBERT always has the projection.
    common.require(hf, 'embedding_size', lambda e: e != hf['hidden_size'], 'albert', default=128)
    return bert.encoder_config(hf, keys, 'albert', 'albert', embedding_size=hf.get('embedding_size', 128),
                               shared_layers=True, pooler='albert.pooler.weight' in keys)


def config_to_hf(config: TransformerConfig) -> dict:
    return {**bert.encoder_config_to_hf(config, 'albert'), 'embedding_size': config.token_embedding_size,
            'num_hidden_groups': 1, 'inner_group_num': 1, 'position_embedding_type': 'absolute'}


FAMILY = common.Family(name='albert', architecture='encoder', hf_class='AlbertForMaskedLM', prefix='albert',
                       config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules,
                       ignored=bert.IGNORED,
                       prepare=bert.prepare_mlm_bias('predictions.bias', 'predictions.decoder.bias'))
