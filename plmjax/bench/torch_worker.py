"""The PyTorch reference, run inside a worker process that never imports jax.

`transformers` models are built from the config.json that `plmjax.convert.to_hf` writes for the plmjax preset
(computed by the parent process), trained with `torch.optim.AdamW` (BERT's hyper-parameters, no weight decay on
biases and norms, global-norm clipping at 1.0: what `plmjax.train.optim.make_optimizer` builds). Variants:
'eager_f32', 'eager_bf16_autocast' (torch.autocast on CPU, bfloat16) and 'compile' (torch.compile, float32; the
first step's extra time is the compile time). Dropout is on in both frameworks (train mode).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import transformers

from plmjax.bench import batches, configs, timing

VARIANTS = ('eager_f32', 'eager_bf16_autocast', 'compile')


def matmul(spec: dict) -> dict:
    n = spec['n']
    out = {}
    for name, dtype in (('float32', torch.float32), ('bfloat16', torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        out[name] = timing.repeat_rates(lambda steps: [torch.mm(a, b) for _ in range(steps)], spec['steps'],
                                        spec['repeats'], 2 * n ** 3)
    return {'flops_per_s': out}


def _hf_model(spec: dict, hf_class: str):
    hf_config = dict(spec['hf_config'])
    config = transformers.CONFIG_MAPPING[hf_config.pop('model_type')](**hf_config)
    torch.manual_seed(0)
    return getattr(transformers, hf_class)(config)


def _optimizer(model) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        no = name.endswith('bias') or 'layernorm' in name.lower() or 'layer_norm' in name or '.ln_' in name
        (no_decay if no else decay).append(param)
    return torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01}, {'params': no_decay, 'weight_decay': 0.0}],
                             lr=1e-4, betas=(0.9, 0.999), eps=1e-6)


def train(spec: dict) -> dict:
    variant = spec['variant']
    if variant not in VARIANTS:
        raise ValueError(f'unknown PyTorch variant {variant!r}; choose one of {VARIANTS}.')
    bench = configs.MODELS[spec['model']]
    lengths = bench.feature_lengths(spec['size'])
    model = _hf_model(spec, bench.hf_class).train()
    optimizer = _optimizer(model)
    batch = batches.synthetic_batch(bench.architecture, bench.batch_size, lengths, spec['hf_config']['vocab_size'])
    inputs = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in batches.hf_inputs(bench.architecture,
                                                                                           batch).items()}
    forward = torch.compile(model) if variant == 'compile' else model
    autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if variant == 'eager_bf16_autocast' else \
        contextlib.nullcontext
    holder = {}

    def run_steps(steps):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = forward(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        holder['loss'] = float(loss)

    start = time.perf_counter()
    run_steps(1)  # the first step (torch.compile: tracing and compiling)
    first_s = time.perf_counter() - start
    tokens = sum(bench.batch_size * length for length in lengths.values())
    rates = timing.repeat_rates(run_steps, spec['steps'], spec['repeats'], tokens)
    result = {'tokens_per_s': rates, 'loss': holder['loss'], 'tokens_per_step': tokens,
              'torch_threads': torch.get_num_threads()}
    if variant == 'compile':
        result['compile_s'] = max(first_s - tokens / np.median(rates), 0.0)
    return result


def decode(spec: dict) -> dict:
    """`generate` tokens/s of one model at each batch size, greedy and beam search (KV cache; a decoder without
    EOS, an encoder-decoder with EOS held back by min_new_tokens: every step runs), on the weights plmjax
    decodes (`from_pretrained(spec['weights_dir'])`, timed as the one-time load)."""
    bench = configs.DECODES[spec['model']]
    prompt_length, new_tokens = bench.shape(spec['size'])
    hf_class = getattr(transformers, configs.MODELS[bench.model].hf_class)
    start = time.perf_counter()
    model = hf_class.from_pretrained(spec['weights_dir']).eval()
    load_s = time.perf_counter() - start
    encoder_decoder = model.config.is_encoder_decoder
    # generate's output: a decoder's prompt + new tokens; an encoder-decoder's decoder start token + new tokens.
    skip = 1 if encoder_decoder else prompt_length
    eos = {'eos_token_id': bench.eos_id, 'min_new_tokens': new_tokens} if bench.min_new_tokens else \
        {'eos_token_id': None}
    by_batch = {}
    for num_beams in spec.get('num_beams', (1,)):
        for batch_size in spec['batch_sizes']:
            prompt = torch.from_numpy(np.random.default_rng(0).integers(
                batches.FIRST_ID, spec['hf_config']['vocab_size'], (batch_size, prompt_length)))
            mask = torch.ones_like(prompt)
            holder = {}

            def run_steps(steps):
                with torch.inference_mode():
                    for _ in range(steps):
                        out = model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                             num_beams=num_beams, pad_token_id=0, use_cache=True,
                                             length_penalty=1.0, early_stopping=False, **eos)
                assert out.shape[1] == skip + new_tokens
                holder['out'] = out

            run_steps(1)
            by_batch[f'{batch_size}/{num_beams}'] = {
                'tokens_per_s': timing.repeat_rates(run_steps, spec['steps'], spec['repeats'], batch_size * new_tokens),
                'convert_s': load_s, 'tokens': holder['out'][:, skip:].tolist()}
    return {'by_batch': by_batch}


def parse(spec: dict) -> dict:
    """The same impact matrices with `transformers`' BertModel (eval, no grad, float32): the same masked copies
    in the same [batch, length] blocks (no padding rows added to a last, short block), the same aggregation."""
    from plmjax.analysis import masking
    bench = configs.PARSE
    model = _hf_model(spec, bench.hf_class).eval()
    sentences = [masking.Encoded.from_pieces(p, 1, 2)
                 for p in bench.sentences(spec['size'], spec['hf_config']['vocab_size'])]

    def run_steps(steps):
        with torch.inference_mode():
            for _ in range(steps):
                matrices = []
                for chunk in masking.chunks(sentences, bench.chunk_copies):
                    copies = masking.masked_copies(chunk, batches.MASK_ID)
                    outputs = [model(input_ids=torch.from_numpy(copies.ids[b:b + bench.batch_size].astype(np.int64)),
                                     attention_mask=torch.from_numpy(copies.mask[b:b + bench.batch_size].astype(
                                         np.int64))).last_hidden_state.numpy()
                               for b in range(0, len(copies.rows), bench.batch_size)]
                    matrices += copies.matrices(np.concatenate(outputs), 'dist')
        assert len(matrices) == len(sentences)

    run_steps(1)
    return {'sentences_per_s': timing.repeat_rates(run_steps, spec['steps'], spec['repeats'], len(sentences)),
            'sentences': len(sentences), 'torch_threads': torch.get_num_threads()}


MEASURES = {'matmul': matmul, 'train': train, 'decode': decode, 'parse': parse}
