"""The parameter tree an (architecture, config) pair builds, and which config fields decide what it computes.

Shared by the trainer (`train.init_checkpoint` checks that a checkpoint's network is the run's), the converters
(golden trees, Hugging Face mappings) and the bench; shapes come from `jax.eval_shape`, so nothing is allocated.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.models import build_model
from plmjax.models.config import TransformerConfig


def architecture_of(config: TransformerConfig) -> str:
    """The plmjax architecture a config describes: its non-empty stacks."""
    if config.num_encoder_layers and config.num_decoder_layers:
        return 'encoder_decoder'
    return 'encoder' if config.num_encoder_layers else 'decoder'


# Fields that do not change what a trained network computes at inference (naming, numerics, memory, init, dropout).
# `scan_layers` changes the parameter layout, not the network: plmjax.models.layout converts between the two.
_RUN_FIELDS = ('name', 'dtype', 'param_dtype', 'remat_policy', 'scan_layers', 'init_std', 'dropout_rate',
               'attention_dropout_rate', 'activation_dropout_rate')


def effective_fields(config: TransformerConfig) -> dict:
    """The fields of `config` that change what its network computes, with irrelevant ones left out (T5's buckets
    when positions are learned, the decoder's depth of an encoder, ...), so two configs describe the same
    network exactly when these dicts are equal."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUN_FIELDS}
    arch = architecture_of(config)
    fields['embedding_size'] = config.token_embedding_size
    drop = set()
    if config.position != 't5_relative':
        drop |= {'relative_num_buckets', 'relative_max_distance'}
    if config.position != 'nezha_relative':
        drop.add('nezha_max_relative_position')
    if config.position != 'rotary':
        drop.add('rotary_base')
    if config.position != 'learned':
        drop.add('position_offset')
    if not config.tie_embeddings:
        drop.add('scale_tied_logits')
    if arch == 'encoder':
        drop |= {'num_decoder_layers', 'lm_head_bias', 'scale_tied_logits', 'query_layer'}
    else:
        drop |= {'mlm_head_transform', 'pooler'}
        if arch == 'decoder':
            drop |= {'num_encoder_layers', 'pad_id'}  # the decoder masks nothing by pad id
    if arch != 'decoder':
        drop.add('query_layer')
    return {k: v for k, v in fields.items() if k not in drop}


def config_differences(config: TransformerConfig, other: TransformerConfig) -> dict[str, tuple]:
    """{field: (config's value, other's value)} for the effective fields that differ."""
    mine, theirs = effective_fields(config), effective_fields(other)
    return {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}


def abstract_params(arch: str, config: TransformerConfig, boxed: bool = False, **head_options):
    """The parameter tree of the plmjax model (shapes and dtypes only, no memory): `jax.eval_shape(init)`.
    `head_options` (num_labels, num_choices) for the fine-tuning architectures."""
    ids = jnp.ones((1, 8), jnp.int32)
    args = (ids, ids) if arch == 'encoder_decoder' else (ids,)
    tree = jax.eval_shape(build_model(arch, config, **head_options).init, jax.random.key(0), *args)['params']
    return tree if boxed else nn.meta.unbox(tree)
