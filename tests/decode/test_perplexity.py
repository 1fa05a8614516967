"""Perplexity of generation orders: the batched encoder scoring against a plain loop (one model call a step, the
masked input built by hand) in float64; seeded random orders; the decoder's perplexity against exp of
transformers' GPT-2 loss on a converted random-weight model; the windows of a text."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402
from plmjax.decode import perplexity  # noqa: E402
from tests.decode.test_pmlm import CLS, MASK, PAD, SEP, model  # noqa: E402,F401  (the tiny float64 u-PMLM)
from tests.decode.test_pmlm import _log_softmax as _masked_log_softmax  # noqa: E402


def _texts():
    """Two rows: [CLS] text [SEP] text [SEP] (a separator inside, never predicted), and a shorter padded row."""
    ids = np.array([[CLS, 10, 11, 12, SEP, 13, 14, SEP],
                    [CLS, 20, 21, 22, SEP, PAD, PAD, PAD]], np.int32)
    predict = (ids != CLS) & (ids != SEP) & (ids != PAD)
    return ids, predict


def _log_softmax(logits):
    return _masked_log_softmax(logits, [])


def _loop(module, params, ids, predict, orders):
    """The definition, one plain forward pass a step: for row r and its order (the predicted positions in
    generation order), step t holds the true tokens at the first t positions of the order and [MASK] at the
    other predicted positions; -> [b, l] log p of the token at the position predicted."""
    out = np.zeros(ids.shape)
    for row, order in enumerate(orders):
        for t, position in enumerate(order):
            x = ids[row].copy()
            x[list(order[t:])] = MASK
            logits = module.apply({'params': params}, jnp.asarray(x[None]),
                                  input_mask=jnp.asarray((ids[row] != PAD)[None]))['logits']
            out[row, position] = _log_softmax(logits[0, position])[ids[row, position]]
    assert (out[~predict] == 0).all()
    return out


def _full_order(predict, orders):
    """Predicted positions in the given order, then the others (the `order` argument of order_log_probs)."""
    return np.array([list(o) + [p for p in range(predict.shape[1]) if p not in o] for o in orders], np.int32)


@pytest.mark.parametrize('steps_per_call', [0, 3])
def test_batched_order_log_probs_equal_a_loop_of_plain_forward_passes(model, steps_per_call):
    module, params = model
    ids, predict = _texts()
    orders = [[5, 2, 6, 1, 3], [3, 1, 2]]  # arbitrary orders of the predicted positions
    with jax.enable_x64(True):
        expected = _loop(module, params, ids, predict, orders)
        got = perplexity.jit_order_log_probs(module, MASK, steps_per_call)(
            params, ids, predict, _full_order(predict, orders), ids != PAD)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=0)


def test_sequential_pseudo_perplexity_equals_the_loop(model):
    module, params = model
    ids, predict = _texts()
    with jax.enable_x64(True):
        expected = _loop(module, params, ids, predict, [np.flatnonzero(p) for p in predict])
        got = perplexity.pseudo_perplexity(module, params, ids, predict, 'left_to_right', mask_id=MASK,
                                           batch_size=2)
    assert got.num_tokens == predict.sum() == 8
    np.testing.assert_allclose(got.log_prob, expected.sum(), rtol=1e-12)
    np.testing.assert_allclose(got.ppl, np.exp(-expected.sum() / 8), rtol=1e-12)


def test_random_order_is_a_seeded_permutation_and_scores_as_the_loop(model):
    module, params = model
    ids, predict = _texts()
    a = np.asarray(perplexity.generation_order(predict, 'random', jax.random.key(5)))
    b = np.asarray(perplexity.generation_order(predict, 'random', jax.random.key(5)))
    c = np.asarray(perplexity.generation_order(predict, 'random', jax.random.key(6)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for row in range(len(ids)):
        n = predict[row].sum()
        assert sorted(a[row]) == list(range(ids.shape[1]))  # a permutation of all positions
        assert sorted(a[row][:n]) == list(np.flatnonzero(predict[row]))  # the predicted ones first
    with jax.enable_x64(True):  # (float64 draws: the orders of a float64 run)
        # pseudo_perplexity's batch 0 uses fold_in(rng, 0); the loop follows the same orders
        orders = np.asarray(perplexity.generation_order(predict, 'random', jax.random.fold_in(jax.random.key(5), 0)))
        expected = _loop(module, params, ids, predict, [o[:p.sum()] for o, p in zip(orders, predict)])
        got = perplexity.pseudo_perplexity(module, params, ids, predict, 'random', mask_id=MASK,
                                           rng=jax.random.key(5), batch_size=2)
        again = perplexity.pseudo_perplexity(module, params, ids, predict, 'random', mask_id=MASK,
                                             rng=jax.random.key(5), batch_size=2)
        sequential = perplexity.pseudo_perplexity(module, params, ids, predict, 'left_to_right', mask_id=MASK)
    np.testing.assert_allclose(got.log_prob, expected.sum(), rtol=1e-12)
    assert got == again and got.ppl != sequential.ppl
    with pytest.raises(ValueError, match='needs rng'):
        perplexity.pseudo_perplexity(module, params, ids, predict, 'random', mask_id=MASK)
    with pytest.raises(ValueError, match='Unknown generation order'):
        perplexity.generation_order(predict, 'confident')


def test_decoder_perplexity_is_exp_of_transformers_gpt2_loss():
    torch = pytest.importorskip('torch')
    from plmjax.convert import hf, parity
    torch.manual_seed(0)
    hf_model = parity.tiny_hf_model('gpt2')
    converted = hf.from_hf(hf_model.config.to_dict(), {k: v.detach().numpy() for k, v in
                                                       hf_model.state_dict().items()})
    module = models.build_model('decoder', converted.config)
    rng = np.random.default_rng(0)
    targets = rng.integers(1, hf_model.config.vocab_size - 1, size=(3, 9)).astype(np.int32)
    targets[1, 6:] = 0  # a padded row: right padding (id 0) is not predicted
    predict = targets > 0
    # transformers scores labels[1:] from inputs[:-1]; with id 0 first the inputs are plmjax's shifted targets
    inputs = np.concatenate([np.zeros((3, 1), np.int32), targets], axis=1)
    labels = np.where(np.concatenate([np.zeros((3, 1), bool), predict], axis=1), inputs, -100)
    with torch.no_grad():
        loss = hf_model(torch.tensor(inputs, dtype=torch.long), attention_mask=torch.tensor(labels != -100).long()
                        .index_fill_(1, torch.tensor([0]), 1), labels=torch.tensor(labels, dtype=torch.long)).loss
    got = perplexity.perplexity(module, converted.params, targets, predict, batch_size=2)
    assert got.num_tokens == predict.sum() == 24
    np.testing.assert_allclose(got.ppl, np.exp(float(loss)), rtol=1e-5)


def test_text_windows_give_both_families_the_same_tokens():
    documents = [[10, 11, 12], [13, 14], [15, 16, 17, 18]]
    w = perplexity.text_windows(documents, 4, cls_id=CLS, sep_id=SEP, pad_id=PAD, eos_id=9)
    # stream: 10 11 12 | 13 14 | 15 16 17 18 | -> windows of 4 tokens
    np.testing.assert_array_equal(w.decoder_ids, [[10, 11, 12, 9], [13, 14, 9, 15], [16, 17, 18, 9]])
    np.testing.assert_array_equal(w.encoder_ids, [[CLS, 10, 11, 12, SEP, SEP], [CLS, 13, 14, SEP, 15, SEP],
                                                  [CLS, 16, 17, 18, SEP, SEP]])
    np.testing.assert_array_equal(w.encoder_ids[w.encoder_predict], w.decoder_ids[w.decoder_predict])
    assert w.decoder_predict.sum() == 9
    short = perplexity.text_windows([[10, 11, 12]], 3, cls_id=CLS, sep_id=SEP, pad_id=PAD, eos_id=9)
    np.testing.assert_array_equal(short.encoder_ids, [[CLS, 10, 11, 12, SEP], [CLS, SEP, SEP, PAD, PAD]])
    np.testing.assert_array_equal(short.decoder_ids, [[10, 11, 12], [9, 0, 0]])
    assert short.encoder_predict.sum() == short.decoder_predict.sum() == 3
