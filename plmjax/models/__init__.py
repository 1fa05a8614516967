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
from plmjax.models.finetune import FINETUNE_ARCHITECTURES, HEAD_OPTIONS

ARCHITECTURES = {'encoder': EncoderModel, 'decoder': DecoderModel, 'encoder_decoder': EncoderDecoderModel,
                 # Pre-training variants of the encoder (NSP/SOP head, SpanBERT's SBO head, ELECTRA's pair).
                 'encoder_sentence_pair': SentencePairModel, 'encoder_span_boundary': SpanBoundaryModel,
                 'electra': ElectraModel,
                 # Fine-tuning: the encoder with a task head (plmjax/models/finetune.py).
                 **FINETUNE_ARCHITECTURES}
_NEEDED_LAYERS = {'encoder': ('num_encoder_layers',), 'decoder': ('num_decoder_layers',),
                  'encoder_decoder': ('num_encoder_layers', 'num_decoder_layers'),
                  'encoder_sentence_pair': ('num_encoder_layers',), 'encoder_span_boundary': ('num_encoder_layers',),
                  'electra': ('num_encoder_layers',),
                  **{arch: ('num_encoder_layers',) for arch in FINETUNE_ARCHITECTURES}}


def build_model(arch: str, config: TransformerConfig, **head_options) -> nn.Module:
    """The network of architecture `arch` (a key of ARCHITECTURES) described by `config`.

    head_options: what a fine-tuning architecture's head needs (HEAD_OPTIONS: `num_labels`, `num_choices`); the
    trainer takes them from the task's `plmjax.data.finetune.get_task_info`.
    """
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
    needed = HEAD_OPTIONS.get(arch, ())
    unknown, missing = sorted(set(head_options) - set(needed)), [name for name in needed if name not in head_options]
    if unknown or missing:
        raise ValueError(f'MODEL_ARCH={arch!r} takes the head options {list(needed)}, got {sorted(head_options)}'
                         f'{f"; missing {missing}" if missing else ""}{f"; unknown {unknown}" if unknown else ""}.')
    for name, value in head_options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'Head option {name}={value!r} of MODEL_ARCH={arch!r} must be a positive integer.')
    return ARCHITECTURES[arch](config, **head_options)


def count_params(params) -> int:
    """Number of parameters in a (possibly boxed, possibly abstract) parameter tree."""
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
    return sum(math.prod(leaf.shape) for leaf in leaves)


__all__ = ['ARCHITECTURES', 'FINETUNE_ARCHITECTURES', 'HEAD_OPTIONS', 'PRESETS', 'DecoderModel', 'EncoderDecoderModel',
           'EncoderModel', 'TransformerConfig', 'bart_base', 'bert_base', 'bert_large', 'build_model', 'count_params',
           'electra_small', 'gpt2_small', 'gpt2_xl', 'nezha_base', 'pangu_alpha_13b', 'pangu_alpha_2_6b',
           'pangu_alpha_350m', 'roberta_base', 't5_base', 't5_small', 't5_v1_1_small', 'tiny_decoder', 'tiny_encoder',
           'tiny_encoder_decoder']
