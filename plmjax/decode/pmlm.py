"""Arbitrary-order generation with an encoder trained as a u-PMLM (Liao et al. 2020, section 3.3), and
Mask-Predict's parallel refinement (Ghazvininejad et al. 2019, section 3.1), for `EncoderModel`.

A generation starts from a template: [MASK] at the positions to fill (`free`), and fixed tokens everywhere else
([CLS], a prompt, [SEP], or tokens required at given positions: a positional constraint, e.g. the first
character of each line of an acrostic). Fixed positions are never written, so constraints always hold.

One position a step (the u-PMLM paper's generation): each step re-encodes the whole sequence (the encoder is
bidirectional, so nothing can be cached), chooses a token for the next position, writes it and un-masks it. The
next position comes from the order:
  'left_to_right' / 'right_to_left'   free positions by index;
  'random'                            a uniformly random permutation of the free positions (from rng);
  'confident'                         the free position whose chosen token is the most probable (its
                                      log-probability under the model, before temperature / top-k / top-p);
  ranks                               an explicit [batch, length] int array: free positions in increasing rank.
`tokens_per_step=k` fills k positions a step (the next k of the order, or the k most confident).
The token is the argmax ('greedy') or drawn from the warped distribution ('sample': temperature, top-k, top-p as
`plmjax.decode.decoding.warp_logits`). The [MASK] id and `forbidden_ids` are never chosen. The score of a
generation is the sum of the log-probabilities of its tokens when they were written: for one token a step, the
log-probability of the text under that generation order, which is what the u-PMLM paper's perplexity of an
order measures (`plmjax.decode.perplexity`).

Mask-Predict (`iterations=T > 0`, order ignored): iteration 0 predicts every free position at once; iteration
t = 1..T-1 re-masks the n = floor(N (T - t) / T) least probable free tokens of the row (N: the row's free
positions) and predicts them again, updating their tokens and probabilities only; the other tokens keep theirs.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from plmjax.decode.decoding import warp_logits

ORDERS = ('left_to_right', 'right_to_left', 'random', 'confident')
STRATEGIES = ('greedy', 'sample')


@dataclasses.dataclass(frozen=True)
class Options:
    """How positions are ordered and tokens chosen; see the module docstring. `order` is ignored when ranks are
    given to `generate`, and with Mask-Predict (`iterations > 0`)."""
    mask_id: int
    order: str = 'left_to_right'
    strategy: str = 'greedy'
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    tokens_per_step: int = 1
    iterations: int = 0
    forbidden_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f'Unknown generation order {self.order!r}; choose one of {ORDERS} (or pass ranks).')
        if self.strategy not in STRATEGIES:
            raise ValueError(f'Unknown token choice {self.strategy!r} for u-PMLM generation; choose one of '
                             f'{STRATEGIES}.')
        if self.tokens_per_step < 1 or self.iterations < 0:
            raise ValueError(f'tokens_per_step must be >= 1 and iterations >= 0, got {self.tokens_per_step} and '
                             f'{self.iterations}.')
        if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f'temperature must be > 0, top_k >= 0 and top_p in (0, 1]; got {self.temperature}, '
                             f'{self.top_k}, {self.top_p}.')


class Filled(NamedTuple):
    tokens: jax.Array  # [batch, length] int32: the template with every free position filled
    steps: jax.Array  # [batch, length] int32: the step (Mask-Predict: the last iteration) that wrote it; -1 if fixed
    log_probs: jax.Array  # [batch, length] float32 (a float64 model: float64): its token's log-probability when written; 0 if fixed
    scores: jax.Array  # [batch] float32: the sum of log_probs


def _logits(module: nn.Module, params, ids, input_mask, positions=None) -> jax.Array:
    """ids [b, l] -> MLM logits [b, l, vocab] float32, or [b, p, vocab] at positions [b, p]."""
    out = module.apply({'params': params}, ids, input_mask=input_mask, mlm_positions=positions)
    return out['logits'].astype(_score_dtype(module))


def _score_dtype(module: nn.Module):
    """float32, or float64 for a float64 model (numerical checks)."""
    return jnp.float64 if module.config.dtype == 'float64' else jnp.float32


def _choices(logits, options: Options, key):
    """[..., vocab] logits -> (token ids [...] int32, their log-probabilities [...] under the model's logits)."""
    banned = jnp.zeros(logits.shape[-1], bool).at[jnp.array((options.mask_id, *options.forbidden_ids))].set(True)
    logits = jnp.where(banned, -jnp.inf, logits)
    flat = logits.reshape(-1, logits.shape[-1])  # [n, vocab]
    if options.strategy == 'greedy':
        token = jnp.argmax(flat, axis=-1)
    else:
        warped = warp_logits(flat, options.temperature, options.top_k, options.top_p)
        token = jax.random.categorical(key, warped, axis=-1)
    token = token.astype(jnp.int32)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(flat), token[:, None], axis=-1)[:, 0]
    return token.reshape(logits.shape[:-1]), log_prob.reshape(logits.shape[:-1])


def fill_order(free: jax.Array, options: Options, rng: Optional[jax.Array] = None,
               ranks: Optional[jax.Array] = None) -> jax.Array:
    """free [b, l] bool -> [b, l] int32 positions: the free ones in the order they are filled, then the fixed ones
    (a fixed order: 'left_to_right', 'right_to_left', 'random' or explicit ranks)."""
    length = free.shape[1]
    if ranks is None:
        if options.order == 'left_to_right':
            ranks = jnp.broadcast_to(jnp.arange(length), free.shape)
        elif options.order == 'right_to_left':
            ranks = jnp.broadcast_to(-jnp.arange(length), free.shape)
        elif options.order == 'random':
            if rng is None:
                raise ValueError("order 'random' needs rng (a jax.random key).")
            ranks = jax.random.uniform(jax.random.fold_in(rng, -1 & 0x7fffffff), free.shape)
        else:
            raise ValueError(f'order {options.order!r} is decided while generating, not beforehand.')
    ranks = ranks.astype(jnp.float32)
    return jnp.argsort(jnp.where(free, ranks, jnp.inf), axis=1, stable=True).astype(jnp.int32)


def generate(module: nn.Module, params, ids: jax.Array, free: jax.Array, options: Options, *,
             input_mask: Optional[jax.Array] = None, rng: Optional[jax.Array] = None,
             ranks: Optional[jax.Array] = None) -> Filled:
    """ids [b, l] int32 (the template: [MASK] where free), free [b, l] bool -> Filled. input_mask: 1 on real
    tokens (default ids != pad_id). rng: needed to sample and for the random order. Jit it with `jit_generate`."""
    if options.strategy == 'sample' and rng is None:
        raise ValueError("strategy 'sample' needs rng (a jax.random key).")
    free = free.astype(bool)
    ids = jnp.where(free, options.mask_id, ids).astype(jnp.int32)
    if input_mask is None:
        input_mask = ids != module.config.pad_id
    if options.iterations:
        return _mask_predict(module, params, ids, free, options, input_mask, rng)
    batch, length = ids.shape
    k = options.tokens_per_step
    num_steps = -(-length // k)
    rows = jnp.arange(batch)[:, None]
    confident = ranks is None and options.order == 'confident'
    # the state carries one more column, a sink that the last step's positions past the row's end point to
    sink = lambda x, value: jnp.pad(x, ((0, 0), (0, 1)), constant_values=value)  # [b, l] -> [b, l + 1]
    if not confident:
        order = jnp.pad(fill_order(free, options, rng, ranks), ((0, 0), (0, k)), constant_values=length)

    def body(step, state):
        ids, remaining, steps, log_probs = state  # [b, l + 1] each
        key = None if rng is None else jax.random.fold_in(rng, step)
        if confident:
            token, log_prob = _choices(_logits(module, params, ids[:, :length], input_mask), options, key)
            positions = jax.lax.top_k(jnp.where(remaining[:, :length], log_prob, -jnp.inf), k)[1]  # [b, k]
            token = jnp.take_along_axis(token, positions, axis=1)
            log_prob = jnp.take_along_axis(log_prob, positions, axis=1)
        else:
            positions = jax.lax.dynamic_slice_in_dim(order, step * k, k, axis=1)  # [b, k], length = the sink
            token, log_prob = _choices(_logits(module, params, ids[:, :length], input_mask,
                                               jnp.minimum(positions, length - 1)), options, key)
        write = remaining[rows, positions]  # [b, k]: False on fixed, written and sink positions
        ids = ids.at[rows, positions].set(jnp.where(write, token, ids[rows, positions]))
        steps = steps.at[rows, positions].set(jnp.where(write, step, steps[rows, positions]))
        log_probs = log_probs.at[rows, positions].set(jnp.where(write, log_prob, log_probs[rows, positions]))
        remaining = remaining.at[rows, positions].set(False)
        return ids, remaining, steps, log_probs

    def cond(carry):
        step, (_, remaining, _, _) = carry
        return (step < num_steps) & jnp.any(remaining)

    state = (sink(ids, 0), sink(free, False), jnp.full((batch, length + 1), -1, jnp.int32),
             jnp.zeros((batch, length + 1), _score_dtype(module)))
    _, state = jax.lax.while_loop(cond, lambda c: (c[0] + 1, body(*c)), (jnp.int32(0), state))
    ids, _, steps, log_probs = (x[:, :length] for x in state)
    return Filled(ids, steps, log_probs, log_probs.sum(axis=1))


def _mask_predict(module, params, ids, free, options: Options, input_mask, rng) -> Filled:
    iterations = options.iterations
    total = free.sum(axis=1, keepdims=True)  # [b, 1] N

    def body(t, state):
        ids, steps, log_probs = state
        key = None if rng is None else jax.random.fold_in(rng, t)
        # re-mask the floor(N (T - t) / T) least probable free tokens (t = 0: all of them, since none is written)
        count = (total * (iterations - t)) // iterations  # [b, 1]
        rank = jnp.argsort(jnp.argsort(jnp.where(free, log_probs, jnp.inf), axis=1, stable=True), axis=1)
        masked = free & ((rank < count) | (t == 0))  # [b, l]
        ids = jnp.where(masked, options.mask_id, ids)
        token, log_prob = _choices(_logits(module, params, ids, input_mask), options, key)  # [b, l] each
        return (jnp.where(masked, token, ids), jnp.where(masked, t, steps), jnp.where(masked, log_prob, log_probs))

    state = (ids, jnp.full(ids.shape, -1, jnp.int32), jnp.zeros(ids.shape, _score_dtype(module)))
    ids, steps, log_probs = jax.lax.fori_loop(0, iterations, body, state)
    return Filled(ids, steps, log_probs, log_probs.sum(axis=1))


def jit_generate(module: nn.Module, options: Options):
    """`generate` jitted for one module and options: run(params, ids, free, input_mask=None, rng=None,
    ranks=None)."""
    @jax.jit
    def run(params, ids, free, input_mask=None, rng=None, ranks=None):
        return generate(module, params, ids, free, options, input_mask=input_mask, rng=rng, ranks=ranks)
    return run


def template(prompts: Sequence[Sequence[int]], num_new: int, *, mask_id: int, pad_id: int,
             cls_id: Optional[int] = None, sep_id: Optional[int] = None,
             fixed: Optional[Sequence[dict[int, Sequence[int]]]] = None, length: Optional[int] = None):
    """Host-side templates for a batch: [CLS] prompt [MASK] * num_new [SEP], right-padded to `length` (default the
    longest row). fixed[row]: {offset in the generated span: token ids placed from there} (positional
    constraints). -> (ids [b, length] int32, free [b, length] bool, input_mask [b, length] int32)."""
    fixed = fixed or [{}] * len(prompts)
    head = [cls_id] if cls_id is not None else []
    tail = [sep_id] if sep_id is not None else []
    rows, frees = [], []
    for row, (prompt, constraints) in enumerate(zip(prompts, fixed)):
        span = [mask_id] * num_new
        is_free = [True] * num_new
        for offset, tokens in constraints.items():
            tokens = list(tokens)
            if not 0 <= offset <= num_new - len(tokens):
                raise ValueError(f'row {row}: a constraint of {len(tokens)} tokens at offset {offset} does not fit '
                                 f'in the {num_new} generated positions (offsets count from 0).')
            span[offset:offset + len(tokens)] = tokens
            is_free[offset:offset + len(tokens)] = [False] * len(tokens)
        prefix = head + list(prompt)
        rows.append(prefix + span + tail)
        frees.append([False] * len(prefix) + is_free + [False] * len(tail))
    length = length or max(len(r) for r in rows)
    if max(len(r) for r in rows) > length:
        raise ValueError(f'a template is {max(len(r) for r in rows)} tokens, longer than length {length}.')
    ids = np.full((len(rows), length), pad_id, np.int32)
    free = np.zeros((len(rows), length), bool)
    mask = np.zeros((len(rows), length), np.int32)
    for row, (r, f) in enumerate(zip(rows, frees)):
        ids[row, :len(r)], free[row, :len(f)], mask[row, :len(r)] = r, f, 1
    return ids, free, mask
