"""EncoderDecoderModel: T5 and BART — an encoder stack, a causal decoder stack with cross-attention, an LM
head; one token embedding shared by encoder inputs, decoder inputs and (when tied) the output projection."""
import jax
import flax.linen as nn

from plmjax.layers import attention, flash
from plmjax.models import heads, transformer
from plmjax.models.config import TransformerConfig


class EncoderDecoderModel(nn.Module):
    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.token_embedder = transformer.make_token_embedder(cfg)
        self.encoder_context = attention.SelfAttentionContext(causal=False)
        self.encoder = transformer.TransformerStack(cfg, cfg.num_encoder_layers, self.token_embedder)
        self.decoder_context = attention.SelfAttentionContext(causal=True)
        self.decoder = transformer.TransformerStack(cfg, cfg.num_decoder_layers, self.token_embedder, causal=True,
                                                    cross_attention=True)
        self.lm_head = heads.LmHead(cfg)

    def encode(self, encoder_input_ids: jax.Array, *, encoder_mask: jax.Array | None = None,
               deterministic: bool = True, encoder_segment_ids: jax.Array | None = None,
               encoder_positions: jax.Array | None = None) -> jax.Array:
        """[batch, in_length] -> encoder hidden states [batch, in_length, emb]. encoder_mask: 1 for real tokens;
        default encoder_input_ids != pad_id. encoder_segment_ids, encoder_positions: a packed batch's (seqio)."""
        transformer.check_length(encoder_input_ids.shape[1], self.config, 'encoder input')
        if encoder_mask is None:
            encoder_mask = encoder_input_ids != self.config.pad_id
        context = self.encoder_context(encoder_input_ids, input_mask=encoder_mask, segment_ids=encoder_segment_ids,
                                       positions=encoder_positions)
        return self.encoder(encoder_input_ids, context, deterministic=deterministic)

    def decode(self, encoded: jax.Array | None, decoder_input_ids: jax.Array, *, encoder_mask: jax.Array | None,
               decoder_mask: jax.Array | None = None, deterministic: bool = True,
               decode: bool = False, encoder_segment_ids: jax.Array | None = None,
               decoder_segment_ids: jax.Array | None = None,
               decoder_positions: jax.Array | None = None) -> dict[str, jax.Array]:
        """Decoder over encoder states [batch, in_length, emb] -> {'hidden_states', 'logits' (float32)}.

        encoder_mask [batch, in_length]: 1 for real encoder tokens (None: all real). decoder_mask: 1 for real decoder
        tokens; default None (no padding mask: decoder inputs start with id 0 and a causal mask keeps right padding
        away from real positions). decode: cached decoding, see `plmjax.layers.attention`; the cross-attention keys and
        values of `encoded` are computed and stored in the cache by a call that passes `encoded` (the prefill), and
        a call with encoded=None (a decoding step) reads them from there instead of projecting the encoder output
        again (docs/interfaces.md). encoder_mask is still needed at every step (the cross-attention mask).
        encoder_segment_ids, decoder_segment_ids, decoder_positions: a packed batch's (seqio): self- and
        cross-attention stay inside each packed example (both segment ids or neither).
        """
        if (encoder_segment_ids is None) != (decoder_segment_ids is None):
            raise ValueError('A packed encoder-decoder batch needs both encoder_segment_ids and decoder_segment_ids '
                             '(seqio EncDecFeatureConverter(pack=True) makes both).')
        if encoded is None and not decode:
            raise ValueError('EncoderDecoderModel.decode needs `encoded` unless decode=True (a cached decoding step '
                             'after the prefill, which stored the cross-attention keys/values).')
        transformer.check_length(decoder_input_ids.shape[1], self.config, 'decoder input')
        context = self.decoder_context(decoder_input_ids, input_mask=decoder_mask, segment_ids=decoder_segment_ids,
                                       positions=decoder_positions, decode=decode)
        cross_mask = attention.make_attention_mask(key_mask=encoder_mask, query_segment_ids=decoder_segment_ids,
                                                   key_segment_ids=encoder_segment_ids)
        encoder_kernel_ids = (flash.segment_ids_from_mask(encoder_mask) if encoder_segment_ids is None
                              else encoder_segment_ids)
        cross_kernel_mask = flash.KernelMask(None if context.kernel_mask is None else context.kernel_mask.q_segment_ids,
                                             encoder_kernel_ids)
        hidden = self.decoder(decoder_input_ids, context, encoded=encoded, cross_mask=cross_mask,
                              deterministic=deterministic, decode=decode, cross_kernel_mask=cross_kernel_mask)
        return {'hidden_states': hidden, 'logits': self.lm_head(hidden, self.token_embedder, decode=decode)}

    def __call__(self, encoder_input_ids: jax.Array, decoder_input_ids: jax.Array, *,
                 encoder_mask: jax.Array | None = None, decoder_mask: jax.Array | None = None,
                 deterministic: bool = True, decode: bool = False, encoder_segment_ids: jax.Array | None = None,
                 decoder_segment_ids: jax.Array | None = None, encoder_positions: jax.Array | None = None,
                 decoder_positions: jax.Array | None = None) -> dict[str, jax.Array]:
        """-> {'encoder_hidden_states': [b, in, emb], 'hidden_states': [b, out, emb], 'logits': [b, out, vocab]}.
        The *_segment_ids / *_positions [b, in or out] are a packed batch's (seqio EncDecFeatureConverter)."""
        if encoder_mask is None:
            encoder_mask = encoder_input_ids != self.config.pad_id
        encoded = self.encode(encoder_input_ids, encoder_mask=encoder_mask, deterministic=deterministic,
                              encoder_segment_ids=encoder_segment_ids, encoder_positions=encoder_positions)
        outputs = self.decode(encoded, decoder_input_ids, encoder_mask=encoder_mask, decoder_mask=decoder_mask,
                              deterministic=deterministic, decode=decode, encoder_segment_ids=encoder_segment_ids,
                              decoder_segment_ids=decoder_segment_ids, decoder_positions=decoder_positions)
        return {'encoder_hidden_states': encoded, **outputs}
