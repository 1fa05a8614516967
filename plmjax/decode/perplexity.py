"""Perplexity of generation orders: an encoder's pseudo-perplexity under a generation order, as the u-PMLM paper
defines it (Liao, Jiang, Liu 2020, "Probabilistically Masked Language Model Capable of Autoregressive Generation in
Arbitrary Word Order", section 4: perplexity of sequential and random orders), and a decoder's ordinary perplexity,
so that the three families' generative quality can be compared on the same tokens.

Encoder (`order_log_probs`, `pseudo_perplexity`). For one sequence of known length and an order sigma of the n
positions to predict, log P(x) = sum_t log p(x_{sigma_t} | x_{sigma_<t}): at step t the positions sigma_<t hold
their true tokens, the other predicted positions hold [MASK], and the model reads the MLM head's softmax at
sigma_t. This is the probability the model gives the text when it generates it one token a step in that order
(`plmjax.decode.pmlm.generate` with one token a step scores a generation the same way). PPL = exp(-(sum of log p
over all predicted tokens of the text) / (their number)): a token average over the whole text, not an average of
per-sequence perplexities. Orders: 'left_to_right' (the paper's sequential order) and 'random' (a uniformly random
permutation per sequence, drawn from a jax key, so seeded), both built by `plmjax.decode.pmlm.fill_order`.
Positions that are not predicted -- [CLS], [SEP], padding, document separators -- keep their tokens at every step
and are never scored; the paper scores the text tokens only, as here.

Decoder (`token_log_probs`, `perplexity`): log p(x_i | x_<i) of every predicted token, the inputs being the targets
shifted right with id 0 first, as in training (`plmjax.objectives.causal_lm`); PPL = exp(-sum / count) likewise.

Batching: all n steps of a sequence are independent given the order, so the encoder runs them as a batch of
[batch * steps_per_call, length] masked copies (`lax.map` over chunks of steps), with the vocabulary projection
only at the one position predicted at each step (`EncoderModel(mlm_positions=...)`); `jit_order_log_probs` jits
it once per input shape. Cost: one length-L forward pass per predicted token (L times an ordinary forward pass).

Where this follows and deviates from the paper. It follows the definition above (the brief of issue 13 states it,
and the released code, github.com/huawei-noah/Pretrained-Language-Model/PMLM, holds the u-PMLM masking -- a
ratio drawn uniformly per sequence -- and generation, but no perplexity script, so the evaluation details below
are this codebase's choices). `text_windows` chunks a text: the documents (WikiText-2 paragraphs) are tokenized,
joined by a separator (as the pre-training packing joins them: [SEP] for the encoder, EOS for the decoder) and cut
into windows of `body_length` tokens without overlap; the encoder reads each window as [CLS] window [SEP] (the
form its pre-training examples have), the decoder reads the window alone with no earlier context. The paper
evaluates on WikiText-103 with models fine-tuned there; the comparison in docs/generation.md uses WikiText-2 and
tiny models trained from scratch. Separators are context, never predicted, in both families, so both score
exactly the same tokens and the perplexities are per token of one SentencePiece vocabulary.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from plmjax.decode.pmlm import Options, fill_order
from plmjax.objectives.base import softmax_cross_entropy

ORDERS = ('left_to_right', 'random')


class Perplexity(NamedTuple):
    ppl: float  # exp(-log_prob / num_tokens)
    log_prob: float  # the sum of log p over every predicted token (natural log)
    num_tokens: int


def generation_order(predict: jax.Array, order: str, rng: Optional[jax.Array] = None) -> jax.Array:
    """predict [b, l] bool -> [b, l] int32 positions: the predicted ones in generation order ('left_to_right', or
    'random': a uniformly random permutation per row from rng), then the others."""
    if order not in ORDERS:
        raise ValueError(f'Unknown generation order {order!r} for perplexity; choose one of {ORDERS}.')
    return fill_order(jnp.asarray(predict, bool), Options(mask_id=0, order=order), rng)


def order_log_probs(module: nn.Module, params, ids: jax.Array, predict: jax.Array, order: jax.Array, *,
                    mask_id: int, input_mask: Optional[jax.Array] = None, steps_per_call: int = 0) -> jax.Array:
    """log p(x_{sigma_t} | x_{sigma_<t}) of an `EncoderModel` at every predicted position.

    ids [b, l]: the true tokens (with [CLS] / [SEP] / padding); predict [b, l] bool: the positions to score;
    order [b, l] int: a permutation of 0..l-1 per row, the predicted positions first in generation order
    (`generation_order`). input_mask: 1 on real tokens (default ids != pad_id). steps_per_call: how many steps
    run as one batch of masked copies (default all l). -> [b, l] log-probabilities (float32; float64 for a
    float64 model), 0 where not predicted."""
    batch, length = ids.shape
    predict = jnp.asarray(predict, bool)
    order = jnp.asarray(order, jnp.int32)
    if input_mask is None:
        input_mask = ids != module.config.pad_id
    chunk = steps_per_call or length
    num_chunks = -(-length // chunk)
    rows = jnp.arange(batch)[:, None]
    # [b, l]: the step at which each position is predicted (the inverse permutation of order)
    step_of = jnp.zeros((batch, length), jnp.int32).at[rows, order].set(jnp.arange(length, dtype=jnp.int32))
    order = jnp.pad(order, ((0, 0), (0, num_chunks * chunk - length)), constant_values=0)

    def steps(start):
        t = start + jnp.arange(chunk)  # [c] the steps of this chunk
        position = order[:, t]  # [b, c] sigma_t
        scored = predict[rows, position] & (t < length)  # [b, c]
        hidden = predict[:, None, :] & (step_of[:, None, :] >= t[None, :, None])  # [b, c, l] still masked
        inputs = jnp.where(hidden, mask_id, ids[:, None, :]).reshape(batch * chunk, length)  # [b * c, l]
        mask = jnp.broadcast_to(input_mask[:, None, :], (batch, chunk, length)).reshape(batch * chunk, length)
        logits = module.apply({'params': params}, inputs, input_mask=mask,
                              mlm_positions=position.reshape(batch * chunk, 1))['logits']  # [b * c, 1, vocab]
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)).reshape(batch, chunk, -1)
        log_prob = -softmax_cross_entropy(logits, ids[rows, position])  # [b, c]
        return position, jnp.where(scored, log_prob, 0.0)

    positions, log_probs = jax.lax.map(steps, jnp.arange(num_chunks) * chunk)  # [n, b, c] each
    positions = positions.transpose(1, 0, 2).reshape(batch, -1)[:, :length]  # [b, l] = order
    log_probs = log_probs.transpose(1, 0, 2).reshape(batch, -1)[:, :length]
    return jnp.zeros(log_probs.shape, log_probs.dtype).at[rows, positions].set(log_probs)


@functools.lru_cache(maxsize=8)
def jit_order_log_probs(module: nn.Module, mask_id: int, steps_per_call: int = 0):
    """`order_log_probs` jitted for one module (cached, so repeated calls compile once per input shape):
    run(params, ids, predict, order, input_mask=None)."""
    @jax.jit
    def run(params, ids, predict, order, input_mask=None):
        return order_log_probs(module, params, ids, predict, order, mask_id=mask_id, input_mask=input_mask,
                               steps_per_call=steps_per_call)
    return run


def token_log_probs(module: nn.Module, params, targets: jax.Array, predict: jax.Array) -> jax.Array:
    """log p(x_i | x_<i) of a `DecoderModel`: targets [b, l] int, predict [b, l] bool -> [b, l] (0 where not
    predicted). The inputs are the targets shifted right with id 0 first; padding (target id 0) is masked, as in
    `plmjax.objectives.causal_lm`."""
    inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))  # [b, l]
    logits = module.apply({'params': params}, inputs, input_mask=targets > 0)['logits']
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jnp.where(predict, -softmax_cross_entropy(logits, targets.astype(jnp.int32)), 0.0)


def summarize(log_probs: Sequence, predict: Sequence) -> Perplexity:
    """Per-batch log-probabilities and predict masks -> the perplexity of all their predicted tokens together."""
    total = float(sum(np.sum(np.asarray(lp, np.float64)) for lp in log_probs))
    count = int(sum(np.sum(np.asarray(p, bool)) for p in predict))
    if not count:
        raise ValueError('No token is predicted: the perplexity of an empty text is undefined.')
    return Perplexity(float(np.exp(-total / count)), total, count)


def _batches(arrays: Sequence[np.ndarray], batch_size: int):
    """Rows of equally long arrays in batches of batch_size; the last is padded with rows of zeros (never
    predicted, since predict is among the arrays)."""
    num = arrays[0].shape[0]
    for start in range(0, num, batch_size):
        part = [a[start:start + batch_size] for a in arrays]
        short = batch_size - part[0].shape[0]
        yield [np.pad(a, ((0, short), (0, 0))) for a in part]


def pseudo_perplexity(module: nn.Module, params, ids: np.ndarray, predict: np.ndarray, order: str, *,
                      mask_id: int, rng: Optional[jax.Array] = None, batch_size: int = 16,
                      steps_per_call: int = 0, progress=None) -> Perplexity:
    """The u-PMLM paper's perplexity of an order over every row of ids [n, l] (predict [n, l] bool: the tokens to
    score): 'left_to_right' (sequential) or 'random' (a permutation per row from rng, folded with the batch index,
    so seeded). progress: called with the number of rows done after each batch."""
    if order == 'random' and rng is None:
        raise ValueError("order 'random' needs rng (a jax.random key).")
    run = jit_order_log_probs(module, mask_id, steps_per_call)
    log_probs, masks, done = [], [], 0
    for index, (batch_ids, batch_predict) in enumerate(_batches([ids, predict], batch_size)):
        key = None if rng is None else jax.random.fold_in(rng, index)
        batch_order = generation_order(batch_predict, order, key)
        log_probs.append(np.asarray(run(params, batch_ids, batch_predict, batch_order,
                                        (batch_ids != module.config.pad_id) | batch_predict)))
        masks.append(batch_predict)
        done = min(done + batch_size, ids.shape[0])
        if progress:
            progress(done)
    return summarize(log_probs, masks)


def perplexity(module: nn.Module, params, targets: np.ndarray, predict: np.ndarray, *, batch_size: int = 16,
               progress=None) -> Perplexity:
    """A decoder's ordinary perplexity of every predicted token of targets [n, l] (predict [n, l] bool)."""
    run = _jit_token_log_probs(module)
    log_probs, masks, done = [], [], 0
    for batch_targets, batch_predict in _batches([targets, predict], batch_size):
        log_probs.append(np.asarray(run(params, batch_targets, batch_predict)))
        masks.append(batch_predict)
        done = min(done + batch_size, targets.shape[0])
        if progress:
            progress(done)
    return summarize(log_probs, masks)


@functools.lru_cache(maxsize=8)
def _jit_token_log_probs(module: nn.Module):
    return jax.jit(lambda params, targets, predict: token_log_probs(module, params, targets, predict))


class Windows(NamedTuple):
    encoder_ids: np.ndarray  # [n, body_length + 2] int32: [CLS] window [SEP], padded with pad_id
    decoder_ids: np.ndarray  # [n, body_length] int32: the window, padded with 0
    encoder_predict: np.ndarray  # [n, body_length + 2] bool: the text tokens (not specials, separators, padding)
    decoder_predict: np.ndarray  # [n, body_length] bool: the same tokens


def text_windows(documents: Sequence[Sequence[int]], body_length: int, *, cls_id: int, sep_id: int, pad_id: int,
                 eos_id: int) -> Windows:
    """Tokenized documents -> the same text as encoder rows and decoder rows (see the module docstring):
    documents joined by a separator ([SEP] for the encoder, EOS for the decoder; context, never predicted) and
    cut into windows of body_length tokens; the last window is shorter and padded."""
    separator = -1
    stream = [token for doc in documents for token in (*doc, separator)]
    num = -(-len(stream) // body_length)
    body = np.full((num, body_length), -2, np.int64)  # -2: padding
    body.reshape(-1)[:len(stream)] = stream
    predict = body >= 0
    decoder = np.where(body == separator, eos_id, np.where(body == -2, 0, body)).astype(np.int32)
    inner = np.where(body == separator, sep_id, np.where(body == -2, pad_id, body))
    is_pad = body == -2
    ends = np.where(is_pad.any(axis=1), is_pad.argmax(axis=1), body_length)  # where each row's text ends
    encoder = np.full((num, body_length + 2), pad_id, np.int64)
    encoder[:, 0] = cls_id
    encoder[:, 1:-1] = inner
    encoder[np.arange(num), ends + 1] = sep_id
    encoder_predict = np.zeros(encoder.shape, bool)
    encoder_predict[:, 1:-1] = predict
    return Windows(encoder.astype(np.int32), decoder, encoder_predict, predict)
