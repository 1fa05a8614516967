"""Attention through the Pallas TPU flash-attention kernel that ships with jax
(`jax.experimental.pallas.ops.tpu.flash_attention`), the TPU path of `MultiHeadAttention` when
`TransformerConfig.attention_kernel = 'flash'`.

The kernel never materializes the [batch, heads, q, k] scores: it takes the mask as structure, a `causal` flag and
segment ids (a query attends to a key iff their ids are equal), not as a boolean array. `KernelMask` carries that
structure through the layers (`causal` is static pytree metadata, so it crosses nn.remat and nn.scan).

Semantics against the einsum reference path (`MultiHeadAttention` with attention_kernel='einsum'):
- Padding is segment 0. At real query positions (segment != 0) both paths give the same numbers (to the float
  rounding of the kernel's online softmax, which sums blockwise in another order). Padding queries differ: the
  einsum path lets them attend to every real key, the kernel to the padding keys only (they are segment 0 too);
  nothing reads them (losses and heads mask padding out).
- Sequence lengths are padded here to a multiple of 128 (the kernel's minimum key block; Mosaic's lane width),
  with kv segment id -1 on the added keys so that no query sees them, and the added query rows are dropped.
- Scores: (q.k + bias) * sm_scale in the kernel; to keep the reference's q.k * scale + bias, the bias is passed
  divided by the scale (only when both are present; no preset has both).
- Inside a mesh (`jax.set_mesh`, as `plmjax train` and `plmjax plan` run), the kernel runs under `shard_map`
  with batch and heads split as the logical axis rules split them ('batch', 'heads'; length and kv whole): XLA
  cannot partition a Mosaic custom call itself.
- On CPU the kernel only runs in Pallas's TPU interpret mode (tests: `with pltpu.force_tpu_interpret_mode():`).
"""
import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
from jax.sharding import PartitionSpec

KERNELS = ('einsum', 'flash')
MIN_BLOCK = pallas_flash.MIN_BLOCK_SIZE  # 128: key blocks must be multiples of it
_BLOCK_CHOICES = (512, 256, 128)  # the largest that divides the (padded) length is used


@flax.struct.dataclass
class KernelMask:
    """The mask of one attention as the kernel takes it: a query attends to a key iff their segment ids are equal
    (and, if causal, the key's position is <= the query's). None ids: one segment (nothing masked)."""
    q_segment_ids: jax.Array | None  # [batch, q] int, 0 = padding
    kv_segment_ids: jax.Array | None  # [batch, k] int, 0 = padding
    causal: bool = flax.struct.field(pytree_node=False, default=False)


def segment_ids_from_mask(input_mask: jax.Array | None) -> jax.Array | None:
    """Padding mask [batch, length] (nonzero = real token) -> segment ids [batch, length]: 1 real, 0 padding."""
    return None if input_mask is None else (input_mask != 0).astype(jnp.int32)


def block_size(length: int) -> int:
    """The kernel block for a (padded, multiple-of-128) length: the largest of 512, 256, 128 dividing it."""
    if length % MIN_BLOCK:
        raise ValueError(f'flash attention needs lengths padded to a multiple of {MIN_BLOCK}, got {length}.')
    return next(b for b in _BLOCK_CHOICES if length % b == 0)


def _pad_length(x, axis, length, value=0):
    pad = length - x.shape[axis]
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _round_up(n):
    return -(-n // MIN_BLOCK) * MIN_BLOCK


def _kernel(query, key, value, bias, q_segment_ids, kv_segment_ids, *, causal, sm_scale):
    """[batch, heads, len, kv] operands of lengths multiple of 128 -> [batch, heads, q, kv]."""
    q_len, k_len = query.shape[2], key.shape[2]
    bq, bk = block_size(q_len), block_size(k_len)
    # The dq pass's key blocks stay at 128: jax's kernel writes its row sums di [batch, heads, q] broadcast to
    # [batch, heads, q, block_k_major_dq] in float32 to HBM and reads them back (100 MB a T5-base encoder layer at 8
    # x 512 tokens a chip with 512-key blocks, 25 MB with 128). The grid has more steps; the blocks it reads in all
    # are the same.
    blocks = pallas_flash.BlockSizes(
        block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
        block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
        block_k_major_dq=MIN_BLOCK, block_k_dq=MIN_BLOCK, block_q_dq=bq)
    if bias is not None:  # [batch or 1, heads, q, k] -> one per row, as the kernel reads it
        bias = jnp.broadcast_to(bias, (query.shape[0],) + bias.shape[1:])
    segment_ids = None if q_segment_ids is None else pallas_flash.SegmentIds(q_segment_ids, kv_segment_ids)
    return pallas_flash.flash_attention(query, key, value, bias, segment_ids, causal=causal, sm_scale=sm_scale,
                                        block_sizes=blocks)


def _shard(kernel, query, bias, segment_ids):
    """`kernel` under shard_map over the current mesh (batch and heads as the logical rules split them), or as is
    outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel
    batch_axes, heads_axes = nn.logical_to_mesh_axes(('batch', 'heads'))
    heads = PartitionSpec(batch_axes, heads_axes, None, None)  # [batch, heads, len, kv]: length never split
    rows = PartitionSpec(batch_axes, None)  # segment ids [batch, len]
    bias_spec = None if bias is None else (
        PartitionSpec(batch_axes if bias.shape[0] > 1 else None, heads_axes, None, None))
    seg_spec = None if segment_ids is None else rows
    return jax.shard_map(kernel, mesh=mesh, in_specs=(heads, heads, heads, bias_spec, seg_spec, seg_spec),
                         out_specs=heads, check_vma=False)


def flash_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: KernelMask, *,
                    bias: jax.Array | None = None, scale: float = 1.0) -> jax.Array:
    """query [batch, q, heads, kv], key/value [batch, heads, k, kv] -> context [batch, q, heads, kv] in the
    query's dtype: softmax(query.key * scale + bias, masked by `mask`) . value.

    bias: [batch or 1, heads, q, k] added to the scaled scores (T5's relative bias), read in its dtype and added
    in float32 in the kernel; its gradient comes back in the same dtype.
    """
    batch, q_len, heads, _ = query.shape
    k_len = key.shape[2]
    q_pad, k_pad = _round_up(q_len), _round_up(k_len)
    q_ids, kv_ids = mask.q_segment_ids, mask.kv_segment_ids
    if q_ids is not None or kv_ids is not None or k_pad != k_len:
        q_ids = jnp.ones((batch, q_len), jnp.int32) if q_ids is None else q_ids.astype(jnp.int32)
        kv_ids = jnp.ones((batch, k_len), jnp.int32) if kv_ids is None else kv_ids.astype(jnp.int32)
        q_ids, kv_ids = _pad_length(q_ids, 1, q_pad), _pad_length(kv_ids, 1, k_pad, value=-1)  # no one sees added keys
    query = _pad_length(jnp.swapaxes(query, 1, 2), 2, q_pad)  # [batch, heads, q, kv]
    key, value = (_pad_length(x, 2, k_pad) for x in (key, value))  # [batch, heads, k, kv]
    if bias is not None:  # in its own dtype (the kernel adds it in float32): bfloat16 halves its traffic
        if scale != 1.0:  # the kernel scales after adding the bias
            bias = (bias.astype(jnp.promote_types(bias.dtype, jnp.float32)) / scale).astype(bias.dtype)
        bias = jnp.broadcast_to(bias, bias.shape[:1] + (heads,) + bias.shape[2:])
        bias = _pad_length(_pad_length(bias, 2, q_pad), 3, k_pad)  # [batch or 1, heads, q, k]
    kernel = functools.partial(_kernel, causal=mask.causal, sm_scale=scale)
    out = _shard(kernel, query, bias, q_ids)(query, key, value, bias, q_ids, kv_ids)  # [batch, heads, q, kv]
    return jnp.swapaxes(out[:, :, :q_len], 1, 2)
