"""`plmjax infer --strategy pmlm`: u-PMLM arbitrary-order generation from an encoder checkpoint, batch by batch
(`plmjax.decode.pmlm`); the flags are `plmjax.evaluation.infer`'s."""
from __future__ import annotations

import numpy as np

from plmjax.evaluation.infer import LENGTH_MULTIPLE, PMLM_ORDERS


def parse_order(order: str, num_new: int):
    """--order: a named order -> (name, None); "3,7,1,..." (1-based offsets, a permutation of 1..num_new) ->
    ('left_to_right', [num_new] ranks by offset)."""
    if order in PMLM_ORDERS:
        return order, None
    try:
        offsets = [int(x) for x in order.split(',')]
    except ValueError:
        offsets = None
    if offsets is None or sorted(offsets) != list(range(1, num_new + 1)):
        raise ValueError(f'--order {order!r}: choose one of {PMLM_ORDERS}, or list the {num_new} generated '
                         f'positions 1..{num_new} (--max_new_tokens) in the order to fill them, e.g. "3,1,2".')
    ranks = np.empty(num_new, np.int32)
    ranks[np.array(offsets) - 1] = np.arange(num_new)
    return 'left_to_right', ranks


def batches(module, converted, codec, examples, args):
    """Yields, batch by batch, [(example, output row)]: "output" the generated span's text (fixed tokens included),
    "tokens" its ids, "order" its generated offsets (0-based) in the order they were written, "score"."""
    import jax

    from plmjax.decode import pmlm

    specials = codec.specials
    if specials.get('mask') is None:
        raise ValueError('--strategy pmlm needs a vocabulary with a [MASK] token; this tokenizer has none.')
    num_new = args.max_new_tokens
    order, offset_ranks = parse_order(str(args.order), num_new)
    forbidden = tuple(sorted({i for i in (specials.get('cls'), specials.get('sep'), codec.pad_id, codec.eos_id)
                              if i is not None}))
    options = pmlm.Options(mask_id=specials['mask'], order=order, strategy=args.choice, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, tokens_per_step=args.tokens_per_step,
                           iterations=args.iterations, forbidden_ids=forbidden)
    head = 1 if specials.get('cls') is not None else 0
    longest = max(len(e.ids) for e in examples) + num_new + head + (specials.get('sep') is not None)
    length = -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    if length > converted.config.max_length:
        raise ValueError(f'{args.inputs or args.task}: the longest prompt with --max_new_tokens {num_new} needs '
                         f'{longest} positions, more than the model\'s {converted.config.max_length}. Shorten the '
                         f'prompt or lower --max_new_tokens.')
    run = pmlm.jit_generate(module, options)
    for first in range(0, len(examples), args.batch_size):
        chunk = examples[first:first + args.batch_size]
        rows = chunk + [chunk[-1]] * (args.batch_size - len(chunk))  # a fixed batch: one compile
        fixed = [{offset: codec.encode(text) for offset, text in (e.fixed or {}).items()} for e in rows]
        try:
            ids, free, mask = pmlm.template([e.ids for e in rows], num_new, mask_id=specials['mask'],
                                            pad_id=codec.pad_id, cls_id=specials.get('cls'),
                                            sep_id=specials.get('sep'), fixed=fixed, length=length)
        except ValueError as error:
            raise ValueError(f'{args.inputs}: examples {first + 1}..{first + len(chunk)}: {error}') from None
        ranks = None
        if offset_ranks is not None:
            ranks = np.zeros(ids.shape, np.int32)
            for row, e in enumerate(rows):
                ranks[row, head + len(e.ids):head + len(e.ids) + num_new] = offset_ranks
        result = jax.device_get(run(converted.params, ids, free, mask,
                                    jax.random.fold_in(jax.random.key(args.seed), first), ranks))
        out = []
        for row, example in enumerate(chunk):
            start = head + len(example.ids)
            span = slice(start, start + num_new)
            tokens = [int(t) for t in result.tokens[row, span]]
            steps = result.steps[row, span]
            written = np.flatnonzero(steps >= 0)
            order_written = written[np.argsort(steps[written], kind='stable')]
            out.append((example, {'output': codec.decode(tokens), 'tokens': tokens, 'length': int(len(written)),
                                  'order': [int(o) for o in order_written], 'score': float(result.scores[row])}))
        yield out
