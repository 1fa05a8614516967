"""u-PMLM arbitrary-order generation and Mask-Predict: the jitted loop against plain loops of full forward passes
(one model call a step, the masked input built by hand), in float64; constraints always hold (hypothesis)."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from plmjax import models  # noqa: E402
from plmjax.decode import pmlm  # noqa: E402

MASK, CLS, SEP, PAD = 3, 1, 2, 0


@pytest.fixture(scope='module')
def model():
    with jax.enable_x64(True):
        config = models.tiny_encoder(vocab_size=64, dtype='float64', param_dtype='float64', dropout_rate=0.0)
        module = models.build_model('encoder', config)
        params = module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
    return module, params


def _batch(num_new=6):
    prompts = [[10, 11], [12]]
    fixed = [{2: [40]}, {}]  # row 0: token 40 must be the third generated token
    return pmlm.template(prompts, num_new, mask_id=MASK, pad_id=PAD, cls_id=CLS, sep_id=SEP, fixed=fixed)


def _log_softmax(logits, banned):
    logits = np.asarray(logits, np.float64).copy()
    logits[..., banned] = -np.inf
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _reference(module, params, ids, free, mask, pick):
    """One position a step; pick(ids, remaining, log_probs [l, vocab]) -> position; token = argmax there."""
    ids, free = ids.copy(), free.copy()
    steps = np.full(ids.shape, -1)
    scores = np.zeros(len(ids))
    for row in range(len(ids)):
        x, remaining = ids[row].copy(), free[row].copy()
        x[remaining] = MASK
        step = 0
        while remaining.any():
            logits = module.apply({'params': params}, jnp.asarray(x[None]), input_mask=jnp.asarray(mask[row][None]))
            log_probs = _log_softmax(logits['logits'][0], [MASK])
            position = pick(x, remaining, log_probs)
            x[position] = int(np.argmax(log_probs[position]))
            scores[row] += log_probs[position, x[position]]
            steps[row, position] = step
            remaining[position] = False
            step += 1
        ids[row] = x
    return ids, steps, scores


@pytest.mark.parametrize('order', ['left_to_right', 'right_to_left', 'confident'])
def test_one_position_a_step_matches_a_loop_of_full_forward_passes(model, order):
    module, params = model
    ids, free, mask = _batch()
    pick = {'left_to_right': lambda x, r, lp: np.flatnonzero(r)[0],
            'right_to_left': lambda x, r, lp: np.flatnonzero(r)[-1],
            'confident': lambda x, r, lp: np.flatnonzero(r)[np.argmax(lp.max(-1)[r])]}[order]
    with jax.enable_x64(True):
        expected_ids, expected_steps, expected_scores = _reference(module, params, ids, free, mask, pick)
        got = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK, order=order))(params, ids, free, mask)
    np.testing.assert_array_equal(np.asarray(got.tokens), expected_ids)
    np.testing.assert_array_equal(np.asarray(got.steps), expected_steps)
    np.testing.assert_allclose(np.asarray(got.scores), expected_scores, rtol=1e-12)
    assert np.asarray(got.tokens)[0, 3 + 2] == 40 and (np.asarray(got.tokens)[~free] == ids[~free]).all()


def test_explicit_ranks_and_random_order_are_seeded_permutations(model):
    module, params = model
    ids, free, mask = _batch()
    run = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK, order='random'))
    with jax.enable_x64(True):
        a = run(params, ids, free, mask, jax.random.key(7))
        b = run(params, ids, free, mask, jax.random.key(7))
        c = run(params, ids, free, mask, jax.random.key(8))
        # the random order, replayed as explicit ranks, generates the same text
        ranks = np.where(free, np.asarray(a.steps), 0)
        replay = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK))(params, ids, free, mask, ranks=ranks)
    for row in range(len(ids)):
        steps = np.asarray(a.steps)[row][free[row]]
        assert sorted(steps) == list(range(free[row].sum()))  # every free position once, one a step
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.steps), np.asarray(b.steps))
    assert not np.array_equal(np.asarray(a.steps), np.asarray(c.steps))
    np.testing.assert_array_equal(np.asarray(replay.tokens), np.asarray(a.tokens))
    np.testing.assert_allclose(np.asarray(replay.scores), np.asarray(a.scores), rtol=1e-12)


def test_sampling_with_top_k_1_is_greedy_and_a_seed_repeats(model):
    module, params = model
    ids, free, mask = _batch()
    with jax.enable_x64(True):
        greedy = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK))(params, ids, free, mask)
        sample = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK, strategy='sample', top_k=1))
        top1 = sample(params, ids, free, mask, jax.random.key(3))
        hot = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK, strategy='sample', temperature=5.0))
        s1, s2 = hot(params, ids, free, mask, jax.random.key(4)), hot(params, ids, free, mask, jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(top1.tokens), np.asarray(greedy.tokens))
    np.testing.assert_array_equal(np.asarray(s1.tokens), np.asarray(s2.tokens))
    assert not np.array_equal(np.asarray(s1.tokens), np.asarray(greedy.tokens))


def test_tokens_per_step_fills_k_positions_of_the_order_each_step(model):
    module, params = model
    ids, free, mask = _batch(num_new=7)
    with jax.enable_x64(True):
        got = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK, tokens_per_step=3))(params, ids, free, mask)
        # reference: the first step predicts the first 3 free positions from the all-[MASK] template
        x = np.where(free, MASK, ids)
        logits = module.apply({'params': params}, jnp.asarray(x), input_mask=jnp.asarray(mask))['logits']
    first = np.argmax(_log_softmax(logits, [MASK]), -1)
    for row in range(len(ids)):
        positions = np.flatnonzero(free[row])
        np.testing.assert_array_equal(np.asarray(got.steps)[row, positions], np.arange(len(positions)) // 3)
        np.testing.assert_array_equal(np.asarray(got.tokens)[row, positions[:3]], first[row, positions[:3]])


def test_mask_predict_matches_its_definition(model):
    module, params = model
    ids, free, mask = _batch(num_new=7)
    iterations = 3
    with jax.enable_x64(True):
        got = pmlm.jit_generate(module, pmlm.Options(mask_id=MASK, iterations=iterations))(params, ids, free, mask)
        expected = []
        for row in range(len(ids)):
            x, lp = np.where(free[row], MASK, ids[row]), np.zeros(ids.shape[1])
            n = free[row].sum()
            for t in range(iterations):
                if t:  # re-mask the n (T - t) / T least probable generated tokens
                    masked = np.zeros_like(free[row])
                    masked[np.flatnonzero(free[row])[np.argsort(lp[free[row]], kind='stable')[:n * (iterations - t)
                                                                                          // iterations]]] = True
                else:
                    masked = free[row].copy()
                x = np.where(masked, MASK, x)
                log_probs = _log_softmax(module.apply({'params': params}, jnp.asarray(x[None]),
                                                      input_mask=jnp.asarray(mask[row][None]))['logits'][0], [MASK])
                token = log_probs.argmax(-1)
                lp = np.where(masked, log_probs.max(-1), lp)
                x = np.where(masked, token, x)
            expected.append(x)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.stack(expected))


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_positional_constraints_always_hold(model, data):
    module, params = model
    num_new = data.draw(st.integers(1, 8))
    fixed = {}
    for offset in sorted(data.draw(st.sets(st.integers(0, num_new - 1), max_size=num_new))):
        fixed[offset] = [data.draw(st.integers(4, 63))]
    options = pmlm.Options(mask_id=MASK, order=data.draw(st.sampled_from(pmlm.ORDERS)),
                           strategy=data.draw(st.sampled_from(pmlm.STRATEGIES)),
                           tokens_per_step=data.draw(st.integers(1, 3)), iterations=data.draw(st.sampled_from([0, 0, 2])),
                           forbidden_ids=(CLS, SEP, PAD))
    ids, free, mask = pmlm.template([[5, 6, 7]], num_new, mask_id=MASK, pad_id=PAD, cls_id=CLS, sep_id=SEP,
                                    fixed=[fixed])
    with jax.enable_x64(True):
        got = pmlm.generate(module, params, ids, free, options, input_mask=mask, rng=jax.random.key(num_new))
    tokens = np.asarray(got.tokens)[0]
    for offset, (token,) in fixed.items():
        assert tokens[4 + offset] == token
    assert (tokens[~free[0]] == ids[0][~free[0]]).all()
    assert not np.isin(tokens[free[0]], [MASK, CLS, SEP, PAD]).any()
    assert (np.asarray(got.steps)[0][free[0]] >= 0).all() and (np.asarray(got.steps)[0][~free[0]] == -1).all()


def test_template_rejects_a_constraint_that_does_not_fit():
    with pytest.raises(ValueError, match='does not fit'):
        pmlm.template([[5]], 3, mask_id=MASK, pad_id=PAD, fixed=[{2: [7, 8]}])
    with pytest.raises(ValueError, match='Unknown generation order'):
        pmlm.Options(mask_id=MASK, order='sideways')


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
def test_generation_on_8_devices_gives_the_1_device_tokens():
    import flax.linen as nn
    from plmjax import sharding
    config = models.tiny_encoder(vocab_size=64, dropout_rate=0.0)
    module = models.build_model('encoder', config)
    init = lambda: module.init(jax.random.key(2), jnp.ones((1, 8), jnp.int32))  # noqa: E731
    params = nn.meta.unbox(init()['params'])
    ids, free, mask = pmlm.template([[5, 6], [7], [8, 9, 10], [11]], 6, mask_id=MASK, pad_id=PAD, cls_id=CLS,
                                    sep_id=SEP, fixed=[{0: [20]}, {}, {3: [30]}, {}])
    options = {'random': pmlm.Options(mask_id=MASK, order='random', strategy='sample', top_p=0.9),
               'confident': pmlm.Options(mask_id=MASK, order='confident', tokens_per_step=2),
               'mask_predict': pmlm.Options(mask_id=MASK, iterations=3)}
    expected = {k: pmlm.jit_generate(module, o)(params, ids, free, mask, jax.random.key(1)) for k, o in
                options.items()}
    mesh = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    rules = sharding.LOGICAL_AXIS_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = sharding.logical_to_sharding(nn.get_partition_spec(jax.eval_shape(init)), mesh, rules)
        sharded = nn.meta.unbox(jax.jit(init, out_shardings=shardings)()['params'])
        data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
        batch = [jax.device_put(x, data) for x in (ids, free, mask)]
        for k, o in options.items():
            got = pmlm.jit_generate(module, o)(sharded, *batch, jax.random.key(1))
            np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected[k].tokens), err_msg=k)
            np.testing.assert_array_equal(np.asarray(got.steps), np.asarray(expected[k].steps), err_msg=k)
