"""Hugging Face checkpoints <-> plmjax parameters: `from_hf` / `to_hf` on a config.json dict and a state dict,
and `load_hf` / `save_hf` on directories (`config.json` + `model.safetensors`, sharded safetensors or
`pytorch_model.bin`), with the tokenizer files carried along.

Reading needs only numpy and `safetensors` (torch only for a `pytorch_model.bin`); writing produces
`model.safetensors` that `transformers`' `from_pretrained` loads.
"""
import dataclasses
import json
import logging
import os
import shutil
from typing import Mapping, Optional

import numpy as np

from plmjax.data.finetune import readers
from plmjax.convert import albert, bart, bert, common, electra, gpt2, nezha, roberta, t5
from plmjax.models import layout
from plmjax.models.config import TransformerConfig

# Export order matters: a config is written as the first family that represents it exactly.
FAMILIES = {f.name: f for f in (bert.FAMILY, roberta.FAMILY, electra.FAMILY, electra.DISCRIMINATOR_FAMILY,
                                albert.FAMILY, nezha.FAMILY, gpt2.FAMILY, t5.FAMILY, t5.MT5_FAMILY, bart.FAMILY)}
TOKENIZER_FILES = ('vocab.txt', 'vocab.json', 'merges.txt', 'tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json', 'spiece.model', 'sentencepiece.bpe.model', 'added_tokens.json')


@dataclasses.dataclass
class Converted:
    """A plmjax model converted from a Hugging Face checkpoint."""
    architecture: str  # 'encoder' | 'decoder' | 'encoder_decoder'
    config: TransformerConfig
    params: dict  # the unboxed parameter tree, numpy arrays in config.param_dtype
    family: str  # Hugging Face model_type it came from ('bert', 't5', ...)
    initialized: list[str]  # plmjax parameters the checkpoint lacked (heads of a base model), freshly initialized
    unused: list[str]  # Hugging Face tensors plmjax has no place for (other task heads: NSP, classifiers)
    hf_class: Optional[str] = None  # the source's transformers class (config.json `architectures`), kept on export


def family_of(hf_config: Mapping, keys) -> common.Family:
    """The family reading config.json's model_type; a family's marker key picks it among several."""
    model_type = hf_config.get('model_type')
    candidates = [family for family in FAMILIES.values() if family.reads(model_type)]
    if not candidates:
        supported = sorted({family.model_type for family in FAMILIES.values()})
        raise common.UnsupportedArchitectureError(
            f'Hugging Face model_type {model_type!r} has no plmjax converter; supported: {supported}.')
    marked = [family for family in candidates if family.marker and family.marker in keys]
    return (marked or [family for family in candidates if not family.marker])[0]


def _with_prefix(state: Mapping, prefix: str) -> dict:
    """A base-model checkpoint (`BertModel`) stores keys without the prefix its task models use (`bert.`)."""
    if not prefix or any(key.startswith(prefix + '.') for key in state):
        return dict(state)
    return {f'{prefix}.{key}': value for key, value in state.items()}


def from_hf(hf_config: Mapping, state: Mapping[str, np.ndarray], *, seed: int = 0, initialize_missing: bool = True,
            dtype: Optional[str] = None, scan_layers: bool = False) -> Converted:
    """A config.json dict and a state dict of numpy arrays -> a plmjax architecture, config and parameters
    (parameters and computation in `dtype`, default float32; 'float64' for numerical checks under jax_enable_x64).
    scan_layers: a config with `scan_layers=True` and its parameters in the scanned layout (the unrolled tree
    converted with `plmjax.models.layout.scan_params`).

    Heads the checkpoint lacks (a base model's MLM head) are initialized with `seed` and listed in `initialized`
    (left out of the tree with initialize_missing=False). Raises UnsupportedArchitectureError naming the config
    field plmjax cannot represent, and ValueError when the tensors do not fit the config (missing, other shapes).
    """
    family = family_of(hf_config, state)
    state = _with_prefix(state, family.prefix)
    if family.prepare:
        state = family.prepare(hf_config, state)
    try:
        config = family.config_from_hf(hf_config, frozenset(state))
    except KeyError as e:
        raise ValueError(f'The {family.name} config.json lacks the field {e.args[0]!r}: save the config with '
                         '`transformers` (config.save_pretrained) or add the field.') from None
    except TypeError as e:
        raise ValueError(f'The {family.name} config.json has a value of the wrong type ({e}): numbers must be JSON '
                         'numbers, not strings.') from None
    config = dataclasses.replace(config, name=common.base_preset(config))
    if dtype:
        config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
    arch = family.architecture
    flat, used = common.apply_to_params(family.rules(config), state)
    expected = common.flatten(common.abstract_params(arch, config))
    for path, value in flat.items():
        if tuple(value.shape) != tuple(expected[path].shape):
            raise ValueError(f'Parameter {path} has shape {tuple(value.shape)} in the checkpoint but the config.json '
                             f'describes {tuple(expected[path].shape)}: the weights do not belong to this config.')
    missing = sorted(set(expected) - set(flat))
    body = [path for path in missing if not path.startswith(family.optional)]
    if body:
        raise ValueError(f'The {family.name} checkpoint lacks the tensors of {body[:5]}'
                         f'{" ..." if len(body) > 5 else ""}: it is incomplete.')
    if missing and initialize_missing:
        fresh = common.flatten(common.init_params(arch, config, seed))
        flat.update({path: np.asarray(fresh[path]) for path in missing})
        logging.warning('Newly initialized (not in the checkpoint): %s', ', '.join(missing))
    unused = sorted(set(state) - used - common.ignored(state, family.ignored))
    if unused:
        logging.warning('Not converted (plmjax has no place for them): %s', ', '.join(unused))
    dtype = config.params_dtype
    params = common.unflatten({path: np.asarray(value).astype(dtype) for path, value in flat.items()})
    converted = Converted(arch, config, params, family.name, missing, unused,
                          (hf_config.get('architectures') or [None])[0])
    return with_layout(converted, scan_layers)


def with_layout(converted: Converted, scan_layers: bool) -> Converted:
    """`converted` with its parameters in the scanned (`scan_layers=True`) or the unrolled layout, its config's
    `scan_layers` set to match."""
    if converted.config.shared_layers and scan_layers:
        raise ValueError('A model with shared_layers=True (ALBERT) has one layer reused by every position: it has no '
                         'scanned layout (scan_layers needs distinct layers).')
    params = layout.scan_params(converted.params) if scan_layers else layout.unscan_params(converted.params)
    config = dataclasses.replace(converted.config, scan_layers=scan_layers)
    return dataclasses.replace(converted, config=config, params=params)


def _exported_keys(family: common.Family, config: TransformerConfig, paths) -> frozenset:
    return frozenset(key for rule in family.rules(config) if all(p in paths for p in rule.params) for key in rule.hf)


def _representation(family: common.Family, config: TransformerConfig, paths) -> tuple[Optional[dict], dict]:
    """(config.json dict, {}) when `family` represents `config` exactly, else (None, {field: (ours, theirs)})."""
    try:
        hf_config = family.config_to_hf(config)
        back = family.config_from_hf(hf_config, _exported_keys(family, config, paths))
    except common.UnsupportedArchitectureError as e:
        return None, {'error': (str(e), None)}
    differences = common.config_differences(config, back)
    return (None if differences else hf_config), differences


def to_hf(config: TransformerConfig, params, family: Optional[str] = None, hf_class: Optional[str] = None,
          architecture: Optional[str] = None) -> tuple[dict, dict[str, np.ndarray]]:
    """plmjax config and parameters -> (config.json dict, state dict) of a Hugging Face model.

    family: the Hugging Face model_type (or family name) to write; default: the first family of the architecture
    (default: `architecture_of(config)`) that represents the config exactly. hf_class: the `architectures` entry
    (default: the family's class that holds every plmjax parameter). Raises UnsupportedArchitectureError naming
    the config fields the Hugging Face architecture lacks.
    """
    return _to_hf(config, params, family, hf_class, architecture)[1:]


def _to_hf(config, params, family, hf_class, architecture) -> tuple[common.Family, dict, dict[str, np.ndarray]]:
    arch = architecture or common.architecture_of(config)
    params = layout.unscan_params(params)  # the rules name the unrolled layout's layers_<i>
    config = dataclasses.replace(config, scan_layers=False)
    flat = common.flatten(params)
    candidates = [f for f in FAMILIES.values() if f.architecture == arch and family in (None, f.name, f.model_type)]
    if not candidates:
        known = sorted({f.model_type for f in FAMILIES.values() if f.architecture == arch})
        raise common.UnsupportedArchitectureError(
            f'No Hugging Face family {family or ""} converts plmjax {arch!r} models' +
            (f'; families of {arch!r}: {known}.' if known else '.'))
    found, attempts = None, {}
    for candidate in candidates:
        hf_config, differences = _representation(candidate, config, flat)
        if hf_config is not None:
            found = candidate
            break
        attempts[candidate.name] = differences
    if found is None:
        name, differences = min(attempts.items(), key=lambda item: len(item[1]))
        listed = '; '.join(f'{field}={ours!r} ({name} has {theirs!r})' if field != 'error' else ours
                           for field, (ours, theirs) in differences.items())
        raise common.UnsupportedArchitectureError(
            f'No Hugging Face architecture represents plmjax config {config.name!r} exactly; the closest, {name}, '
            f'differs in TransformerConfig {listed}.')
    state = common.apply_to_hf(found.rules(config), flat)
    hf_config = {'model_type': found.model_type, 'architectures': [hf_class or found.hf_class], **hf_config,
                 'dtype': str(np.dtype(config.params_dtype))}
    return found, hf_config, state


# ------------------------------------------------------------------------------------------- directories


def read_hf_dir(model_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json and the weights of a Hugging Face model directory, as numpy arrays."""
    config_path = os.path.join(model_dir, 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f'{model_dir} is not a Hugging Face model directory: it has no config.json.')
    return _read_config(config_path), _read_weights(model_dir)


def _read_config(config_path: str) -> dict:
    text = readers.read_text(config_path)  # a byte that is not UTF-8: DataFormatError naming the line
    try:
        hf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise readers.format_error(config_path, e.lineno, f'malformed JSON ({e.msg} at column {e.colno})',
                                   'Download or save the model again: config.json is one JSON object') from None
    if not isinstance(hf_config, dict):
        raise readers.format_error(config_path, None, f'a JSON {type(hf_config).__name__}, not an object',
                                   'A Hugging Face config.json is one JSON object ({"model_type": ...})')
    return hf_config


def _read_weights(model_dir: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    single = os.path.join(model_dir, 'model.safetensors')
    index = os.path.join(model_dir, 'model.safetensors.index.json')
    if os.path.isfile(single) or os.path.isfile(index):
        if os.path.isfile(single):
            files = [single]
        else:
            try:
                files = sorted({os.path.join(model_dir, name) for name in json.loads(
                    readers.read_text(index))['weight_map'].values()})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise readers.format_error(index, None, 'not a safetensors index (JSON with a "weight_map" of '
                                           'tensor -> file)', 'Download or save the model again') from None
        state = {}
        for path in files:  # framework='flax' reads bfloat16 too (numpy has no bfloat16 of its own)
            if not os.path.isfile(path):
                raise FileNotFoundError(f'{path}, named by {index}, does not exist: the download is incomplete; '
                                        'download the model again.')
            try:
                with safe_open(path, framework='flax') as f:
                    state.update({key: np.asarray(f.get_tensor(key)) for key in f.keys()})
            except Exception as e:  # safetensors' SafetensorError (a Rust exception type), OSError
                raise ValueError(f'{path} is not a readable safetensors file ({e}): it is truncated or corrupted; '
                                 'download or save the model again.') from None
        return state
    torch_file = os.path.join(model_dir, 'pytorch_model.bin')
    if os.path.isfile(torch_file):
        import torch
        try:
            state = torch.load(torch_file, map_location='cpu', weights_only=True)
        except Exception as e:  # pickle / zip errors of a truncated or foreign file
            raise ValueError(f'{torch_file} is not a readable PyTorch state dict ({type(e).__name__}: {e}): it is '
                             'truncated or corrupted; download or save the model again.') from None
        return {key: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for key, t in state.items()}
    raise FileNotFoundError(f'{model_dir} holds no weights (model.safetensors, model.safetensors.index.json or '
                            'pytorch_model.bin).')


def write_hf_dir(out_dir: str, hf_config: Mapping, state: Mapping[str, np.ndarray],
                 tokenizer_dir: Optional[str] = None) -> None:
    """config.json + model.safetensors (+ the tokenizer files found in `tokenizer_dir`)."""
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    save_file({key: np.ascontiguousarray(value) for key, value in state.items()},
              os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
    if tokenizer_dir:
        copy_tokenizer_files(tokenizer_dir, out_dir)


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            os.makedirs(dst, exist_ok=True)
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def load_hf(model_dir: str, *, seed: int = 0, scan_layers: bool = False) -> Converted:
    """A Hugging Face model directory -> `Converted` (an ELECTRA discriminator with the generator in
    `<model_dir>/generator`, when there is one); scan_layers: in the scanned layout (see `from_hf`)."""
    return with_layout(_load_hf(model_dir, seed), scan_layers)


def _load_hf(model_dir: str, seed: int) -> Converted:
    hf_config, state = read_hf_dir(model_dir)
    generator_dir = os.path.join(model_dir, electra.GENERATOR_DIR)
    pair = hf_config.get('model_type') == 'electra' and os.path.isfile(os.path.join(generator_dir, 'config.json'))
    converted = from_hf(hf_config, state, seed=seed, initialize_missing=not pair)
    if converted.architecture == 'electra' and pair:
        generator = _load_hf(generator_dir, seed=0)
        converted.params = electra.merge_generator(converted.config, converted.params, generator.config,
                                                   generator.params, generator_dir)
        converted.initialized = []
    return converted


def save_hf(out_dir: str, config: TransformerConfig, params, *, family: Optional[str] = None,
            hf_class: Optional[str] = None, architecture: Optional[str] = None,
            tokenizer_dir: Optional[str] = None) -> str:
    """Writes a directory `transformers` loads with `from_pretrained` (an ElectraModel: the discriminator, and
    its generator in `<out_dir>/generator`); returns the family written. `params` in either layout."""
    params = layout.unscan_params(params)
    config = dataclasses.replace(config, scan_layers=False)
    if architecture == 'electra':
        params, generator_config, generator_params = electra.split_generator(config, params)
        save_hf(os.path.join(out_dir, electra.GENERATOR_DIR), generator_config, generator_params, family='electra',
                tokenizer_dir=tokenizer_dir)
    found, hf_config, state = _to_hf(config, params, family, hf_class, architecture)
    write_hf_dir(out_dir, hf_config, state, tokenizer_dir)
    return found.name
