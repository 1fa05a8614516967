"""plmjax networks: EncoderModel (BERT family), DecoderModel (GPT, PanGu-α), EncoderDecoderModel (T5, BART).

`build_model(arch, config)` is what the trainer calls with the gin macros MODEL_ARCH and MODEL_CONFIG.
"""
import math

import flax.linen as nn
import jax

from plmjax.models.config import (PRESETS, TransformerConfig, bart_base, bert_base, bert_large, electra_small,
                                  gpt2_small, gpt2_xl, nezha_base, pangu_alpha_2_6b, pangu_alpha_13b,
                                  pangu_alpha_350m, roberta_base, t5_base, t5_small, t5_v1_1_small, tiny_decoder,
                                  tiny_encoder, tiny_encoder_decoder)
from plmjax.models.decoder import DecoderModel
from plmjax.models.encoder import EncoderModel
from plmjax.models.encoder_decoder import EncoderDecoderModel
from plmjax.models.bert_pretraining import SentencePairModel, SpanBoundaryModel
from plmjax.models.electra import ElectraModel

ARCHITECTURES = {'encoder': EncoderModel, 'decoder': DecoderModel, 'encoder_decoder': EncoderDecoderModel,
                 # Pre-training variants of the encoder (NSP/SOP head, SpanBERT's SBO head, ELECTRA's pair).
                 'encoder_sentence_pair': SentencePairModel, 'encoder_span_boundary': SpanBoundaryModel,
                 'electra': ElectraModel}
_NEEDED_LAYERS = {'encoder': ('num_encoder_layers',), 'decoder': ('num_decoder_layers',),
                  'encoder_decoder': ('num_encoder_layers', 'num_decoder_layers'),
                  'encoder_sentence_pair': ('num_encoder_layers',), 'encoder_span_boundary': ('num_encoder_layers',),
                  'electra': ('num_encoder_layers',)}


def build_model(arch: str, config: TransformerConfig) -> nn.Module:
    """The network of architecture `arch` ('encoder' | 'decoder' | 'encoder_decoder') described by `config`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f'Unknown model architecture MODEL_ARCH={arch!r}; choose one of {tuple(ARCHITECTURES)} '
                         f'(gin: `MODEL_ARCH = \'encoder\'`).')
    if not isinstance(config, TransformerConfig):
        raise TypeError(f'MODEL_CONFIG must be a TransformerConfig (gin: `MODEL_CONFIG = @bert_base()`), '
                        f'got {type(config).__name__}.')
    for field in _NEEDED_LAYERS[arch]:
        if getattr(config, field) < 1:
            raise ValueError(f'MODEL_ARCH={arch!r} needs {field} >= 1, but model config {config.name!r} has '
                             f'{field}={getattr(config, field)}; pick a preset of that architecture.')
    return ARCHITECTURES[arch](config)


def count_params(params) -> int:
    """Number of parameters in a (possibly boxed, possibly abstract) parameter tree."""
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
    return sum(math.prod(leaf.shape) for leaf in leaves)


__all__ = ['ARCHITECTURES', 'PRESETS', 'DecoderModel', 'EncoderDecoderModel', 'EncoderModel', 'TransformerConfig',
           'bart_base', 'bert_base', 'bert_large', 'build_model', 'count_params', 'electra_small', 'gpt2_small',
           'gpt2_xl', 'nezha_base', 'pangu_alpha_13b', 'pangu_alpha_2_6b', 'pangu_alpha_350m', 'roberta_base',
           't5_base', 't5_small', 't5_v1_1_small', 'tiny_decoder', 'tiny_encoder', 'tiny_encoder_decoder']
