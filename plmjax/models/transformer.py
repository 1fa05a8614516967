"""The transformer body shared by all three families: input embeddings, one layer, one stack of layers.

Encoder and decoder stacks differ only in their self-attention mask (bidirectional vs causal, built by
`layers.attention.SelfAttentionContext`) and in cross-attention. A layer is post-LN (BERT, BART):
    x = norm(x + dropout(sublayer(x)))
or pre-LN (GPT-2, T5, PanGu-α):
    x = x + dropout(sublayer(norm(x)))
for its sublayers self-attention, cross-attention (decoders of encoder-decoders) and MLP.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from plmjax.layers import attention, embedding, mlp, moe, norms, position
from plmjax.layers import dense as dense_layer
from plmjax.layers import dropout as dropout_lib
from plmjax.models import layout, pipeline
from plmjax.models.config import PRESETS, TransformerConfig

# jax.checkpoint policies of TransformerConfig.remat_policy ('full': None, jax.checkpoint's default, saves nothing).
_REMAT_POLICIES = {'full': None, 'dots_saveable': jax.checkpoint_policies.dots_saveable,
                   'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
# Collections whose variables a scanned stack holds per layer, stacked on axis 0 (the decoding cache, decoding's
# weights layout, sown intermediates, params).
SCANNED_COLLECTIONS = ('params', 'cache', 'decoding_weights', 'intermediates', moe.AUX_COLLECTION)


def check_length(length: int, config: TransformerConfig, what: str = 'input') -> None:
    """Raise a ValueError that says how to fix a sequence longer than the model accepts."""
    if length > config.max_length:
        field = f'{config.name}.max_length' if config.name in PRESETS else 'TransformerConfig.max_length'
        raise ValueError(
            f'The {what} sequence has length {length}, longer than max_length={config.max_length} of the model '
            f'config {config.name!r}. Shorten the inputs (the task\'s feature lengths) or raise max_length in the '
            f'model config (gin: `{field} = {length}`); a learned position table grows with '
            f'max_length, so a pre-trained checkpoint with a shorter table no longer fits.')


def kernel_init(config: TransformerConfig):
    """Dense kernels: N(0, init_std), or T5's fan-in scaling N(0, 1/fan_in) when init_std is None."""
    if config.init_std is None:
        return nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    return nn.initializers.normal(config.init_std)


def dense(config: TransformerConfig, features: int, axes: tuple[str | None, str | None], *, use_bias: bool,
          name: str) -> dense_layer.Projection:
    """A dense layer in the config's dtypes and matmul precision, with its kernel init and logical axes."""
    return mlp.logical_dense(features, axes, use_bias=use_bias, dtype=config.compute_dtype,
                             param_dtype=config.params_dtype, matmul_dtype=config.matmul_dtype,
                             kernel_init=kernel_init(config), name=name)


def query_kernel_init(config: TransformerConfig):
    """Without score scaling (T5), the query kernel's init carries the 1/sqrt(head_dim) instead."""
    init = kernel_init(config)
    if config.scale_attention:
        return init
    return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) * config.head_dim ** -0.5


def embedding_init(config: TransformerConfig):
    return nn.initializers.normal(1.0 if config.init_std is None else config.init_std)


def make_token_embedder(config: TransformerConfig, name: str = 'token_embedder') -> nn.Embed:
    return embedding.token_embedder(config.vocab_size, config.token_embedding_size,
                                    embedding_init=embedding_init(config), dtype=config.compute_dtype,
                                    param_dtype=config.params_dtype, name=name)


def make_norm(config: TransformerConfig, name: str) -> nn.Module:
    return norms.make_norm(config.norm, epsilon=config.norm_eps, dtype=config.compute_dtype,
                           param_dtype=config.params_dtype, name=name)


class Embedder(nn.Module):
    """Token (+ position, + token type) embeddings, embedding norm, dropout, factorized-embedding projection.
    Sows its output as 'hidden_states' into the 'intermediates' collection."""
    config: TransformerConfig
    token_embedder: nn.Module

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: jax.Array, token_type_ids: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        cfg = self.config
        table = lambda rows, name: embedding.table_embedder(  # noqa: E731
            rows, cfg.token_embedding_size, embedding_init=embedding_init(cfg), dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype, name=name)
        x = self.token_embedder(input_ids)  # [batch, length, token_embedding_size]
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.emb_dim ** 0.5, x.dtype)
        if cfg.position == 'learned':
            x = x + table(cfg.max_length + cfg.position_offset, 'position_embedder')(positions + cfg.position_offset)
        elif cfg.position == 'sinusoidal':
            x = x + position.sinusoidal_embedding(positions, cfg.token_embedding_size,
                                                  dtype=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)
        if cfg.type_vocab_size:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + table(cfg.type_vocab_size, 'token_type_embedder')(token_type_ids)
        if cfg.embedding_norm:
            x = make_norm(cfg, 'embedding_norm')(x)
        x = dropout_lib.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.token_embedding_size != cfg.emb_dim:  # ELECTRA's embeddings_project
            x = dense(cfg, cfg.emb_dim, (None, 'embed'), use_bias=cfg.use_bias, name='embedding_projection')(x)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        self.sow('intermediates', 'hidden_states', x)  # hidden state 0 (plmjax.models.intermediates)
        return x


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention, MLP; pre- or post-LN; residual dropout. Sows its output as
    'hidden_states' into the 'intermediates' collection (plmjax.models.intermediates). moe: the MLP is a
    mixture of experts (plmjax.layers.moe; its router losses sown into 'aux_loss')."""
    config: TransformerConfig
    cross_attention: bool = False
    moe: bool = False

    @nn.compact
    def __call__(self, x, *, mask, encoded=None, cross_mask=None, bias=None, relative_kv=None, rotary_positions=None,
                 cache_index=None, query=None, deterministic=True, decode=False, kernel_mask=None,
                 cross_kernel_mask=None):
        """x: [batch, length, emb] -> [batch, length, emb]. query: [batch, length, emb] replaces the self-attention's
        query input (PanGu-α's query layer: queries from position embeddings, keys and values from x).
        encoded: [batch, in_length, emb] for cross-attention; with decode=True its keys/values are computed and
        cached when it is given (the prefill) and read from the cache when it is None (the steps after).
        kernel_mask, cross_kernel_mask: `mask`, `cross_mask` as the flash kernel takes them (layers.flash)."""
        cfg = self.config
        attend = lambda name: attention.MultiHeadAttention(  # noqa: E731
            num_heads=cfg.num_heads, head_dim=cfg.head_dim, use_bias=cfg.use_bias, scale_scores=cfg.scale_attention,
            dropout_rate=cfg.attention_dropout_rate, rotary_base=cfg.rotary_base, dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype, matmul_dtype=cfg.matmul_dtype, kernel_init=kernel_init(cfg),
            query_kernel_init=query_kernel_init(cfg), kernel=cfg.attention_kernel, name=name)
        dropout = dropout_lib.Dropout(cfg.dropout_rate)

        def residual(x, sublayer, norm_name):
            if cfg.pre_norm:
                return x + dropout(sublayer(make_norm(cfg, norm_name)(x)), deterministic=deterministic)
            return make_norm(cfg, norm_name)(x + dropout(sublayer(x), deterministic=deterministic))

        def self_attention(h):
            return attend('self_attention')(
                h if query is None else query.astype(h.dtype), h, mask=mask, bias=bias, relative_kv=relative_kv,
                rotary_positions=rotary_positions, cache_index=cache_index, decode=decode, deterministic=deterministic,
                kernel_mask=kernel_mask)

        x = residual(x, self_attention, 'self_attention_norm')
        if self.cross_attention:
            if encoded is None and not decode:
                raise ValueError('A decoder layer with cross-attention needs `encoded` (only a cached decoding step, '
                                 'decode=True, reads the keys/values stored in the cache at the prefill).')

            def cross_attention(h):  # decoding: keys/values of `encoded` cached once, read when encoded is None
                return attend('cross_attention')(h, encoded, mask=cross_mask, decode=decode, fixed_kv=True,
                                                 deterministic=deterministic, kernel_mask=cross_kernel_mask)

            x = residual(x, cross_attention, 'cross_attention_norm')
        if self.moe:
            feed_forward = moe.MoeMlp(
                num_experts=cfg.num_experts, mlp_dim=cfg.mlp_dim, num_experts_per_token=cfg.num_experts_per_token,
                capacity_factor=cfg.expert_capacity_factor, activation=cfg.activation, gated=cfg.gated_mlp,
                use_bias=cfg.use_bias, dropout_rate=cfg.activation_dropout_rate, dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype, matmul_dtype=cfg.matmul_dtype, kernel_init=kernel_init(cfg),
                router_init=kernel_init(cfg), name='mlp')
        else:
            feed_forward = mlp.Mlp(mlp_dim=cfg.mlp_dim, activation=cfg.activation, gated=cfg.gated_mlp,
                                   use_bias=cfg.use_bias, dropout_rate=cfg.activation_dropout_rate,
                                   dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, matmul_dtype=cfg.matmul_dtype,
                                   kernel_init=kernel_init(cfg), name='mlp')
        x = residual(x, lambda h: feed_forward(h, deterministic=deterministic), 'mlp_norm')
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        self.sow('intermediates', 'hidden_states', x)
        return x


class _LayerBody(TransformerLayer):
    """A TransformerLayer in the form lifted transforms take: inputs positional (nn.scan's in_axes, nn.remat's
    arguments), `deterministic` and `decode` as module fields, hence static (flax 0.12.8's nn.remat has
    static_argnums but no static_argnames), and (carry, output) = (x, None) out, a scan body's signature. Its
    parameters are TransformerLayer's."""
    deterministic: bool = True
    decode: bool = False

    def __call__(self, x, mask, encoded, cross_mask, bias, relative_kv, rotary_positions, cache_index,
                 kernel_mask=None, cross_kernel_mask=None):
        return super().__call__(x, mask=mask, encoded=encoded, cross_mask=cross_mask, bias=bias,
                                relative_kv=relative_kv, rotary_positions=rotary_positions, cache_index=cache_index,
                                deterministic=self.deterministic, decode=self.decode, kernel_mask=kernel_mask,
                                cross_kernel_mask=cross_kernel_mask), None


def _layer_body(cfg: TransformerConfig):
    """_LayerBody, rematerialized by cfg.remat_policy (inside nn.scan, prevent_cse is not needed: flax's advice)."""
    if cfg.remat_policy == 'none':
        return _LayerBody
    return nn.remat(_LayerBody, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


class _LayerBlock(nn.Module):
    """config.moe_layer_interval consecutive layers (`layers_0 .. layers_{n-1}`), the last with a mixture-of-experts
    MLP: the uniform body of a scanned stack whose every n-th layer is MoE. Same signature as _LayerBody."""
    config: TransformerConfig
    cross_attention: bool = False
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x, *inputs):
        for j in range(self.config.moe_layer_interval):
            x, _ = _layer_body(self.config)(self.config, cross_attention=self.cross_attention,
                                            moe=self.config.is_moe_layer(j), deterministic=self.deterministic,
                                            decode=self.decode, name=f'layers_{j}')(x, *inputs)
        return x, None


class TransformerStack(nn.Module):
    """Embedder -> num_layers TransformerLayers -> optional final norm. Relative positions (T5 bias, NEZHA) are
    computed once per stack and shared by all its layers, as in T5 (where layer 0 owns the bias table).

    Layers are unrolled (`layers_0 .. layers_{n-1}`) or, with config.scan_layers, one nn.scan over the layer
    (`layers`, every variable stacked on a leading axis named 'layers'; plmjax.models.layout converts). Both give
    the same numbers, except that dropout draws other masks: the scan splits the 'dropout' rng per layer. With
    mixture-of-experts layers every config.moe_layer_interval-th layer (interval > 1), the scan runs over blocks of
    that many layers (`layers/layers_{j}`, _LayerBlock); plmjax.models.layout does not convert that layout."""
    config: TransformerConfig
    num_layers: int
    token_embedder: nn.Module
    causal: bool = False
    cross_attention: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array, context: attention.AttentionContext, *,
                 token_type_ids: jax.Array | None = None, encoded: jax.Array | None = None,
                 cross_mask: jax.Array | None = None, deterministic: bool = True, decode: bool = False,
                 cross_kernel_mask=None) -> jax.Array:
        cfg = self.config
        x = Embedder(cfg, self.token_embedder, name='embedder')(input_ids, context.positions, token_type_ids,
                                                                 deterministic)
        bias = relative_kv = rotary_positions = None
        # Packed rows: relative positions from the row's indices; inside a segment (the only keys a query sees)
        # index differences equal the per-segment positions' differences, and the bias stays [1, heads, q, k].
        relative_query = context.positions if context.segment_ids is None else context.key_positions
        if cfg.position == 't5_relative':
            bias = position.T5RelativePositionBias(
                num_heads=cfg.num_heads, num_buckets=cfg.relative_num_buckets, max_distance=cfg.relative_max_distance,
                bidirectional=not self.causal, embedding_init=embedding_init(cfg), param_dtype=cfg.params_dtype,
                dtype=cfg.compute_dtype, name='relative_attention_bias')(relative_query, context.key_positions)
        elif cfg.position == 'nezha_relative':
            relative_kv = position.nezha_relative_positions(
                relative_query, context.key_positions, max_relative_position=cfg.nezha_max_relative_position,
                depth=cfg.head_dim, dtype=jnp.promote_types(cfg.compute_dtype, jnp.float32))
        elif cfg.position == 'rotary':
            rotary_positions = context.positions

        if cfg.shared_layers and decode:  # one module's cache cannot hold the keys of every layer
            raise ValueError('Cached decoding does not support shared_layers=True (ALBERT-style layer sharing).')
        body = _layer_body(cfg)
        inputs = (context.mask, encoded, cross_mask, bias, relative_kv, rotary_positions, context.cache_index,
                  context.kernel_mask, cross_kernel_mask)
        if cfg.pipeline_stages > 1:  # GPipe stages over the 'stage' mesh axis (plmjax.models.pipeline)
            if decode or self.is_mutable_collection('intermediates'):
                raise ValueError('A pipelined stack (pipeline_stages > 1) runs training and scoring steps only: no '
                                 'cached decoding, no sown intermediates. Set pipeline_stages = 1 for these.')
            x = pipeline.Pipeline(cfg, body, (cfg, self.cross_attention, False, deterministic, decode), self.num_layers,
                                  name=pipeline.PIPELINE)(x, *inputs[:6])  # no cache, einsum attention
        elif cfg.scan_layers:
            block = cfg.moe_layer_interval if cfg.num_experts and cfg.moe_layer_interval > 1 else 1
            kwargs = dict(cross_attention=self.cross_attention, deterministic=deterministic, decode=decode)
            if block == 1:
                kwargs['moe'] = cfg.num_experts > 0
            body = nn.scan(body if block == 1 else _LayerBlock, variable_axes={c: 0 for c in SCANNED_COLLECTIONS},
                           split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast,) * len(inputs),
                           length=self.num_layers // block, metadata_params={nn.PARTITION_NAME: layout.LAYERS})
            x, _ = body(cfg, **kwargs, name=layout.LAYERS)(x, *inputs)
        else:
            layers = [body(cfg, cross_attention=self.cross_attention, moe=cfg.is_moe_layer(i),
                           deterministic=deterministic, decode=decode, name=f'layers_{i}')
                      for i in range(1 if cfg.shared_layers else self.num_layers)]
            for i in range(self.num_layers):
                x, _ = layers[i % len(layers)](x, *inputs)
        if cfg.final_norm:
            x = make_norm(cfg, 'final_norm')(x)
            if not self.causal or self.cross_attention:  # T5 drops out after its final norms; GPT-2's ln_f does not
                x = dropout_lib.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return x
