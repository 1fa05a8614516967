"""`TrainState`, created already sharded (DESIGN.md decision 4).

`jax.eval_shape(init)` gives the state's shapes with the logical axis names of every parameter (and of the
optimizer moments, which optax builds from the boxed parameters); the rules table turns them into
`NamedSharding`s, and `jax.jit(init, out_shardings=...)` creates each array directly on its devices.
Parameters in the state are plain (unboxed) pytrees.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from plmjax import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # base PRNG key; step s uses fold_in(rng, s)


def dummy_inputs(architecture: str, batch_size: int, lengths: dict[str, int]) -> dict[str, jax.Array]:
    if architecture == "encoder_decoder":
        return {
            "encoder_input_ids": jnp.ones((batch_size, lengths["inputs"]), jnp.int32),
            "decoder_input_ids": jnp.ones((batch_size, lengths["targets"]), jnp.int32),
        }
    return {"input_ids": jnp.ones((batch_size, max(lengths.values())), jnp.int32)}


def _replicate_reshaped_state(boxed: TrainState) -> TrainState:
    """Optimizer-state leaves of another shape than their parameter are replicated. optax builds its state by
    mapping over the boxed parameters, so every leaf inherits its parameter's logical axis names, also where it has
    another shape: adafactor's factored second moments (a row and a column vector per matrix, and a (1,)
    placeholder for the factor it does not use) are O(rows + columns) and have no axis the names would name. A
    leaf's parameter is the one whose key path ends its own (optax's states hold parameter-shaped trees)."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    param_shapes = {tuple(path): leaf.value.shape for path, leaf in
                    jax.tree_util.tree_flatten_with_path(boxed.params, is_leaf=is_box)[0] if is_box(leaf)}

    def fix(path, leaf):
        if not (is_box(leaf) and hasattr(leaf.value, "shape")):
            return leaf
        shape = next((param_shapes[tuple(path[i:])] for i in range(len(path)) if tuple(path[i:]) in param_shapes),
                     None)
        return leaf if shape == leaf.value.shape else leaf.value

    return boxed.replace(opt_state=jax.tree_util.tree_map_with_path(fix, boxed.opt_state, is_leaf=is_box))


def _boxed_state(module: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, dummy) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = module.init({"params": init_rng, "dropout": init_rng}, **dummy, deterministic=True)["params"]
    return _replicate_reshaped_state(
        TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng))


def state_shardings(module, tx, architecture: str, lengths: dict[str, int], mesh: Mesh,
                    rules=sharding.LOGICAL_AXIS_RULES, batch_size: int = 1):
    """(abstract unboxed state, NamedSharding tree) for the state, without allocating it."""
    dummy = dummy_inputs(architecture, batch_size, lengths)
    boxed = jax.eval_shape(lambda r: _boxed_state(module, tx, r, dummy), jax.random.key(0))
    shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    # optax.MaskedNode (the state of a frozen leaf under multi_transform, PEFT) is an empty tuple, which flax's
    # logical_to_mesh reads as a PartitionSpec: give it back its place as an empty node.
    unboxed = nn.meta.unbox(boxed)
    is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    shardings = jax.tree.map(lambda a, s: a if is_masked(a) else s, unboxed, shardings, is_leaf=is_masked)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, shardings)
    return abstract, shardings


def create_train_state(module, tx, architecture: str, lengths: dict[str, int], mesh: Mesh, seed: int,
                       rules=sharding.LOGICAL_AXIS_RULES) -> tuple[TrainState, Any]:
    """Initializes a sharded `TrainState`; returns it with its sharding tree."""
    _, shardings = state_shardings(module, tx, architecture, lengths, mesh, rules)
    dummy = dummy_inputs(architecture, 1, lengths)

    def init(rng):
        return nn.meta.unbox(_boxed_state(module, tx, rng, dummy))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    return state, shardings
