"""Prompt tuning (Lester et al., 2021): n trainable vectors prepended to the token embeddings of a frozen model.

Every stack without cross-attention (the encoder of EncoderModel, the fine-tuning models and encoder-decoders; the
decoder of a DecoderModel) runs on [prompt; tokens]: the prompt replaces the token embeddings of n extra leading
positions (so, as in Hugging Face PEFT, position and token-type embeddings, embedding norm and scaling apply to
it), the sequence is n + length long (positions 0..n+l-1; the real tokens' positions shift by n), and the
attention mask grows to [n + l, n + l]: every real query sees the prompt plus what it saw before; prompt queries see
the prompt and the real (non-padding) keys in an encoder, only earlier prompt positions in a causal decoder. The
stack's output is cut back to the original positions, so every head (MLM, pooler on [CLS], classifier, LM head,
cross-attention of an encoder-decoder's decoder) sees the original length and layout.

Cached decoding is not supported (the prompt would have to enter the cache first).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.models import transformer
from plmjax.peft.base import BASE, ParamSpec, PeftModel, method_of


@dataclasses.dataclass(frozen=True)
class PromptTuningOptions:
    length: int = 20  # n, the number of soft-prompt vectors
    init_std: float | None = None  # N(0, init_std); None: the model's token-embedding initializer

    def __post_init__(self):
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f'prompt_tuning.length must be a positive integer, got {self.length!r}.')


def prompt_context(context, n: int, causal: bool):
    """The AttentionContext of [prompt; tokens] from the tokens' context (n prompt positions in front)."""
    if context.segment_ids is not None:
        raise ValueError('Prompt tuning does not support packed batches: set train.pack = False.')
    length = context.positions.shape[0]
    positions = jnp.arange(n + length)
    mask = context.mask  # [batch or 1, 1, length or 1, length] bool, or None (nothing masked)
    if mask is not None:
        real = jnp.broadcast_to(mask, mask.shape[:2] + (length, length))  # [b, 1, l, l]
        batch = real.shape[0]
        if causal:
            prompt_rows = jnp.concatenate([jnp.tril(jnp.ones((n, n), bool)), jnp.zeros((n, length), bool)], 1)
            prompt_rows = jnp.broadcast_to(prompt_rows, (batch, 1, n, n + length))
        else:  # prompt queries see the prompt and every key some real query may see (the padding mask)
            keys = jnp.broadcast_to(jnp.any(mask, axis=-2, keepdims=True), (batch, 1, n, length))
            prompt_rows = jnp.concatenate([jnp.ones((batch, 1, n, n), bool), keys], -1)
        token_rows = jnp.concatenate([jnp.ones((batch, 1, length, n), bool), real], -1)
        mask = jnp.concatenate([prompt_rows, token_rows], 2)  # [b, 1, n + l, n + l]
    return context._replace(positions=positions, key_positions=positions, mask=mask)


class PromptTuningModel(PeftModel):
    method = 'prompt_tuning'

    @nn.nowrap
    def intercept(self, next_fun, args, kwargs, context, peft):
        stack = context.module
        if (context.method_name != '__call__' or not isinstance(stack, transformer.TransformerStack)
                or stack.cross_attention):
            return next_fun(*args, **kwargs)
        cfg, n = stack.config, self.options.length
        init = (transformer.embedding_init(cfg) if self.options.init_std is None
                else nn.initializers.normal(self.options.init_std))
        prompt = peft.param(peft.path, 'prompt', ParamSpec((n, cfg.token_embedding_size), cfg.params_dtype, init,
                                                           (None, 'embed')))
        if prompt is None:  # initializing
            return next_fun(*args, **kwargs)
        if kwargs.get('decode'):
            raise ValueError('Prompt tuning does not support cached decoding (decode=True): score or generate '
                             'with full forward passes, or merge the prompt into the inputs.')
        input_ids, tokens_context = args[:2]
        batch, length = input_ids.shape
        transformer.check_length(n + length, cfg, f'prompt-tuned input (prompt_tuning.length={n} + tokens)')
        ids = jnp.concatenate([jnp.zeros((batch, n), input_ids.dtype), input_ids], 1)  # [batch, n + length]
        if kwargs.get('token_type_ids') is not None:
            token_types = kwargs['token_type_ids']
            kwargs = {**kwargs, 'token_type_ids': jnp.concatenate([jnp.zeros((batch, n), token_types.dtype),
                                                                   token_types], 1)}

        def embed_prompt(embed_next, e_args, e_kwargs, e_context):
            x = embed_next(*e_args, **e_kwargs)
            if e_context.method_name == '__call__' and isinstance(e_context.module, nn.Embed) and e_args[0] is ids:
                x = x.at[:, :n].set(jnp.broadcast_to(prompt.astype(x.dtype), (batch,) + prompt.shape))
            return x

        with nn.intercept_methods(embed_prompt):
            hidden = next_fun(ids, prompt_context(tokens_context, n, stack.causal), *args[2:], **kwargs)
        return hidden[:, n:]  # [batch, length, emb]: the original positions


def prompt_from_vocabulary(params, rng: jax.Array, num_candidates: int = 5000) -> dict:
    """Lester et al.'s initialization: each prompt vector becomes the (frozen model's) embedding of a token drawn
    uniformly from the first `num_candidates` ids. Call after loading the pre-trained base parameters."""
    if method_of(params) != 'prompt_tuning':
        raise ValueError(f'prompt_from_vocabulary needs prompt-tuning parameters, got {method_of(params)!r}.')
    params = nn.meta.unbox(params)

    def replace(tree, path):
        if 'prompt' not in tree:
            return {key: replace(value, path + (key,)) for key, value in tree.items()}
        node = params[BASE]
        try:
            for key in path[:-1] + ('token_embedder',):
                node = node[key]
            table = node['embedding']  # [vocab, emb]
        except KeyError:
            raise ValueError(f'No token embedding table next to the prompted stack {"/".join(path)!r}.') from None
        key = jax.random.fold_in(rng, len(path))
        ids = jax.random.randint(key, (tree['prompt'].shape[0],), 0, min(num_candidates, table.shape[0]))
        return {**tree, 'prompt': table[ids].astype(tree['prompt'].dtype)}

    return {**params, 'prompt_tuning': replace(params['prompt_tuning'], ())}
