"""RoBERTa (`RobertaForMaskedLM`, `RobertaModel`) <-> plmjax `EncoderModel`: BERT's tensors under `roberta.`, an
MLM head named `lm_head`, and learned positions that start after the padding id (`position_offset` =
pad_token_id + 1, so the table holds max_length + position_offset rows, as `max_position_embeddings` counts)."""
from typing import Mapping

from plmjax.convert import bert, common
from plmjax.models.config import TransformerConfig


def rules(config: TransformerConfig) -> list[common.Rule]:
    return [*bert.embedding_rules(config, 'roberta'),
            *(rule for i in range(config.num_encoder_layers)
              for rule in bert.layer_rules(config, f'encoder/layers_{i}', f'roberta.encoder.layer.{i}')),
            *bert.mlm_head_rules(config, 'lm_head.dense', 'lm_head.layer_norm', 'lm_head.bias', 'lm_head.decoder'),
            *bert.pooler_rules(config, 'roberta')]


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    pad = hf.get('pad_token_id', 1)
    offset = pad + 1  # RoBERTa's position ids: padding_idx + 1 + (index among the real tokens)
    return bert.encoder_config(hf, keys, 'roberta', 'roberta', max_length=hf['max_position_embeddings'] - offset,
                               position_offset=offset, pad_id=pad, type_vocab_size=hf.get('type_vocab_size', 1),
                               norm_eps=hf.get('layer_norm_eps', 1e-5))


def config_to_hf(config: TransformerConfig) -> dict:
    return {**bert.encoder_config_to_hf(config, 'roberta'), 'position_embedding_type': 'absolute',
            'max_position_embeddings': config.max_length + config.position_offset,
            'pad_token_id': config.position_offset - 1, 'bos_token_id': 0, 'eos_token_id': 2}


FAMILY = common.Family(name='roberta', architecture='encoder', hf_class='RobertaForMaskedLM', prefix='roberta',
                       config_from_hf=config_from_hf, config_to_hf=config_to_hf, rules=rules,
                       ignored=bert.IGNORED + (r'^lm_head\.decoder\.weight$',),
                       prepare=bert.prepare_mlm_bias('lm_head.bias', 'lm_head.decoder.bias'))
