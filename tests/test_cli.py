"""User mistakes end in one clear message (exit status 2), not a deep traceback."""

import gin
import pytest

from plmjax import cli
from tests import reliability

TINY = "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin"


def _run(capsys, *argv):
    gin.clear_config()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("plmjax ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "In call to configurable" not in err
    return lines[0]


@reliability.fault_case("bad gin binding / file", "unknown binding")
def test_unknown_gin_binding(capsys, tmp_path):
    code, _, err = _run(capsys, "train", TINY, "--gin_param=train.num_stepz = 3", f"--model_dir={tmp_path}")
    assert code == 2
    line = _error_line(err)
    assert "num_stepz" in line and "train" in line


@pytest.mark.parametrize("binding, expected", [
    ("NUM_STEPS = ", "--gin_param 'NUM_STEPS = ': gin syntax error (Unable to parse value.)"),
    ("NUM_STEPS = [1,", "--gin_param 'NUM_STEPS = [1,': gin syntax error (EOF in multi-line statement"),
    ("NUM_STEP = 3", "binds the macro NUM_STEP, which no gin file uses (%NUM_STEP): did you mean NUM_STEPS"),
])
@reliability.fault_case("bad gin binding / file", lambda binding, **_: f"--gin_param {binding!r}")
def test_bad_gin_param_names_the_binding(capsys, tmp_path, binding, expected):
    code, _, err = _run(capsys, "train", TINY, f"--gin_param={binding}", f"--model_dir={tmp_path}")
    assert code == 2
    assert expected in _error_line(err)
    assert not (tmp_path / "checkpoints").exists()  # nothing ran


@reliability.fault_case("bad gin binding / file", "a binding of the wrong type")
def test_gin_binding_of_the_wrong_type(capsys, tmp_path):
    code, _, err = _run(capsys, "train", TINY, "--gin_param=tiny_encoder.emb_dim = 'wide'", f"--model_dir={tmp_path}")
    assert code == 2
    assert "a gin binding of tiny_encoder has a value of the wrong type" in _error_line(err)


def test_data_folder_macros_are_not_unused(capsys, tmp_path):
    """GLUE_DIR / CLUE_DIR / FEWCLUE_DIR are read by the tasks' code, not through %NAME: binding one is fine."""
    _, _, err = _run(capsys, "train", TINY, "--gin_param=GLUE_DIR = '/nowhere'", "--gin_param=NUM_STEPS = 0",
                        f"--model_dir={tmp_path}")
    assert "GLUE_DIR" not in err


@pytest.mark.parametrize("text, expected", [
    ("NUM_STEPS = \n", "bad.gin, line 2 ('NUM_STEPS ='): gin syntax error (Unable to parse value.)"),
    ("NUM_STEPS = [1\n", "gin file {path} (or a file it includes): gin syntax error (EOF in multi-line"),
])
@reliability.fault_case("bad gin binding / file", lambda text, **_: f"gin file {text!r}")
def test_bad_gin_file_names_the_file_and_line(capsys, tmp_path, text, expected):
    path = tmp_path / "bad.gin"
    path.write_text("include 'gin_configs/experiments/tiny_bert_mlm.gin'\n" + text)
    code, _, err = _run(capsys, "train", f"--gin_file={path}", f"--model_dir={tmp_path / 'run'}")
    assert code == 2
    assert expected.format(path=path) in _error_line(err)


@reliability.fault_case("bad gin binding / file", "a missing gin file")
def test_missing_gin_file(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--gin_file=gin_configs/no_such.gin", f"--model_dir={tmp_path}")
    assert code == 2
    assert "no_such.gin" in _error_line(err)


@reliability.fault_case("bad input file (hand-made)", "a missing data file")
def test_missing_data_file(capsys, tmp_path):
    missing = tmp_path / "corpus" / "train.txt"
    code, _, err = _run(capsys, "train", TINY, "--gin_param=TASK = @text_files_task()",
                        "--gin_param=text_files_task.name = 'my_corpus_mlm'",
                        f"--gin_param=text_files_task.train_files = ['{missing}']",
                        f"--gin_param=text_files_task.validation_files = ['{missing}']",
                        f"--model_dir={tmp_path / 'run'}")
    assert code == 2
    line = _error_line(err)
    assert str(missing) in line and "text_files_task.train_files" in line


@reliability.fault_case("bad input file (hand-made)", "a sequence too long for the model")
def test_sequence_longer_than_the_model_allows(capsys, tmp_path):
    code, _, err = _run(capsys, "train", TINY, "--gin_param=SEQUENCE_LENGTH = 4096", f"--model_dir={tmp_path}")
    assert code == 2
    line = _error_line(err)
    assert "4096" in line and "max_length=128" in line


@reliability.fault_case("checkpoint of another config or version", "another model config")
def test_checkpoint_from_a_different_config(capsys, tmp_path):
    code, out, err = _run(capsys, "train", TINY, "--gin_param=NUM_STEPS = 2", "--gin_param=WARMUP_STEPS = 1", "--gin_param=train.progress = False",
                          "--gin_param=train.eval_batches = 1", f"--model_dir={tmp_path}")
    assert code == 0, err
    code, _, err = _run(capsys, "eval", TINY, "--gin_param=tiny_encoder.emb_dim = 48",
                        f"--checkpoint={tmp_path}")
    assert code == 2
    line = _error_line(err)
    assert "CheckpointMismatchError" in line and str(tmp_path) in line
    assert "saved (64,) float32, expected (48,) float32" in err and "same model gin file" in err  # the differing arrays and the fix
    # The same config evaluates the checkpoint.
    code, out, err = _run(capsys, "eval", TINY, "--gin_param=evaluate.eval_batches = 1",
                          f"--checkpoint={tmp_path}")
    assert code == 0, err
    assert '"accuracy"' in out
