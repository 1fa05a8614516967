"""The fill-mask examples at the end of an MLM pre-training run's summary: a few held-out windows of text, one
whole word masked in each, and the model's top-k fills with their probabilities, so the summary shows what the
model learned (`loop.train` prints them; `summary.json` keeps them)."""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
import seqio

from plmjax.data import pipeline, vocabularies
from plmjax.decode import fill_mask


def _whole_word(vocab: seqio.Vocabulary, window: list[int], i: int) -> bool:
    """True if window[i] is a whole word of 3+ letters (its neighbours are separated from it by spaces)."""
    word = vocab.decode([window[i]])
    if len(word) < 3 or not word.isalpha():
        return False
    before = vocab.decode(window[i - 1:i + 1])
    after = vocab.decode(window[i:i + 2])
    return before.endswith(' ' + word) and (after.startswith(word + ' ') or not after[len(word):].strip().isalnum())


def _windows(task: str, split: str, vocab, drop: set[int], num: int, length: int):
    """The first `num` held-out windows of `length` tokens (one a document) with a whole word near the middle."""
    source = seqio.get_mixture_or_task(task)
    dataset = source.get_dataset({name: 4 * length for name in source.output_features}, split=split,
                                 shuffle=False, use_cached=False, seed=0)
    for example in dataset.as_numpy_iterator():
        tokens = [int(t) for t in example['targets'] if int(t) not in drop][:length]
        if len(tokens) < length:
            continue
        middle = sorted(range(1, length - 1), key=lambda i: abs(i - length // 2))
        position = next((i for i in middle if _whole_word(vocab, tokens, i)), None)
        if position is not None:
            yield tokens, position
            num -= 1
            if not num:
                return


def fill_mask_examples(run, params, task: str, split: str = 'validation', num: int = 3, length: int = 16,
                       k: int = 3) -> Optional[list[dict]]:
    """[{'text': '... [MASK] ...', 'answer': word, 'fills': [[word, probability], ...]}] or None when the run is
    not an encoder's MLM or its vocabulary has no [MASK]."""
    if run.architecture != 'encoder' or 'mlm' not in run.objective.name or jax.process_count() > 1:
        return None
    vocab = pipeline.vocabulary(task)
    special = vocabularies.special_tokens(vocab)
    if special.mask_id is None:
        return None
    drop = {i for i in (*special.special_ids, vocab.eos_id, vocab.pad_id) if i is not None}  # WordPiece: no EOS
    windows = list(_windows(task, split, vocab, drop, num, length))
    if not windows:
        return None
    head = [special.cls_id] if special.cls_id is not None else []
    tail = [special.sep_id] if special.sep_id is not None else []
    ids = np.array([head + [special.mask_id if i == p else t for i, t in enumerate(w)] + tail for w, p in windows],
                   np.int32)
    positions = np.array([[len(head) + p] for _, p in windows], np.int32)
    fills = jax.device_get(jax.jit(lambda p, x, pos: fill_mask.top_k_fills(
        run.module, p, x, pos, k, banned_ids=tuple(sorted(drop))))(params, ids, positions))
    examples = []
    for row, (window, position) in enumerate(windows):
        text = f'{vocab.decode(window[:position])} [MASK] {vocab.decode(window[position + 1:])}'
        examples.append({'text': text, 'answer': vocab.decode([window[position]]),
                         'fills': [[vocab.decode([int(t)]), round(float(q), 4)]
                                   for t, q in zip(fills.ids[row, 0], fills.probs[row, 0])]})
    return examples


def format_examples(examples: list[dict]) -> str:
    lines = ['', f'Fill-mask on held-out text (top-{len(examples[0]["fills"])}):']
    for example in examples:
        fills = ' | '.join(f'{word} {100 * q:.1f}%' for word, q in example['fills'])
        lines.append(f'  {example["text"]}\n    -> {fills}   (the text has: {example["answer"]})')
    return '\n'.join(lines)
