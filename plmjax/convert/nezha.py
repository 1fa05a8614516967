"""NEZHA (`NezhaForMaskedLM`, `NezhaModel` of transformers 4.x; transformers 5 dropped it) <-> plmjax
`EncoderModel` with `position='nezha_relative'`: BERT's tensors under `nezha.` without a position table (the
functional relative positions are fixed sinusoids, recomputed, not stored as parameters)."""
from typing import Mapping

from plmjax.convert import bert, common
from plmjax.models.config import TransformerConfig


def rules(config: TransformerConfig) -> list[common.Rule]:
    return [*bert.embedding_rules(config, 'nezha', positions=False),
            *(rule for i in range(config.num_encoder_layers)
              for rule in bert.layer_rules(config, f'encoder/layers_{i}', f'nezha.encoder.layer.{i}')),
            *bert.mlm_head_rules(config, 'cls.predictions.transform.dense', 'cls.predictions.transform.LayerNorm',
                                 'cls.predictions.bias', 'cls.predictions.decoder'),
            *bert.pooler_rules(config, 'nezha')]


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    return bert.encoder_config({**hf, 'position_embedding_type': 'absolute'}, keys, 'nezha', 'nezha',
                               position='nezha_relative',
                               nezha_max_relative_position=hf.get('max_relative_position', 64))


def config_to_hf(config: TransformerConfig) -> dict:
    return {**bert.encoder_config_to_hf(config, 'nezha'), 'max_relative_position': config.nezha_max_relative_position}


FAMILY = common.Family(name='nezha', architecture='encoder', hf_class='NezhaForMaskedLM', prefix='nezha',
                       config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules,
                       ignored=bert.IGNORED + (r'relative_positions_encoding\.positions_encoding$',),
                       prepare=bert.prepare_mlm_bias('cls.predictions.bias', 'cls.predictions.decoder.bias'))
