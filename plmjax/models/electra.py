"""ELECTRA (Clark et al. 2020): a small MLM generator and a discriminator trained jointly on replaced-token detection.

`ElectraModel(config)` takes the discriminator's config; the generator is the same architecture scaled in width
by `generator_size` (ELECTRA's best: 1/4 to 1/2 of the discriminator; heads scale too, head_dim stays). Both
stacks read one shared token embedding table (ELECTRA shares the embeddings; position and token-type tables
stay per stack here). The generator's MLM head maps back to the embedding width and is tied to the shared table.

In-graph sampling: the generator's logits at the masked positions are sampled (Gumbel-max, stop-gradient) with
the 'dropout' rng of the step (a fixed key when deterministic, so evaluation is repeatable); the discriminator
reads the original tokens with the samples at the masked positions and predicts, for every real token, whether
it differs from the original (`rtd_labels`, computed in-graph: a sample equal to the original counts as original).
"""
import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn

from plmjax.layers import attention
from plmjax.models import heads, transformer
from plmjax.models.config import TransformerConfig


def generator_config(config: TransformerConfig, generator_size: float = 0.25) -> TransformerConfig:
    """The generator's config: the discriminator's scaled in width, on the same token embedding width."""
    return dataclasses.replace(
        config, name=f'{config.name}_generator', emb_dim=max(1, int(config.emb_dim * generator_size)),
        num_heads=max(1, int(config.num_heads * generator_size)), mlp_dim=max(1, int(config.mlp_dim * generator_size)),
        embedding_size=config.token_embedding_size, mlm_head_transform=True, pooler=False)


class ElectraModel(nn.Module):
    config: TransformerConfig  # the discriminator's
    generator_size: float = 0.25

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, original_ids: jax.Array | None = None,
                 masked_positions: jax.Array | None = None, input_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        """input_ids: the masked generator input [batch, length]; original_ids: the uncorrupted tokens;
        masked_positions: 1 where the generator predicts and the discriminator sees a sample.

        -> {'logits': generator MLM logits [b, l, vocab], 'rtd_logits': [b, l], 'rtd_labels': [b, l] int32,
            'discriminator_input_ids': [b, l], 'hidden_states': discriminator [b, l, emb]}
        """
        cfg = self.config
        gen_cfg = generator_config(cfg, self.generator_size)
        transformer.check_length(input_ids.shape[1], cfg)
        original_ids = input_ids if original_ids is None else original_ids
        masked_positions = jnp.zeros_like(input_ids, bool) if masked_positions is None else masked_positions > 0
        if input_mask is None:
            input_mask = input_ids != cfg.pad_id
        context = attention.SelfAttentionContext(causal=False, name='context')(input_ids, input_mask=input_mask)
        token_embedder = transformer.make_token_embedder(cfg)  # shared by both stacks and the generator's head

        generator_hidden = transformer.TransformerStack(gen_cfg, gen_cfg.num_encoder_layers, token_embedder,
                                                        name='generator')(
            input_ids, context, token_type_ids=token_type_ids, deterministic=deterministic)
        generator_logits = heads.MlmHead(gen_cfg, name='generator_head')(generator_hidden, token_embedder)

        rng = jax.random.key(0) if deterministic else self.make_rng('dropout')
        sampled = jax.random.categorical(rng, jax.lax.stop_gradient(generator_logits), axis=-1)  # [batch, length]
        discriminator_ids = jnp.where(masked_positions, sampled.astype(input_ids.dtype), original_ids)
        rtd_labels = ((discriminator_ids != original_ids) & (input_mask > 0)).astype(jnp.int32)

        hidden = transformer.TransformerStack(cfg, cfg.num_encoder_layers, token_embedder, name='discriminator')(
            discriminator_ids, context, token_type_ids=token_type_ids, deterministic=deterministic)
        return {'logits': generator_logits, 'rtd_logits': heads.RtdHead(cfg, name='discriminator_head')(hidden),
                'rtd_labels': rtd_labels, 'discriminator_input_ids': discriminator_ids, 'hidden_states': hidden}
