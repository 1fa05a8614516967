"""Parameter-efficient tuning: LoRA, Houlsby adapters, prompt tuning, prefix tuning — each a wrapper around any
plmjax module, never a fork (see `plmjax/peft/base.py` for how).

    model = peft.wrap(build_model('encoder_classifier', config, num_labels=2), 'lora')
    params = model.init(rng, ids)['params']          # {'base': <the module's params>, 'lora': <new params>}
    tx = peft.optimizer(make_optimizer(...)[0])      # trains exactly peft.trainable_mask(params)
    peft.save_adapter(dir, params, 'lora'); method, adapter = peft.load_adapter(dir)
    params = peft.with_adapter(params, adapter)

Hyper-parameters are gin configurables named like the methods (`lora.rank = 8`, `lora.alpha = 16.0`,
`lora.targets = ('query', 'value')`, `adapter.bottleneck = 64`, `prompt_tuning.length = 20`,
`prefix_tuning.length = 10`, `prefix_tuning.reparameterize = True`, ...); `wrap(module, method, **options)` takes
them as keyword arguments too (these win over gin).
"""
import gin
from flax import linen as nn

from plmjax.peft.adapters import AdapterModel, AdapterOptions
from plmjax.peft.base import (BASE, PeftModel, adapter_params, method_of, optimizer, trainable_mask,
                              with_adapter)
from plmjax.peft.lora import LoraModel, LoraOptions, merge_lora
from plmjax.peft.prefix_tuning import PrefixTuningModel, PrefixTuningOptions, fold_reparameterization
from plmjax.peft.prompt_tuning import PromptTuningModel, PromptTuningOptions, prompt_from_vocabulary
from plmjax.peft.storage import adapter_size, directory_bytes, load_adapter, save_adapter

# method -> (wrapper, its options as a gin configurable named like the method)
METHODS = {
    'lora': (LoraModel, gin.external_configurable(LoraOptions, 'lora', module='plmjax.peft')),
    'adapter': (AdapterModel, gin.external_configurable(AdapterOptions, 'adapter', module='plmjax.peft')),
    'prompt_tuning': (PromptTuningModel,
                      gin.external_configurable(PromptTuningOptions, 'prompt_tuning', module='plmjax.peft')),
    'prefix_tuning': (PrefixTuningModel,
                      gin.external_configurable(PrefixTuningOptions, 'prefix_tuning', module='plmjax.peft')),
}


def options(method: str, **overrides):
    """The hyper-parameters of `method`: gin's bindings (`lora.rank = 8`), then `overrides`."""
    _check_method(method)
    return METHODS[method][1](**overrides)


def wrap(module: nn.Module, method: str, **overrides) -> PeftModel:
    """`module` with `method`'s new parameters; same call signature and outputs (and `encode`/`decode` of an
    EncoderDecoderModel). Params: {'base': module's own, '<method>': new}."""
    _check_method(method)
    if isinstance(module, PeftModel):
        raise ValueError(f'The module is already wrapped with {module.method!r}; wrap the plain model once.')
    return METHODS[method][0](module, options(method, **overrides))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f'Unknown PEFT method {method!r}; choose one of {tuple(METHODS)} (gin: train.peft).')


__all__ = ['BASE', 'METHODS', 'AdapterOptions', 'LoraOptions', 'PeftModel', 'PrefixTuningOptions',
           'PromptTuningOptions', 'adapter_params', 'adapter_size', 'directory_bytes', 'fold_reparameterization',
           'load_adapter', 'merge_lora', 'method_of', 'optimizer', 'options', 'prompt_from_vocabulary',
           'save_adapter', 'trainable_mask', 'with_adapter', 'wrap']
