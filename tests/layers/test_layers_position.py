"""Position encodings against closed forms, hand-computed tables and (when torch is there) Hugging Face's T5."""
import math
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax.layers import position  # noqa: E402


def test_sinusoidal_embedding_closed_form():
    dim, positions = 16, np.arange(50)
    table = np.asarray(position.sinusoidal_embedding(jnp.asarray(positions), dim))
    for p in (0, 1, 7, 49):
        for i in range(dim // 2):
            angle = p / 10000 ** (2 * i / dim)
            assert table[p, 2 * i] == pytest.approx(math.sin(angle), abs=2e-6)
            assert table[p, 2 * i + 1] == pytest.approx(math.cos(angle), abs=2e-6)
    with pytest.raises(ValueError, match='even dimension'):
        position.sinusoidal_embedding(jnp.arange(3), 7)


def test_rotary_is_a_rotation_of_feature_pairs():
    """Pair (x_i, x_{i+d/2}) as the complex number x_i + j x_{i+d/2} is multiplied by exp(j p theta_i)."""
    rng = np.random.RandomState(0)
    x = rng.randn(1, 5, 2, 8).astype(np.float32)  # [batch, length, heads, kv]
    positions = np.array([0, 1, 2, 10, 100])
    rotated = np.asarray(position.apply_rotary(jnp.asarray(x), jnp.asarray(positions)))
    theta = 10000.0 ** (-np.arange(4) * 2 / 8)
    z = (x[..., :4] + 1j * x[..., 4:]) * np.exp(1j * positions[None, :, None, None] * theta)
    np.testing.assert_allclose(rotated, np.concatenate([z.real, z.imag], -1), atol=1e-5)
    np.testing.assert_array_equal(rotated[:, 0], x[:, 0])  # position 0 is the identity


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.RandomState(1)
    q, k = (jnp.asarray(rng.randn(1, 1, 1, 16).astype(np.float32)) for _ in range(2))

    def score(p_q, p_k):
        return float(jnp.sum(position.apply_rotary(q, jnp.array([p_q])) * position.apply_rotary(k, jnp.array([p_k]))))

    assert score(3, 1) == pytest.approx(score(40, 38), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def _bucket(relative_position, bidirectional, num_buckets=32, max_distance=128):
    return np.asarray(position.t5_relative_position_bucket(
        jnp.asarray(relative_position, jnp.int32), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance))


def test_t5_buckets_against_a_hand_computed_table():
    """relative = key - query. Bidirectional, 32 buckets, max distance 128: 16 per direction, 8 exact distances,
    then 8 + floor(log(d / 8) / log(128 / 8) * 8), capped at 15; keys after the query add 16."""
    hand = {0: 0, -1: 1, -7: 7, -8: 8, -11: 8, -12: 9, -15: 9, -16: 10, -22: 10, -23: 11, -32: 12, -64: 14,
            -90: 14, -91: 15, -128: 15, -1000: 15, 1: 17, 7: 23, 8: 24, 15: 25, 64: 30, 1000: 31}
    rel = np.array(list(hand))
    np.testing.assert_array_equal(_bucket(rel, True), list(hand.values()))
    # Causal: keys after the query are bucket 0; 16 exact distances, then 16 + floor(log(d / 16) / log(8) * 16).
    causal = {5: 0, 1: 0, 0: 0, -1: 1, -15: 15, -16: 16, -20: 17, -31: 21, -32: 21, -64: 26, -127: 31, -500: 31}
    rel = np.array(list(causal))
    np.testing.assert_array_equal(_bucket(rel, False), list(causal.values()))


def test_t5_buckets_match_transformers():
    torch = pytest.importorskip('torch')
    t5 = pytest.importorskip('transformers.models.t5.modeling_t5')
    rel = np.arange(-300, 301)
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 20)):
            ref = t5.T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                                           num_buckets=num_buckets, max_distance=max_distance)
            np.testing.assert_array_equal(_bucket(rel, bidirectional, num_buckets, max_distance), ref.numpy())


def test_t5_relative_position_bias_looks_up_the_bucket_of_each_pair():
    layer = position.T5RelativePositionBias(num_heads=3, num_buckets=8, max_distance=20, bidirectional=True)
    query, key = jnp.arange(4) + 6, jnp.arange(12)  # a decoding chunk at positions 6..9 against 12 cached keys
    variables = layer.init(jax.random.key(0), query, key)
    table = variables['params']['embedding']
    assert table.names == (None, 'heads')
    bias = np.asarray(layer.apply(variables, query, key))
    assert bias.shape == (1, 3, 4, 12)
    buckets = _bucket(np.arange(12)[None, :] - (np.arange(4) + 6)[:, None], True, 8, 20)
    np.testing.assert_array_equal(bias[0], np.transpose(np.asarray(table.value)[buckets], (2, 0, 1)))
    # In a bfloat16 model the bias comes in the compute dtype (t5x's RelativePositionBiases(dtype=...)): the same
    # values rounded, from the float32 table.
    half = layer.clone(dtype=jnp.bfloat16).apply(variables, query, key)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(half), np.asarray(jnp.asarray(bias).astype(jnp.bfloat16)))


def test_nezha_relative_positions_match_the_reference_construction():
    """Transcribes Hugging Face's NezhaRelativePositionsEncoding: a (2k+1)-row sinusoid table (sin on even, cos on
    odd features) indexed by clip(j - i, -k, k) + k through a one-hot matmul."""
    length, depth, k = 12, 8, 3
    position_col = np.arange(2 * k + 1, dtype=np.float64)[:, None]
    div_term = np.exp(np.arange(0, depth, 2) * (-math.log(10000.0) / depth))
    table = np.zeros((2 * k + 1, depth))
    table[:, 0::2], table[:, 1::2] = np.sin(position_col * div_term), np.cos(position_col * div_term)
    range_mat = np.tile(np.arange(length), length).reshape(length, length)
    final_mat = np.clip(range_mat - range_mat.T, -k, k) + k
    expected = (np.eye(2 * k + 1)[final_mat.reshape(-1)] @ table).reshape(length, length, depth)
    positions = jnp.arange(length)
    actual = position.nezha_relative_positions(positions, positions, max_relative_position=k, depth=depth)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-6)
    assert actual.shape == (length, length, depth)
