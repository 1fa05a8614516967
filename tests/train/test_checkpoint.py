"""checkpoint.py: bit-exact round trips, restores across meshes, keep-N, crashes (a crashed save is written again on
resume), mismatches, foreign runs.

conftest.py gives this process 8 fake CPU devices; the mesh tests use a (2, 2, 2) ('data', 'fsdp', 'tensor') mesh.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from plmjax.train import checkpoint as ckpt
from plmjax.train import optim
from tests import reliability

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = {"model_config": {"emb_dim": 16, "num_layers": 2, "dtype": "float32"}, "operative_gin": "train.seed = 3\n"}


@flax.struct.dataclass
class State:  # the shape of the lead's TrainState
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


class TinyModel(nn.Module):
    hidden: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.hidden, name="wi")(x)
        x = nn.LayerNorm(name="layer_norm")(x)
        return nn.Dense(4, name="wo")(x)


def make_state(hidden=8, seed=0, steps=2):
    """A state after `steps` AdamW updates, so moments and counts are non-trivial."""
    model = TinyModel(hidden)
    x = jax.random.normal(jax.random.key(seed + 1), (3, 4))
    params = model.init(jax.random.key(seed), x)["params"]
    tx, _ = optim.make_optimizer("adamw", learning_rate=1e-2, schedule="constant")
    opt_state = tx.init(params)
    for _ in range(steps):
        grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return State(step=jnp.asarray(steps, jnp.int32), params=params, opt_state=opt_state,
                 rng=jax.random.key(seed + 7))


def abstract_of(state, sharding_fn=None):
    def one(x):
        sharding = sharding_fn(x) if sharding_fn else x.sharding
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(one, state)


@dataclasses.dataclass(frozen=True)
class HostKey:  # not a pytree: a leaf of a host copy
    impl: str
    data: np.ndarray


def host_copy(state):
    """Numpy copies of every leaf (typed PRNG keys as their implementation and raw key data)."""
    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return HostKey(str(x.dtype), np.array(jax.random.key_data(x)))
        return np.array(x)
    return jax.tree.map(one, state)


def assert_bit_equal(a, b):
    """Two `host_copy` trees hold the same structure, dtypes, shapes and bytes."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, HostKey):
            assert isinstance(y, HostKey) and x.impl == y.impl
            x, y = x.data, y.data
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()


def need_8_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices: run under tests/conftest.py (XLA_FLAGS=--xla_force_host_platform_device_count=8)")


def mesh_222():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def shard_on_mesh(mesh):
    """fsdp x tensor for matrices, tensor for vectors, replicated otherwise (what the rules table would give)."""
    def sharding_fn(x):
        if x.ndim == 2 and x.shape[0] % 2 == 0 and x.shape[1] % 2 == 0:
            return NamedSharding(mesh, P("fsdp", "tensor"))
        if x.ndim == 1 and x.shape[0] % 2 == 0 and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return NamedSharding(mesh, P("tensor"))
        return NamedSharding(mesh, P())
    return sharding_fn


# ------------------------------------------------------------------------------------------------ round trip

def test_async_round_trip_is_bit_exact_even_when_the_arrays_are_donated(tmp_path):
    state = make_state()
    expected = host_copy(state)
    checkpointer = ckpt.Checkpointer(str(tmp_path / "ckpt"))
    abstract = abstract_of(state)
    assert checkpointer.save(2, state, data_position=17, config=CONFIG)
    # The next train step donates the state: its buffers are gone while the background write runs.
    for leaf in jax.tree.leaves(state):
        leaf.delete()
    checkpointer.wait()

    restored, metadata = ckpt.Checkpointer(str(tmp_path / "ckpt")).restore(abstract_state=abstract)
    assert_bit_equal(host_copy(restored), expected)
    assert isinstance(restored, State) and int(restored.step) == 2
    assert metadata["step"] == 2 and metadata["data_position"] == 17 and metadata["config"] == CONFIG
    assert metadata["fingerprint"]["params/wi/kernel"] == [[4, 8], "float32"]
    assert metadata["fingerprint"]["rng"] == [[], "key<fry>"]
    checkpointer.close()


def test_raw_uint32_keys_and_bfloat16_round_trip(tmp_path):
    state = {"params": {"w": jnp.linspace(-3, 3, 12, dtype=jnp.bfloat16).reshape(3, 4)},
             "rng": jax.random.PRNGKey(42), "step": jnp.int32(9)}
    expected = host_copy(state)
    with ckpt.Checkpointer(str(tmp_path), async_save=False) as checkpointer:
        checkpointer.save(9, state, data_position=0, config={})
        restored, _ = checkpointer.restore(abstract_state=abstract_of(state))
    assert_bit_equal(host_copy(restored), expected)


# ------------------------------------------------------------------------------------------------ meshes

def test_restore_from_222_mesh_onto_one_device_and_back(tmp_path):
    need_8_devices()
    mesh = mesh_222()
    state = make_state()
    expected = host_copy(state)
    sharded = jax.device_put(state, jax.tree.map(shard_on_mesh(mesh), state))
    assert sharded.params["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert len(sharded.params["wi"]["kernel"].addressable_shards) == 8

    with ckpt.Checkpointer(str(tmp_path / "from_mesh")) as checkpointer:
        checkpointer.save(2, sharded, data_position=5, config=CONFIG)
        checkpointer.wait()
        one_device = SingleDeviceSharding(jax.devices()[3])
        restored, _ = checkpointer.restore(abstract_state=abstract_of(state, lambda x: one_device))
    assert_bit_equal(host_copy(restored), expected)
    assert all(leaf.sharding == one_device for leaf in jax.tree.leaves(restored))

    with ckpt.Checkpointer(str(tmp_path / "to_mesh")) as checkpointer:
        checkpointer.save(2, state, data_position=5, config=CONFIG)  # written from one device
        checkpointer.wait()
        target = abstract_of(state, shard_on_mesh(mesh))
        restored, _ = checkpointer.restore(abstract_state=target)
    assert_bit_equal(host_copy(restored), expected)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert leaf.sharding == want.sharding
    kernel = restored.params["wi"]["kernel"]  # [4, 8] over fsdp=2 x tensor=2: each device holds a [2, 4] block
    for shard in kernel.addressable_shards:
        assert shard.data.shape == (2, 4)
        np.testing.assert_array_equal(np.asarray(shard.data), expected.params["wi"]["kernel"][shard.index])


# ----------------------------------------------------------------------------------------- keep-N, interval

def test_keep_n_keeps_the_newest_steps(tmp_path):
    state = make_state()
    with ckpt.Checkpointer(str(tmp_path), max_to_keep=2) as checkpointer:
        for step in range(1, 6):
            assert checkpointer.save(step, state, data_position=step, config={})
        checkpointer.wait()
        assert checkpointer.all_steps() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["4", "5"]


def test_save_interval_and_force(tmp_path):
    state = make_state()
    with ckpt.Checkpointer(str(tmp_path), save_interval_steps=10) as checkpointer:
        assert not checkpointer.save(5, state, data_position=5, config={})
        assert checkpointer.save(10, state, data_position=10, config={})
        assert checkpointer.save(13, state, data_position=13, config={}, force=True)
        assert not checkpointer.save(13, state, data_position=13, config={}, force=True)  # already there
        checkpointer.wait()
        assert checkpointer.all_steps() == [10, 13]


# --------------------------------------------------------------------------------------------------- crashes

@reliability.fault_case("half-written save (Checkpointer)", "never restored")
def test_half_written_steps_are_never_restored(tmp_path):
    directory = tmp_path / "ckpt"
    good = make_state(steps=1)
    with ckpt.Checkpointer(str(directory)) as checkpointer:
        checkpointer.save(1, good, data_position=1, config={})
        checkpointer.save(2, make_state(steps=2), data_position=2, config={})
    # A crash during the save of step 3 leaves orbax's tmp directory (whose name orbax would reuse for the next
    # save of step 3); an interrupted copy of step 4 leaves a
    # step directory without its commit file (content from step 2, one array file cut short).
    shutil.copytree(directory / "2", directory / "3.orbax-checkpoint-tmp")
    os.remove(directory / "3.orbax-checkpoint-tmp" / "commit_success.txt")
    shutil.copytree(directory / "2", directory / "4")
    os.remove(directory / "4" / "commit_success.txt")
    os.remove(directory / "2" / "commit_success.txt")  # step 2 itself turns out half-copied too

    checkpointer = ckpt.Checkpointer(str(directory))
    assert checkpointer.latest_step() == 1
    restored, metadata = checkpointer.restore(abstract_state=abstract_of(good))
    assert_bit_equal(host_copy(restored), host_copy(good))
    assert metadata["data_position"] == 1

    # The resumed run's first save deletes the crashed tmp directory; it refuses to write over the
    # unfinished step 4 with a message saying what to do.
    with pytest.raises(ckpt.CheckpointDirectoryInUseError, match="not a finished checkpoint"):
        checkpointer.save(2, restored, data_position=2, config={})
    assert checkpointer.save(3, restored, data_position=3, config={})
    checkpointer.wait()
    assert not (directory / "3.orbax-checkpoint-tmp").exists()
    with pytest.raises(ckpt.CheckpointDirectoryInUseError, match=r"4 exists but is not a finished checkpoint"):
        checkpointer.save(4, restored, data_position=4, config={})
    checkpointer.close()


_KILLED_SCRIPT = """
import os, sys
import jax, jax.numpy as jnp
from plmjax.train import checkpoint as ckpt
c = ckpt.Checkpointer(sys.argv[1])
c.save(1, {"w": jnp.full((256, 1024), 1.0)}, data_position=1, config={})
c.wait()
c.save(2, {"w": jnp.full((256, 1024), 2.0)}, data_position=2, config={})  # async: returns before the write ends
os._exit(1)  # the process dies mid-save
"""


@reliability.fault_case("half-written save (Checkpointer)", "a process killed mid-save")
def test_a_process_killed_mid_save_leaves_a_restorable_directory(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]),
               XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_SCRIPT), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    checkpointer = ckpt.Checkpointer(str(tmp_path))
    latest = checkpointer.latest_step()
    assert latest in (1, 2)  # step 2 is either fully there or not there at all
    restored, metadata = checkpointer.restore(abstract_state={"w": jax.ShapeDtypeStruct((256, 1024), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.full((256, 1024), float(latest)))
    assert metadata["data_position"] == latest
    # The resumed run saves its next step, also over the crashed save's leftovers.
    assert checkpointer.save(latest + 1, restored, data_position=latest + 1, config={})
    checkpointer.close()
    assert [name for name in os.listdir(tmp_path) if "tmp" in name] == []
    assert ckpt.Checkpointer(str(tmp_path)).latest_step() == latest + 1


# ------------------------------------------------------------------------------------------ user mistakes

def test_other_model_config_raises_one_clear_mismatch_error(tmp_path):
    with ckpt.Checkpointer(str(tmp_path)) as checkpointer:
        checkpointer.save(2, make_state(hidden=8), data_position=2, config=CONFIG)
    wider = abstract_of(make_state(hidden=16))
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        ckpt.Checkpointer(str(tmp_path)).restore(abstract_state=wider)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(tmp_path / "2") in message
    assert "params/layer_norm/bias: saved (8,) float32, expected (16,) float32" in message
    assert "params/wi/kernel: saved (4, 8) float32, expected (4, 16) float32" in message
    assert "... and " in message  # the optimizer moments differ too; only the first few are listed
    assert "Use the same model gin file as the run that wrote it, or start a fresh --model_dir" in message


@reliability.fault_case("checkpoint of another config or version", "the error names the config fields")
def test_mismatch_error_names_the_config_fields_that_differ(tmp_path):
    with ckpt.Checkpointer(str(tmp_path)) as checkpointer:
        checkpointer.save(2, make_state(hidden=8), data_position=2, config=CONFIG)
    wider = dict(CONFIG, model_config=dict(CONFIG["model_config"], emb_dim=32), operative_gin="other text")
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        ckpt.Checkpointer(str(tmp_path)).restore(abstract_state=abstract_of(make_state(hidden=16)), config=wider)
    message = str(info.value)
    assert "differs in 1 config field(s):\n  model_config.emb_dim: saved 16, now 32\n" in message
    assert "operative_gin" not in message  # the gin text is not a field
    assert "params/wi/kernel: saved (4, 8) float32, expected (4, 16) float32" in message


@reliability.fault_case("checkpoint of another config or version", "a newer checkpoint format")
def test_a_checkpoint_of_a_newer_format_is_one_error_naming_the_versions(tmp_path):
    with ckpt.Checkpointer(str(tmp_path)) as checkpointer:
        checkpointer.save(2, make_state(), data_position=2, config=CONFIG)
    path = tmp_path / "2" / "metadata" / "metadata"
    metadata = json.loads(path.read_text())
    assert metadata["format"] == ckpt.CHECKPOINT_FORMAT and metadata["plmjax_version"] == ckpt.plmjax_version()
    metadata.update(format=ckpt.CHECKPOINT_FORMAT + 1, plmjax_version="9.0.0")
    path.write_text(json.dumps(metadata))
    for read in (lambda c: c.restore(abstract_state=abstract_of(make_state())), lambda c: c.read_metadata(),
                 lambda c: c.restore_newest_good(abstract_state=abstract_of(make_state()))):
        with pytest.raises(ckpt.CheckpointMismatchError, match=(
                rf"{tmp_path / '2'} was written by plmjax 9\.0\.0 in checkpoint format {ckpt.CHECKPOINT_FORMAT + 1}; "
                rf"this plmjax .* reads format {ckpt.CHECKPOINT_FORMAT} and older\. Upgrade plmjax")):
            read(ckpt.Checkpointer(str(tmp_path)))
    assert (tmp_path / "2" / ckpt.COMMIT_FILE).exists()  # a newer format is not "damaged": never moved aside
    del metadata["format"], metadata["plmjax_version"]  # written before the fields existed: format 1
    path.write_text(json.dumps(metadata))
    ckpt.Checkpointer(str(tmp_path)).restore(abstract_state=abstract_of(make_state()))


def test_missing_checkpoints_raise_clear_errors(tmp_path):
    abstract = abstract_of(make_state())
    with pytest.raises(ckpt.CheckpointNotFoundError, match="does not exist"):
        ckpt.Checkpointer(str(tmp_path / "nowhere")).restore(abstract_state=abstract)
    assert not (tmp_path / "nowhere").exists()  # opening a checkpointer creates nothing
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointNotFoundError, match="holds no finished checkpoint"):
        ckpt.Checkpointer(str(tmp_path / "empty")).restore(abstract_state=abstract)
    with ckpt.Checkpointer(str(tmp_path / "run")) as checkpointer:
        checkpointer.save(3, make_state(), data_position=3, config={})
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"step 7 .* available steps: \[3\]"):
        ckpt.Checkpointer(str(tmp_path / "run")).restore(7, abstract_state=abstract)
    plain_orbax = ocp.CheckpointManager(str(tmp_path / "foreign"), item_names=("state",))
    plain_orbax.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": jnp.ones(3)})))
    plain_orbax.close()
    with pytest.raises(ckpt.CheckpointNotFoundError, match="not written by plmjax's Checkpointer"):
        ckpt.Checkpointer(str(tmp_path / "foreign")).restore(abstract_state={"w": jnp.ones(3)})


def test_never_deletes_checkpoints_of_another_run(tmp_path):
    state = make_state()
    with ckpt.Checkpointer(str(tmp_path), max_to_keep=2) as first_run:
        first_run.save(100, state, data_position=100, config={})
        first_run.save(200, state, data_position=200, config={})

    second_run = ckpt.Checkpointer(str(tmp_path), max_to_keep=2)
    with pytest.raises(ckpt.CheckpointDirectoryInUseError, match=r"steps \[100, 200\].*fresh --model_dir"):
        second_run.save(1, state, data_position=1, config={})
    assert sorted(os.listdir(tmp_path)) == ["100", "200"]

    # Restoring makes the directory this run's: it continues, and keep-N drops its own oldest step.
    restored, _ = second_run.restore(abstract_state=abstract_of(state))
    assert not second_run.save(200, restored, data_position=200, config={})  # the step just restored
    with pytest.raises(ckpt.CheckpointDirectoryInUseError, match="newer step 200"):
        second_run.save(150, restored, data_position=150, config={})
    assert second_run.save(300, restored, data_position=300, config={})
    second_run.close()
    assert sorted(os.listdir(tmp_path)) == ["200", "300"]


def test_bad_data_position_is_rejected(tmp_path):
    with ckpt.Checkpointer(str(tmp_path)) as checkpointer:
        with pytest.raises(ValueError, match="data_position"):
            checkpointer.save(1, make_state(), data_position=-1, config={})


def test_partial_restore_reads_only_the_params_onto_a_mesh(tmp_path):
    need_8_devices()
    state = make_state()
    with ckpt.Checkpointer(str(tmp_path)) as checkpointer:
        checkpointer.save(2, state, data_position=2, config=CONFIG)
    target = {"params": abstract_of(state.params, shard_on_mesh(mesh_222()))}
    reader = ckpt.Checkpointer(str(tmp_path))
    restored, metadata = reader.restore(abstract_state=target, partial=True)
    assert set(restored) == {"params"} and metadata["step"] == 2
    assert_bit_equal(host_copy(restored["params"]), host_copy(state.params))
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert leaf.sharding == want.sharding
    # Reading params does not make the directory this reader's.
    with pytest.raises(ckpt.CheckpointDirectoryInUseError):
        reader.save(3, state, data_position=3, config={})

    wider = {"params": abstract_of(make_state(hidden=16).params)}
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"params/wi/kernel: saved \(4, 8\) float32, expected "):
        reader.restore(abstract_state=wider, partial=True)
    extra = {"params": dict(abstract_of(state.params), head={"kernel": jax.ShapeDtypeStruct((8, 2), jnp.float32)})}
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"params/head/kernel: saved \(absent\), expected \(8, 2\)"):
        reader.restore(abstract_state=extra, partial=True)
    reader.close()


def test_a_crashed_uncommitted_step_is_overwritten_on_resume(tmp_path):
    """A save that orbax began in place (as on GCS) and never committed leaves `<step>/` without the commit file
    and with no commit timestamp in `_CHECKPOINT_METADATA`: the resumed run writes that step again."""
    directory = tmp_path / "ckpt"
    with ckpt.Checkpointer(str(directory)) as checkpointer:
        checkpointer.save(1, make_state(steps=1), data_position=1, config={}, data_state=b"position 1")
        checkpointer.save(2, make_state(steps=2), data_position=2, config={})
    crashed = directory / "2"
    os.remove(crashed / "commit_success.txt")
    info = json.loads((crashed / "_CHECKPOINT_METADATA").read_text())
    (crashed / "_CHECKPOINT_METADATA").write_text(json.dumps(dict(info, commit_timestamp_nsecs=None)))
    shutil.copytree(directory / "1", directory / "3.orbax-checkpoint-tmp")  # and a crashed local save of step 3
    os.remove(directory / "3.orbax-checkpoint-tmp" / "commit_success.txt")

    checkpointer = ckpt.Checkpointer(str(directory))
    restored, metadata = checkpointer.restore(abstract_state=abstract_of(make_state(steps=1)))
    assert metadata["step"] == 1 and checkpointer.read_data_state(1) == b"position 1"
    again = make_state(steps=2, seed=5)
    assert checkpointer.save(2, again, data_position=2, config={}, data_state=b"position 2")
    checkpointer.wait()
    assert checkpointer.all_steps() == [1, 2] and not (directory / "3.orbax-checkpoint-tmp").exists()
    restored, metadata = checkpointer.restore(abstract_state=abstract_of(again))
    assert_bit_equal(host_copy(restored), host_copy(again))
    assert checkpointer.read_data_state(2) == b"position 2" and checkpointer.read_data_state(1) == b"position 1"
    checkpointer.close()
