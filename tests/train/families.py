"""Tiny models of the three families with synthetic batches in each family's batch layout."""

import jax
import numpy as np

from plmjax import objectives, sharding
from plmjax.models import build_model
from plmjax.models import config as config_lib
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib

VOCAB = 64
FAMILIES = ("encoder", "decoder", "encoder_decoder")
OBJECTIVE = {"encoder": "mlm", "decoder": "causal_lm", "encoder_decoder": "span_corruption"}
LENGTHS = {"encoder": {"inputs": 16, "targets": 16}, "decoder": {"targets": 16},
           "encoder_decoder": {"inputs": 16, "targets": 8}}


def tiny_config(family: str, **overrides):
    preset = {"encoder": config_lib.tiny_encoder, "decoder": config_lib.tiny_decoder,
              "encoder_decoder": config_lib.tiny_encoder_decoder}[family]
    return preset(**{"vocab_size": VOCAB, **overrides})


def _tokens(rng, batch, length, min_len):
    tokens = rng.integers(3, VOCAB, size=(batch, length)).astype(np.int32)
    for row in range(batch):  # right padding of varying length
        tokens[row, rng.integers(min_len, length + 1):] = 0
    return tokens


def synthetic_batch(family: str, batch: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = LENGTHS[family]
    if family == "encoder":
        targets = _tokens(rng, batch, lengths["inputs"], 6)
        selected = (rng.random(targets.shape) < 0.3) & (targets > 0)
        inputs = np.where(selected, 2, targets).astype(np.int32)
        return {"encoder_input_tokens": inputs, "encoder_target_tokens": targets,
                "encoder_loss_weights": selected.astype(np.float32)}
    targets = _tokens(rng, batch, lengths["targets"], 4)
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    decoder_inputs = np.where(targets > 0, decoder_inputs, 0).astype(np.int32)
    out = {"decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
           "decoder_loss_weights": (targets > 0).astype(np.float32)}
    if family == "encoder_decoder":
        out["encoder_input_tokens"] = _tokens(rng, batch, lengths["inputs"], 6)
    return out


def objective(family: str):
    return objectives.get_objective(OBJECTIVE[family])


def train_steps(family: str, config, mesh, steps: int = 3, initial_state=None, optimizer: str = "adamw"):
    """`steps` train steps (AdamW, or `optimizer`) on `synthetic_batch(seed=i)`: (per-step losses in float64,
    per-step gradients on the host, the initial state on the host, the final state). `initial_state` (a host state
    of this config's layout) replaces the seeded initialization when given."""
    module = build_model(family, config)
    tx, schedule = optim.make_optimizer(optimizer, learning_rate=1e-2, warmup_steps=1, total_steps=10)
    state, shardings = state_lib.create_train_state(module, tx, family, LENGTHS[family], mesh, seed=0)
    if initial_state is not None:
        state = jax.device_put(initial_state, shardings)
    host_state = jax.device_get(state)
    train_step = step_lib.jit_train_step(module, objective(family), tx, schedule, mesh, shardings)
    grads_fn = step_lib.jit_grads(module, objective(family), mesh, shardings)
    losses, grads = [], []
    for i in range(steps):
        batch = sharding.shard_batch(synthetic_batch(family, seed=i), mesh)
        grads.append(jax.device_get(grads_fn(state, batch)))
        state, metrics = train_step(state, batch)
        losses.append(np.float64(metrics["loss"][0]) / np.float64(metrics["loss"][1]))
    return losses, grads, host_state, state
