"""`plmjax infer`: generation from a decoder or encoder-decoder checkpoint (t5x's infer), with
`plmjax.decode.decoding` (greedy, sampling, beam search).

    plmjax infer --checkpoint=runs/gpt2 --inputs=prompts.txt --out=outputs.jsonl --max_new_tokens=32
    plmjax infer --checkpoint=runs/t5 --inputs=inputs.jsonl --strategy=beam --num_beams=4 --length_penalty=0.6

Inputs: a text file (one input a line) or JSON lines with an "inputs" (or "text", "prompt") field. Outputs: one
JSON line per input, in order: {"input", "output", "tokens", "length", "score"}; `score` is the sum of the
model's log-probabilities of the tokens (beam search: that sum over length ** length_penalty). Tokenizer: the
checkpoint's `tokenizer/` (`tokenizer.json` of a converted checkpoint), or --vocab (a SentencePiece model or a
WordPiece vocab.txt), or --task (the seqio task a `plmjax train` run used). Decoder prompts are left-padded in a
batch, encoder-decoder inputs right-padded; a batch's length is rounded up to a multiple of 16 (few compiles).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from plmjax.convert import checkpoint as convert_checkpoint
from plmjax.evaluation import vocabulary as vocab_flags
from plmjax.train import checkpoint as checkpoint_lib

STRATEGIES = ('greedy', 'sample', 'beam', 'pmlm')
INPUT_FIELDS = ('inputs', 'text', 'prompt')
LENGTH_MULTIPLE = 16


def add_parser(subparsers) -> None:
    p = subparsers.add_parser('infer', help='generate text from a decoder or encoder-decoder checkpoint')
    p.add_argument('--checkpoint', required=True, help='a plmjax model dir (converted or trained)')
    p.add_argument('--inputs', required=True, help='a text file (one input a line) or JSON lines with "inputs"')
    p.add_argument('--out', default=None, help='the JSON-lines output (default <inputs>.outputs.jsonl)')
    p.add_argument('--strategy', default='greedy', help=f'one of {STRATEGIES}')
    p.add_argument('--max_new_tokens', type=int, default=32)
    p.add_argument('--min_new_tokens', type=int, default=0)
    p.add_argument('--temperature', type=float, default=1.0)
    p.add_argument('--top_k', type=int, default=0, help='sample: keep the k most probable tokens (0: all)')
    p.add_argument('--top_p', type=float, default=1.0, help='sample: nucleus mass (1.0: all)')
    p.add_argument('--num_beams', type=int, default=4)
    p.add_argument('--length_penalty', type=float, default=1.0)
    p.add_argument('--early_stopping', default='false', choices=('false', 'true', 'never'))
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--seed', type=int, default=0, help='sample: the PRNG seed (the same seed, the same samples)')
    p.add_argument('--vocab', default=None, help='a SentencePiece model or WordPiece vocab.txt (else tokenizer/)')
    p.add_argument('--task', default=None, help='the seqio task whose vocabulary the checkpoint was trained with')
    p.add_argument('--traceback', action='store_true', help='show the full traceback of an error')


@dataclasses.dataclass
class Codec:
    """Text <-> ids of one tokenizer, with the ids decoding needs."""
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_id: Optional[int]
    pad_id: int


def _codec(root: str, vocab: Optional[str], task: Optional[str]) -> Codec:
    if task or vocab:
        vocabulary = vocab_flags.from_flags(vocab, task)
        return Codec(lambda text: list(vocabulary.encode(text)), lambda ids: vocabulary.decode(ids),
                     vocabulary.eos_id, vocabulary.pad_id or 0)
    path = os.path.join(root, 'tokenizer', 'tokenizer.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{root} has no tokenizer/tokenizer.json: pass --vocab FILE or --task NAME.')
    import tokenizers
    tokenizer = tokenizers.Tokenizer.from_file(path)
    config = {}
    for name in ('special_tokens_map.json', 'tokenizer_config.json'):
        file = os.path.join(root, 'tokenizer', name)
        if os.path.isfile(file):
            with open(file, encoding='utf-8') as f:
                config.update({k: v for k, v in json.load(f).items() if k not in config})

    def special(name):
        value = config.get(name)
        value = value.get('content') if isinstance(value, dict) else value
        return None if value is None else tokenizer.token_to_id(value)

    eos = special('eos_token')
    pad = special('pad_token')
    return Codec(lambda text: tokenizer.encode(text).ids, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                 eos, pad if pad is not None else (eos if eos is not None else 0))


def read_inputs(path: str) -> list[str]:
    """The inputs of a text or JSON-lines file; a malformed line names its file:line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--inputs {path}: no such file.')
    texts = []
    jsonl = path.endswith(('.jsonl', '.json'))
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line.strip():
                continue
            if not jsonl:
                texts.append(line)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{number}: not a JSON object ({error.msg}); one JSON object a line, with '
                                 f'one of the fields {INPUT_FIELDS}.') from None
            field = next((k for k in INPUT_FIELDS if isinstance(record, dict) and k in record), None)
            if field is None:
                raise ValueError(f'{path}:{number}: no field {" / ".join(INPUT_FIELDS)} in this line.')
            texts.append(str(record[field]))
    if not texts:
        raise ValueError(f'--inputs {path} holds no inputs.')
    return texts


def _batch(ids: list[list[int]], pad_id: int, left: bool):
    length = -(-max(len(x) for x in ids) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    tokens = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, x in enumerate(ids):
        cols = slice(length - len(x), length) if left else slice(0, len(x))
        tokens[row, cols], mask[row, cols] = x, 1
    return tokens, mask


def run(args: argparse.Namespace) -> int:
    import jax

    from plmjax import models
    from plmjax.decode import decoding, weights as weights_lib

    if args.strategy not in STRATEGIES:
        raise ValueError(f'--strategy {args.strategy!r}: choose one of {STRATEGIES}.')
    if args.strategy == 'pmlm':
        raise ValueError('--strategy pmlm (u-PMLM arbitrary-order generation) is not implemented yet; use greedy, '
                         'sample or beam with a decoder or encoder-decoder.')
    early = {'false': False, 'true': True, 'never': 'never'}[args.early_stopping]
    texts = read_inputs(args.inputs)
    converted = convert_checkpoint.load_checkpoint(args.checkpoint)
    if converted.architecture not in ('decoder', 'encoder_decoder'):
        raise ValueError(f'{args.checkpoint} holds a {converted.architecture!r} model: `plmjax infer` generates with '
                         f'a decoder or an encoder-decoder.')
    root = os.path.dirname(checkpoint_lib.checkpoint_root(args.checkpoint))
    codec = _codec(root, args.vocab, args.task)
    config = converted.config
    module = models.build_model(converted.architecture, config)
    options = decoding.Options(
        max_new_tokens=args.max_new_tokens, strategy=args.strategy, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_new_tokens=args.min_new_tokens, eos_id=codec.eos_id, pad_id=codec.pad_id,
        num_beams=args.num_beams, length_penalty=args.length_penalty, early_stopping=early)
    decoder_only = converted.architecture == 'decoder'
    encoded = [codec.encode(text) for text in texts]
    for number, ids in enumerate(encoded, 1):
        padded = -(-len(ids) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
        need = padded + args.max_new_tokens if decoder_only else max(padded, args.max_new_tokens)
        if not ids:
            raise ValueError(f'{args.inputs}: input {number} is empty after tokenization.')
        if need > config.max_length:
            raise ValueError(f'{args.inputs}: input {number} is {len(ids)} tokens; with --max_new_tokens '
                             f'{args.max_new_tokens} it needs {need} positions, more than the model\'s '
                             f'{config.max_length}. Shorten the input or lower --max_new_tokens.')
    # plmjax's objectives shift targets right with 0 first (seqio); a converted BART starts from its EOS, </s>
    start_id = (codec.eos_id if converted.family == 'bart' else 0) if not decoder_only else 0
    weights = jax.jit(lambda p: weights_lib.prepare(module, p))(converted.params)
    run_batch = decoding.jit_generate(module, options, decoder_start_id=start_id)
    out_path = args.out or os.path.splitext(args.inputs)[0] + '.outputs.jsonl'
    from tqdm.auto import tqdm
    start, new_tokens = time.perf_counter(), 0
    tmp = out_path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as out, tqdm(total=len(texts), desc='infer', unit='example',
                                                       dynamic_ncols=True) as bar:
        for first in range(0, len(texts), args.batch_size):
            chunk = encoded[first:first + args.batch_size]
            rows = chunk + [chunk[-1]] * (args.batch_size - len(chunk))  # a fixed batch: one compile
            ids, mask = _batch(rows, codec.pad_id, left=decoder_only)
            result = jax.device_get(run_batch(weights, ids, mask, jax.random.fold_in(jax.random.key(args.seed),
                                                                                     first)))
            for row, text in enumerate(texts[first:first + len(chunk)]):
                length = int(result.lengths[row])
                tokens = [int(t) for t in result.tokens[row, :length]]
                shown = tokens[:-1] if tokens and tokens[-1] == codec.eos_id else tokens
                out.write(json.dumps({'input': text, 'output': codec.decode(shown), 'tokens': tokens,
                                      'length': length, 'score': float(result.scores[row])}) + '\n')
                new_tokens += length
            bar.update(len(chunk))
    os.replace(tmp, out_path)
    seconds = time.perf_counter() - start
    print(f'{len(texts)} examples, {new_tokens} new tokens in {seconds:.1f} s ({new_tokens / seconds:.1f} tokens/s, '
          f'compilation included; {args.strategy}); outputs in {out_path}', file=sys.stderr)
    return 0
