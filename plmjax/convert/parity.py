"""Proof that a converted model computes what the Hugging Face PyTorch model computes (needs torch and
transformers, the `[torch]` extra).

`compare(hf_model, converted)` runs both on one padded batch and returns the largest differences: hidden states
(absolute), logits (relative to their largest magnitude) and, for decoders, plmjax's cached incremental decoding
against the reference's full forward pass. `tiny_hf_model(name)` builds the small random reference of each family
that the tests and `scripts/hf_parity_report.py` use; NEZHA's reference (transformers 4.x only) runs in a child
process, see `nezha_reference`.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from plmjax import models
from plmjax.convert.hf import Converted

VOCAB, WIDTH, HEADS, MLP, POSITIONS = 99, 32, 4, 37, 64
BATCH, LENGTH, DECODER_LENGTH, PROMPT = 2, 12, 9, 4
NOISE = 0.02  # added to every float tensor: norms' scales and biases are no longer 1 and 0


def tiny_hf_config(name: str):
    """The small config of each reference (`name`: a family, or 't5_v1_1' for gated-GELU T5 with its own lm_head)."""
    import transformers as hf
    small = dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS,
                 intermediate_size=MLP, max_position_embeddings=POSITIONS)
    seq2seq = dict(vocab_size=VOCAB, d_model=WIDTH, d_kv=WIDTH // HEADS, d_ff=MLP, num_layers=2, num_heads=HEADS,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20)
    return {
        'bert': lambda: hf.BertConfig(**small),
        'roberta': lambda: hf.RobertaConfig(**{**small, 'max_position_embeddings': POSITIONS + 2}, type_vocab_size=1,
                                            pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
        'electra': lambda: hf.ElectraConfig(**small, embedding_size=16),
        'electra_discriminator': lambda: hf.ElectraConfig(**small, embedding_size=16),
        'albert': lambda: hf.AlbertConfig(**{**small, 'num_hidden_layers': 3}, embedding_size=16),
        'gpt2': lambda: hf.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=HEADS, n_inner=MLP,
                                      n_positions=POSITIONS, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1),
        't5': lambda: hf.T5Config(**seq2seq, feed_forward_proj='relu'),
        't5_v1_1': lambda: hf.T5Config(**seq2seq, feed_forward_proj='gated-gelu', tie_word_embeddings=False),
        'mt5': lambda: hf.MT5Config(**seq2seq, feed_forward_proj='gated-gelu'),
        'bart': lambda: hf.BartConfig(vocab_size=VOCAB, d_model=WIDTH, encoder_layers=2, decoder_layers=3,
                                      encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                      encoder_ffn_dim=MLP, decoder_ffn_dim=MLP, max_position_embeddings=POSITIONS),
    }[name]()


_CLASSES = {'bert': 'BertForPreTraining', 'roberta': 'RobertaForMaskedLM', 'electra': 'ElectraForMaskedLM',
            'electra_discriminator': 'ElectraForPreTraining',
            'albert': 'AlbertForMaskedLM', 'gpt2': 'GPT2LMHeadModel', 't5': 'T5ForConditionalGeneration',
            't5_v1_1': 'T5ForConditionalGeneration', 'mt5': 'MT5ForConditionalGeneration',
            'bart': 'BartForConditionalGeneration'}
TINY_MODELS = tuple(_CLASSES)


def perturb(module, seed: int = 0):
    """Adds N(0, NOISE) to every float tensor of a torch module (tied tensors once), in place; returns it."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in {id(t): t for t in module.state_dict(keep_vars=True).values()}.values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * NOISE)
    return module.eval()


def tiny_hf_model(name: str, seed: int = 0):
    """A small transformers model of `name` (see TINY_MODELS) with random, perturbed weights, in eval mode."""
    import torch
    import transformers as hf
    model = getattr(hf, _CLASSES[name])(tiny_hf_config(name))
    if name in ('t5_v1_1', 'mt5'):  # transformers 5 ties lm_head at construction: give it weights of its own
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    return perturb(model, seed)


@dataclasses.dataclass
class Batch:
    ids: np.ndarray  # [batch, length], the second row right-padded
    mask: np.ndarray  # [batch, length], 1 for real tokens
    decoder_ids: np.ndarray | None = None  # [batch, decoder_length], starting with the decoder start id


def sample_batch(hf_config: dict, seed: int = 0) -> Batch:
    rng = np.random.RandomState(seed)
    vocab = hf_config['vocab_size']
    ids = rng.randint(3, min(vocab, 30000), size=(BATCH, LENGTH))
    mask = np.ones_like(ids)
    mask[1, LENGTH - 4:] = 0
    ids[1, LENGTH - 4:] = hf_config.get('pad_token_id') or 0
    decoder_ids = None
    if hf_config.get('is_encoder_decoder'):
        decoder_ids = rng.randint(3, min(vocab, 30000), size=(BATCH, DECODER_LENGTH))
        decoder_ids[:, 0] = hf_config.get('decoder_start_token_id') or 0
    return Batch(ids, mask, decoder_ids)


def hf_outputs(hf_model, batch: Batch) -> dict[str, np.ndarray]:
    """hidden_states (the last layer's; the decoder's for seq2seq), logits when the model has a head,
    encoder_hidden_states (seq2seq) and pooled (BERT-style pooler)."""
    import torch
    with torch.no_grad():
        inputs = dict(input_ids=torch.tensor(batch.ids), attention_mask=torch.tensor(batch.mask))
        if batch.decoder_ids is not None:
            out = hf_model(**inputs, decoder_input_ids=torch.tensor(batch.decoder_ids), output_hidden_states=True)
            result = {'encoder_hidden_states': out.encoder_last_hidden_state, 'hidden_states':
                      out.decoder_hidden_states[-1]}
        else:
            out = hf_model(**inputs, output_hidden_states=True)
            result = {'hidden_states': out.hidden_states[-1]}
            base = hf_model.base_model(**inputs)
            if getattr(base, 'pooler_output', None) is not None:
                result['pooled'] = base.pooler_output
        logits = getattr(out, 'logits', None)
        if logits is None:
            logits = getattr(out, 'prediction_logits', None)
        if logits is not None:
            result['logits'] = logits
    return {k: v.float().numpy() for k, v in result.items()}


def plmjax_outputs(converted: Converted, batch: Batch) -> dict[str, np.ndarray]:
    model = models.build_model(converted.architecture, converted.config)
    variables = {'params': converted.params}
    if converted.architecture == 'encoder_decoder':
        out = jax.jit(lambda v, e, m, d: model.apply(v, e, d, encoder_mask=m))(
            variables, batch.ids, batch.mask, batch.decoder_ids)
    elif converted.architecture == 'decoder':
        out = jax.jit(model.apply)(variables, batch.ids)
    else:
        out = jax.jit(lambda v, i, m: model.apply(v, i, input_mask=m))(variables, batch.ids, batch.mask)
    if converted.architecture == 'electra':  # the discriminator's: replaced-token logits [batch, length]
        out = {'hidden_states': out['hidden_states'], 'logits': out['rtd_logits']}
    return {k: np.asarray(v) for k, v in out.items()}


def _zero_cache(model, *inputs):
    """The cache `init(..., decode=True)` creates (all zeros), without running the model."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, decode=True)['cache'])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def cached_logits(converted: Converted, batch: Batch) -> np.ndarray:
    """Logits of plmjax's cached decoding: the first PROMPT decoder tokens in one chunk, then one a step."""
    model = models.build_model(converted.architecture, converted.config)
    params = converted.params
    if converted.architecture == 'encoder_decoder':
        ids, enc, mask = batch.decoder_ids, batch.ids, batch.mask
        encoded = jax.jit(lambda e, m: model.apply({'params': params}, e, encoder_mask=m, method=model.encode))(
            enc, mask)
        cache = _zero_cache(model, enc, jnp.zeros_like(ids))
        step = jax.jit(lambda cache, chunk: model.apply(
            {'params': params, 'cache': cache}, encoded, chunk, encoder_mask=mask, decode=True, mutable=['cache'],
            method=model.decode))
    else:
        ids = batch.ids
        cache = _zero_cache(model, jnp.zeros_like(ids))
        step = jax.jit(lambda cache, chunk: model.apply({'params': params, 'cache': cache}, chunk, decode=True,
                                                        mutable=['cache']))
    chunks = [ids[:, :PROMPT]] + [ids[:, i:i + 1] for i in range(PROMPT, ids.shape[1])]
    logits = []
    for chunk in chunks:
        out, variables = step(cache, chunk)
        cache = variables['cache']
        logits.append(np.asarray(out['logits']))
    return np.concatenate(logits, axis=1)  # [batch, length, vocab]


def differences(ours: dict, reference: dict, batch: Batch, architecture: str) -> dict[str, float]:
    """Largest |difference| over real positions: absolute for hidden states, relative to the largest |logit|
    for logits."""
    decoder_real = np.ones(batch.decoder_ids.shape, bool) if batch.decoder_ids is not None else None
    real = {'encoder_hidden_states': batch.mask.astype(bool)}
    real['hidden_states'] = real['logits'] = real['cached_logits'] = (
        decoder_real if architecture == 'encoder_decoder' else batch.mask.astype(bool))
    result = {}
    for name, expected in reference.items():
        if name not in ours:
            continue
        actual = ours[name]
        if name == 'pooled':
            result[name] = float(np.abs(actual - expected).max())
            continue
        diff = np.abs(actual[real[name]] - expected[real[name]]).max()
        if name.endswith('logits'):
            diff /= np.abs(expected[real[name]]).max()
        result[name] = float(diff)
    return result


def compare(hf_model, converted: Converted, batch: Batch | None = None, cached: bool = True) -> dict[str, float]:
    """Runs the Hugging Face model and the converted plmjax model on `batch` (default: `sample_batch`)."""
    batch = batch or sample_batch(hf_model.config.to_dict())
    reference = hf_outputs(hf_model, batch)
    ours = plmjax_outputs(converted, batch)
    if any(p.startswith(('mlm_head/', 'lm_head/')) for p in converted.initialized):
        ours.pop('logits', None)  # a head the checkpoint lacked computes nothing comparable
    if cached and converted.architecture in ('decoder', 'encoder_decoder') and 'logits' in reference:
        ours['cached_logits'] = cached_logits(converted, batch)
        reference['cached_logits'] = reference['logits']
    return differences(ours, reference, batch, converted.architecture)


# ------------------------------------------------------------------------------------------ NEZHA (transformers 4)

TRANSFORMERS4 = ('transformers==4.57.6', 'tokenizers==0.22.2', 'huggingface_hub==0.36.2')

_NEZHA_CHILD = r'''
import sys
import numpy as np
import torch
from transformers.models.deprecated.nezha import NezhaConfig, NezhaForMaskedLM
mode, model_dir, batch_file, out_file = sys.argv[1:5]
if mode == 'build':  # a small random NEZHA (k=5, so that clipping shows), every float tensor perturbed
    config = NezhaConfig(vocab_size={vocab}, hidden_size={width}, num_hidden_layers=2, num_attention_heads={heads},
                         intermediate_size={mlp}, max_position_embeddings={positions}, max_relative_position=5)
    model = NezhaForMaskedLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and 'relative_positions' not in name:
                tensor.add_(torch.randn(tensor.shape, generator=gen) * {noise})
    model.save_pretrained(model_dir)
else:
    model = NezhaForMaskedLM.from_pretrained(model_dir)
model.eval()
batch = np.load(batch_file)
with torch.no_grad():
    out = model(torch.tensor(batch['ids']), attention_mask=torch.tensor(batch['mask']), output_hidden_states=True)
np.savez(out_file, hidden_states=out.hidden_states[-1].numpy(), logits=out.logits.numpy())
'''.format(vocab=VOCAB, width=WIDTH, heads=HEADS, mlp=MLP, positions=POSITIONS, noise=NOISE)


def transformers4_dir() -> str:
    """A `pip install --no-deps --target` directory holding transformers 4.57.6 (the last with NEZHA), made once
    under the plmjax cache (`$PLMJAX_CACHE`, else ~/.cache/plmjax)."""
    import os
    import subprocess
    import sys
    import tempfile
    from plmjax.data.vocabularies import cache_dir
    target = cache_dir() / 'transformers-4.57.6'
    if not (target / 'transformers' / 'models' / 'deprecated' / 'nezha').is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(dir=target.parent, prefix='transformers4-')
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', staging,
                        *TRANSFORMERS4], check=True)
        if not target.is_dir():
            os.replace(staging, target)
    return str(target)


def nezha_reference(mode: str, model_dir: str, batch: Batch, workdir: str) -> dict[str, np.ndarray]:
    """Runs transformers 4's NezhaForMaskedLM in a child process (transformers 4 and 5 cannot share one
    interpreter): mode 'build' saves a small random model to `model_dir`, 'load' reads `model_dir`; both return
    its hidden states and logits on `batch`."""
    import os
    import subprocess
    import sys
    batch_file, out_file = os.path.join(workdir, 'batch.npz'), os.path.join(workdir, f'nezha_{mode}.npz')
    np.savez(batch_file, ids=batch.ids, mask=batch.mask)
    env = {**os.environ, 'PYTHONPATH': transformers4_dir(), 'USE_TF': '0', 'USE_FLAX': '0',
           'TRANSFORMERS_VERBOSITY': 'error'}
    subprocess.run([sys.executable, '-c', _NEZHA_CHILD, mode, model_dir, batch_file, out_file], check=True, env=env)
    return dict(np.load(out_file))
