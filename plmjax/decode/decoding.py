"""Autoregressive decoding for `DecoderModel` and `EncoderDecoderModel`: one jitted `lax.while_loop` shared by
every token choice (greedy; sampling with temperature, top-k, top-p), on the KV cache of docs/interfaces.md and
the decoding weights layout of `plmjax.decode.weights.prepare`.

Decoder prompts may be ragged: left-pad them and pass `input_mask` (1 on real tokens); each row's positions count
from 0 at its first real token (as `transformers` derives `position_ids` from the attention mask), and its
padding is masked out of attention. Encoder-decoder inputs are padded either way (`input_mask`, default
`inputs != pad_id`); the decoder starts from `decoder_start_id`.

The loop: a prefill pass (the prompt, or the decoder start token after encoding) gives the first token's logits;
each iteration chooses a token for every row and feeds it back; it stops when every row has produced EOS or after
`max_new_tokens`. A row that has produced EOS continues with `pad_id`. Before `min_new_tokens` tokens EOS is
never chosen (its logit is -inf, as `transformers`' MinNewTokensLengthLogitsProcessor). Sampling applies
temperature, then top-k, then top-p (nucleus) to the logits, in `transformers`' order and definitions
(`warp_logits`), and draws with `jax.random.categorical` from `fold_in(rng, step)`: the same rng gives the same
sample, on any mesh. Scores are the sum of the model's log-probabilities (unwarped logits) of each row's tokens,
EOS included.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.decode import weights as weights_lib
from plmjax.layers.dense import DECODING_WEIGHTS

STRATEGIES = ('greedy', 'sample')


@dataclasses.dataclass(frozen=True)
class Options:
    """How tokens are chosen and when a row stops. top_k=0 and top_p=1.0 keep every token."""
    max_new_tokens: int
    strategy: str = 'greedy'
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0
    eos_id: Optional[int] = None
    pad_id: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f'Unknown decoding strategy {self.strategy!r}; choose one of {STRATEGIES}.')
        if self.max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}.')
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f'min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got '
                             f'{self.min_new_tokens}.')
        if self.temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {self.temperature} (greedy: strategy="greedy").')
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f'top_k must be >= 0 and top_p in (0, 1], got top_k={self.top_k}, top_p={self.top_p}.')


class Generated(NamedTuple):
    tokens: jax.Array  # [batch, max_new_tokens] int32, pad_id after a row's EOS (and after the loop stopped)
    lengths: jax.Array  # [batch] int32: tokens produced, EOS included
    scores: jax.Array  # [batch] float32: sum of the model's log-probabilities of those tokens


def warp_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """[batch, vocab] float32 logits -> the same with -inf outside the kept tokens, as `transformers`'
    TemperatureLogitsWarper, TopKLogitsWarper (keeps every token whose logit reaches the k-th largest, ties
    included) and TopPLogitsWarper (keeps the most probable tokens until their mass reaches top_p: a token is
    dropped when the tokens more probable than it already hold top_p; at least one is kept), in that order."""
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]  # [batch, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)  # [batch, vocab], most probable first
        probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the tokens ranked above each one
        drop_sorted = (before >= top_p).at[..., 0].set(False)
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


def choose(logits: jax.Array, options: Options, key: Optional[jax.Array]) -> jax.Array:
    """[batch, vocab] -> [batch] int32 token ids."""
    if options.strategy == 'greedy':
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    warped = warp_logits(logits, options.temperature, options.top_k, options.top_p)
    return jax.random.categorical(key, warped, axis=-1).astype(jnp.int32)


def is_encoder_decoder(module: nn.Module) -> bool:
    return hasattr(module, 'encode')


def generate(module: nn.Module, params, inputs: jax.Array, options: Options, *,
             input_mask: Optional[jax.Array] = None, rng: Optional[jax.Array] = None,
             decoder_start_id: int = 0) -> Generated:
    """inputs [batch, length] int32 (a decoder's left-padded prompts, or an encoder-decoder's inputs) -> Generated.

    params: the model's params, or `weights_lib.prepare(module, params)` (kept across calls). rng: a PRNG key, needed
    for strategy 'sample'. Jit it with `jit_generate`."""
    if options.strategy == 'sample' and rng is None:
        raise ValueError("strategy 'sample' needs rng (a jax.random key).")
    weights = params if isinstance(params, weights_lib.DecodingWeights) else weights_lib.prepare(module, params)
    weights_lib.check_layout(module, weights)
    fixed = {'params': weights.params, DECODING_WEIGHTS: weights.kernels}
    batch_size, length = inputs.shape
    inputs = inputs.astype(jnp.int32)
    new = options.max_new_tokens

    if is_encoder_decoder(module):
        mask = inputs != module.config.pad_id if input_mask is None else input_mask != 0
        encoded = module.apply(fixed, inputs, encoder_mask=mask, method='encode')
        cache = weights_lib.init_cache(module, batch_size, new, encoder_length=length)

        def forward(cache, ids, unused_positions):  # ids [batch, 1] -> (cache, logits [batch, vocab])
            outputs, variables = module.apply({**fixed, 'cache': cache}, encoded, ids, encoder_mask=mask,
                                              decode=True, method='decode', mutable=['cache'])
            return variables['cache'], outputs['logits'][:, -1]

        start = jnp.full((batch_size, 1), decoder_start_id, jnp.int32)
        cache, logits = forward(cache, start, None)
        position = None
    else:
        mask = jnp.ones_like(inputs, jnp.bool_) if input_mask is None else input_mask != 0
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)  # [batch, length]
        cache = weights_lib.init_cache(module, batch_size, length + new)

        def forward(cache, ids, positions, input_mask=None):
            outputs, variables = module.apply({**fixed, 'cache': cache}, ids, input_mask=input_mask,
                                              positions=positions, decode=True, logits_to_keep=1,
                                              mutable=['cache'])
            return variables['cache'], outputs['logits'][:, -1]

        cache, logits = forward(cache, inputs, positions, mask)
        position = positions[:, -1] + 1  # [batch]

    eos, pad = options.eos_id, options.pad_id

    def pick(step, logits, done, key):
        if eos is not None and options.min_new_tokens:
            logits = jnp.where((step < options.min_new_tokens) & (jnp.arange(logits.shape[-1]) == eos),
                               -jnp.inf, logits)
        token = choose(logits, options, None if key is None else jax.random.fold_in(key, step))
        token = jnp.where(done, pad, token)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), token[:, None], axis=-1)[:, 0]
        return token, jnp.where(done, 0.0, log_prob)

    def record(state, step, token, log_prob):
        tokens, done, lengths, scores = state
        tokens = tokens.at[:, step].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        scores = scores + log_prob
        if eos is not None:
            done = done | (token == eos)
        return tokens, done, lengths, scores

    state = (jnp.full((batch_size, new), pad, jnp.int32), jnp.zeros((batch_size,), jnp.bool_),
             jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), jnp.float32))
    token, log_prob = pick(0, logits, state[1], rng)
    state = record(state, 0, token, log_prob)

    def cond(carry):
        step, _, _, _, (_, done, _, _) = carry
        return (step < new) & ~jnp.all(done)

    def body(carry):
        step, cache, token, position, state = carry
        cache, logits = forward(cache, token[:, None], None if position is None else position[:, None])
        token, log_prob = pick(step, logits, state[1], rng)
        state = record(state, step, token, log_prob)
        return step + 1, cache, token, None if position is None else position + 1, state

    *_, (tokens, _, lengths, scores) = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, token, position, state))
    return Generated(tokens, lengths, scores)


def jit_generate(module: nn.Module, options: Options, decoder_start_id: int = 0):
    """`generate` jitted for `module` and `options`: (params or DecodingWeights, inputs, input_mask=None,
    rng=None) -> Generated."""
    @jax.jit
    def run(params, inputs, input_mask=None, rng=None):
        return generate(module, params, inputs, options, input_mask=input_mask, rng=rng,
                        decoder_start_id=decoder_start_id)
    return run

