"""Perturbed Masking impact matrices (Wu et al., ACL 2020) of an encoder, as batched, jitted forward passes.

For a sentence of n words with word pieces, x \\ S is the sentence with every piece of every word in S replaced by
[MASK]. Word i's representation with i masked, H(x \\ {i}), is compared with the one where j is masked too:

    dist: F[i, j] = mean over the pieces p of word i of || H(x \\ {i})_p - H(x \\ {i, j})_p ||_2
    prob: F[i, j] = mean over the pieces p of word i of  P(x_p | x \\ {i}) - P(x_p | x \\ {i, j})
          (the drop of the MLM probability of the piece's own token when j is masked too)

H is a layer's hidden states (default the encoder's output; `layer=k` the k-th of the stack, 0 = embeddings).
Index 0 is [CLS], the ROOT node: F[0, j] compares [CLS] in x and in x \\ {j}; F[i, 0] = F[i, i] = 0. A word's
row is the mean over its pieces and its column is any of them (every piece of j is masked together, so the
columns of one word are equal): the released code's `--subword avg`. Forward passes per sentence: x, the n
single maskings and the n(n - 1)/2 pairs ({i, j} gives rows i and j), packed across sentences into fixed
[batch, length] blocks (lengths rounded up to a multiple of 16, so few shapes compile), split over the mesh's
data axes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from plmjax import sharding
from plmjax.analysis import masking
from plmjax.models import intermediates

IMPACTS = ('dist', 'prob')


class PerturbedMasking:
    """Impact matrices of `module` (an encoder architecture with a stack named 'encoder' and, for 'prob', an MLM
    head) at `params`: `matrices(encoded_sentences)` yields one [n + 1, n + 1] float64 matrix per sentence."""

    def __init__(self, module: nn.Module, params, *, mask_id: int, pad_id: int = 0, impact: str = 'dist',
                 layer: Optional[int] = None, batch_size: int = 64, mesh: Optional[Mesh] = None,
                 rules=sharding.LOGICAL_AXIS_RULES, max_length: Optional[int] = None):
        if impact not in IMPACTS:
            raise ValueError(f'Unknown impact {impact!r}; choose one of {IMPACTS}.')
        self.mesh = mesh if mesh is not None else sharding.create_mesh(devices=jax.devices()[:1])
        data_size = self.mesh.shape['data'] * self.mesh.shape['fsdp']
        if batch_size % data_size:
            raise ValueError(f'batch_size={batch_size} must be a multiple of the mesh data x fsdp size {data_size}.')
        self.module, self.impact, self.layer, self.batch_size = module, impact, layer, batch_size
        self.mask_id, self.pad_id, self.max_length = mask_id, pad_id, max_length
        self.params = jax.device_put(params, sharding.replicated(self.mesh))
        batch = sharding.batch_sharding(self.mesh, rules)
        self._forward = sharding.in_mesh(jax.jit(
            self._outputs, in_shardings=(sharding.replicated(self.mesh), batch, batch, batch),
            out_shardings=batch), self.mesh, rules)

    def _outputs(self, params, ids, mask, targets):
        """[batch, length] -> dist: [batch, length, emb] hidden states; prob: [batch, length] P(own token)."""
        kwargs = {'input_mask': mask, 'deterministic': True}
        if self.impact == 'dist':
            kwargs['mlm_positions'] = jnp.zeros((ids.shape[0], 1), jnp.int32)  # skip the vocabulary projection
        if self.layer is None:
            outputs = self.module.apply({'params': params}, ids, **kwargs)
            hidden = outputs['hidden_states']
        else:
            outputs, found = intermediates.capture(self.module, {'params': params}, ids, what=('hidden_states',),
                                                   **kwargs)
            hidden = found['encoder']['hidden_states'][self.layer]
        if self.impact == 'dist':
            return hidden.astype(jnp.promote_types(hidden.dtype, jnp.float32))
        logits = outputs['logits']
        log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
        return jnp.exp(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0])

    def matrices(self, sentences: Sequence[masking.Encoded], progress: Optional[Callable[[int], None]] = None,
                 chunk_copies: int = 1024) -> Iterator[np.ndarray]:
        """One impact matrix per sentence, in order; `progress(k)` after each k finished sentences."""
        for chunk in masking.chunks(sentences, chunk_copies):
            yield from self._chunk_matrices(chunk)
            if progress is not None:
                progress(len(chunk))

    def _chunk_matrices(self, chunk: Sequence[masking.Encoded]) -> list[np.ndarray]:
        copies = masking.masked_copies(chunk, self.mask_id, self.pad_id, self.max_length)
        outputs = np.concatenate([self._run(*(a[b:b + self.batch_size] for a in copies.arrays))
                                  for b in range(0, len(copies.rows), self.batch_size)])
        return copies.matrices(outputs, self.impact)

    def _run(self, ids, mask, targets) -> np.ndarray:
        real = len(ids)
        pad = self.batch_size - real  # a fixed batch shape: one compilation per length
        if pad:
            ids, mask, targets = (np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) for a in (ids, mask,
                                                                                                      targets))
            mask[real:, 0] = 1  # padding rows attend to one position (an all-masked row is not a real input)
        return np.asarray(jax.device_get(self._forward(self.params, ids, mask, targets)))[:real]


