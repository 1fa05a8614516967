"""ELECTRA <-> plmjax.

* The generator (`ElectraForMaskedLM`, or a bare `ElectraModel`) <-> `EncoderModel` with factorized embeddings:
  `embedding_size`-wide tables projected to `emb_dim` by `embeddings_project` (absent when the widths are equal)
  and an MLM head mapping `emb_dim` back to `embedding_size` for the tied projection.
* The discriminator (`ElectraForPreTraining`) <-> the discriminator side of `plmjax.models.ElectraModel`
  (architecture 'electra'): the shared token table, the 'discriminator' stack and the replaced-token head. A
  discriminator checkpoint holds no generator; `load_hf` reads one from `<dir>/generator` when present
  (`merge_generator`), and `save_hf` writes ElectraModel's generator there (`split_generator`), so an
  ElectraModel round-trips through a pair of Hugging Face directories, the way ELECTRA is published.
"""
import logging
from typing import Mapping

import numpy as np

from plmjax.convert import bert, common
from plmjax.models import electra as electra_model
from plmjax.models.config import TransformerConfig

GENERATOR_DIR = 'generator'  # the generator's directory inside a discriminator's


def _body_rules(config: TransformerConfig, stack: str) -> list[common.Rule]:
    projection = config.token_embedding_size != config.emb_dim
    return [*bert.embedding_rules(config, 'electra', stack=stack),
            *(common.dense(f'{stack}/embedder/embedding_projection', 'electra.embeddings_project') if projection
              else []),
            *(rule for i in range(config.num_encoder_layers)
              for rule in bert.layer_rules(config, f'{stack}/layers_{i}', f'electra.encoder.layer.{i}'))]


def rules(config: TransformerConfig) -> list[common.Rule]:
    return [*_body_rules(config, 'encoder'),
            *bert.mlm_head_rules(config, 'generator_predictions.dense', 'generator_predictions.LayerNorm',
                                 'generator_lm_head.bias', 'generator_lm_head')]


def discriminator_rules(config: TransformerConfig) -> list[common.Rule]:
    return [*_body_rules(config, 'discriminator'),
            *common.dense('discriminator_head/dense', 'discriminator_predictions.dense'),
            *common.dense('discriminator_head/output', 'discriminator_predictions.dense_prediction')]


def config_from_hf(hf: Mapping, keys: frozenset) -> TransformerConfig:
    embedding_size = hf.get('embedding_size', 128)
    if 'generator_predictions.dense.weight' in keys:  # its head's activation is fixed to the erf GELU
        common.require(hf, 'hidden_act', ('gelu',), 'ELECTRA generator')
    return bert.encoder_config(hf, keys, 'electra', 'electra', pooler=False,
                               embedding_size=None if embedding_size == hf['hidden_size'] else embedding_size)


def config_to_hf(config: TransformerConfig) -> dict:
    if config.pooler:
        raise common.UnsupportedArchitectureError('Hugging Face ELECTRA has no pooler; this config has pooler=True.')
    return {**bert.encoder_config_to_hf(config, 'electra'), 'embedding_size': config.token_embedding_size,
            'position_embedding_type': 'absolute'}


def generator_config_to_hf(config: TransformerConfig) -> dict:
    if config.activation != 'gelu':
        raise common.UnsupportedArchitectureError(
            f'the ELECTRA generator head applies the erf GELU; this config has activation={config.activation!r}.')
    return config_to_hf(config)


def split_generator(config: TransformerConfig, params) -> tuple[dict, TransformerConfig, dict]:
    """ElectraModel parameters -> (discriminator side, generator config, generator as EncoderModel params)."""
    generator = {'token_embedder': params['token_embedder'], 'encoder': params['generator'],
                 'mlm_head': params['generator_head']}
    discriminator = {k: v for k, v in params.items() if k not in ('generator', 'generator_head')}
    return discriminator, electra_model.generator_config(config), generator


def merge_generator(config: TransformerConfig, params: dict, generator_config: TransformerConfig,
                    generator_params: dict, where: str) -> dict:
    """The discriminator's ElectraModel parameters with the generator of a converted generator checkpoint."""
    differences = common.config_differences(generator_config, electra_model.generator_config(config))
    if differences:
        listed = ', '.join(f'{k}={ours!r} (needs {theirs!r})' for k, (ours, theirs) in differences.items())
        raise common.UnsupportedArchitectureError(
            f'The generator in {where} does not fit plmjax ElectraModel, whose generator is the discriminator '
            f'scaled by generator_size={electra_model.ElectraModel.generator_size}: {listed}.')
    if not np.array_equal(params['token_embedder']['embedding'], generator_params['token_embedder']['embedding']):
        logging.warning('The generator in %s has word embeddings of its own; ElectraModel shares one table, the '
                        "discriminator's.", where)
    return {**params, 'generator': generator_params['encoder'], 'generator_head': generator_params['mlm_head']}


_IGNORED = bert.IGNORED + (r'^generator_lm_head\.weight$',)
FAMILY = common.Family(name='electra', architecture='encoder', hf_class='ElectraForMaskedLM', prefix='electra',
                       config_from_hf=config_from_hf, config_to_hf=generator_config_to_hf, rules=rules,
                       ignored=_IGNORED)
DISCRIMINATOR_FAMILY = common.Family(
    name='electra_discriminator', model_types=('electra',), marker='discriminator_predictions.dense.weight',
    architecture='electra', hf_class='ElectraForPreTraining', prefix='electra', config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, rules=discriminator_rules, ignored=_IGNORED,
    optional=('generator/', 'generator_head/'))
