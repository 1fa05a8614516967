"""`plmjax infer`: generation from a checkpoint (t5x's infer): decoders and encoder-decoders with
`plmjax.decode.decoding` (greedy, sampling, beam search), encoders trained as u-PMLM with `plmjax.decode.pmlm`
(`--strategy pmlm`: arbitrary-order generation, Mask-Predict).

    plmjax infer --checkpoint=runs/gpt2 --inputs=prompts.txt --out=outputs.jsonl --max_new_tokens=32
    plmjax infer --checkpoint=runs/t5 --inputs=inputs.jsonl --strategy=beam --num_beams=4 --length_penalty=0.6
    plmjax infer --checkpoint=runs/tiny_bert_pmlm --inputs=prompts.txt --strategy=pmlm --order=random
    plmjax infer --gin_file=gin_configs/generation/tiny_gpt_sample.gin --checkpoint=runs/tiny_gpt_lm

Settings: every flag below can be bound in gin instead (`infer.strategy = 'beam'`, `--gin.infer.top_p=0.9`); a
flag given on the command line wins over gin, gin over the default. Inputs: `--inputs` (a text file, one input
a line, or JSON lines with an "inputs" (or "text", "prompt") field), or a seqio task's split (`--task T
--split validation`, `--num_examples N`): an encoder-decoder task's `inputs`, or the first half of a decoder or
encoder task's `targets` (the rest is written as the reference "target").
u-PMLM: each input is a prompt; the model writes `--max_new_tokens` tokens after it ([CLS] prompt [MASK]...
[SEP]), in `--order` left_to_right, right_to_left, random, confident, or an explicit order "3,7,1,2,..." (1-based
offsets into the generated span, as the u-PMLM paper's table writes it); `--tokens_per_step k`, `--iterations T`
(Mask-Predict), `--choice greedy|sample` (sample: --temperature, --top_k, --top_p). A JSON line's "fixed":
{"offset": "text"} pins tokens at 0-based offsets of the generated span (positional constraints), and the
output's "order" lists the generated offsets in the order they were written.

Inputs: a text file (one input a line) or JSON lines with an "inputs" (or "text", "prompt") field. Outputs: one
JSON line per input, in order: {"input", "output", "tokens", "length", "score"}; `score` is the sum of the
model's log-probabilities of the tokens (beam search: that sum over length ** length_penalty; u-PMLM: of each
token when it was written). Tokenizer: the
checkpoint's `tokenizer/` (`tokenizer.json` of a converted checkpoint), or --vocab (a SentencePiece model or a
WordPiece vocab.txt), or --task, or the task in the `plmjax train` run's config.gin. Decoder prompts are left-padded in a
batch, encoder-decoder inputs right-padded; a batch's length is rounded up to a multiple of 16 (few compiles).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Callable, Optional

import numpy as np

from plmjax.convert import checkpoint as convert_checkpoint
from plmjax.evaluation import vocabulary as vocab_flags
from plmjax.train import checkpoint as checkpoint_lib

STRATEGIES = ('greedy', 'sample', 'beam', 'pmlm')
PMLM_ORDERS = ('left_to_right', 'right_to_left', 'random', 'confident')
INPUT_FIELDS = ('inputs', 'text', 'prompt')
LENGTH_MULTIPLE = 16


def settings(strategy='greedy', max_new_tokens=32, min_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0,
             num_beams=4, length_penalty=1.0, early_stopping='false', batch_size=8, seed=0, order='left_to_right',
             choice='greedy', tokens_per_step=1, iterations=0, task=None, split=None, num_examples=0,
             feature_length=64, vocab=None) -> dict:
    """`plmjax infer`'s settings with their defaults; `plmjax.launch` registers it with gin as `infer`."""
    return dict(locals())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser('infer', help='generate text from a checkpoint (decoder, encoder-decoder, u-PMLM)')
    p.add_argument('--checkpoint', required=True, help='a plmjax model dir (converted or trained)')
    p.add_argument('--inputs', default=None, help='a text file (one input a line) or JSON lines with "inputs"; '
                   'or give --task and --split')
    p.add_argument('--out', default=None, help='the JSON-lines output (default <inputs>.outputs.jsonl, or '
                   '<checkpoint>/infer/<task>_<split>.jsonl)')
    p.add_argument('--strategy', default=None, help=f'one of {STRATEGIES} (default greedy)')
    p.add_argument('--max_new_tokens', type=int, default=None, help='default 32')
    p.add_argument('--min_new_tokens', type=int, default=None)
    p.add_argument('--temperature', type=float, default=None)
    p.add_argument('--top_k', type=int, default=None, help='sample: keep the k most probable tokens (0: all)')
    p.add_argument('--top_p', type=float, default=None, help='sample: nucleus mass (1.0: all)')
    p.add_argument('--num_beams', type=int, default=None, help='beam: default 4')
    p.add_argument('--length_penalty', type=float, default=None)
    p.add_argument('--early_stopping', default=None, choices=('false', 'true', 'never'))
    p.add_argument('--order', default=None, help=f'pmlm: one of {PMLM_ORDERS}, or "3,1,2,..." (1-based offsets)')
    p.add_argument('--choice', default=None, choices=('greedy', 'sample'), help='pmlm: how a token is chosen')
    p.add_argument('--tokens_per_step', type=int, default=None, help='pmlm: positions filled a step (default 1)')
    p.add_argument('--iterations', type=int, default=None, help='pmlm: Mask-Predict iterations (0: off)')
    p.add_argument('--batch_size', type=int, default=None, help='default 8')
    p.add_argument('--seed', type=int, default=None, help='the PRNG seed (the same seed, the same samples)')
    p.add_argument('--vocab', default=None, help='a SentencePiece model or WordPiece vocab.txt (else tokenizer/)')
    p.add_argument('--task', default=None, help='the seqio task whose vocabulary (and, with --split, inputs) to use')
    p.add_argument('--split', default=None, help='with --task: read the inputs from this split')
    p.add_argument('--num_examples', type=int, default=None, help='with --split: the first N examples (0: all)')
    p.add_argument('--feature_length', type=int, default=None, help='with --split: the task\'s sequence length')
    p.add_argument('--traceback', action='store_true', help='show the full traceback of an error')


def resolve_settings(args: argparse.Namespace, configured: Callable[[], dict] = settings) -> argparse.Namespace:
    """The flags given on the command line, else `configured()`'s (gin's `infer.*` bindings), else the defaults."""
    from_gin = configured()
    return argparse.Namespace(**{**vars(args), **{k: getattr(args, k, None) if getattr(args, k, None) is not None
                                                  else v for k, v in from_gin.items()}})


@dataclasses.dataclass
class Codec:
    """Text <-> ids of one tokenizer, with the ids decoding needs."""
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_id: Optional[int]
    pad_id: int
    specials: dict = dataclasses.field(default_factory=dict)  # 'mask' / 'cls' / 'sep' -> id (None if absent)


def _run_task(root: str) -> Optional[str]:
    """The seqio task of a `plmjax train` run: its config.gin's `train.task` (a string, or a %MACRO bound to one)."""
    path = os.path.join(root, 'config.gin')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        text = f.read()
    match = re.search(r"^train\.task\s*=\s*(?:['\"]([^'\"]+)['\"]|%(\w+))", text, re.MULTILINE)
    if match and match.group(2):
        match = re.search(rf"^{match.group(2)}\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return match.group(1) if match else None


def vocabulary_task(root: str, vocab: Optional[str], task: Optional[str]) -> Optional[str]:
    """The task whose vocabulary a checkpoint's text goes through: `task`, else (without --vocab and without a
    tokenizer/) the task of the run that wrote it; None when a vocab file or tokenizer/ is used."""
    if task or vocab or os.path.isfile(os.path.join(root, 'tokenizer', 'tokenizer.json')):
        return task
    return _run_task(root)


def make_codec(root: str, vocab: Optional[str], task: Optional[str]) -> Codec:
    path = os.path.join(root, 'tokenizer', 'tokenizer.json')
    task = vocabulary_task(root, vocab, task)
    if task or vocab:
        from plmjax.data import vocabularies
        vocabulary = vocab_flags.from_flags(vocab, task)
        special = vocabularies.special_tokens(vocabulary)
        return Codec(lambda text: list(vocabulary.encode(text)), lambda ids: vocabulary.decode(ids),
                     vocabulary.eos_id, vocabulary.pad_id or 0,
                     {'mask': special.mask_id, 'cls': special.cls_id, 'sep': special.sep_id})
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
    bert_like = special('cls_token') is not None  # [CLS]/[SEP] come from the u-PMLM template, not the tokenizer
    return Codec(lambda text: tokenizer.encode(text, add_special_tokens=not bert_like).ids,
                 lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                 eos, pad if pad is not None else (eos if eos is not None else 0),
                 {'mask': special('mask_token'), 'cls': special('cls_token'), 'sep': special('sep_token')})


@dataclasses.dataclass
class Example:
    text: str  # the input as written in the output
    ids: Optional[list[int]] = None  # token ids (a task split's), else encoded from text
    target: Optional[str] = None  # a task split's reference
    fixed: Optional[dict] = None  # u-PMLM: {offset: text} positional constraints


def read_inputs(path: str) -> list[Example]:
    """The inputs of a text or JSON-lines file; a malformed line names its file:line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--inputs {path}: no such file.')
    examples = []
    jsonl = path.endswith(('.jsonl', '.json'))
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line.strip():
                continue
            if not jsonl:
                examples.append(Example(line))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{number}: not a JSON object ({error.msg}); one JSON object a line, with '
                                 f'one of the fields {INPUT_FIELDS}.') from None
            field = next((k for k in INPUT_FIELDS if isinstance(record, dict) and k in record), None)
            if field is None:
                raise ValueError(f'{path}:{number}: no field {" / ".join(INPUT_FIELDS)} in this line.')
            fixed = record.get('fixed')
            if fixed is not None and not (isinstance(fixed, dict) and all(
                    str(k).isdigit() and isinstance(v, str) for k, v in fixed.items())):
                raise ValueError(f'{path}:{number}: "fixed" must map 0-based offsets to text, e.g. '
                                 f'{{"0": "The", "5": "end"}}.')
            examples.append(Example(str(record[field]), fixed={int(k): v for k, v in fixed.items()}
                                    if fixed else None))
    if not examples:
        raise ValueError(f'--inputs {path} holds no inputs.')
    return examples


def task_inputs(task: str, split: str, codec: Codec, num_examples: int, feature_length: int,
                with_inputs: bool) -> list[Example]:
    """A seqio task split's examples (not shuffled). with_inputs (an encoder-decoder's task): `inputs` -> input,
    `targets` -> reference; else the first half of `targets` -> input, the rest -> reference. Special tokens are
    dropped (an encoder-decoder's input keeps its EOS)."""
    import seqio
    import plmjax.tasks  # noqa: F401  (registers the tasks)
    source = seqio.get_mixture_or_task(task)
    if split not in source.splits:
        raise ValueError(f'--split {split!r}: task {task} has the splits {list(source.splits)}.')
    lengths = {name: feature_length for name in source.output_features}
    dataset = source.get_dataset(lengths, split=split, shuffle=False, use_cached=False, seed=0)
    drop = {i for i in (codec.eos_id, codec.pad_id, *codec.specials.values()) if i is not None}
    examples = []
    for example in dataset.as_numpy_iterator():
        targets = [int(t) for t in example['targets'] if int(t) not in drop]
        if with_inputs:
            ids = [int(t) for t in example['inputs'] if int(t) not in drop]
            ids += [codec.eos_id] if codec.eos_id is not None else []
            reference = targets
        else:
            ids, reference = targets[:len(targets) // 2], targets[len(targets) // 2:]
        if len(ids) > (codec.eos_id is not None and with_inputs):
            examples.append(Example(codec.decode(ids), ids=ids, target=codec.decode(reference)))
        if num_examples and len(examples) == num_examples:
            break
    if not examples:
        raise ValueError(f'task {task} split {split} gave no examples.')
    return examples


def _batch(ids: list[list[int]], pad_id: int, left: bool):
    length = -(-max(len(x) for x in ids) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    tokens = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, x in enumerate(ids):
        cols = slice(length - len(x), length) if left else slice(0, len(x))
        tokens[row, cols], mask[row, cols] = x, 1
    return tokens, mask


def run(args: argparse.Namespace, configured: Callable[[], dict] = settings) -> int:
    """`plmjax infer`; configured: `settings` with the gin bindings (`plmjax.launch.infer_settings`)."""
    from plmjax import models

    args = resolve_settings(args, configured)
    if args.strategy not in STRATEGIES:
        raise ValueError(f'--strategy {args.strategy!r}: choose one of {STRATEGIES}.')
    converted = convert_checkpoint.load_checkpoint(args.checkpoint)
    expected = ('encoder',) if args.strategy == 'pmlm' else ('decoder', 'encoder_decoder')
    if converted.architecture not in expected:
        raise ValueError(f'{args.checkpoint} holds a {converted.architecture!r} model: --strategy {args.strategy} '
                         f'generates with {" or ".join(expected)} models' + (
                             '.' if args.strategy == 'pmlm' else '; an encoder (u-PMLM) takes --strategy pmlm.'))
    root = os.path.dirname(checkpoint_lib.checkpoint_root(args.checkpoint))
    codec = make_codec(root, args.vocab, args.task)
    if args.inputs:
        examples = read_inputs(args.inputs)
        out_path = args.out or os.path.splitext(args.inputs)[0] + '.outputs.jsonl'
    elif args.task and args.split:
        examples = task_inputs(args.task, args.split, codec, args.num_examples, args.feature_length,
                               with_inputs=converted.architecture == 'encoder_decoder')
        out_path = args.out or os.path.join(root, 'infer', f'{args.task}_{args.split}.jsonl')
    else:
        raise ValueError('no inputs: pass --inputs FILE, or --task NAME --split SPLIT (or bind infer.task and '
                         'infer.split in a gin file).')
    for number, example in enumerate(examples, 1):
        if example.ids is None:
            example.ids = codec.encode(example.text)
        if not example.ids and args.strategy != 'pmlm':
            raise ValueError(f'{args.inputs}: input {number} is empty after tokenization.')
    module = models.build_model(converted.architecture, converted.config)
    if args.strategy == 'pmlm':
        from plmjax.evaluation import infer_pmlm
        batches = infer_pmlm.batches(module, converted, codec, examples, args)
    else:
        batches = autoregressive_batches(module, converted, codec, examples, args)
    from tqdm.auto import tqdm
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    start, new_tokens = time.perf_counter(), 0
    tmp = out_path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as out, tqdm(total=len(examples), desc='infer', unit='example',
                                                       dynamic_ncols=True) as bar:
        for rows in batches:
            for example, row in rows:
                if example.target is not None:
                    row['target'] = example.target
                out.write(json.dumps({'input': example.text, **row}) + '\n')
                new_tokens += row['length']
            bar.update(len(rows))
    os.replace(tmp, out_path)
    seconds = time.perf_counter() - start
    print(f'{len(examples)} examples, {new_tokens} new tokens in {seconds:.1f} s ({new_tokens / seconds:.1f} '
          f'tokens/s, compilation included; {args.strategy}); outputs in {out_path}', file=sys.stderr)
    return 0


def autoregressive_batches(module, converted, codec: Codec, examples: list[Example], args):
    """Yields, batch by batch, [(example, output row)] from greedy / sample / beam decoding."""
    import jax

    from plmjax.decode import decoding, weights as weights_lib

    early = {'false': False, 'true': True, 'never': 'never'}[str(args.early_stopping).lower()]
    config = converted.config
    options = decoding.Options(
        max_new_tokens=args.max_new_tokens, strategy=args.strategy, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_new_tokens=args.min_new_tokens, eos_id=codec.eos_id, pad_id=codec.pad_id,
        num_beams=args.num_beams, length_penalty=args.length_penalty, early_stopping=early)
    decoder_only = converted.architecture == 'decoder'
    for number, example in enumerate(examples, 1):
        padded = -(-len(example.ids) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
        need = padded + args.max_new_tokens if decoder_only else max(padded, args.max_new_tokens)
        if need > config.max_length:
            raise ValueError(f'{args.inputs or args.task}: input {number} is {len(example.ids)} tokens; with '
                             f'--max_new_tokens {args.max_new_tokens} it needs {need} positions, more than the '
                             f'model\'s {config.max_length}. Shorten the input or lower --max_new_tokens.')
    # plmjax's objectives shift targets right with 0 first (seqio); a converted BART starts from its EOS, </s>
    start_id = (codec.eos_id if converted.family == 'bart' else 0) if not decoder_only else 0
    weights = jax.jit(lambda p: weights_lib.prepare(module, p))(converted.params)
    run_batch = decoding.jit_generate(module, options, decoder_start_id=start_id)
    for first in range(0, len(examples), args.batch_size):
        chunk = examples[first:first + args.batch_size]
        rows = [e.ids for e in chunk] + [chunk[-1].ids] * (args.batch_size - len(chunk))  # a fixed batch: one compile
        ids, mask = _batch(rows, codec.pad_id, left=decoder_only)
        result = jax.device_get(run_batch(weights, ids, mask, jax.random.fold_in(jax.random.key(args.seed), first)))
        out = []
        for row, example in enumerate(chunk):
            length = int(result.lengths[row])
            tokens = [int(t) for t in result.tokens[row, :length]]
            shown = tokens[:-1] if tokens and tokens[-1] == codec.eos_id else tokens
            out.append((example, {'output': codec.decode(shown), 'tokens': tokens, 'length': length,
                                  'score': float(result.scores[row])}))
        yield out
