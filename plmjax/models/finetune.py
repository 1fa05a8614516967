"""Fine-tuning architectures: `EncoderModel` (the submodule 'bert', so a converted or pre-trained encoder's
parameters go to params['bert']) with one task head, as BERT's `BertFor*` classes.

| arch (`build_model`, gin MODEL_ARCH) | head options | adds to EncoderModel's outputs |
|---|---|---|
| 'encoder_classifier' (classification, regression) | num_labels | 'classification_logits' [b, num_labels] |
| 'encoder_span' (extractive QA, CMRC2018) | - | 'start_logits', 'end_logits' [b, l] |
| 'encoder_multiple_choice' (CHID, C3) | num_choices | 'choice_logits' [b, num_choices] |
| 'encoder_tagger' (POS tagging) | num_labels | 'tag_logits' [b, l, num_labels] |

Sequence-level heads read the pooled output when `config.pooler`, else the first ([CLS]) token's hidden state.
The call signature is EncoderModel's.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from plmjax.models.config import TransformerConfig
from plmjax.models.encoder import EncoderModel
from plmjax.models.heads import ClassificationHead, SpanHead


def _encode(config: TransformerConfig, input_ids, input_mask, token_type_ids, deterministic):
    return EncoderModel(config, name='bert')(input_ids, input_mask=input_mask, token_type_ids=token_type_ids,
                                             deterministic=deterministic)


def _sequence_features(config: TransformerConfig, outputs) -> jax.Array:
    """[batch, emb]: the pooled output, or the [CLS] hidden state of a model without a pooler (RoBERTa-style)."""
    return outputs['pooled'] if config.pooler else outputs['hidden_states'][:, 0]


ENCODER_OUTPUTS = ('hidden_states', 'logits', 'pooled', 'mlm_positions')  # what every head's dict also holds


def head_outputs(outputs: dict) -> dict:
    """A fine-tuning model's own outputs (a classifier's `classification_logits`, a span model's start/end logits),
    without the encoder's: what inference returns, so that a jitted forward drops the unused MLM head (a
    [batch, length, vocab] product as large as the layers of a small model). Any other model's dict as it is."""
    own = {k: v for k, v in outputs.items() if k not in ENCODER_OUTPUTS}
    return own or outputs


class EncoderClassifier(nn.Module):
    """Sequence classification (num_labels >= 2) or regression (num_labels = 1)."""
    config: TransformerConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        outputs = _encode(self.config, input_ids, input_mask, token_type_ids, deterministic)
        logits = ClassificationHead(self.config, self.num_labels, name='classifier')(
            _sequence_features(self.config, outputs), deterministic=deterministic)
        return {**outputs, 'classification_logits': logits}


class EncoderSpan(nn.Module):
    """Extractive question answering: start and end logits over the input positions."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        outputs = _encode(self.config, input_ids, input_mask, token_type_ids, deterministic)
        start, end = SpanHead(self.config, name='span_head')(outputs['hidden_states'])
        return {**outputs, 'start_logits': start, 'end_logits': end}


class EncoderMultipleChoice(nn.Module):
    """One score per choice. Inputs are choice-major [batch, num_choices * length] (choice c is
    `[:, c*length:(c+1)*length]`); every choice is encoded as its own sequence, so EncoderModel's outputs are
    [batch * num_choices, ...]."""
    config: TransformerConfig
    num_choices: int

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        batch, total = input_ids.shape
        choices = self.num_choices
        if total % choices and self.is_initializing():
            # Parameter shapes do not depend on the length: any dummy input initializes (repeat it per choice).
            input_ids, total = jnp.tile(input_ids, (1, choices)), total * choices
            input_mask = token_type_ids = None
        if total % choices:
            raise ValueError(f'Multiple-choice inputs have length {total}, not a multiple of num_choices={choices}: '
                             'each row must hold num_choices sequences of one length, choice-major.')

        def per_choice(x):  # [batch, choices * length] -> [batch * choices, length]
            return None if x is None else x.reshape(batch * choices, total // choices)

        outputs = _encode(self.config, per_choice(input_ids), per_choice(input_mask), per_choice(token_type_ids),
                          deterministic)
        scores = ClassificationHead(self.config, 1, name='classifier')(
            _sequence_features(self.config, outputs), deterministic=deterministic)  # [batch * choices, 1]
        return {**outputs, 'choice_logits': scores.reshape(batch, choices)}


class EncoderTagger(nn.Module):
    """Token tagging (e.g. part of speech): one distribution over num_labels tags per position."""
    config: TransformerConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        outputs = _encode(self.config, input_ids, input_mask, token_type_ids, deterministic)
        logits = ClassificationHead(self.config, self.num_labels, name='classifier')(
            outputs['hidden_states'], deterministic=deterministic)
        return {**outputs, 'tag_logits': nn.with_logical_constraint(logits, ('batch', 'length', None))}


FINETUNE_ARCHITECTURES = {'encoder_classifier': EncoderClassifier, 'encoder_span': EncoderSpan,
                          'encoder_multiple_choice': EncoderMultipleChoice, 'encoder_tagger': EncoderTagger}
# The head options each architecture needs (`build_model(arch, config, **head_options)`).
HEAD_OPTIONS = {'encoder_classifier': ('num_labels',), 'encoder_span': (),
                'encoder_multiple_choice': ('num_choices',), 'encoder_tagger': ('num_labels',)}
