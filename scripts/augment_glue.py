"""TinyBERT's data augmentation of a GLUE task's training set (plmjax.compression.augment), written as a GLUE
folder that the task's seqio reader (e.g. `glue_sst2_tsv`) reads through the GLUE_DIR gin macro:

    python scripts/augment_glue.py --mlm runs/tiny_bert_mlm_wikitext2 --task SST-2 --out runs/glue_aug \
        --limit 2000 --copies 20 --seed 0
    plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin \
        --gin_param="GLUE_DIR = 'runs/glue_aug'" ...

train.tsv holds every original row followed by its augmented copies (one text column at a time, the others kept);
dev.tsv and test.tsv are copied unchanged; augment.json records the MLM, the options and the sizes.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import plmjax.interactive as pi  # noqa: E402
from plmjax.compression import augment, augment_glue  # noqa: E402
from plmjax.data.finetune import glue  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--mlm', required=True, help='an encoder checkpoint with an MLM head (plmjax train/convert)')
    p.add_argument('--task', default='SST-2', help='the GLUE folder name (SST-2, MRPC, ...)')
    p.add_argument('--glue_dir', default=None, help='default $GLUE_DIR, else ../shared/data/glue')
    p.add_argument('--out', required=True, help='the new GLUE folder (use it as GLUE_DIR)')
    p.add_argument('--limit', type=int, default=0, help='augment the first N training rows only (0: all)')
    p.add_argument('--copies', type=int, default=20, help='N (20 for SST-2 in the released code)')
    p.add_argument('--num_candidates', type=int, default=15, help='K')
    p.add_argument('--replace_prob', type=float, default=0.4, help='p')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--batch_size', type=int, default=64)
    args = p.parse_args(argv)
    tasks = {t.folder: t for t in glue.TASKS.values()}
    if args.task not in tasks:
        p.error(f'--task {args.task!r}: choose one of {sorted(tasks)}')
    options = augment.Options(num_candidates=args.num_candidates, replace_prob=args.replace_prob,
                              copies=args.copies, seed=args.seed)
    model = pi.load(args.mlm)
    sizes = augment_glue.augment_folder(pi.masked_lm(model), tasks[args.task],
                           args.glue_dir or glue.default_glue_dir(), args.out, options, args.limit, args.batch_size)
    record = {'mlm': os.path.abspath(args.mlm), 'mlm_config': model.config.name, 'task': args.task,
              'options': vars(options), **sizes}
    with open(os.path.join(args.out, args.task, 'augment.json'), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    print(f"{args.task}: {sizes['examples']:,} training rows -> {sizes['augmented_examples']:,} "
          f"({sizes['augmented_examples'] / max(1, sizes['examples']):.1f}x, {sizes['bytes'] / 1e6:.1f} MB) in "
          f"{sizes['seconds']:.0f} s; GLUE_DIR = {args.out!r}")


if __name__ == '__main__':
    main()
