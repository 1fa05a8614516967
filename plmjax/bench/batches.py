"""Random synthetic batches with the features of docs/interfaces.md, and the same batch for `transformers`.

numpy only (the PyTorch worker processes import this without jax). Ids are drawn from [FIRST_ID, vocab) so
that no token is padding; MLM selects exactly ceil(0.15 * length) positions per row, as BERT's masking does.
"""
from __future__ import annotations

import math

import numpy as np

FIRST_ID = 5  # ids below are special (pad, eos, unk, mask, ...)
MASK_ID = 3
MLM_RATE = 0.15


def num_predictions(length: int, rate: float = MLM_RATE) -> int:
    return max(1, math.ceil(rate * length))


def _shift_right(targets: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def synthetic_batch(architecture: str, batch_size: int, lengths: dict[str, int], vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """A plmjax batch: 'encoder' = BERT MLM, 'decoder' = causal LM, 'encoder_decoder' = span corruption."""
    rng = np.random.default_rng(seed)
    ids = lambda length: rng.integers(FIRST_ID, vocab_size, (batch_size, length), dtype=np.int32)  # noqa: E731
    if architecture == 'encoder':
        length = lengths['inputs']
        targets = ids(length)
        weights = np.zeros((batch_size, length), np.float32)
        for row in weights:
            row[rng.choice(length, num_predictions(length), replace=False)] = 1.0
        inputs = np.where(weights > 0, MASK_ID, targets).astype(np.int32)
        return {'encoder_input_tokens': inputs, 'encoder_target_tokens': targets, 'encoder_loss_weights': weights}
    targets = ids(lengths['targets'])
    batch = {'decoder_input_tokens': _shift_right(targets), 'decoder_target_tokens': targets,
             'decoder_loss_weights': np.ones(targets.shape, np.float32)}
    if architecture == 'encoder_decoder':
        batch['encoder_input_tokens'] = ids(lengths['inputs'])
    return batch


def hf_inputs(architecture: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same batch as keyword arguments of a `transformers` model with `labels` (-100 = not predicted)."""
    if architecture == 'encoder':
        labels = np.where(batch['encoder_loss_weights'] > 0, batch['encoder_target_tokens'], -100)
        return {'input_ids': batch['encoder_input_tokens'], 'labels': labels}
    if architecture == 'decoder':  # GPT2LMHeadModel shifts the labels itself
        return {'input_ids': batch['decoder_target_tokens'], 'labels': batch['decoder_target_tokens']}
    return {'input_ids': batch['encoder_input_tokens'], 'labels': batch['decoder_target_tokens']}
