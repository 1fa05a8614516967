"""Output heads on top of a stack's hidden states: MLM (BERT family), LM (GPT, T5, BART), BERT's pooler and
PanGu-α's top query layer. Heads for classification, span extraction, tagging and replaced-token detection
belong here too, each a small module taking the hidden states (and the config)."""
import jax
import jax.numpy as jnp
import flax.linen as nn

from plmjax.layers import attention, embedding, matmul, mlp
from plmjax.layers import dense as dense_layer
from plmjax.layers import dropout as dropout_lib
from plmjax.models import transformer
from plmjax.models.config import TransformerConfig


def _vocab_logits(logits: jax.Array) -> jax.Array:
    """Logits leave the model in float32 (or wider), whatever the compute dtype."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


def _output_projection(config: TransformerConfig, hidden: jax.Array, token_embedder: nn.Module,
                       decode: bool = False) -> jax.Array:
    if config.tie_embeddings:
        return embedding.attend(token_embedder, hidden, config.matmul_dtype, decode=decode)
    return transformer.dense(config, config.vocab_size, ('embed', 'vocab'), use_bias=False, name='output')(hidden)


class MlmHead(nn.Module):
    """BERT's masked-LM head: [dense -> act -> norm] -> vocab projection (tied or not) + bias."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, token_embedder: nn.Module) -> jax.Array:
        cfg = self.config
        x = hidden
        if cfg.mlm_head_transform:  # to the token embedding width (ELECTRA's generator: emb_dim -> embedding_size)
            x = transformer.dense(cfg, cfg.token_embedding_size, ('embed', 'mlp'), use_bias=True, name='transform')(x)
            # Constrained like every embed-wide activation. Without it, XLA (jax 0.10.2) miscompiles the
            # gradients of dense(embed, mlp) -> tied vocab projection when batch is split over ('data', 'fsdp')
            # and vocab over 'tensor' (tests/train/test_sharded_equals_unsharded.py).
            x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
            x = mlp.get_activation(cfg.activation)(x)
            x = transformer.make_norm(cfg, 'transform_norm')(x)
        logits = _output_projection(cfg, x, token_embedder)
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                          (cfg.vocab_size,), cfg.params_dtype)
        return _vocab_logits(logits + bias.astype(logits.dtype))


class LmHead(nn.Module):
    """Next-token logits: tied (optionally from hidden * emb_dim**-0.5, T5 v1.0) or untied, optional bias."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, token_embedder: nn.Module, decode: bool = False) -> jax.Array:
        """decode: a cached decoding call (the tied table multiplies as decoding's few rows want it)."""
        cfg = self.config
        if cfg.tie_embeddings and cfg.scale_tied_logits:
            hidden = hidden * jnp.asarray(cfg.emb_dim ** -0.5, hidden.dtype)
        logits = _output_projection(cfg, hidden, token_embedder, decode=decode)
        if cfg.lm_head_bias:
            bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                              (cfg.vocab_size,), cfg.params_dtype)
            logits = logits + bias.astype(logits.dtype)
        return _vocab_logits(logits)


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(hidden of the first token)) -> [batch, emb]."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        first = hidden[:, 0]  # [batch, emb]
        dense = transformer.dense(cfg, cfg.emb_dim, ('embed', 'mlp'), use_bias=True, name='dense')
        return jnp.tanh(dense(first))


class QueryLayer(nn.Module):
    """PanGu-α's top query layer: a transformer layer whose attention queries are learned embeddings of the
    positions (no norm on them) while keys and values come from the (final-normed) hidden states."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, context: attention.AttentionContext, deterministic: bool = True,
                 decode: bool = False) -> jax.Array:
        cfg = self.config
        query_embedder = embedding.table_embedder(
            cfg.max_length, cfg.emb_dim, embedding_init=transformer.embedding_init(cfg), dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype, name='query_embedder')
        query = jnp.broadcast_to(query_embedder(context.positions), hidden.shape)  # [batch, length, emb]
        return transformer.TransformerLayer(cfg, name='layer')(
            hidden, mask=context.mask, cache_index=context.cache_index, query=query, deterministic=deterministic,
            decode=decode, kernel_mask=context.kernel_mask)


# --- Pre-training heads: NSP/SOP (BERT, ALBERT), span boundary (SpanBERT), replaced-token detection (ELECTRA) ---

SPAN_POSITIONS = 32  # rows of the SBO position table; plmjax.data.span_masking clips positions to 31


class SentencePairHead(nn.Module):
    """NSP / SOP logits [batch, 2] from the pooled output [batch, emb] (BERT's `cls.seq_relationship`)."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        cfg = self.config
        logits = transformer.dense(cfg, 2, ('embed', None), use_bias=True, name='dense')(pooled)
        return logits.astype(jnp.float32)


class SpanBoundaryHead(nn.Module):
    """SpanBERT's SBO: y_i = FFN([x_{s-1}; x_{e+1}; p_{i-s}]), a 2-layer GeLU + LayerNorm network, then the
    tied token embedding (+ bias) -> logits [batch, length, vocab] float32."""
    config: TransformerConfig
    num_positions: int = SPAN_POSITIONS

    @nn.compact
    def __call__(self, hidden: jax.Array, span_left: jax.Array, span_right: jax.Array, span_positions: jax.Array,
                 token_embedding: jax.Array) -> jax.Array:
        cfg = self.config
        left = jnp.take_along_axis(hidden, span_left[..., None], axis=1)  # [batch, length, emb]
        right = jnp.take_along_axis(hidden, span_right[..., None], axis=1)
        positions = embedding.table_embedder(
            self.num_positions, cfg.emb_dim, embedding_init=transformer.embedding_init(cfg), dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype, name='position_embedder')(span_positions)
        x = jnp.concatenate([left, right, positions.astype(hidden.dtype)], axis=-1)  # [batch, length, 3 * emb]
        for i, width in enumerate((cfg.emb_dim, cfg.token_embedding_size)):
            axes = (None, 'embed') if i == 0 else ('embed', 'mlp')
            x = transformer.dense(cfg, width, axes, use_bias=True, name=f'dense_{i}')(x)
            x = transformer.make_norm(cfg, f'norm_{i}')(mlp.get_activation('gelu')(x))
        logits = matmul.einsum('ble,ve->blv', x, token_embedding.astype(x.dtype), matmul_dtype=cfg.matmul_dtype)
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                          (cfg.vocab_size,), cfg.params_dtype)
        logits = (logits + bias.astype(logits.dtype)).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class RtdHead(nn.Module):
    """ELECTRA's discriminator head: dense -> activation -> dense(1) -> replaced-token logits [batch, length]."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        dense = lambda features, axes, name: transformer.dense(cfg, features, axes, use_bias=True, name=name)  # noqa: E731
        x = mlp.get_activation(cfg.activation)(dense(cfg.emb_dim, ('embed', 'mlp'), 'dense')(hidden))
        logits = dense(1, ('mlp', None), 'output')(x)
        return logits[..., 0].astype(jnp.float32)


# --- Fine-tuning heads: BERT's BertFor{SequenceClassification,MultipleChoice,TokenClassification,QuestionAnswering} ---


def _task_dense(config: TransformerConfig, features: int, name: str) -> dense_layer.Projection:
    """A dense layer from the hidden width to a few task outputs (labels, start/end): ('embed', None)."""
    return transformer.dense(config, features, ('embed', None), use_bias=True, name=name)


class ClassificationHead(nn.Module):
    """dropout -> dense: [..., emb] -> [..., num_labels] float32. On the pooled output it is BERT's sequence
    classifier (num_labels=1: regression, or one score per choice); on every token's hidden state BERT's tagger."""
    config: TransformerConfig
    num_labels: int

    @nn.compact
    def __call__(self, hidden: jax.Array, deterministic: bool = True) -> jax.Array:
        x = dropout_lib.Dropout(self.config.dropout_rate)(hidden, deterministic=deterministic)
        return _task_dense(self.config, self.num_labels, 'dense')(x).astype(jnp.float32)


class SpanHead(nn.Module):
    """BERT's extractive question answering head: dense(2) on every token -> (start, end) logits [batch, length]."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = _task_dense(self.config, 2, 'dense')(hidden).astype(jnp.float32)  # [batch, length, 2]
        return logits[..., 0], logits[..., 1]
