"""Every gin file under gin_configs/ parses; every experiment builds its model config, objective and task."""

import inspect
import pathlib

import gin
import pytest

import plmjax.tasks  # noqa: F401  registers the tasks that experiment files name
from plmjax import launch  # noqa: F401  registers the entry points and PEFT hyper-parameters (lora.rank, ...)
from plmjax.data import pipeline
from plmjax.models.config import TransformerConfig
from plmjax.train import loop
from plmjax.train import setup as setup_lib
from tests.conftest import REPO_ROOT, SHARED_DATA

GIN_FILES = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "gin_configs").rglob("*.gin"))
RUNNABLE = [f for f in GIN_FILES if f.startswith(("gin_configs/experiments/", "gin_configs/compression/minilm"))
            or f == "gin_configs/quickstart.gin"]


@pytest.fixture(autouse=True)
def _fresh_gin():
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO_ROOT))
    yield
    gin.clear_config()


def test_there_are_gin_files():
    assert len(GIN_FILES) >= 20 and "gin_configs/quickstart.gin" in GIN_FILES


@pytest.mark.parametrize("path", GIN_FILES)
def test_gin_file_parses(path):
    gin.parse_config_file(str(REPO_ROOT / path))
    if path.startswith("gin_configs/models/"):  # a model file builds its config
        config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
        assert isinstance(config, TransformerConfig)
        assert gin.query_parameter("%MODEL_ARCH") in ("encoder", "decoder", "encoder_decoder")


@pytest.mark.parametrize("path", RUNNABLE)
def test_experiment_is_complete(path):
    """Launch commands in the header, all REQUIRED macros bound, the model fits the task's vocabulary."""
    text = (REPO_ROOT / path).read_text()
    assert f"plmjax train --gin_file={path}" in text, "the header gives the launch command"
    gin.parse_config_file(str(REPO_ROOT / path))
    bindings = gin.get_bindings("train")
    required = [name for name, p in inspect.signature(loop.train).parameters.items() if p.default is loop.REQUIRED]
    unbound = [name for name in required if bindings.get(name, gin.REQUIRED) is gin.REQUIRED]
    assert not unbound, f"{path} leaves {unbound} %gin.REQUIRED"
    config = bindings["model_config"]
    run = setup_lib.setup(config, bindings["architecture"], bindings["objective"], bindings["task_feature_lengths"],
                          mesh=None, task=bindings["task"], peft=bindings.get("peft"), distill=bindings.get("distill"))
    if run.distill is not None:  # a TinyBERT run: the pair, trained on the stage's loss; the student keeps the task's
        expected = "dynabert" if run.distill.method == "dynabert" else f"tinybert_{run.distill.stage}"
        assert run.objective.name == expected and run.student.objective.name == bindings["objective"]
    else:
        assert run.objective.name == bindings["objective"]
    task = bindings["task"]
    if any(corpus in task for corpus in ("wikitext2", "fewclue")) and not SHARED_DATA.is_dir():
        pytest.skip(f"{task}'s vocabulary is trained on {SHARED_DATA}, which is absent")
    assert pipeline.vocab_size(task) <= config.vocab_size
