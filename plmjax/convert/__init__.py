"""Hugging Face <-> plmjax checkpoint conversion, one module per family (DESIGN.md decision 8).

    converted = convert.load_hf('all-MiniLM-L6-v2/')           # a transformers directory -> plmjax
    convert.save_checkpoint('out/', converted.architecture, converted.config, converted.params,
                            hf_family=converted.family)      # Orbax checkpoint + gin model file
    restored = convert.load_checkpoint('out/')                 # also reads `plmjax train` checkpoints
    convert.save_hf('hf_out/', restored.config, restored.params, family=restored.family)  # -> from_pretrained
    convert.convert_layout('out/', 'scanned/', scan_layers=True)  # layers as one nn.scan (either layout exports)

Families: bert, roberta, electra (the generator, an EncoderModel), electra_discriminator (ElectraModel, its
generator in <dir>/generator), albert, nezha (transformers 4.x), gpt2, t5, mt5, bart. `from_hf` / `to_hf` do
the same on in-memory config dicts and state dicts; `parity` runs transformers and plmjax side by side. A
checkpoint or config one side cannot represent raises `UnsupportedArchitectureError` naming the field.
"""
from plmjax.convert.checkpoint import convert_layout, gin_model_file, load_checkpoint, save_checkpoint
from plmjax.convert.common import UnsupportedArchitectureError, architecture_of, parameter_spec
from plmjax.convert.hf import (FAMILIES, Converted, from_hf, load_hf, read_hf_dir, save_hf, to_hf, with_layout,
                               write_hf_dir)

__all__ = ['FAMILIES', 'Converted', 'UnsupportedArchitectureError', 'architecture_of', 'convert_layout', 'from_hf',
           'gin_model_file', 'load_checkpoint', 'load_hf', 'parameter_spec', 'read_hf_dir', 'save_checkpoint',
           'save_hf', 'to_hf', 'with_layout', 'write_hf_dir']
