"""BERT-family pre-training models that add a head to `EncoderModel` (wrapped as the submodule 'bert'):

- `SentencePairModel`: BERT's next-sentence (NSP) or ALBERT's sentence-order (SOP) head, a 2-way classifier on
  the pooled [CLS] output (`config.pooler` must be on);
- `SpanBoundaryModel`: SpanBERT's span-boundary objective (SBO) head, which predicts each masked token from the
  encodings of the two tokens just outside its span and its position inside the span.

Both return EncoderModel's outputs (MLM `logits`, `hidden_states`, `pooled`) plus their head's logits.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from plmjax.models.config import TransformerConfig
from plmjax.models.encoder import EncoderModel
from plmjax.models.heads import SentencePairHead, SpanBoundaryHead


class SentencePairModel(nn.Module):
    """EncoderModel + NSP/SOP head: adds 'sentence_logits' [batch, 2] to EncoderModel's outputs."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        if not self.config.pooler:
            raise ValueError(f'Sentence-pair prediction reads the pooled output, but model config '
                             f'{self.config.name!r} has pooler=False; set `{self.config.name}.pooler = True`.')
        outputs = EncoderModel(self.config, name='bert')(input_ids, input_mask=input_mask,
                                                         token_type_ids=token_type_ids, deterministic=deterministic)
        return {**outputs, 'sentence_logits': SentencePairHead(self.config, name='sentence_head')(outputs['pooled'])}


class SpanBoundaryModel(nn.Module):
    """EncoderModel + SBO head: adds 'span_logits' [batch, length, vocab]. Span inputs default to 0 (init)."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, span_left: jax.Array | None = None,
                 span_right: jax.Array | None = None, span_positions: jax.Array | None = None,
                 deterministic: bool = True) -> dict[str, jax.Array]:
        bert = EncoderModel(self.config, name='bert')
        outputs = bert(input_ids, input_mask=input_mask, token_type_ids=token_type_ids, deterministic=deterministic)
        zeros = jnp.zeros_like(input_ids)
        token_embedding = nn.meta.unbox(bert.variables['params']['token_embedder']['embedding'])  # [vocab, emb]
        span_logits = SpanBoundaryHead(self.config, name='span_boundary_head')(
            outputs['hidden_states'], zeros if span_left is None else span_left,
            zeros if span_right is None else span_right, zeros if span_positions is None else span_positions,
            token_embedding)
        return {**outputs, 'span_logits': span_logits}
