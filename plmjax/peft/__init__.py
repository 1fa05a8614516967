"""Parameter-efficient tuning: LoRA, Houlsby adapters, prompt tuning, prefix tuning — each a wrapper around any
plmjax module, never a fork (see `plmjax/peft/base.py` for how).

    model = peft.wrap(build_model('encoder_classifier', config, num_labels=2), 'lora')
    params = model.init(rng, ids)['params']          # {'base': <the module's params>, 'lora': <new params>}
    tx = peft.optimizer(make_optimizer(...)[0])      # trains exactly peft.trainable_mask(params)
    plmjax.train.adapter.save_adapter(dir, params, 'lora'); method, adapter = plmjax.train.adapter.load_adapter(dir)
    params = peft.with_adapter(params, adapter)

Hyper-parameters are each method's options dataclass (`LoraOptions(rank=8, alpha=16.0, targets=('query',
'value'))`, `AdapterOptions(bottleneck=64)`, `PromptTuningOptions(length=20)`, `PrefixTuningOptions(length=10,
reparameterize=True)`); `wrap(module, method, options, **overrides)` takes them, keyword overrides winning. In gin
files they are configurables named like the methods (`lora.rank = 8`), registered by `plmjax.launch`.
"""
import dataclasses

from flax import linen as nn

from plmjax.peft.adapters import AdapterModel, AdapterOptions
from plmjax.peft.base import (BASE, PeftModel, adapter_params, method_of, optimizer, trainable_mask,
                              with_adapter)
from plmjax.peft.lora import LoraModel, LoraOptions, merge_lora
from plmjax.peft.prefix_tuning import PrefixTuningModel, PrefixTuningOptions, fold_reparameterization
from plmjax.peft.prompt_tuning import PromptTuningModel, PromptTuningOptions, prompt_from_vocabulary
from plmjax.peft.storage import adapter_size

# method -> (wrapper, its options dataclass)
METHODS = {
    'lora': (LoraModel, LoraOptions),
    'adapter': (AdapterModel, AdapterOptions),
    'prompt_tuning': (PromptTuningModel, PromptTuningOptions),
    'prefix_tuning': (PrefixTuningModel, PrefixTuningOptions),
}


def options(method: str, base=None, **overrides):
    """The hyper-parameters of `method`: `base` (an options instance; default the method's defaults) with
    `overrides`."""
    _check_method(method)
    cls = METHODS[method][1]
    if base is not None and not isinstance(base, cls):
        raise ValueError(f'PEFT method {method!r} takes {cls.__name__}, got {type(base).__name__}.')
    return dataclasses.replace(base, **overrides) if base is not None else cls(**overrides)


def wrap(module: nn.Module, method: str, options_: object = None, **overrides) -> PeftModel:
    """`module` with `method`'s new parameters; same call signature and outputs (and `encode`/`decode` of an
    EncoderDecoderModel). Params: {'base': module's own, '<method>': new}. options_: the method's options
    dataclass (default: its defaults); keyword overrides win."""
    _check_method(method)
    if isinstance(module, PeftModel):
        raise ValueError(f'The module is already wrapped with {module.method!r}; wrap the plain model once.')
    return METHODS[method][0](module, options(method, options_, **overrides))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f'Unknown PEFT method {method!r}; choose one of {tuple(METHODS)} (gin: train.peft).')


__all__ = ['BASE', 'METHODS', 'AdapterOptions', 'LoraOptions', 'PeftModel', 'PrefixTuningOptions',
           'PromptTuningOptions', 'adapter_params', 'adapter_size', 'fold_reparameterization',
           'merge_lora', 'method_of', 'optimizer', 'options', 'prompt_from_vocabulary',
           'trainable_mask', 'with_adapter', 'wrap']
