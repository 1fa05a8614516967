"""EncoderModel: BERT, RoBERTa, NEZHA, ELECTRA — a bidirectional stack with an MLM head."""
import jax
import jax.numpy as jnp
import flax.linen as nn

from plmjax.layers import attention
from plmjax.models import heads, transformer
from plmjax.models.config import TransformerConfig


class EncoderModel(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, mlm_positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 deterministic: bool = True) -> dict[str, jax.Array]:
        """input_ids [batch, length] -> {'hidden_states': [b, l, emb], 'logits': [b, l, vocab] float32 (MLM head),
        'pooled': [b, emb] (only with config.pooler)}. input_mask: 1 for real tokens; default input_ids != pad_id.
        mlm_positions: [b, p] int positions; the MLM head then runs only there and 'logits' is [b, p, vocab]
        (BERT's masked_lm_positions: the vocab projection at the ~15% predicted positions, not at all of them).
        segment_ids, positions: [b, l] of a packed batch (`encoder_segment_ids`, `encoder_positions`)."""
        cfg = self.config
        transformer.check_length(input_ids.shape[1], cfg)
        if input_mask is None:
            input_mask = input_ids != cfg.pad_id
        context = attention.SelfAttentionContext(causal=False, name='context')(
            input_ids, input_mask=input_mask, segment_ids=segment_ids, positions=positions)
        token_embedder = transformer.make_token_embedder(cfg)
        hidden = transformer.TransformerStack(cfg, cfg.num_encoder_layers, token_embedder, name='encoder')(
            input_ids, context, token_type_ids=token_type_ids, deterministic=deterministic)
        head_inputs = hidden
        if mlm_positions is not None:
            head_inputs = jnp.take_along_axis(hidden, mlm_positions[..., None].astype(jnp.int32), axis=1)  # [b, p, e]
        outputs = {'hidden_states': hidden,
                   'logits': heads.MlmHead(cfg, name='mlm_head')(head_inputs, token_embedder)}
        if mlm_positions is not None:
            outputs['mlm_positions'] = mlm_positions
        if cfg.pooler:
            outputs['pooled'] = heads.Pooler(cfg, name='pooler')(hidden)
        return outputs
