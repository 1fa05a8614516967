"""The decoding loop (`plmjax.decode.decoding`): the same token ids as `transformers`' generate for ragged batches
of GPT-2, T5 v1.0 / v1.1 and BART (greedy, EOS per row), sampling's distribution against the truncated,
renormalized one, seeds, min_new_tokens, and 8 fake devices against one."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import linen as nn  # noqa: E402

from plmjax import models, sharding  # noqa: E402
from plmjax.decode import decoding  # noqa: E402
from plmjax.decode import weights as weights_lib  # noqa: E402

NEW = 10


def _converted(name, eos_factor=None, eos=5):
    """A tiny random transformers model and its conversion. The tiny models repeat one token forever; with
    `eos_factor`, EOS's row of the output embedding is scaled by it, so that EOS is likely in some contexts and
    hypotheses end at different steps."""
    torch = pytest.importorskip('torch')
    from plmjax.convert import hf, parity
    torch.manual_seed(0)  # transformers' own initialization, before the seeded perturbation
    hf_model = parity.tiny_hf_model(name)
    if eos_factor is not None:
        with torch.no_grad():
            hf_model.get_output_embeddings().weight[eos] *= eos_factor
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    converted = hf.from_hf(hf_model.config.to_dict(), state)
    family = 'encoder_decoder' if hf_model.config.is_encoder_decoder else 'decoder'
    return hf_model, models.build_model(family, converted.config), converted.params


def _start_id(hf_model):
    """The decoder start id (transformers 5 keeps it in the generation config for T5)."""
    for source in (hf_model.generation_config, hf_model.config):
        start = getattr(source, 'decoder_start_token_id', None)
        if start is not None:
            return start
    return 0


def _hf_generate(hf_model, ids, mask, new, eos_id, pad_id):
    import torch
    config = hf_model.config
    kwargs = dict(max_new_tokens=new, min_new_tokens=0, do_sample=False, num_beams=1, eos_token_id=eos_id,
                  pad_token_id=pad_id, forced_bos_token_id=None, forced_eos_token_id=None,
                  no_repeat_ngram_size=0, repetition_penalty=1.0, length_penalty=1.0)
    if config.is_encoder_decoder:
        kwargs['decoder_start_token_id'] = _start_id(hf_model)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kwargs)
    out = out.numpy()
    return out[:, 1:] if config.is_encoder_decoder else out[:, ids.shape[1]:]  # drop the decoder start / prompt


def _ragged(vocab, pad_id, left, seed=0, batch=3, length=7):
    """ids, mask: row k has length - 2k real tokens, padded on the left (decoder prompts) or the right."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for k in range(1, batch):
        pads = slice(0, 2 * k) if left else slice(length - 2 * k, length)
        mask[k, pads], ids[k, pads] = 0, pad_id
    return ids, mask


def _assert_same_tokens(ours, expected, pad_id):
    """`generate` stops when every row is done: its output may be shorter; ours is pad_id there."""
    ours = np.asarray(ours)
    np.testing.assert_array_equal(ours[:, :expected.shape[1]], expected)
    assert (ours[:, expected.shape[1]:] == pad_id).all()


@pytest.mark.parametrize('name', ['gpt2', 't5', 't5_v1_1', 'bart'])
def test_greedy_matches_transformers_generate_on_a_ragged_batch_with_eos(name):
    hf_model, module, params = _converted(name)
    config = hf_model.config
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    ids, mask = _ragged(config.vocab_size, pad_id, left=not config.is_encoder_decoder)
    plain = _hf_generate(hf_model, ids, mask, NEW, eos_id=None, pad_id=pad_id)
    start = _start_id(hf_model) if config.is_encoder_decoder else 0
    run = decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW, pad_id=pad_id), decoder_start_id=start)
    _assert_same_tokens(run(params, ids, mask).tokens, plain, pad_id)

    eos = int(plain[1, 3])  # row 1 stops after 4 tokens (others where they meet it, or never)
    expected = _hf_generate(hf_model, ids, mask, NEW, eos_id=eos, pad_id=pad_id)
    options = decoding.Options(max_new_tokens=NEW, eos_id=eos, pad_id=pad_id)
    out = decoding.jit_generate(module, options, decoder_start_id=start)(params, ids, mask)
    _assert_same_tokens(out.tokens, expected, pad_id)
    stops = [int(np.argmax(row == eos)) + 1 if (row == eos).any() else NEW for row in plain]
    assert stops[1] <= 4 and np.asarray(out.lengths).tolist() == stops


def test_scores_are_the_log_probabilities_of_the_chosen_tokens():
    module, params = _tiny('decoder', seed=1)
    ids = np.random.default_rng(1).integers(5, module.config.vocab_size, (2, 4)).astype(np.int32)
    out = decoding.jit_generate(module, decoding.Options(max_new_tokens=5))(params, ids)
    sequence = np.concatenate([ids, np.asarray(out.tokens)], axis=1)
    logits = module.apply({'params': params}, sequence)['logits']
    log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
    expected = [sum(log_probs[b, 3 + t, sequence[b, 4 + t]] for t in range(5)) for b in range(2)]
    np.testing.assert_allclose(np.asarray(out.scores, np.float64), expected, rtol=1e-5)


def _tiny(family, seed=0, **overrides):
    config = (models.tiny_decoder if family == 'decoder' else models.tiny_encoder_decoder)(**overrides)
    module = models.build_model(family, config)
    inputs = (jnp.ones((1, 8), jnp.int32),) * (1 if family == 'decoder' else 2)
    return module, nn.meta.unbox(module.init(jax.random.key(seed), *inputs)['params'])


@pytest.mark.parametrize('family', ['decoder', 'encoder_decoder'])
def test_sampling_with_top_k_1_is_greedy_and_a_seed_gives_the_same_sample(family):
    module, params = _tiny(family, seed=2)
    ids, mask = _ragged(module.config.vocab_size, 0, left=family == 'decoder', seed=2)
    greedy = decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW))(params, ids, mask).tokens
    top1 = decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW, strategy='sample', top_k=1))
    np.testing.assert_array_equal(np.asarray(top1(params, ids, mask, jax.random.key(5)).tokens), np.asarray(greedy))
    sample = decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW, strategy='sample', temperature=2.0))
    a, b, c = (np.asarray(sample(params, ids, mask, jax.random.key(k)).tokens) for k in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize('top_k, top_p', [(3, 1.0), (0, 0.7), (4, 0.8), (0, 1.0)])
def test_sampling_frequencies_match_the_truncated_renormalized_distribution(top_k, top_p):
    from scipy import stats
    logits = np.log(np.array([0.30, 0.22, 0.15, 0.12, 0.09, 0.07, 0.05], np.float64))
    probs = np.exp(logits)
    order = np.argsort(-probs)
    keep = np.zeros(len(probs), bool)
    keep[order[:top_k or len(probs)]] = True  # transformers' definitions, by hand: top-k first...
    kept = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
    mass = 0.0
    for token in order:  # ...then top-p on the renormalized top-k distribution
        if mass >= top_p:
            keep[token] = False
        mass += kept[token]
    expected = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
    options = decoding.Options(max_new_tokens=1, strategy='sample', top_k=top_k, top_p=top_p)
    draws = 20000
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (draws, len(logits)))
    tokens = np.asarray(jax.jit(lambda k: decoding.choose(batch, options, k))(jax.random.key(11)))
    counts = np.bincount(tokens, minlength=len(logits))
    assert counts[~keep].sum() == 0
    observed, freq = counts[keep], expected[keep] * draws  # float64, sums to draws
    assert stats.chisquare(observed, freq * observed.sum() / freq.sum()).pvalue > 1e-3


def test_warp_logits_keeps_ties_at_the_kth_and_at_least_one_token():
    logits = jnp.asarray([[2.0, 1.0, 1.0, 0.0], [5.0, -5.0, -5.0, -5.0]])
    kept = np.isfinite(np.asarray(decoding.warp_logits(logits, top_k=2)))
    assert kept.tolist() == [[True, True, True, False], [True, True, True, True]]
    nucleus = np.isfinite(np.asarray(decoding.warp_logits(logits, top_p=0.01)))
    assert nucleus.sum(axis=1).tolist() == [1, 1]


def test_min_new_tokens_holds_eos_back_and_options_are_checked():
    module, params = _tiny('decoder', seed=3)
    ids = np.random.default_rng(3).integers(5, module.config.vocab_size, (2, 4)).astype(np.int32)
    plain = np.asarray(decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW))(params, ids).tokens)
    eos = int(plain[0, 0])  # the first token of row 0: with EOS, that row stops at once...
    out = decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW, eos_id=eos))(params, ids)
    assert int(out.lengths[0]) == 1
    held = decoding.jit_generate(module, decoding.Options(max_new_tokens=NEW, eos_id=eos, min_new_tokens=3))
    tokens = np.asarray(held(params, ids).tokens)
    assert (tokens[:, :3] != eos).all()  # ...unless EOS may not come before 3 tokens
    for bad, match in [(dict(strategy='beam_me_up'), 'strategy'), (dict(max_new_tokens=0), 'max_new_tokens'),
                       (dict(min_new_tokens=11), 'min_new_tokens'), (dict(temperature=0.0), 'temperature'),
                       (dict(top_p=0.0), 'top_p')]:
        with pytest.raises(ValueError, match=match):
            decoding.Options(**{'max_new_tokens': NEW, **bad})
    with pytest.raises(ValueError, match='rng'):
        decoding.generate(module, params, ids, decoding.Options(max_new_tokens=2, strategy='sample'))


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
@pytest.mark.parametrize('family', ['decoder', 'encoder_decoder'])
def test_decoding_on_8_devices_gives_the_1_device_tokens(family):
    module, params = _tiny(family, seed=4)
    ids, mask = _ragged(module.config.vocab_size, 0, left=family == 'decoder', seed=4, batch=4)
    options = {'greedy': decoding.Options(max_new_tokens=NEW),
               'sample': decoding.Options(max_new_tokens=NEW, strategy='sample', top_p=0.9),
               'beam': decoding.Options(max_new_tokens=NEW, strategy='beam', num_beams=3, eos_id=7)}
    expected = {k: decoding.jit_generate(module, o)(params, ids, mask, jax.random.key(1)).tokens
                for k, o in options.items()}
    mesh = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    rules = sharding.LOGICAL_AXIS_RULES
    inputs = (jnp.ones((1, 8), jnp.int32),) * (1 if family == 'decoder' else 2)
    init = lambda: module.init(jax.random.key(4), *inputs)  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = sharding.logical_to_sharding(nn.get_partition_spec(jax.eval_shape(init)), mesh, rules)
        sharded = nn.meta.unbox(jax.jit(init, out_shardings=shardings)()['params'])
        data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
        ids_d, mask_d = jax.device_put(ids, data), jax.device_put(mask, data)
        for k, o in options.items():
            tokens = decoding.jit_generate(module, o)(sharded, ids_d, mask_d, jax.random.key(1)).tokens
            np.testing.assert_array_equal(np.asarray(tokens), np.asarray(expected[k]), err_msg=k)


def _hf_beam(hf_model, ids, mask, new, eos_id, pad_id, beams, length_penalty, early_stopping=False):
    import torch
    config = hf_model.config
    kwargs = dict(max_new_tokens=new, min_new_tokens=0, do_sample=False, num_beams=beams, eos_token_id=eos_id,
                  pad_token_id=pad_id, forced_bos_token_id=None, forced_eos_token_id=None, no_repeat_ngram_size=0,
                  repetition_penalty=1.0, length_penalty=length_penalty, early_stopping=early_stopping,
                  output_scores=True, return_dict_in_generate=True)
    if config.is_encoder_decoder:
        kwargs['decoder_start_token_id'] = _start_id(hf_model)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kwargs)
    sequences = out.sequences.numpy()
    sequences = sequences[:, 1:] if config.is_encoder_decoder else sequences[:, ids.shape[1]:]
    return sequences, out.sequences_scores.numpy()


@pytest.mark.parametrize('name, length_penalty, early_stopping',
                         [(name, lp, False) for name in ('gpt2', 't5', 't5_v1_1', 'bart') for lp in (0.6, 1.0)]
                         + [('gpt2', 1.0, True), ('bart', 0.6, True), ('gpt2', 0.6, 'never'), ('t5', 1.0, 'never')])
def test_beam_search_matches_transformers_generate_on_a_ragged_batch_with_eos(name, length_penalty, early_stopping):
    eos = 5
    for factor in (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0):  # one where EOS ends some best hypotheses, not all at once
        hf_model, module, params = _converted(name, eos_factor=factor, eos=eos)
        config = hf_model.config
        pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        ids, mask = _ragged(config.vocab_size, pad_id, left=not config.is_encoder_decoder, seed=1)
        expected, expected_scores = _hf_beam(hf_model, ids, mask, NEW, eos, pad_id, 4, length_penalty,
                                             early_stopping)
        stops = [int(np.argmax(row == eos)) + 1 if (row == eos).any() else len(row) for row in expected]
        if min(stops) < NEW and max(stops) > 1:
            break
    else:
        pytest.fail(f'EOS never ends a hypothesis early: pick other inputs ({stops})')
    start = _start_id(hf_model) if config.is_encoder_decoder else 0
    options = decoding.Options(max_new_tokens=NEW, strategy='beam', num_beams=4, length_penalty=length_penalty,
                               early_stopping=early_stopping, eos_id=eos, pad_id=pad_id)
    out = decoding.jit_generate(module, options, decoder_start_id=start)(params, ids, mask)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert lengths.tolist() == stops, (tokens, expected)
    for row, stop in enumerate(stops):  # up to and with EOS (transformers fills the rest with its own fill value)
        np.testing.assert_array_equal(tokens[row, :stop], expected[row, :stop])
        assert (tokens[row, stop:] == pad_id).all()
    np.testing.assert_allclose(np.asarray(out.scores), expected_scores, rtol=1e-4)


def _dot_operand_shapes(jaxpr, in_loop=False):
    """(in a while loop's body?, operand shapes) of every dot_general in a jaxpr and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'dot_general':
            yield in_loop, tuple(tuple(v.aval.shape) for v in eqn.invars)
        for name, param in eqn.params.items():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                sub = getattr(sub, 'jaxpr', sub)
                if hasattr(sub, 'eqns'):
                    loop = in_loop or (eqn.primitive.name == 'while' and name == 'body_jaxpr')
                    yield from _dot_operand_shapes(sub, loop)


@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.parametrize('strategy', ['greedy', 'sample', 'beam'])
def test_cross_attention_keys_values_are_computed_once_at_the_prefill(strategy, scan_layers):
    """No decoding step multiplies anything of the encoder output's shape: the cross-attention key/value
    projections run at the prefill only (old code: 2 per layer per step), and the cache holds their products."""
    module, params = _tiny('encoder_decoder', seed=5, scan_layers=scan_layers)
    cfg, enc_length = module.config, 11  # no other axis is 11 long
    ids, mask = _ragged(cfg.vocab_size, 0, left=False, seed=5, length=enc_length)
    options = decoding.Options(max_new_tokens=NEW, strategy=strategy, num_beams=3, eos_id=7)
    run = lambda p, i, m: decoding.generate(module, p, i, options, input_mask=m, rng=jax.random.key(0))  # noqa
    jaxpr = jax.make_jaxpr(run)(params, ids, mask).jaxpr
    projections = [in_loop for in_loop, shapes in _dot_operand_shapes(jaxpr)
                   if any(s[-2:] == (enc_length, cfg.emb_dim)  # or flattened to [rows * enc_length, emb]
                          or (len(s) == 2 and s[1] == cfg.emb_dim and s[0] % enc_length == 0) for s in shapes)]
    layer_calls = 1 if scan_layers else cfg.num_decoder_layers  # a scan body holds one layer's products
    assert not any(projections), 'a decoding step projects the encoder output'
    assert len(projections) >= 2 * layer_calls + cfg.num_encoder_layers  # encoder's and the prefill's, outside

    # the cache after the prefill holds the key/value projections of the encoder output, and beam search's
    # gather keeps them (identical across a row's beams)
    weights = weights_lib.prepare(module, params)
    beams = 3 if strategy == 'beam' else 1
    _, cache, _, _ = decoding._prefill(module, weights, jnp.asarray(ids), jnp.asarray(mask), NEW, 0, beams=beams)
    encoded = module.apply({'params': params}, jnp.asarray(ids), encoder_mask=jnp.asarray(mask) != 0,
                           method='encode')
    encoded = jnp.repeat(encoded, beams, axis=0)
    stack = params['decoder']
    for layer in range(cfg.num_decoder_layers):
        for name in ('key', 'value'):
            if scan_layers:
                kernel = stack['layers']['cross_attention'][name]['kernel'][layer]
                cached = cache['decoder']['layers']['cross_attention'][f'cross_{name}'][layer]
            else:
                kernel = stack[f'layers_{layer}']['cross_attention'][name]['kernel']
                cached = cache['decoder'][f'layers_{layer}']['cross_attention'][f'cross_{name}']
            expected = jnp.swapaxes(jnp.einsum('bke,ehd->bkhd', encoded, kernel), 1, 2)
            np.testing.assert_allclose(np.asarray(cached), np.asarray(expected), rtol=1e-5, atol=1e-5)
