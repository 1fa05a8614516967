"""Autoregressive decoding for `DecoderModel` and `EncoderDecoderModel`: one jitted `lax.while_loop` shared by
every token choice (greedy; sampling with temperature, top-k, top-p), on the KV cache of docs/interfaces.md and
the decoding weights layout of `plmjax.decode.weights.prepare`.

Decoder prompts may be ragged: left-pad them and pass `input_mask` (1 on real tokens); each row's positions count
from 0 at its first real token (as `transformers` derives `position_ids` from the attention mask), and its
padding is masked out of attention. Encoder-decoder inputs are padded either way (`input_mask`, default
`inputs != pad_id`); the decoder starts from `decoder_start_id`.

The loop: a prefill pass (the prompt, or the decoder start token after encoding) gives the first token's logits
(and an encoder-decoder's cross-attention keys/values, computed there once and kept in the cache for every step);
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
from plmjax.models import layout

STRATEGIES = ('greedy', 'sample', 'beam')
CROSS_KV = ('cross_key', 'cross_value')  # the cache leaves of cross-attention keys/values (plmjax.layers.attention)
EARLY_STOPPING = (False, True, 'never')


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
    num_beams: int = 4  # beam search only
    length_penalty: float = 1.0
    early_stopping: object = False  # False | True | 'never', as transformers' generate

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
        if self.strategy == 'beam' and self.num_beams < 1:
            raise ValueError(f'num_beams must be >= 1, got {self.num_beams}.')
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(f'early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}.')
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



def _hold_eos(scores: jax.Array, step, options: Options) -> jax.Array:
    """[..., vocab] logits or log-probabilities with EOS at -inf before `min_new_tokens` tokens."""
    if options.eos_id is None or not options.min_new_tokens:
        return scores
    is_eos = jnp.arange(scores.shape[-1]) == options.eos_id
    return jnp.where((step < options.min_new_tokens) & is_eos, -jnp.inf, scores)

def generate(module: nn.Module, params, inputs: jax.Array, options: Options, *,
             input_mask: Optional[jax.Array] = None, rng: Optional[jax.Array] = None,
             decoder_start_id: int = 0) -> Generated:
    """inputs [batch, length] int32 (a decoder's left-padded prompts, or an encoder-decoder's inputs) -> Generated.

    params: the model's params, or `plmjax.decode.weights.prepare(module, params)` (kept across calls). rng: a PRNG key, needed
    for strategy 'sample'. Jit it with `jit_generate`."""
    if options.strategy == 'sample' and rng is None:
        raise ValueError("strategy 'sample' needs rng (a jax.random key).")
    if options.strategy == 'beam':
        return beam_search(module, params, inputs, options, input_mask=input_mask, decoder_start_id=decoder_start_id)
    batch_size = inputs.shape[0]
    new = options.max_new_tokens
    forward, cache, logits, position = _prefill(module, params, inputs, input_mask, new, decoder_start_id)
    eos, pad = options.eos_id, options.pad_id

    def pick(step, raw, done, key):
        logits = _hold_eos(raw, step, options)
        token = choose(logits, options, None if key is None else jax.random.fold_in(key, step))
        token = jnp.where(done, pad, token)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(raw.astype(jnp.float32)), token[:, None], axis=-1)[:, 0]
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


NEG = -1.0e9  # transformers' "very large negative value" for beams that may not be chosen


def beam_search(module: nn.Module, params, inputs: jax.Array, options: Options, *,
                input_mask: Optional[jax.Array] = None, decoder_start_id: int = 0) -> Generated:
    """Beam search as `transformers`' generate(num_beams=W, do_sample=False) (its vectorized `_beam_search`):

    each step the W running beams of a row extend to their 2W best continuations by accumulated log-probability;
    continuations that end in EOS among the first W are finished hypotheses, scored sum_logprobs / generated_length
    ** length_penalty (generated_length counts the new tokens, EOS included); the W best unfinished continuations
    run on; at max_new_tokens the W best continuations are finished as they are. A row stops improving once its W
    finished slots are full and its best running beam, scored at the current length (early_stopping=False; at
    max_new_tokens for 'never' with length_penalty > 0), cannot beat its worst finished one; early_stopping=True
    stops a row as soon as W hypotheses are finished. The loop stops when no row can improve. Returns the best
    hypothesis of each row, its length and its length-penalized score."""
    beams, new, eos, pad = options.num_beams, options.max_new_tokens, options.eos_id, options.pad_id
    batch_size = inputs.shape[0]
    candidates = 2 * beams  # transformers: max(2, 1 + number of EOS ids) * num_beams
    forward, cache, logits, position = _prefill(module, params, inputs, input_mask, new, decoder_start_id,
                                                beams=beams)
    vocab = logits.shape[-1]
    scanned = bool(getattr(module.config, 'scan_layers', False))
    penalty = options.length_penalty

    def gather_cache(cache, rows):  # rows [b * W]: the flat source row of each new beam
        def take(path, leaf):
            # cache_index; and the cross-attention keys/values, the same in every beam of a row (a beam's source
            # row is a beam of its own row), so reordering them would copy them for nothing
            if leaf.ndim == 0 or getattr(path[-1], 'key', None) in CROSS_KV:
                return leaf
            axis = 1 if scanned and any(getattr(k, 'key', None) == layout.LAYERS for k in path) else 0
            return jnp.take(leaf, rows, axis=axis)
        return jax.tree_util.tree_map_with_path(take, cache)

    def step_fn(t, logits, state):
        (running, running_scores, finished, finished_scores, finished_flag, unsatisfied) = state
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, beams, vocab)
        log_probs = _hold_eos(log_probs, t, options)
        total = (log_probs + running_scores[:, :, None]).reshape(batch_size, beams * vocab)
        cand_scores, flat = jax.lax.top_k(total, candidates)  # [b, 2W]
        source, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand = jnp.take_along_axis(running, source[:, :, None], axis=1).at[:, :, t].set(token)  # [b, 2W, new]
        hits = jnp.broadcast_to(t + 1 >= new, token.shape)
        if eos is not None:
            hits = hits | (token == eos)
        # the W best unfinished continuations run on
        run_scores = cand_scores + hits * NEG
        run_scores, keep = jax.lax.top_k(run_scores, beams)  # [b, W]
        running = jnp.take_along_axis(cand, keep[:, :, None], axis=1)
        rows = (jnp.take_along_axis(source, keep, axis=1) + jnp.arange(batch_size)[:, None] * beams).reshape(-1)
        # finished hypotheses: EOS (or the last step) among the first W continuations
        eligible = hits & (jnp.arange(candidates) < beams)[None, :]
        scored = cand_scores / ((t + 1.0) ** penalty)
        full = jnp.all(finished_flag, axis=1, keepdims=True) & (options.early_stopping is True)
        scored = scored + full * NEG + (~unsatisfied)[:, None] * NEG + (~eligible) * NEG
        merged_scores = jnp.concatenate([finished_scores, scored], axis=1)
        finished_scores, best = jax.lax.top_k(merged_scores, beams)
        finished = jnp.take_along_axis(jnp.concatenate([finished, cand], axis=1), best[:, :, None], axis=1)
        finished_flag = jnp.take_along_axis(jnp.concatenate([finished_flag, eligible], axis=1), best, axis=1)
        # can a running beam still beat the worst finished one? (transformers' heuristic, at the new length)
        length = float(new) if options.early_stopping == 'never' and penalty > 0 else t + 1.0
        best_possible = run_scores[:, :1] / (length ** penalty)
        worst = jnp.where(finished_flag, jnp.min(finished_scores, axis=1, keepdims=True), NEG)
        unsatisfied = unsatisfied & jnp.any(best_possible > worst, axis=1)
        go_on = jnp.any(unsatisfied) & ~(jnp.all(finished_flag) & (options.early_stopping is True)) & ~jnp.all(hits)
        state = (running, run_scores, finished, finished_scores, finished_flag, unsatisfied)
        return state, rows, running[:, :, t].reshape(-1), go_on

    running = jnp.full((batch_size, beams, new), pad, jnp.int32)
    state = (running, jnp.zeros((batch_size, beams)).at[:, 1:].set(NEG), running,
             jnp.full((batch_size, beams), NEG), jnp.zeros((batch_size, beams), jnp.bool_),
             jnp.ones((batch_size,), jnp.bool_))
    state, rows, token, go_on = step_fn(0, logits, state)

    def cond(carry):
        return (carry[0] < new) & carry[-1]

    def body(carry):
        t, cache, rows, token, position, state, _ = carry
        cache = gather_cache(cache, rows)
        cache, logits = forward(cache, token[:, None], None if position is None else position[:, None])
        state, rows, token, go_on = step_fn(t, logits, state)
        return t + 1, cache, rows, token, None if position is None else position + 1, state, go_on

    carry = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, rows, token, position, state, go_on))
    _, _, finished, finished_scores, _, _ = carry[5]
    tokens = finished[:, 0]  # [b, new]
    if eos is None:
        lengths = jnp.full((batch_size,), new, jnp.int32)
    else:
        is_eos = tokens == eos
        lengths = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, new).astype(jnp.int32)
    return Generated(tokens, lengths, finished_scores[:, 0])


def _prefill(module, params, inputs, input_mask, new: int, decoder_start_id: int, beams: int = 1):
    """The prompt's pass (a decoder) or the encoder's and the decoder start token's (an encoder-decoder):
    (forward(cache, ids [rows, 1], positions [rows, 1] or None) -> (cache, logits [rows, vocab]), the cache, the
    next token's logits [rows, vocab], the next positions [rows] or None). rows = batch * beams: each input row
    repeated `beams` times (beam search); an encoder-decoder encodes the batch once and repeats the encoder
    output (as transformers' generate).

    An encoder-decoder's cross-attention keys/values are computed here, once, from the encoder output, and kept
    in the cache ('cross_key'/'cross_value'); `forward` passes no encoder output, so a step reads them and
    projects nothing of the encoder's length."""
    weights = params if isinstance(params, weights_lib.DecodingWeights) else weights_lib.prepare(module, params)
    weights_lib.check_layout(module, weights)
    fixed = {'params': weights.params, DECODING_WEIGHTS: weights.kernels}
    expand = lambda x: x if x is None or beams == 1 else jnp.repeat(x, beams, axis=0)  # noqa: E731  [b*W, ...]
    inputs = inputs.astype(jnp.int32)
    if weights_lib.is_encoder_decoder(module):
        mask = inputs != module.config.pad_id if input_mask is None else input_mask != 0
        encoded = expand(module.apply(fixed, inputs, encoder_mask=mask, method='encode'))
        mask = expand(mask)
        rows, length = mask.shape

        def run(cache, encoded, ids):
            outputs, variables = module.apply({**fixed, 'cache': cache}, encoded, ids, encoder_mask=mask,
                                              decode=True, method='decode', mutable=['cache'])
            return variables['cache'], outputs['logits'][:, -1]

        def forward(cache, ids, unused_positions):
            return run(cache, None, ids)

        cache = weights_lib.init_cache(module, rows, new, encoder_length=length)
        cache, logits = run(cache, encoded, jnp.full((rows, 1), decoder_start_id, jnp.int32))
        return forward, cache, logits, None

    inputs, input_mask = expand(inputs), expand(input_mask)
    rows, length = inputs.shape
    mask = jnp.ones_like(inputs, jnp.bool_) if input_mask is None else input_mask != 0
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)  # [rows, length]

    def forward(cache, ids, positions, input_mask=None):
        outputs, variables = module.apply({**fixed, 'cache': cache}, ids, input_mask=input_mask, positions=positions,
                                          decode=True, logits_to_keep=1, mutable=['cache'])
        return variables['cache'], outputs['logits'][:, -1]

    cache = weights_lib.init_cache(module, rows, length + new)
    cache, logits = forward(cache, inputs, positions, mask)
    return forward, cache, logits, positions[:, -1] + 1


def jit_generate(module: nn.Module, options: Options, decoder_start_id: int = 0):
    """`generate` jitted for `module` and `options`: (params or DecodingWeights, inputs, input_mask=None,
    rng=None) -> Generated."""
    @jax.jit
    def run(params, inputs, input_mask=None, rng=None):
        return generate(module, params, inputs, options, input_mask=input_mask, rng=rng,
                        decoder_start_id=decoder_start_id)
    return run

