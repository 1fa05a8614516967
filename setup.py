"""plmjax: pre-trained language models in JAX/Flax (encoder, decoder, encoder-decoder)."""
import setuptools

# The pinned stack of DESIGN.md: verified to install and import together on Python 3.11.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "clu==0.0.12",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",
    "protobuf==7.36.2",
    "numpy==2.4.6",
    "tqdm",
    "matplotlib",
    "tensorboard",
    "jieba==0.42.1",  # Chinese word segmentation for whole-word masking
    "scipy",  # metrics (Pearson/Spearman) and statistics tests
    "scikit-learn==1.9.1",  # official metric implementations (F1, Matthews correlation)
    "conllu==6.0.0",  # CoNLL-U treebanks (Universal Dependencies tagging, Perturbed Masking parsing)
    "networkx==3.6.1",  # maximum spanning arborescence (Chu-Liu/Edmonds) for Perturbed Masking
]

EXTRAS = {
    # nbclient/nbformat/ipykernel: the test suite runs the notebooks headless (tests/notebooks)
    "test": ["pytest", "pytest-xdist", "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"],
    # jupyter lab notebooks/; nbconvert: scripts/render_notebooks.py
    "notebooks": ["jupyterlab==4.6.4", "nbconvert==7.17.1", "nbclient==0.11.0", "nbformat==5.11.1",
                  "ipykernel==7.4.0"],
    "torch": ["torch==2.13.0", "transformers==5.23.0", "safetensors", "tiktoken==0.14.0"],
    "tpu": ["jax[tpu]==0.10.2"],
}

setuptools.setup(
    name="plmjax",
    version="0.1.0",
    description="Pre-trained language models in JAX/Flax: BERT-, GPT- and T5-style models, sharded over a mesh.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["plmjax", "plmjax.*"]) + ["plmjax.tasks"],
    package_dir={"plmjax.tasks": "tasks"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["plmjax=plmjax.cli:main"]},
)
