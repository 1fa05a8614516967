"""DecoderModel: GPT-2 and PanGu-α — a causal (or prefix-LM) stack with an LM head."""
import jax
import flax.linen as nn

from plmjax.layers import attention
from plmjax.models import heads, transformer
from plmjax.models.config import TransformerConfig


class DecoderModel(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 prefix_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, deterministic: bool = True, decode: bool = False,
                 logits_to_keep: int = 0) -> dict[str, jax.Array]:
        """input_ids [batch, length] -> {'hidden_states': [b, l, emb], 'logits': [b, l, vocab] float32}.

        input_mask: 1 for real tokens. Default None: no padding mask, since the inputs (targets shifted right)
        start with id 0 and right padding cannot reach earlier positions through a causal mask.
        prefix_mask: 1 on the prefix of a prefix LM (`decoder_causal_attention`); the prefix attends bidirectionally.
        positions: [batch, length] per-row position ids (left-padded prompts: `plmjax.decode.decoding`); default
        0.. in input order (absolute and rotary positions only).
        segment_ids: [batch, length] of a packed batch (seqio's `decoder_segment_ids`, 0: padding), with
        `positions` its `decoder_positions`: attention stays inside each packed example.
        decode: cached autoregressive decoding (see `plmjax.layers.attention`); initialize the cache with
        `init(..., decode=True)` on a [batch, max_decode_length] input and apply with `mutable=['cache']`.
        logits_to_keep: n > 0 computes the logits of the last n positions only ([b, n, vocab]), as in
        `transformers`: a prompt's pass in decoding needs just the last (0: every position).
        """
        cfg = self.config
        transformer.check_length(input_ids.shape[1], cfg)
        context = attention.SelfAttentionContext(causal=True, name='context')(
            input_ids, input_mask=input_mask, prefix_mask=prefix_mask, positions=positions, segment_ids=segment_ids,
            decode=decode)
        if positions is not None and segment_ids is None and cfg.position in ('t5_relative', 'nezha_relative'):
            raise ValueError(f'Per-row positions need absolute or rotary positions, not {cfg.position!r}.')
        token_embedder = transformer.make_token_embedder(cfg)
        num_layers = cfg.num_decoder_layers - (1 if cfg.query_layer else 0)
        hidden = transformer.TransformerStack(cfg, num_layers, token_embedder, causal=True, name='decoder')(
            input_ids, context, deterministic=deterministic, decode=decode)
        if cfg.query_layer:
            hidden = heads.QueryLayer(cfg, name='query_layer')(hidden, context, deterministic, decode)
        kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        return {'hidden_states': hidden, 'logits': heads.LmHead(cfg, name='lm_head')(kept, token_embedder, decode=decode)}
