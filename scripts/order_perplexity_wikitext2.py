"""Perplexity of generation orders on the WikiText-2 test text (docs/generation.md): a tiny u-PMLM and a tiny BERT
(pseudo-perplexity in sequential and random order, as the u-PMLM paper defines it) beside a tiny GPT (ordinary
perplexity), all three trained with the same size, steps, batch and length:

    for f in tiny_bert_pmlm_wikitext2 tiny_bert_mlm_wikitext2 tiny_gpt_lm_wikitext2; do
      plmjax train --gin_file=gin_configs/experiments/$f.gin --model_dir=runs/$f; done
    python scripts/order_perplexity_wikitext2.py --runs runs [--max_windows N] [--seed 0]

The three share the wikitext2 SentencePiece vocabulary (checked), so every model scores the same tokens: the test
paragraphs (test.txt, the 'validation' split) tokenized, joined by a separator and cut into windows of
SEQUENCE_LENGTH - 2 tokens (`plmjax.decode.perplexity.text_windows`); --max_windows keeps a fixed prefix of them.
"""
import argparse
import json
import os
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

from plmjax import models  # noqa: E402
from plmjax.convert.checkpoint import load_checkpoint  # noqa: E402
from plmjax.data import corpora, vocabularies  # noqa: E402
from plmjax.decode import perplexity  # noqa: E402
from plmjax.evaluation import vocabulary as vocab_flags  # noqa: E402

RUNS = {'u-PMLM': ('tiny_bert_pmlm_wikitext2', 'wikitext2_pmlm'), 'BERT': ('tiny_bert_mlm_wikitext2', 'wikitext2_mlm'),
        'GPT': ('tiny_gpt_lm_wikitext2', 'wikitext2_lm')}
PAPER = {'u-PMLM': (19.32, 21.30), 'BERT': (23.12, 25.54), 'GPT': (21.23, None)}  # WikiText-103, u-PMLM-A


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', default='runs', help='the folder holding the three model_dirs')
    parser.add_argument('--max_windows', type=int, default=0, help='score the first N windows only (0: all)')
    parser.add_argument('--seed', type=int, default=0, help='the random orders come from jax.random.key(seed)')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--out', default=None, help='write the table as JSON here')
    args = parser.parse_args()

    vocabs = {name: vocab_flags.from_flags(None, task) for name, (_, task) in RUNS.items()}
    files = {name: v.sentencepiece_model_file for name, v in vocabs.items()}
    if len(set(files.values())) != 1:
        raise SystemExit(f'The three tasks do not share one vocabulary ({files}); per-token perplexities would '
                         'not be comparable.')
    vocab = vocabs['BERT']
    special = vocabularies.special_tokens(vocab)
    loaded = {name: load_checkpoint(os.path.join(args.runs, run)) for name, (run, _) in RUNS.items()}
    lengths = {loaded[name].config.max_length for name in RUNS}
    body = 64 - 2  # the experiments' SEQUENCE_LENGTH = 64, minus [CLS] and [SEP]
    documents = [list(vocab.encode(p)) for p in corpora.wikitext2_paragraphs('validation')]
    windows = perplexity.text_windows(documents, body, cls_id=special.cls_id, sep_id=special.sep_id,
                                      pad_id=vocab.pad_id, eos_id=vocab.eos_id)
    total_windows = len(windows.decoder_ids)
    keep = args.max_windows or total_windows
    windows = perplexity.Windows(*(a[:keep] for a in windows))
    print(f'WikiText-2 test: {len(documents)} paragraphs, {total_windows} windows of {body} tokens; scoring '
          f'{keep} windows = {int(windows.decoder_predict.sum())} tokens; [MASK] = {special.mask_id}; '
          f'models of max_length {sorted(lengths)}; {jax.devices()[0].device_kind}')

    rows = {}
    for name in RUNS:
        converted = loaded[name]
        module = models.build_model(converted.architecture, converted.config)
        results = {}
        for order in (('left_to_right', 'random') if converted.architecture == 'encoder' else ('causal',)):
            start = time.perf_counter()
            if order == 'causal':
                result = perplexity.perplexity(module, converted.params, windows.decoder_ids,
                                               windows.decoder_predict, batch_size=args.batch_size)
            else:
                result = perplexity.pseudo_perplexity(
                    module, converted.params, windows.encoder_ids, windows.encoder_predict, order,
                    mask_id=special.mask_id, rng=jax.random.key(args.seed), batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            results[order] = {**result._asdict(), 'seconds': round(seconds, 1)}
            print(f'  {name:7s} {order:13s} PPL {result.ppl:9.2f}  ({result.num_tokens} tokens, {seconds:.1f} s)',
                  flush=True)
        rows[name] = results

    print('\n| model | sequential | random | paper (WikiText-103) sequential / random | seconds |')
    print('|---|---|---|---|---|')
    for name, results in rows.items():
        seq = results.get('left_to_right', results.get('causal'))
        rnd = results.get('random')
        paper = ' / '.join('-' if v is None else f'{v:.2f}' for v in PAPER[name])
        seconds = sum(r['seconds'] for r in results.values())
        random_ppl = '-' if rnd is None else f"{rnd['ppl']:.2f}"
        print(f"| {name} | {seq['ppl']:.2f} | {random_ppl} | {paper} | {seconds:.0f} |")
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            json.dump({'windows': keep, 'total_windows': total_windows, 'body_length': body,
                       'seed': args.seed, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
