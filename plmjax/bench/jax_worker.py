"""The plmjax side of the benchmark, run inside a worker process: XLA matmul ceiling, train step, decoding.

The train step is the real `plmjax.train.step.jit_train_step` with the objective (spec 'logits': 'all' drops the
objective's `sparse_model_inputs`, so the head runs at every position as in the reference) and optax AdamW
(`plmjax.train.optim.make_optimizer`, constant learning rate, global-norm clipping at 1.0 as its default), on a
one-device mesh; compile time is `lower(...).compile()` of that jitted step, and the compiled step then runs.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from plmjax.bench import batches, configs, timing


def matmul(spec: dict) -> dict:
    """FLOP/s of an [n, n] @ [n, n] XLA matmul: float32, bfloat16 (bfloat16 result) and bfloat16 operands with a
    float32 result (the products of matmul_dtype='bfloat16', which XLA:CPU hands to its AMX/AVX512-BF16 kernels)."""
    n, repeats = spec['n'], spec['repeats']
    out = {}
    for name, dtype, result in (('float32', 'float32', None), ('bfloat16', 'bfloat16', None),
                                ('bfloat16_to_float32', 'bfloat16', jnp.float32)):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
        dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=result))
        dot(a, b).block_until_ready()
        rates = timing.repeat_rates(lambda steps: [dot(a, b).block_until_ready() for _ in range(steps)],
                                    spec['steps'], repeats, 2 * n ** 3)
        out[name] = rates
    return {'flops_per_s': out}


MATMUL_DTYPE = {'xla_f32': None, 'xla_bf16_matmul': 'bfloat16'}  # plmjax variant -> TransformerConfig.matmul_dtype


def _model(bench: configs.ModelBench, size: str, variant: str = 'xla_f32'):
    from plmjax import models
    config = models.PRESETS[bench.preset](**bench.preset_overrides(size), matmul_dtype=MATMUL_DTYPE[variant])
    return config, models.build_model(bench.architecture, config)


def train(spec: dict) -> dict:
    from flax import linen as nn
    from plmjax import objectives, sharding
    from plmjax.train import optim, state as state_lib, step as step_lib

    bench = configs.MODELS[spec['model']]
    config, module = _model(bench, spec['size'], spec['variant'])
    lengths = bench.feature_lengths(spec['size'])
    objective = objectives.get_objective(bench.objective)
    if spec.get('logits', 'all') == 'all':  # the head at every position, as the reference computes it
        objective = dataclasses.replace(objective, sparse_model_inputs=None)
    elif objective.sparse_model_inputs is None:
        raise ValueError(f'{bench.objective} has no head at the predicted positions only (logits={spec["logits"]!r}).')
    tx, schedule = optim.make_optimizer('adamw', learning_rate=1e-4, schedule='constant')
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    state, shardings = state_lib.create_train_state(module, tx, bench.architecture, lengths, mesh, seed=0)
    step = step_lib.jit_train_step(module, objective, tx, schedule, mesh, shardings)
    batch = batches.synthetic_batch(bench.architecture, bench.batch_size, lengths, config.vocab_size)
    batch = sharding.shard_batch(batch, mesh)

    start = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
        compiled = step.__wrapped__.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    holder = {'state': state}

    def run_steps(steps):
        for _ in range(steps):
            holder['state'], metrics = compiled(holder['state'], batch)
        jax.block_until_ready(holder['state'])
        holder['metrics'] = metrics

    run_steps(1)  # first execution: buffer allocation
    tokens = sum(bench.batch_size * length for length in lengths.values())
    rates = timing.repeat_rates(run_steps, spec['steps'], spec['repeats'], tokens)
    loss = float(holder['metrics']['loss'][0] / holder['metrics']['loss'][1])
    return {'tokens_per_s': rates, 'compile_s': compile_s, 'loss': loss, 'tokens_per_step': tokens}


def decode(spec: dict) -> dict:
    """Decoding tokens/s of one model at each batch size, greedy and beam search (one process: the peak RSS is
    the largest configuration's), on the weights of `spec['weights_dir']` (a Hugging Face directory, converted
    with `plmjax.convert.load_hf`; the reference loads the same). An encoder-decoder encodes its inputs once
    and computes the cross-attention keys/values once (plmjax.decode.decoding)."""
    from plmjax import convert
    from plmjax.decode import decoding, weights as weights_lib
    bench = configs.DECODES[spec['model']]
    config, module = _model(configs.MODELS[bench.model], spec['size'], spec['variant'])
    prompt_length, new_tokens = bench.shape(spec['size'])
    # One-time costs, each reported on its own: reading and converting the checkpoint (`from_pretrained` on the
    # other side), then the decoding layout, made once and kept across calls as a served model keeps its weights
    # (`generate`'s are in PyTorch's [out, in] layout already), compile and run.
    start = time.perf_counter()
    converted = convert.load_hf(spec['weights_dir'])
    params = jax.block_until_ready(jax.tree.map(jnp.asarray, converted.params))
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    weights = jax.block_until_ready(jax.jit(functools.partial(weights_lib.prepare, module))(params))
    prepare_s = time.perf_counter() - start
    del converted, params
    by_batch = {}
    for num_beams in spec.get('num_beams', (1,)):
        for batch_size in spec['batch_sizes']:
            prompt = np.random.default_rng(0).integers(batches.FIRST_ID, config.vocab_size,
                                                       (batch_size, prompt_length)).astype(np.int32)
            options = decoding.Options(max_new_tokens=new_tokens, strategy='greedy' if num_beams == 1 else 'beam',
                                       num_beams=num_beams, eos_id=bench.eos_id,
                                       min_new_tokens=new_tokens if bench.min_new_tokens else 0)
            start = time.perf_counter()
            compiled = decoding.jit_generate(module, options).lower(weights, prompt).compile()
            compile_s = time.perf_counter() - start
            holder = {}

            def run_steps(steps):
                for _ in range(steps):
                    out = compiled(weights, prompt)
                out.tokens.block_until_ready()
                holder['out'] = out

            run_steps(1)
            out = holder['out']
            assert (np.asarray(out.lengths) == new_tokens).all(), 'a row stopped early: the work is not equal'
            rates = timing.repeat_rates(run_steps, spec['steps'], spec['repeats'], batch_size * new_tokens)
            by_batch[f'{batch_size}/{num_beams}'] = {'tokens_per_s': rates, 'compile_s': compile_s,
                                                     'prepare_s': prepare_s, 'convert_s': convert_s,
                                                     'tokens': np.asarray(out.tokens).tolist()}
    return {'by_batch': by_batch}


def parse(spec: dict) -> dict:
    """Impact matrices per second: PerturbedMasking over the bench sentences, host-side aggregation included."""
    from flax import linen as nn
    from plmjax import models
    from plmjax.analysis import impact, masking
    bench = configs.PARSE
    config = models.PRESETS[bench.preset](**bench.preset_overrides(spec['size']),
                                          matmul_dtype=MATMUL_DTYPE[spec['variant']])
    module = models.build_model('encoder', config)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
    sentences = [masking.Encoded.from_pieces(p, 1, 2) for p in bench.sentences(spec['size'], config.vocab_size)]
    computer = impact.PerturbedMasking(module, params, mask_id=batches.MASK_ID, batch_size=bench.batch_size)

    def run_steps(steps):
        for _ in range(steps):
            matrices = list(computer.matrices(sentences, chunk_copies=bench.chunk_copies))
        assert len(matrices) == len(sentences)

    start = time.perf_counter()
    run_steps(1)  # compiles one shape per padded length
    first_s = time.perf_counter() - start
    rates = timing.repeat_rates(run_steps, spec['steps'], spec['repeats'], len(sentences))
    copies = sum(len(masking.masked_sets(e.num_words)) for e in sentences)
    return {'sentences_per_s': rates, 'first_s': first_s, 'sentences': len(sentences), 'copies': copies}




def _directory_bytes(path: str) -> int:
    import os
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def infer(spec: dict) -> dict:
    """Examples/s of a saved model's forward pass (`plmjax train` / `plmjax convert` output, e.g. a teacher and its
    compressed students) on [batch_size, length] token ids, and its size: parameters, the checkpoint step's bytes
    on disk, and a quantized student's packed file (`student/packed.npz`). A quantized student runs as it trains
    and evaluates here: `quantize.quantized_model`, the weights and activations fake-quantized in float32 (no low-bit
    kernels on CPU)."""
    import os
    from plmjax import models
    from plmjax.train import saved_model

    saved = saved_model.load_saved_model(spec['checkpoint'])
    module = models.build_model(saved.architecture, saved.config, **(saved.metadata.get('head_options') or {}))
    from plmjax.compression import quantize
    from plmjax.models import finetune as finetune_models
    module = quantize.as_saved(module, saved.metadata)
    batch, length = spec['batch_size'], min(spec['length'], saved.config.max_length)
    tokens = jax.random.randint(jax.random.key(0), (batch, length), 5, saved.config.vocab_size)
    params = jax.device_put(saved.params)
    forward = jax.jit(lambda p, x: finetune_models.head_outputs(module.apply({'params': p}, x, deterministic=True)))
    start = time.perf_counter()
    jax.block_until_ready(forward(params, tokens))
    compile_s = time.perf_counter() - start
    rates = timing.repeat_rates(lambda steps: [jax.block_until_ready(forward(params, tokens)) for _ in range(steps)],
                                spec['steps'], spec['repeats'], batch)
    step_dir = os.path.join(saved.checkpoint, str(saved.step))
    packed = os.path.join(os.path.dirname(saved.checkpoint), 'packed.npz')
    return {'examples_per_s': rates, 'compile_s': compile_s, 'length': length,
            'parameters': int(sum(np.size(x) for x in jax.tree.leaves(saved.params))),
            'checkpoint_bytes': _directory_bytes(step_dir),
            'packed_bytes': os.path.getsize(packed) if os.path.exists(packed) else None,
            'quantize': saved.metadata.get('quantize')}


MEASURES = {'infer': infer, 'matmul': matmul, 'train': train, 'decode': decode, 'parse': parse}
