"""TinyBERT augmentation of a GLUE task's training set, written as a GLUE folder (`<out>/<folder>/train.tsv` with the
original rows and their copies; the other splits copied) that the task's seqio reader reads via GLUE_DIR."""
import os
import shutil
import time

from plmjax.compression import augment
from plmjax.data.finetune import glue, readers


def augment_folder(mlm, task: glue.GlueTask, glue_dir: str, out_dir: str, options: augment.Options,
                   limit: int = 0, batch_size: int = 64, progress: bool = True) -> dict:
    """Writes <out_dir>/<folder>/train.tsv (augmented) and copies the other splits; returns the sizes."""
    if task.headerless:
        raise ValueError(f'{task.folder}: its train.tsv has no header; augment a task whose columns are named.')
    source = os.path.join(glue_dir, task.folder)
    path = readers.check_file(os.path.join(source, task.files['train']), f'GLUE {task.folder} train file',
                              glue.GLUE_DIR_HELP)
    rows = list(readers.read_tsv(path))
    header, body = rows[0][1], [cells for _, cells in rows[1:]]
    body = body[:limit] if limit else body
    columns = [header.index(task.columns[f]) for f in task.spec.text_fields]
    texts = [cells[c] for cells in body for c in columns]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=None, unit='word', desc=f'{task.folder} candidates')
    start = time.perf_counter()
    augmented = augment.augment(mlm, texts, options, batch_size, bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    target = os.path.join(out_dir, task.folder)
    os.makedirs(target, exist_ok=True)
    written = 0
    tmp = os.path.join(target, task.files['train'] + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write('\t'.join(header) + '\n')
        for k, cells in enumerate(body):
            f.write('\t'.join(cells) + '\n')
            written += 1
            for j, column in enumerate(columns):
                for copy in augmented[k * len(columns) + j][1:]:
                    f.write('\t'.join(copy if c == column else cell for c, cell in enumerate(cells)) + '\n')
                    written += 1
    os.replace(tmp, os.path.join(target, task.files['train']))
    for split, name in task.files.items():
        if split != 'train' and os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
    return {'examples': len(body), 'augmented_examples': written,
            'bytes': os.path.getsize(os.path.join(target, task.files['train'])), 'seconds': round(seconds, 1)}
