"""A random-weight tiny encoder saved as a plmjax checkpoint with a word-level tokenizer that has BERT's special
tokens: ids [PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3, [UNK]=4, then the words w5..w63."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax import convert, models

WORDS = [f'w{k}' for k in range(5, 64)]


def save(path):
    """-> (path, module, params) of the checkpoint written to `path`."""
    import tokenizers
    config = models.tiny_encoder(vocab_size=64, dropout_rate=0.0)
    module = models.build_model('encoder', config)
    params = jax.device_get(nn.meta.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']))
    convert.save_checkpoint(str(path), 'encoder', config, params)
    vocab = {'[PAD]': 0, '[CLS]': 1, '[SEP]': 2, '[MASK]': 3, '[UNK]': 4, **{w: k for k, w in enumerate(WORDS, 5)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(['[PAD]', '[CLS]', '[SEP]', '[MASK]', '[UNK]'])
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix='##')
    (path / 'tokenizer').mkdir()
    tokenizer.save(str(path / 'tokenizer' / 'tokenizer.json'))
    (path / 'tokenizer' / 'special_tokens_map.json').write_text(json.dumps(
        {'pad_token': '[PAD]', 'cls_token': '[CLS]', 'sep_token': '[SEP]', 'mask_token': '[MASK]'}))
    return path, module, params
