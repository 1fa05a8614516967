"""`plmjax parse`: unsupervised parsing with Perturbed Masking (Wu et al., ACL 2020) from any plmjax encoder.

    plmjax parse --checkpoint=minilm/ --conllu=../shared/data/ud/en_ewt-ud-dev.conllu --out=parse_out/
    plmjax parse --checkpoint=minilm/ --text=sentences.txt --decoder=mart --out=parse_out/

Writes to --out: `predicted.conllu` (dependency decoders) or `trees.txt` (MART, bracketed), `results.md` and
`results.json` (UAS/UUAS/NED of the decoder and of the chain and random baselines, when the input has gold trees),
`heatmap_<k>.png` and `tree_<k>.png` for the first --plots sentences, and the impact matrices
(`matrices.npz` + `matrices.json`, the key they were computed under): a second run with the same checkpoint,
sentences, impact and layer decodes from them without running the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np

from plmjax import models, sharding
from plmjax.analysis import constituency, dependency, impact, masking, pieces, plots, trees
from plmjax.analysis import treebank as treebank_lib
from plmjax.convert import checkpoint as convert_checkpoint
from plmjax.evaluation import vocabulary
from plmjax.train import checkpoint as checkpoint_lib

DECODERS = (*dependency.DECODERS, 'mart')
BASELINES = ('right_chain', 'left_chain', 'random')


def add_parser(subparsers) -> None:
    p = subparsers.add_parser('parse', help='Perturbed Masking: parse sentences from an encoder\'s impact matrices')
    p.add_argument('--checkpoint', required=True, help='a plmjax encoder checkpoint (`plmjax convert` or '
                   '`plmjax train` output)')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--conllu', help='a CoNLL-U treebank (gold trees: scored)')
    source.add_argument('--text', help='plain text, one sentence a line, words separated by spaces')
    p.add_argument('--decoder', choices=DECODERS, default='eisner')
    p.add_argument('--impact', choices=impact.IMPACTS, default='dist',
                   help='dist: distance of hidden states; prob: drop of the MLM probability (needs a trained head)')
    p.add_argument('--layer', type=int, default=None, help='hidden states of this layer (0 = embeddings; '
                   'default: the encoder\'s output)')
    p.add_argument('--max_words', type=int, default=20, help='skip longer sentences (syntactic words, '
                   'punctuation included)')
    p.add_argument('--limit', type=int, default=None, help='parse only the first N sentences kept')
    p.add_argument('--root', choices=dependency.ROOTS, default=None, help='gold: the released code\'s oracle root '
                   '(default with --conllu); cls: the [CLS] row as measured (default with --text)')
    p.add_argument('--normalization', choices=dependency.NORMALIZATIONS, default='released',
                   help='released: the released code\'s (Eisner: its column-by-row-sum softmax; CLE: none); '
                   'softmax: a proper row softmax; none')
    p.add_argument('--vocab', default=None, help='a vocab.txt or SentencePiece model (default: the checkpoint\'s '
                   'tokenizer/)')
    p.add_argument('--task', default=None, help='take the vocabulary of this registered seqio task instead')
    p.add_argument('--batch_size', type=int, default=64, help='masked copies per forward pass')
    p.add_argument('--plots', type=int, default=3, help='draw the heatmap and tree of the first N sentences')
    p.add_argument('--seed', type=int, default=0, help='of the random baseline')
    p.add_argument('--out', required=True, help='output directory')
    p.add_argument('--traceback', action='store_true', help='show the full traceback of an error')


@dataclasses.dataclass
class Encoder:
    """An encoder checkpoint ready for Perturbed Masking."""
    module: object
    params: dict
    tokenizer: pieces.WordTokenizer
    max_length: int
    has_mlm_head: bool
    description: str


def load_encoder(path: str, vocab: Optional[str] = None, task: Optional[str] = None) -> Encoder:
    """The encoder of a checkpoint (any architecture with an 'encoder' stack; a head it lacks is initialized and
    used for nothing), with its word tokenizer."""
    converted = convert_checkpoint.load_checkpoint(path)
    params = dict(converted.params)
    if 'encoder' not in params:
        raise ValueError(f'{path} holds a {converted.architecture!r} model without an encoder stack; Perturbed '
                         f'Masking reads an encoder (BERT, RoBERTa, NEZHA, ELECTRA, MiniLM, ...).')
    has_head = 'mlm_head' in params and not any(p.startswith('mlm_head') for p in converted.initialized)
    module = models.build_model('encoder', converted.config)
    initialized = _initialized_params(module)
    # A fine-tuned encoder may lack the MLM head or pooler: Dist reads neither, the apply still builds them.
    params = {name: params.get(name, initialized[name]) for name in initialized}
    root = os.path.dirname(checkpoint_lib.checkpoint_root(path))
    return Encoder(module, params, _tokenizer(root, vocab, task), converted.config.max_length, has_head,
                   f'{os.path.abspath(path)} ({converted.architecture}, {converted.config.name})')


def _initialized_params(module) -> dict:
    import jax
    from flax import linen as nn
    return jax.device_get(nn.meta.unbox(module.init(jax.random.key(0), np.zeros((1, 4), np.int32))['params']))


def _tokenizer(root: str, vocab: Optional[str], task: Optional[str]) -> pieces.WordTokenizer:
    if task or vocab:
        return pieces.from_vocabulary(vocabulary.from_flags(vocab, task))
    tokenizer_dir = os.path.join(root, 'tokenizer')
    if not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(f'{root} has no tokenizer/ (a `plmjax train` run keeps its vocabulary in its task): '
                                f'pass --task NAME or --vocab FILE.')
    return pieces.from_tokenizer_dir(tokenizer_dir)


def compute_matrices(encoder: Encoder, sentences: Sequence[treebank_lib.Sentence], impact_name: str = 'dist',
                     layer: Optional[int] = None, batch_size: int = 64, progress: bool = True) -> list[np.ndarray]:
    """The word-level impact matrix of each sentence, batched over all local devices' data axis."""
    if impact_name == 'prob' and not encoder.has_mlm_head:
        raise ValueError(f'--impact prob reads the MLM head, and {encoder.description} has none that was trained '
                         f'(its mlm_head was initialized on conversion: a sentence encoder); use --impact dist.')
    num_layers = encoder.module.config.num_encoder_layers
    if layer is not None and not 0 <= layer <= num_layers:
        raise ValueError(f'--layer {layer}: this encoder has layers 0 (embeddings) .. {num_layers}.')
    encoded = []
    for sentence in sentences:
        e = masking.Encoded.from_pieces(encoder.tokenizer.pieces(sentence.words), encoder.tokenizer.cls_id,
                                       encoder.tokenizer.sep_id)
        if len(e.ids) > encoder.max_length:
            raise ValueError(f'sentence {sentence.sent_id} is {len(e.ids)} tokens long, longer than the model\'s '
                             f'{encoder.max_length} positions; lower --max_words.')
        encoded.append(e)
    import jax
    devices = jax.local_devices()
    data = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0 and len(devices) % d == 0)
    mesh = sharding.create_mesh(data=data, devices=devices[:data])
    computer = impact.PerturbedMasking(encoder.module, encoder.params, mask_id=encoder.tokenizer.mask_id,
                                       pad_id=encoder.tokenizer.pad_id, impact=impact_name, layer=layer,
                                       batch_size=batch_size, mesh=mesh, max_length=encoder.max_length)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(encoded), desc='impact matrices', unit='sentence', dynamic_ncols=True)
    try:
        return list(computer.matrices(encoded, progress=bar.update if bar else None))
    finally:
        if bar:
            bar.close()


def decode(matrices, sentences, decoder: str, root: str, normalization: str, seed: int = 0):
    """Heads [n + 1] per sentence (dependency decoders) or nested word lists (mart)."""
    rng = np.random.default_rng(seed)
    out = []
    for matrix, sentence in zip(matrices, sentences):
        if decoder == 'mart':
            out.append(constituency.parse(matrix, sentence.words))
        else:
            gold_root = sentence.gold_root if root == 'gold' else None
            out.append(dependency.parse(matrix, decoder, root, gold_root, normalization, rng=rng))
    return out


# The rows of ../shared/references/perturbed_masking.md (the released code's conventions; chains and the random
# baseline read no matrix, and the reference's chains take no gold root), then the plain conventions: no gold
# root, a proper row softmax. (decoder, root, normalization, punctuation scored)
CONVENTIONS = {
    'Eisner+Dist (gold root)': ('eisner', 'gold', 'released', False),
    'CLE+Dist (gold root)': ('cle', 'gold', 'released', False),
    'Eisner+Dist (no gold root)': ('eisner', 'cls', 'released', False),
    'CLE+Dist (no gold root)': ('cle', 'cls', 'released', False),
    'Eisner+Dist, proper row softmax (gold root)': ('eisner', 'gold', 'softmax', False),
    'right-chain': ('right_chain', 'cls', 'released', False),  # the last word heads the sentence
    'left-chain': ('left_chain', 'cls', 'released', False),  # the first word heads the sentence
    'random (Eisner on U(0,1) scores)': ('random', 'cls', 'released', False),
    'Eisner+Dist (gold root), punctuation scored': ('eisner', 'gold', 'released', True),
    'plain: Eisner+Dist (no gold root, row softmax)': ('eisner', 'cls', 'softmax', False),
    'plain: CLE+Dist (no gold root, row softmax)': ('cle', 'cls', 'softmax', False),
}
RANDOM_SEEDS = 8  # the random baseline's UAS varies by ~0.2 points from one draw to the next on EWT dev


def conventions_table(matrices, sentences) -> dict[str, dict]:
    """UAS/UUAS/NED of every row of CONVENTIONS on the same matrices (the random baseline: the mean over
    RANDOM_SEEDS draws, with 'uas_std')."""
    table = {}
    for name, (decoder, root, normalization, punctuation) in CONVENTIONS.items():
        seeds = range(RANDOM_SEEDS) if decoder == 'random' else (0,)
        runs = [dependency.attachment_scores(sentences, decode(matrices, sentences, decoder, root, normalization,
                                                               seed=seed), punctuation=punctuation)
                for seed in seeds]
        row = dict(runs[0])
        for metric in ('uas', 'uuas', 'ned'):
            row[metric] = float(np.mean([r[metric] for r in runs]))
        if len(runs) > 1:
            row['uas_std'] = float(np.std([r['uas'] for r in runs]))
        table[name] = row
    return table


def _cache_key(encoder: Encoder, sentences, impact_name: str, layer: Optional[int]) -> dict:
    digest = hashlib.sha256(json.dumps([s.words for s in sentences]).encode()).hexdigest()
    return {'checkpoint': encoder.description, 'impact': impact_name, 'layer': layer, 'sentences': len(sentences),
            'words_sha256': digest}


def cached_matrices(out: str, key: dict) -> Optional[list[np.ndarray]]:
    try:
        with open(os.path.join(out, 'matrices.json'), encoding='utf-8') as f:
            if json.load(f) != key:
                return None
        with np.load(os.path.join(out, 'matrices.npz')) as data:
            return [data[str(k)] for k in range(key['sentences'])]
    except (OSError, ValueError, KeyError):
        return None


def save_matrices(out: str, key: dict, matrices) -> None:
    """npz first, then the key (a key without its matrices is never left behind)."""
    tmp = os.path.join(out, 'matrices.tmp.npz')
    np.savez_compressed(tmp, **{str(k): m for k, m in enumerate(matrices)})
    os.replace(tmp, os.path.join(out, 'matrices.npz'))
    with open(os.path.join(out, 'matrices.json.tmp'), 'w', encoding='utf-8') as f:
        json.dump(key, f)
    os.replace(os.path.join(out, 'matrices.json.tmp'), os.path.join(out, 'matrices.json'))


def matrices_in(out: str, encoder: Encoder, sentences, impact_name: str = 'dist', layer: Optional[int] = None,
                batch_size: int = 64, progress: bool = True) -> tuple[list[np.ndarray], Optional[float]]:
    """The impact matrices cached in `out` for this encoder, sentences, impact and layer, else computed and
    cached: (matrices, seconds spent computing them, or None when they came from the cache)."""
    key = _cache_key(encoder, sentences, impact_name, layer)
    matrices = cached_matrices(out, key)
    if matrices is not None:
        return matrices, None
    start = time.perf_counter()
    matrices = compute_matrices(encoder, sentences, impact_name, layer, batch_size, progress)
    seconds = time.perf_counter() - start
    save_matrices(out, key, matrices)
    return matrices, seconds


def results_table(rows: dict[str, dict]) -> str:
    lines = ['| method | UAS | UUAS | NED |', '|---|---|---|---|']
    for name, r in rows.items():
        lines.append(f'| {name} | {r["uas"]:.1f} | {r["uuas"]:.1f} | {r["ned"]:.1f} |')
    first = next(iter(rows.values()))
    lines.append(f'\n{first["sentences"]} sentences, {first["dependents"]} non-punctuation dependents.')
    return '\n'.join(lines) + '\n'


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    gold = args.conllu is not None
    root = args.root or ('gold' if gold else 'cls')
    if root == 'gold' and not gold:
        raise ValueError('--root gold needs gold trees: give --conllu, or use --root cls with --text.')
    read = treebank_lib.read_conllu if gold else treebank_lib.read_text
    sentences = read(args.conllu or args.text, max_words=args.max_words, limit=args.limit)
    encoder = load_encoder(args.checkpoint, args.vocab, args.task)
    matrices, seconds = matrices_in(args.out, encoder, sentences, args.impact, args.layer, args.batch_size)
    cached = seconds is None
    predicted = decode(matrices, sentences, args.decoder, root, args.normalization, args.seed)
    if args.decoder == 'mart':
        with open(os.path.join(args.out, 'trees.txt'), 'w', encoding='utf-8') as f:
            f.writelines(f'{trees.to_brackets(tree)}\n' for tree in predicted)
    else:
        treebank_lib.write_conllu(os.path.join(args.out, 'predicted.conllu'), sentences, predicted)
    summary = {'sentences': len(sentences), 'impact': args.impact, 'layer': args.layer, 'decoder': args.decoder,
               'root': root, 'normalization': args.normalization, 'matrices_cached': cached}
    if gold and args.decoder != 'mart':
        label = f'{args.decoder}+{args.impact} (root {root}, {args.normalization})'
        rows = {label: dependency.attachment_scores(sentences, predicted)}
        for baseline in BASELINES:
            rows[f'{baseline} (root {root})'] = dependency.attachment_scores(
                sentences, decode(matrices, sentences, baseline, root, args.normalization, args.seed))
        summary['results'] = rows
        table = results_table(rows)
        with open(os.path.join(args.out, 'results.md'), 'w', encoding='utf-8') as f:
            f.write(table)
        print(table)
    for k, (sentence, matrix) in enumerate(list(zip(sentences, matrices))[:args.plots]):
        plots.impact_heatmap(os.path.join(args.out, f'heatmap_{k}.png'), matrix, sentence.words,
                             title=f'{sentence.sent_id}: {args.impact} impact')
        if args.decoder != 'mart':
            plots.tree_arcs(os.path.join(args.out, f'tree_{k}.png'), sentence.words, predicted[k],
                            sentence.gold_heads if gold else None, title=f'{sentence.sent_id} ({args.decoder})')
    summary['seconds'] = round(time.perf_counter() - start, 1)
    with open(os.path.join(args.out, 'results.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
    print(f'parsed {len(sentences)} sentences in {summary["seconds"]} s '
          f'({"matrices from the cache" if cached else "matrices computed"}); outputs in {args.out}',
          file=sys.stderr)
    return 0
