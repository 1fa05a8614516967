"""Mixture-of-experts MLP: a learned router sends each token to its top-1 (Switch Transformer, Fedus et al., 2021)
or top-2 (GShard, Lepikhin et al., 2020) experts, each expert the dense or gated MLP of `plmjax.layers.mlp`.

Routing, as in GShard / Mesh TensorFlow / flaxformer's MoE (the einsum formulation):
- groups: each sequence (batch row) is one routing group of `length` tokens, so routing and capacity never depend
  on how the batch is split over devices (MaxText routes per sequence too);
- router: logits = x @ w_router ([embed, expert], no bias; float32 even in bfloat16), probs = softmax(logits);
- top-k: each token picks its k most probable experts. Top-1 (Switch) weights the expert's output by the router
  probability p; top-2 (GShard) by the two probabilities renormalized to sum to 1 (GShard's random second-expert
  dropping and Switch's router jitter are not implemented);
- capacity: each expert takes at most `expert_capacity = ceil(capacity_factor * length * k / num_experts)` tokens
  per group. Slots are filled in priority order: every token's first choice, in token order, before any second
  choice (GShard). An assignment past the capacity is dropped: its combine weight is 0, so a token dropped by all
  its experts gets an MoE output of 0 and passes through the layer's residual connection unchanged;
- dispatch / combine: one-hot tensors [group, token, expert, slot]; the expert inputs are
  einsum(dispatch, x) -> [group, expert, slot, embed] on each device's own groups, then transposed to [expert,
  group, slot, embed]; the output comes back the same way before einsum(combine, ...). With the logical axes
  ('batch', ...) on the group side and ('expert', 'batch', ...) on the expert side, XLA's SPMD partitioner turns
  each transpose into the all-to-all of expert parallelism when 'expert' is a mesh axis (plmjax.sharding;
  tests/plan/test_moe_collectives.py: one einsum straight to the expert layout made libtpu all-gather the whole
  batch's tokens onto every chip instead).

Auxiliary losses, sown per MoE layer into the AUX_COLLECTION ('aux_loss') when the caller makes it mutable
(`plmjax.objectives.base.router_losses` averages them over layers, weights them and reports them):
- 'load_balancing_loss': Switch's num_experts * sum_e f_e * P_e per group, averaged over groups, with f_e the
  fraction of the group's tokens that chose expert e among their top-k (before capacity; flaxformer's definition)
  and P_e the mean router probability of e; 1.0 for perfectly uniform routing;
- 'router_z_loss': mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al., 2022);
- 'dropped_fraction': the fraction of the k * tokens assignments dropped for lack of capacity.
Padding tokens are routed like the others (flaxformer without a padding mask does the same).
"""
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from plmjax.layers import dropout, matmul, mlp

Initializer = Callable[..., jax.Array]
AUX_COLLECTION = 'aux_loss'
AUX_NAMES = ('load_balancing_loss', 'router_z_loss', 'dropped_fraction')


def expert_capacity(tokens_per_group: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Slots per expert and group: ceil(capacity_factor * tokens_per_group * k / num_experts)."""
    return max(1, math.ceil(capacity_factor * tokens_per_group * k / num_experts))


def uniform_dropped_fraction(tokens_per_group: int, num_experts: int, k: int, capacity: int) -> float:
    """The expected fraction of the k * tokens assignments dropped when the router is uniformly random (each token
    picks k distinct experts uniformly): an expert's load is Binomial(tokens, k / num_experts), of which
    max(load - capacity, 0) is dropped whatever the priority order. A reference point for a plan (a trained
    router is less even; the trainer's `moe_dropped_fraction` metric is the measured one)."""
    from scipy import stats
    loads = np.arange(capacity + 1, tokens_per_group + 1)
    expected_excess = np.sum((loads - capacity) * stats.binom.pmf(loads, tokens_per_group, k / num_experts))
    return float(num_experts * expected_excess / (k * tokens_per_group))


def per_expert_init(init: Initializer) -> Initializer:
    """`init` applied to each expert's [in, out] slice of an [expert, in, out] kernel with its own key, so that
    fan-in scaling sees the expert's fan-in (not expert * fan-in) and each expert starts as a dense MLP would."""
    def init_fn(key, shape, dtype=jnp.float32):
        return jax.vmap(lambda k: init(k, shape[1:], dtype))(jax.random.split(key, shape[0]))
    return init_fn


def route(logits: jax.Array, k: int, capacity: int):
    """Top-k routing with capacity. logits: [group, token, expert] float32 ->
    (dispatch [group, token, expert, slot] bool, combine [group, token, expert, slot] in the logits' dtype, aux)."""
    num_experts = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1)  # [group, token, expert]
    gates, experts = jax.lax.top_k(probs, k)  # [group, token, k]
    if k > 1:  # GShard: the chosen experts' probabilities renormalized
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    choice = jax.nn.one_hot(experts, num_experts, dtype=jnp.int32)  # [group, token, k, expert]
    # Priority: all first choices (in token order), then all second choices.
    by_priority = jnp.swapaxes(choice, 1, 2).reshape(choice.shape[0], -1, num_experts)  # [group, k*token, expert]
    position = (jnp.cumsum(by_priority, axis=1) - 1) * by_priority  # slot index where chosen
    kept = by_priority * (position < capacity)  # [group, k*token, expert]
    slot = jnp.sum(position * kept, axis=-1)  # [group, k*token]
    slot_one_hot = jax.nn.one_hot(slot, capacity, dtype=jnp.int32)  # [group, k*token, slot]
    dispatch = kept[..., None] * slot_one_hot[:, :, None, :]  # [group, k*token, expert, slot]
    dispatch = dispatch.reshape(choice.shape[0], k, -1, num_experts, capacity)  # [group, k, token, expert, slot]
    gate_by_priority = jnp.swapaxes(gates, 1, 2)  # [group, k, token]
    combine = jnp.sum(dispatch * gate_by_priority[..., None, None], axis=1)  # [group, token, expert, slot]
    dispatch = jnp.sum(dispatch, axis=1).astype(bool)  # a token takes at most one slot of each expert

    chosen = jnp.max(choice, axis=2).astype(logits.dtype)  # [group, token, expert]: among its top-k
    fraction = jnp.mean(chosen, axis=1)  # f_e per group: [group, expert]
    mean_prob = jnp.mean(probs, axis=1)  # P_e per group: [group, expert]
    aux = {
        'load_balancing_loss': jnp.mean(num_experts * jnp.sum(fraction * mean_prob, axis=-1)),
        'router_z_loss': jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1))),
        'dropped_fraction': 1.0 - jnp.sum(kept).astype(logits.dtype) / kept[..., 0].size,
    }
    return dispatch, combine, aux


class MoeMlp(nn.Module):
    """[batch, length, emb] -> [batch, length, emb]: `num_experts` MLPs (dense or gated, as `mlp.Mlp`) with
    stacked kernels `wi_kernel` (gated: `wi_0_kernel`, `wi_1_kernel`) [expert, embed, mlp] and `wo_kernel`
    [expert, mlp, embed] (logical axes ('expert', 'embed', 'mlp')), biases `wi_bias` [expert, mlp] and `wo_bias`
    [expert, embed], and a float32 `router` [embed, expert]. Expert e computes what `mlp.Mlp` does with the
    parameters {'wi': {'kernel': wi_kernel[e], 'bias': wi_bias[e]}, 'wo': ...}."""
    num_experts: int
    mlp_dim: int
    num_experts_per_token: int = 1
    capacity_factor: float = 1.25
    activation: str = 'gelu'
    gated: bool = False
    use_bias: bool = True
    dropout_rate: float = 0.0  # on the hidden activation
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None
    kernel_init: Initializer = nn.initializers.normal(0.02)
    out_kernel_init: Initializer | None = None
    router_init: Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if self.num_experts_per_token not in (1, 2) or self.num_experts_per_token > self.num_experts:
            raise ValueError(f'num_experts_per_token={self.num_experts_per_token} must be 1 (Switch) or 2 (GShard) '
                             f'and at most num_experts={self.num_experts}.')
        groups, tokens, emb = x.shape
        k = self.num_experts_per_token
        capacity = expert_capacity(tokens, self.num_experts, k, self.capacity_factor)
        router_dtype = jnp.promote_types(self.dtype, jnp.float32)  # float32 also under bfloat16 (Switch)
        router = self.param('router', nn.with_logical_partitioning(self.router_init, ('embed', None)),
                            (emb, self.num_experts), jnp.promote_types(self.param_dtype, jnp.float32))
        # [group, token, expert]
        logits = jnp.einsum('gsm,me->gse', x.astype(router_dtype), router.astype(router_dtype))
        dispatch, combine, aux = route(logits, k, capacity)
        for name in AUX_NAMES:
            self.sow(AUX_COLLECTION, name, aux[name])

        einsum = functools.partial(matmul.einsum, matmul_dtype=self.matmul_dtype)
        # Dispatch on each device's own groups, then move the slots to their experts: with the group-side result
        # constrained to the batch sharding first, XLA's partitioner makes the move an all-to-all (one einsum
        # straight to [expert, group, ...] let it all-gather the whole batch's tokens onto every device instead).
        expert_in = jnp.einsum('gsec,gsm->gecm', dispatch.astype(self.dtype), x.astype(self.dtype))
        expert_in = nn.with_logical_constraint(expert_in, ('batch', None, None, 'embed'))  # [group, expert, slot, emb]
        expert_in = nn.with_logical_constraint(jnp.swapaxes(expert_in, 0, 1), ('expert', 'batch', None, 'embed'))

        def weights(name, shape, axes, init):
            kernel = self.param(f'{name}_kernel', nn.with_logical_partitioning(per_expert_init(init), axes),
                                (self.num_experts,) + shape, self.param_dtype)
            bias = None
            if self.use_bias:
                bias = self.param(f'{name}_bias', nn.with_logical_partitioning(nn.initializers.zeros, axes[::2]),
                                  (self.num_experts, shape[1]), self.param_dtype)
            return kernel, bias

        def project(h, name, shape, axes, init):  # h [expert, group, slot, in] -> [expert, group, slot, out]
            kernel, bias = weights(name, shape, axes, init)
            out = einsum('egci,eio->egco', h, kernel.astype(self.dtype))
            return out if bias is None else out + bias.astype(self.dtype)[:, None, None, :]

        act = jax.checkpoint(mlp.get_activation(self.activation))
        wi = functools.partial(project, expert_in, shape=(emb, self.mlp_dim), axes=('expert', 'embed', 'mlp'),
                               init=self.kernel_init)
        if self.gated:
            h = act(wi(name='wi_0')) * wi(name='wi_1')
        else:
            h = act(wi(name='wi'))
        h = nn.with_logical_constraint(h, ('expert', 'batch', None, 'mlp'))  # [expert, group, slot, mlp]
        h = dropout.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        out = project(h, 'wo', (self.mlp_dim, emb), ('expert', 'mlp', 'embed'),
                      self.out_kernel_init or self.kernel_init)
        out = nn.with_logical_constraint(out, ('expert', 'batch', None, 'embed'))  # [expert, group, slot, emb]
        out = nn.with_logical_constraint(jnp.swapaxes(out, 0, 1), ('batch', None, None, 'embed'))  # back: all-to-all
        y = jnp.einsum('gsec,gecm->gsm', combine.astype(self.dtype), out)
        return nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
