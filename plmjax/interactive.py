"""plmjax in a notebook (t5x's InteractiveModel): one call each to train a gin recipe, load a checkpoint, fill
masks, generate, evaluate a fine-tuning task and parse with Perturbed Masking. The notebooks in notebooks/ use
only these, and so can yours.

    import plmjax.interactive as pi
    summary = pi.train('gin_configs/quickstart.gin', 'runs/quickstart', NUM_STEPS=300)
    model = pi.load('runs/quickstart')
    pi.fill_mask(model, 'The [MASK] returns a list.')        # [[('function', 0.31), ...]] per [MASK]
    pi.generate(pi.load('runs/tiny_gpt_lm'), ['The function'], strategy='sample', top_p=0.9)
    scores, predictions = pi.evaluate('runs/sst2', 'gin_configs/experiments/minilm_sst2.gin')
    rows = pi.compression_table({'teacher': 'runs/minilm_sst2', 'student': 'runs/tinybert3_stage2/student'},
                                'glue_sst2_tsv')
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from plmjax import launch, models
from plmjax.convert import checkpoint as convert_checkpoint
from plmjax.evaluation import infer, infer_pmlm
from plmjax.train import checkpoint as checkpoint_lib
from plmjax.train import metrics as metrics_lib

MASK_TEXT = '[MASK]'


def _gin_args(gin_file: str | Sequence[str], gin_params: Sequence[str], bindings: dict[str, Any]):
    """(files, bindings): gin_params as written ('MODEL_CONFIG = @tiny_encoder()'), then the keyword bindings'
    Python values (`NUM_STEPS=300`, `**{'train.log_every': 10}`)."""
    files = [gin_file] if isinstance(gin_file, str) else list(gin_file)
    return files, [*gin_params, *(f'{name} = {value!r}' for name, value in bindings.items())]


def train(gin_file: str | Sequence[str], model_dir: str, gin_params: Sequence[str] = (), **bindings) -> dict:
    """`plmjax train --gin_file=... --model_dir=... --gin_param=...` with more bindings as keywords; returns the
    run's summary (summary.json: metrics, paths, fill-mask examples)."""
    launch.parse_gin(*_gin_args(gin_file, gin_params, bindings), clear=True)
    launch.train(model_dir)
    with open(os.path.join(model_dir, 'summary.json'), encoding='utf-8') as f:
        return json.load(f)


def metrics(model_dir: str, split: Optional[str] = None) -> list[dict]:
    """The rows of a run's metrics.jsonl ({'step', 'split', 'loss', ...}), optionally of one split."""
    path = os.path.join(model_dir, metrics_lib.METRICS_FILE)
    with open(path, encoding='utf-8') as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r.get('split') == split]


@dataclasses.dataclass
class Model:
    """A checkpoint loaded for interactive use."""
    path: str
    architecture: str
    config: Any
    module: Any
    params: Any
    codec: infer.Codec
    family: Optional[str] = None
    task: Optional[str] = None  # the seqio task whose vocabulary the codec is (None: a tokenizer/ or vocab file)

    def __repr__(self) -> str:
        return (f'Model({self.path!r}, {self.architecture}, {self.config.name}, '
                f'{models.count_params(self.params):,} parameters)')


def load(checkpoint: str, vocab: Optional[str] = None, task: Optional[str] = None) -> Model:
    """A `plmjax train` or `plmjax convert` checkpoint (its latest step, or a step's directory) with its tokenizer:
    the converted checkpoint's tokenizer/, else `vocab` / `task`, else the task in the run's config.gin."""
    converted = convert_checkpoint.load_checkpoint(checkpoint)
    root = os.path.dirname(checkpoint_lib.checkpoint_root(checkpoint))
    task = infer.vocabulary_task(root, vocab, task)
    return Model(checkpoint, converted.architecture, converted.config,
                 models.build_model(converted.architecture, converted.config), converted.params,
                 infer.make_codec(root, vocab, task), converted.family, task)


def save(model: Model, out_dir: str) -> str:
    """Writes the model as a plmjax checkpoint (step 0 of out_dir, readable by `load` and every command), with
    its tokenizer/ or the name of its task."""
    import shutil
    convert_checkpoint.save_checkpoint(out_dir, model.architecture, model.config, model.params,
                                       hf_family=model.family, source=os.path.abspath(model.path))
    root = os.path.dirname(checkpoint_lib.checkpoint_root(model.path))
    if os.path.isdir(os.path.join(root, 'tokenizer')):
        shutil.copytree(os.path.join(root, 'tokenizer'), os.path.join(out_dir, 'tokenizer'), dirs_exist_ok=True)
    elif model.task:
        with open(os.path.join(out_dir, 'config.gin'), 'a', encoding='utf-8') as f:  # `load` reads the task here
            f.write(f"\n# the vocabulary's task (plmjax.interactive.save)\ntrain.task = {model.task!r}\n")
    return out_dir


def fill_mask(model: Model, text: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text`, the k most probable tokens with their probabilities (an encoder with an MLM
    head; special tokens are never proposed)."""
    import jax

    from plmjax.decode import fill_mask as fill_lib
    _check(model, 'encoder', 'fill_mask')
    codec, specials = model.codec, model.codec.specials
    parts = text.split(MASK_TEXT)
    if len(parts) < 2:
        raise ValueError(f'fill_mask: the text has no {MASK_TEXT}.')
    ids = [specials['cls']] if specials.get('cls') is not None else []
    positions = []
    for i, part in enumerate(parts):
        ids += codec.encode(part.strip()) if part.strip() else []
        if i < len(parts) - 1:
            positions.append(len(ids))
            ids.append(specials['mask'])
    ids += [specials['sep']] if specials.get('sep') is not None else []
    banned = tuple(sorted({i for i in (*specials.values(), codec.pad_id, codec.eos_id) if i is not None}))
    fills = jax.device_get(fill_lib.top_k_fills(model.module, model.params, np.array([ids], np.int32),
                                                np.array([positions], np.int32), k, banned_ids=banned))
    return [[(codec.decode([int(t)]), float(q)) for t, q in zip(fills.ids[0, j], fills.probs[0, j])]
            for j in range(len(positions))]


def _check(model: Model, architecture, what: str) -> None:
    allowed = (architecture,) if isinstance(architecture, str) else tuple(architecture)
    if model.architecture not in allowed:
        raise ValueError(f'{what} needs {" or ".join(allowed)} model; {model.path} holds a {model.architecture!r}.')


def generate(model: Model, prompts: Sequence[str | dict], **settings) -> list[dict]:
    """`plmjax infer` on a list of prompts (strings, or dicts {'inputs': text or 'ids': token ids, 'fixed': {offset:
    text} for u-PMLM, 'target'}, e.g. from `task_examples`):
    settings as its flags (strategy='greedy'|'sample'|'beam'|'pmlm', max_new_tokens, top_k, top_p, temperature,
    num_beams, length_penalty, order, tokens_per_step, iterations, choice, seed, batch_size); one output dict per
    prompt ({'input', 'output', 'tokens', 'length', 'score'} and, for u-PMLM, 'order')."""
    args = argparse.Namespace(**{**infer.settings(), 'batch_size': max(1, len(prompts)), **settings,
                                 'inputs': None, 'task': None})
    if args.strategy not in infer.STRATEGIES:
        raise ValueError(f'strategy {args.strategy!r}: choose one of {infer.STRATEGIES}.')
    _check(model, 'encoder' if args.strategy == 'pmlm' else ('decoder', 'encoder_decoder'),
           f'strategy {args.strategy!r}')
    examples = []
    for prompt in prompts:
        prompt = {'inputs': prompt} if isinstance(prompt, str) else prompt
        ids = prompt.get('ids') or model.codec.encode(prompt['inputs'])
        fixed = {int(k): v for k, v in (prompt.get('fixed') or {}).items()} or None
        examples.append(infer.Example(prompt.get('inputs') or model.codec.decode(ids), ids=list(ids),
                                      target=prompt.get('target'), fixed=fixed))
    converted = convert_checkpoint.Converted(model.architecture, model.config, model.params, model.family, [], [],
                                             None)
    if args.strategy == 'pmlm':
        batches = infer_pmlm.batches(model.module, converted, model.codec, examples, args)
    else:
        batches = infer.autoregressive_batches(model.module, converted, model.codec, examples, args)
    outputs = []
    for rows in batches:
        for example, row in rows:
            outputs.append({'input': example.text, **row, **({'target': example.target} if example.target else {})})
    return outputs


def task_examples(model: Model, task: str, split: str = 'validation', num: int = 8,
                  feature_length: int = 64) -> list[dict]:
    """Prompts from a seqio task split, as `plmjax infer --task --split` reads them: [{'ids', 'inputs' (text),
    'target'}] (an encoder-decoder's task inputs; else the first half of each text, the rest the target)."""
    examples = infer.task_inputs(task, split, model.codec, num, feature_length,
                                 with_inputs=model.architecture == 'encoder_decoder')
    return [{'ids': e.ids, 'inputs': e.text, 'target': e.target} for e in examples]


def pmlm_steps(model: Model, output: dict) -> list[str]:
    """The text after each step of a u-PMLM generation (an output of `generate(strategy='pmlm')`): [MASK] where
    a position is not yet written."""
    tokens, order = output['tokens'], output['order']
    shown = [MASK_TEXT if i in order else model.codec.decode([t]) for i, t in enumerate(tokens)]
    steps = []
    for position in order:
        shown[position] = model.codec.decode([tokens[position]])
        steps.append(' '.join(shown))
    return steps


def plot_pmlm_order(model: Model, output: dict, path: str = 'pmlm_order.png', title: str = '') -> str:
    """Draws a u-PMLM generation (an output of `generate(strategy='pmlm')`) step by step as a grid
    (`plmjax.decode.plots.generation_order`); returns the path of the picture."""
    from plmjax.decode import plots
    pieces = [model.codec.decode([t]) for t in output['tokens']]
    plots.generation_order(path, pieces, output['order'], title=title or f"after {output['input']!r}")
    return path


def evaluate(checkpoint: str, gin_file: str | Sequence[str], split: str = 'validation', batch_size: int = 32,
             gin_params: Sequence[str] = (), **bindings):
    """A fine-tuned checkpoint (full or PEFT) on its task's split, as `plmjax eval` scores it with the official
    metrics: (scores {metric: 0-100, 'num_examples'}, `plmjax.evaluation.Predictions` (example ids, predictions,
    targets, confidences), the task's TaskInfo). The eval files go to <model dir>/eval, as with `plmjax eval`."""
    from plmjax import evaluation
    from plmjax.data.finetune.info import get_task_info
    from plmjax.evaluation import predict as predict_lib
    captured = {}

    def evaluator(params, run, task, split, *, batch_size=32, out_dir=None, checkpoint='', param_shardings=None):
        info = get_task_info(task)
        predictions = predict_lib.predict(params, run, task, split, batch_size, task_info=info,
                                          param_shardings=param_shardings)
        captured.update(predictions=predictions, info=info)
        return {**evaluation.score(info, predictions), 'num_examples': len(predictions)}

    launch.parse_gin(*_gin_args(gin_file, gin_params, bindings), clear=True)
    scores = launch.evaluate(checkpoint, None, finetune_evaluator=evaluator, split=split, batch_size=batch_size)
    if 'predictions' not in captured:
        raise ValueError(f'{checkpoint}: evaluate() scores fine-tuning checkpoints; this run is pre-training '
                         f'(its metrics: {scores}).')
    return scores, captured['predictions'], captured['info']


def parse(checkpoint: str, sentences, vocab: Optional[str] = None, task: Optional[str] = None,
          decoder: str = 'eisner', root: str = 'gold', normalization: str = 'released', batch_size: int = 64):
    """Perturbed Masking dependency parsing (Wu et al. 2020) of `sentences` (a CoNLL-U path or a list of
    `plmjax.analysis.treebank.Sentence`): (impact matrices, predicted heads, {'uas', 'uuas', 'ned'})."""
    from plmjax.analysis import dependency, treebank
    from plmjax.evaluation import perturbed_masking
    if isinstance(sentences, str):
        sentences = treebank.read_conllu(sentences)
    encoder = perturbed_masking.load_encoder(checkpoint, vocab, task)
    matrices = perturbed_masking.compute_matrices(encoder, sentences, batch_size=batch_size, progress=False)
    heads = perturbed_masking.decode(matrices, sentences, decoder, root, normalization)
    return matrices, heads, dependency.attachment_scores(sentences, heads)


def compression_table(checkpoints: dict[str, str], task: str, split: str = 'validation', **options) -> list[dict]:
    """A teacher (the first entry) beside its compressed students: the official metric, retention, parameters,
    size on disk (checkpoint, packed low-bit file) and forward examples/s timed side by side
    (`plmjax.evaluation.compression_report.report`; `options`: sequence_length, batch_size, repeats)."""
    from plmjax.evaluation import compression_report
    return compression_report.report(checkpoints, task, split, **options)


def post_training_quantize(checkpoint: str, out_dir: str, method: str = 'int8',
                           activation_bits: Optional[int] = None) -> dict:
    """The int8 (or ternary / binary) post-training baseline of `checkpoint`, written to `out_dir`."""
    from plmjax.evaluation import compression_report
    return compression_report.post_training_quantize(checkpoint, out_dir, method, activation_bits)


def masked_lm(model: Model):
    """An encoder checkpoint with an MLM head as TinyBERT augmentation's masked LM
    (`plmjax.compression.augment.MaskedLM`): one jitted forward whose head runs at one position a row."""
    import jax
    import jax.numpy as jnp

    from plmjax.compression import augment as augment_lib
    _check(model, 'encoder', 'masked_lm')
    specials = model.codec.specials
    if None in (specials.get('mask'), specials.get('cls'), specials.get('sep')):
        raise ValueError(f'{model.path}: augmentation needs a tokenizer with [MASK], [CLS] and [SEP]; it has '
                         f'{specials}.')
    token_types = model.config.type_vocab_size > 1

    @jax.jit
    def logits(params, ids, types, positions):  # ids, types [b, l]; positions [b] -> [b, vocab]
        out = model.module.apply({'params': params}, ids, token_type_ids=types, mlm_positions=positions[:, None])
        return out['logits'][:, 0].astype(jnp.float32)

    return augment_lib.MaskedLM(
        encode=model.codec.encode, decode=model.codec.decode,
        logits=lambda ids, types, positions: jax.device_get(logits(model.params, ids, types, positions)),
        cls_id=specials['cls'], sep_id=specials['sep'], mask_id=specials['mask'], pad_id=model.codec.pad_id,
        max_length=model.config.max_length, token_types=token_types)


def augment(model: Model, texts: Sequence[str], **options) -> list[list[str]]:
    """TinyBERT's data augmentation of `texts` with this encoder's MLM head: for each text, [the text, its
    augmented copies...]; options: num_candidates (K, 15), replace_prob (p, 0.4), copies (N, 20), seed,
    lower_case (`plmjax.compression.augment.Options`)."""
    from plmjax.compression import augment as augment_lib
    return augment_lib.augment(masked_lm(model), texts, augment_lib.Options(**options))
