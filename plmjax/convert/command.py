"""`plmjax convert`: a Hugging Face directory -> a plmjax checkpoint with its gin model file, and back; a plmjax
checkpoint -> the same model with its layers scanned or unrolled (`--layout scanned|unrolled`), or grown into a
larger encoder by bert2BERT (`--grow fpi|aki --grow_to emb_dim=..,num_heads=..,mlp_dim=..,num_encoder_layers=..`),
or cut to a DynaBERT sub-network (`--extract --width_mult 0.5 --depth_mult 0.75`).

Both directions print what was converted (family, architecture, preset, parameter count) and what was not
(heads the source lacked or plmjax lacks); `--verify` then runs transformers and plmjax on a sample batch and
prints the largest differences.
"""
import os
import sys
from typing import Optional

from plmjax import models
from plmjax.convert import checkpoint, hf
from plmjax.train import checkpoint as checkpoint_lib

LAYOUTS = ('scanned', 'unrolled')  # --layout: TransformerConfig.scan_layers True / False


def convert_from_hf(model_dir: str, out: str, verify: bool = False) -> dict:
    """Writes `<out>/checkpoints/0`, `<out>/config.gin` and `<out>/tokenizer/`; returns a summary."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f'--model_dir {model_dir} is not a directory.')
    converted = hf.load_hf(model_dir)
    step_dir = checkpoint.save_checkpoint(out, converted.architecture, converted.config, converted.params,
                                          hf_family=converted.family, hf_class=converted.hf_class,
                                          source=os.path.abspath(model_dir), initialized=converted.initialized)
    tokenizer = hf.copy_tokenizer_files(model_dir, os.path.join(out, 'tokenizer'))
    summary = _summary(converted, checkpoint=step_dir, gin_file=os.path.abspath(os.path.join(out, 'config.gin')),
                       tokenizer_files=tokenizer)
    if verify:
        summary['max_differences'] = _verify(model_dir, converted)
    return summary


def convert_to_hf(model_dir: str, out: str, family: str | None = None, verify: bool = False) -> dict:
    """Writes `<out>/config.json`, `<out>/model.safetensors` and the tokenizer files; returns a summary."""
    converted = checkpoint.load_checkpoint(model_dir)
    root = os.path.dirname(checkpoint_lib.checkpoint_root(model_dir))
    keep_class = family in (None, converted.family)  # the source's class, unless another family is asked for
    converted.family = hf.save_hf(out, converted.config, converted.params, family=family or converted.family,
                                  hf_class=converted.hf_class if keep_class else None,
                                  architecture=converted.architecture, tokenizer_dir=os.path.join(root, 'tokenizer'))
    summary = _summary(converted, hf_dir=os.path.abspath(out))
    if verify:
        summary['max_differences'] = _verify(out, converted)
    return summary


def convert_layout(model_dir: str, out: str, layout: str) -> dict:
    """Writes `<out>/checkpoints/0` and `<out>/config.gin` with the parameters in `layout` ('scanned' or
    'unrolled'); returns a summary."""
    if layout not in LAYOUTS:
        raise ValueError(f'--layout must be one of {LAYOUTS}, got {layout!r}.')
    converted = checkpoint.convert_layout(model_dir, out, scan_layers=layout == 'scanned')
    return _summary(converted, layout=layout, checkpoint=os.path.abspath(os.path.join(out, 'checkpoints', '0')),
                    gin_file=os.path.abspath(os.path.join(out, 'config.gin')))


def grow(model_dir: str, out: str, method: str, grow_to: str, mapping: str = 'random', seed: int = 0) -> dict:
    """bert2BERT growth (`--grow fpi|aki --grow_to emb_dim=..,num_heads=..`): writes `<out>/checkpoints/0` and
    `<out>/config.gin`; returns a summary."""
    sizes = {}
    for item in filter(None, (grow_to or '').split(',')):
        name, _, value = item.partition('=')
        if not value.strip().isdigit():
            raise ValueError(f'--grow_to {item!r}: write name=integer pairs separated by commas, e.g. '
                             'emb_dim=768,num_heads=12,mlp_dim=3072,num_encoder_layers=12.')
        sizes[name.strip()] = int(value)
    if not sizes:
        raise ValueError('--grow needs --grow_to, e.g. --grow_to emb_dim=768,num_heads=12,mlp_dim=3072.')
    converted = checkpoint.grow_checkpoint(model_dir, out, sizes, method=method, mapping=mapping, seed=seed)
    return _summary(converted, method=method, checkpoint=os.path.abspath(os.path.join(out, 'checkpoints', '0')),
                    gin_file=os.path.abspath(os.path.join(out, 'config.gin')))


def extract(model_dir: str, out: str, width_mult: float, depth_mult: float, keep_layers: Optional[str] = None) -> dict:
    """DynaBERT (`--extract --width_mult W --depth_mult D`, or `--keep_layers 1,3,5`): writes the sub-network as
    `<out>/checkpoints/0` and `<out>/config.gin`; returns a summary."""
    layers = None
    if keep_layers:
        try:
            layers = [int(layer) for layer in keep_layers.split(',')]
        except ValueError:
            raise ValueError(f'--keep_layers {keep_layers}: give 1-based layer numbers, e.g. --keep_layers 1,2,3.') \
                from None
    converted = checkpoint.extract_checkpoint(model_dir, out, width_mult, depth_mult, layers=layers)
    return _summary(converted, width_mult=width_mult, depth_mult=depth_mult, keep_layers=keep_layers,
                    checkpoint=os.path.abspath(os.path.join(out, 'checkpoints', '0')),
                    gin_file=os.path.abspath(os.path.join(out, 'config.gin')))


def tws(model_dir: str, out: str) -> dict:
    """BinaryBERT (`--tws`): writes the ternary student split into two binary weights a tensor; returns a summary."""
    converted = checkpoint.tws_checkpoint(model_dir, out)
    return _summary(converted, checkpoint=os.path.abspath(os.path.join(out, 'checkpoints', '0')),
                    gin_file=os.path.abspath(os.path.join(out, 'config.gin')))


def _summary(converted: hf.Converted, **paths) -> dict:
    summary = {'family': converted.family, 'architecture': converted.architecture,
               'preset': converted.config.name, 'parameters': models.count_params(converted.params), **paths}
    if converted.initialized:
        summary['newly_initialized'] = converted.initialized
    if converted.unused:
        summary['not_converted'] = converted.unused
    return summary


def _verify(hf_dir: str, converted: hf.Converted) -> dict[str, float]:
    import transformers
    from plmjax.convert import parity
    hf_config, _ = hf.read_hf_dir(hf_dir)
    name = (hf_config.get('architectures') or ['AutoModel'])[0]
    if not hasattr(transformers, name):
        raise ValueError(f'transformers {transformers.__version__} has no {name} to verify against '
                         '(NEZHA needs transformers 4.x); convert without --verify.')
    model = getattr(transformers, name).from_pretrained(hf_dir).float().eval()
    return parity.compare(model, converted)


def run(args) -> None:
    if getattr(args, 'rewire', False):
        if not args.task:
            raise ValueError('--rewire needs --task: the labelled task whose loss gives the importance '
                             '(e.g. --task glue_sst2_tsv).')
        import plmjax.tasks  # noqa: F401  (registers the task)
        from plmjax.convert import rewire
        summary = rewire.rewire_checkpoint(args.model_dir, args.out, args.task, split=args.split,
                                           sequence_length=args.sequence_length, num_batches=args.num_batches)
    elif getattr(args, 'layout', None):
        summary = convert_layout(args.model_dir, args.out, args.layout)
    elif getattr(args, 'extract', False):
        summary = extract(args.model_dir, args.out, args.width_mult, args.depth_mult, args.keep_layers)
    elif getattr(args, 'tws', False):
        summary = tws(args.model_dir, args.out)
    elif getattr(args, 'grow', None):
        summary = grow(args.model_dir, args.out, args.grow, args.grow_to, args.grow_mapping, args.seed)
    elif args.from_format:
        summary = convert_from_hf(args.model_dir, args.out, verify=args.verify)
    else:
        summary = convert_to_hf(args.model_dir, args.out, family=args.family, verify=args.verify)
    width = max(map(len, summary))
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ', '.join(f'{k} {v:.2e}' for k, v in value.items())
        elif isinstance(value, list):
            value = ', '.join(value) or '-'
        print(f'{key.ljust(width)}  {value}', file=sys.stdout)
