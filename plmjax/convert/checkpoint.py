"""Converted models as plmjax checkpoints: the parameters in an Orbax checkpoint (through the one wrapper,
`plmjax.train.checkpoint.Checkpointer`) beside a gin model file that rebuilds the network.

    <out>/checkpoints/0/state/     {'params': ...}
    <out>/checkpoints/0/metadata/  config: {'model_config': {...}, 'architecture': ..., 'hf_family': ..., 'source': ...}
    <out>/config.gin               MODEL_ARCH and MODEL_CONFIG (the closest preset plus overrides)
    <out>/tokenizer/               the Hugging Face tokenizer files, when the source had them

`plmjax eval --gin_file=<out>/config.gin ... --checkpoint=<out>` evaluates it; `load_checkpoint` also reads the
checkpoints `plmjax train` writes (their metadata holds the model config too). `convert_layout` rewrites either kind
with its layers scanned (`scan_layers=True`, one `layers` subtree) or unrolled (`layers_0 ..`).
"""
import dataclasses
import os
from collections.abc import Sequence
from typing import Optional


from plmjax.convert import common, hf
from plmjax.convert.hf import Converted
from plmjax.models.config import TransformerConfig
from plmjax.train import checkpoint as checkpoint_lib
from plmjax.train import saved_model
from plmjax.train.saved_model import gin_model_file, read_model_config  # noqa: F401  (re-exported)


def save_checkpoint(out_dir: str, arch: str, config: TransformerConfig, params, *, hf_family: Optional[str] = None,
                    hf_class: Optional[str] = None, source: str = '', head_options: Optional[dict] = None,
                    initialized: Sequence[str] = (), quantize: Optional[dict] = None) -> str:
    """Writes `params` as step 0 of `<out_dir>/checkpoints` and `<out_dir>/config.gin`; returns the step's dir.
    hf_family, hf_class: the Hugging Face model_type and class it came from, written again by `--to hf`;
    head_options: a fine-tuning architecture's (num_labels, num_choices), needed to read it back;
    initialized: the parameters the source lacked (freshly initialized heads), read back by `load_checkpoint`;
    quantize: how the parameters are quantized at every apply (`compression.quantize.as_saved`), if they are."""
    metadata = {'hf_family': hf_family, 'hf_class': hf_class, 'source': source}
    if initialized:
        metadata['initialized'] = list(initialized)
    if head_options:
        metadata['head_options'] = dict(head_options)
    if quantize:
        metadata['quantize'] = dict(quantize)
    header = (f'Converted by `plmjax convert` from {source or "plmjax parameters"}'
              f'{f" (Hugging Face {hf_family})" if hf_family else ""}.\n'
              f'The parameters are in {os.path.join(os.path.abspath(out_dir), "checkpoints", "0")}.')
    return saved_model.save_model(out_dir, arch, config, params, metadata=metadata, header=header)


def load_checkpoint(path: str, step: Optional[int] = None) -> Converted:
    """The architecture, config and parameters (numpy) of a plmjax checkpoint, at its latest step or the step of a
    step directory; `family` and `hf_class` are the Hugging Face origin of a converted checkpoint, else None."""
    saved = saved_model.load_saved_model(path, step)
    return Converted(saved.architecture, saved.config, saved.params, saved.metadata.get('hf_family'),
                     list(saved.metadata.get('initialized', [])), [], saved.metadata.get('hf_class'))


def convert_layout(model_dir: str, out_dir: str, scan_layers: bool, step: Optional[int] = None) -> Converted:
    """Rewrites the plmjax checkpoint `model_dir` (written by `plmjax convert` or `plmjax train`; its latest step or
    `step`) as step 0 of `<out_dir>` with its parameters in the scanned (`scan_layers=True`) or unrolled layout
    (`plmjax.models.layout`), a config.gin whose config says so, and its tokenizer; the optimizer state is not
    carried over. Returns what was written."""
    saved = saved_model.load_saved_model(model_dir, step)
    converted = hf.with_layout(Converted(saved.architecture, saved.config, saved.params, saved.metadata.get(
        'hf_family'), [], [], saved.metadata.get('hf_class')), scan_layers)
    save_checkpoint(out_dir, converted.architecture, converted.config, converted.params, hf_family=converted.family,
                    hf_class=converted.hf_class, source=os.path.abspath(model_dir),
                    head_options=saved.metadata.get('head_options'))
    root = os.path.dirname(checkpoint_lib.checkpoint_root(model_dir))
    hf.copy_tokenizer_files(os.path.join(root, 'tokenizer'), os.path.join(out_dir, 'tokenizer'))
    return converted


def _rewrite(model_dir: str, out_dir: str, step: Optional[int], transform, source: str,
             quantize: Optional[dict] = None) -> Converted:
    """Reads a plmjax checkpoint unrolled, applies `transform(config, params) -> (config, params)` and writes the
    result as step 0 of `<out_dir>` with its config.gin and the source's tokenizer (growth, sub-networks, ternary
    weight splitting); `quantize`, the result's quantization metadata."""
    saved = saved_model.load_saved_model(model_dir, step)
    model = hf.with_layout(Converted(saved.architecture, saved.config, saved.params, saved.metadata.get(
        'hf_family'), [], [], saved.metadata.get('hf_class')), scan_layers=False)
    config, params = transform(model.config, model.params)
    save_checkpoint(out_dir, model.architecture, config, params, hf_family=model.family, hf_class=model.hf_class,
                    source=f'{source} of {os.path.abspath(model_dir)}', head_options=saved.metadata.get('head_options'),
                    quantize=quantize)
    hf.copy_tokenizer_files(os.path.join(os.path.dirname(saved.checkpoint), 'tokenizer'),
                            os.path.join(out_dir, 'tokenizer'))
    return Converted(model.architecture, config, params, model.family, [], [], model.hf_class)


def grow_checkpoint(model_dir: str, out_dir: str, sizes: dict, *, method: str = 'fpi', mapping: str = 'random',
                    seed: int = 0, step: Optional[int] = None) -> Converted:
    """bert2BERT: writes the encoder checkpoint `model_dir` grown to `sizes` (`emb_dim`, `num_heads`, `mlp_dim`,
    `num_encoder_layers`; `plmjax.compression.grow`) as step 0 of `<out_dir>` with its config.gin and tokenizer.
    A scanned checkpoint is unrolled first and written unrolled."""
    from plmjax.compression import grow
    unknown = sorted(set(sizes) - {'emb_dim', 'num_heads', 'mlp_dim', 'num_encoder_layers'})
    if unknown:
        raise ValueError(f'--grow_to {", ".join(unknown)}: only emb_dim, num_heads, mlp_dim and num_encoder_layers '
                         'grow (e.g. --grow_to emb_dim=768,num_heads=12,mlp_dim=3072,num_encoder_layers=12).')

    def transform(config, params):
        large = dataclasses.replace(config, **sizes)
        return large, grow.grow_params(params, config, large, method=method, mapping=mapping, seed=seed)
    return _rewrite(model_dir, out_dir, step, transform, f'bert2BERT {method} growth')


def extract_checkpoint(model_dir: str, out_dir: str, width_mult: float, depth_mult: float = 1.0,
                       step: Optional[int] = None, layers: Optional[Sequence[int]] = None) -> Converted:
    """DynaBERT: writes the (width, depth) sub-network of the encoder checkpoint `model_dir`
    (`plmjax.compression.dynabert.extract`; rewire the model first to keep its most important heads and neurons)
    as a standalone, smaller checkpoint: step 0 of `<out_dir>` with its config.gin and tokenizer. `layers`
    (1-based) keeps those layers instead of the depth rule (a TinyBERT student cut from its teacher)."""
    from plmjax.compression import dynabert
    which = f'layers {",".join(map(str, layers))}' if layers else f'depth {depth_mult}'
    return _rewrite(model_dir, out_dir, step,
                    lambda config, params: dynabert.extract(params, config, width_mult, depth_mult, layers),
                    f'sub-network (width {width_mult}, {which})')


def tws_checkpoint(model_dir: str, out_dir: str, step: Optional[int] = None) -> Converted:
    """BinaryBERT: writes the ternary student `model_dir` (a TernaryBERT run's `student`, quantize 'ternary') split
    by ternary weight splitting (`compression.quantize.tws_params`) as step 0 of `<out_dir>`: a `split_binary`
    checkpoint that evaluates as the ternary model did, the start of binary fine-tuning (its INIT_CHECKPOINT)."""
    from plmjax.compression import quantize
    saved = saved_model.read_saved_model(model_dir)
    settings = saved.metadata.get('quantize') or {}
    if settings.get('method') != 'ternary':
        raise ValueError(f'--tws splits a ternary (TWN) student, and {model_dir} is '
                         f'{"a " + settings["method"] if settings else "not a quantized"} checkpoint: train one with '
                         'gin_configs/compression/minilm_sst2_ternary.gin and split its <model_dir>/student.')
    clip = settings.get('clip', quantize.CLIP)
    split = {**settings, 'method': quantize.SPLIT_BINARY}
    return _rewrite(model_dir, out_dir, step, lambda config, params: (config, quantize.tws_params(params, clip)),
                    'BinaryBERT ternary weight splitting', quantize=split)
