"""Property-based fuzzing of every reader a user hands a file to (issue 18): GLUE TSV, CLUE and FewCLUE JSON
lines, CLUE's whole-file JSON (CMRC2018, C3, CHID answers), CoNLL-U (fine-tuning and Perturbed Masking), plain
text for parsing, WordPiece vocab files. Each starts from a valid file in the official format and is hit with
random bytes, truncation, non-UTF-8 bytes, spliced garbage, renamed fields, wrong types, empty files and huge lines:
every case either parses into examples or raises plmjax's own error naming the file — never a raw traceback."""
import functools
import pathlib
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plmjax.analysis import treebank
from plmjax.data import corpora, sources, vocabularies
from plmjax.data.finetune import clue, fewclue, glue, readers, ud
from tests import reliability
from tests.data.finetune import fixtures

FUZZ = "bad input file (hypothesis)"

CASES = settings(max_examples=200, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JUNK = [b'\xff', b'\xc3', b'\x80\x80', b'\xed\xa0\x80', b'\x00', b'\t', b'\n', b'\r', b'"', b'{', b'}', b'[', b']',
        b',', b':', b'null', b'123', b'-1', b'1e999', b'true', b'[]', b'{}', b'"x"', b'#', b'_', b'\xe4\xb8']


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """`valid` broken in one of the ways real files break."""
    kind = draw(st.sampled_from(['bytes', 'truncate', 'splice', 'replace', 'rename', 'drop_line', 'huge',
                                 'empty', 'repeat']))
    at = draw(st.integers(0, len(valid)))
    if kind == 'bytes':
        return draw(st.binary(max_size=300))
    if kind == 'truncate':
        return valid[:at]
    if kind == 'splice':
        return valid[:at] + draw(st.sampled_from(JUNK) | st.binary(max_size=20)) + valid[at:]
    if kind == 'replace':
        end = draw(st.integers(at, min(len(valid), at + 12)))
        return valid[:at] + draw(st.sampled_from(JUNK)) + valid[end:]
    if kind == 'rename':  # a field name or value changed to another word
        words = sorted(set(re.findall(rb'[A-Za-z_]+', valid))) or [b'x']
        old = draw(st.sampled_from(words))
        return valid.replace(old, draw(st.sampled_from([b'label', b'sentence', b'id', b'text', b'xyz', b'0', b''])))
    if kind == 'drop_line':
        lines = valid.split(b'\n')
        del lines[draw(st.integers(0, len(lines) - 1))]
        return b'\n'.join(lines)
    if kind == 'huge':
        return valid[:at] + b'a' * 300_000 + valid[at:]
    if kind == 'empty':
        return b''
    return valid + valid[:at]  # 'repeat': a partial copy appended (a half-finished concatenation)


def check(read, path: pathlib.Path, content: bytes, errors=(readers.DataFormatError,)):
    """`read()` on `path` holding `content`: examples, or one of plmjax's errors that names the file."""
    reliability.tick()
    path.write_bytes(content)
    try:
        out = read()
    except errors as e:
        assert str(path) in str(e), str(e)
        assert '\n' not in str(e).strip(), str(e)  # one message, not a dump
        return
    assert isinstance(out, list)


# ------------------------------------------------------------------------------------------------------ GLUE

@pytest.fixture(scope='module')
def glue_dir(tmp_path_factory):
    return fixtures.write_glue(tmp_path_factory.mktemp('glue'))


@pytest.mark.parametrize('prefix, split, file', [('sst2', 'validation', 'SST-2/dev.tsv'),
                                                 ('cola', 'train', 'CoLA/train.tsv'),
                                                 ('stsb', 'train', 'STS-B/train.tsv'),
                                                 ('mnli', 'train', 'MNLI/train.tsv')])
@reliability.fault_case(FUZZ, lambda file, **_: f"GLUE TSV {file}")
def test_glue_tsv(glue_dir, prefix, split, file):
    path = pathlib.Path(glue_dir) / file
    valid = path.read_bytes()

    @CASES
    @given(content=mutated(valid))
    def run(content):
        check(lambda: glue.read_tsv_split(glue.TASKS[prefix], str(glue_dir), split), path, content)

    try:
        run()
    finally:
        path.write_bytes(valid)


# ------------------------------------------------------------------------------------------------------ CLUE

@pytest.fixture(scope='module')
def clue_dir(tmp_path_factory):
    return fixtures.write_clue(tmp_path_factory.mktemp('clue'))


@pytest.mark.parametrize('prefix, file', [('afqmc', 'afqmc/train.json'), ('tnews', 'tnews/train.json'),
                                          ('cluewsc2020', 'cluewsc2020/train.json'), ('csl', 'csl/train.json'),
                                          ('cmrc2018', 'cmrc2018_public/train.json'), ('chid', 'chid/train.json'),
                                          ('chid', 'chid/train_answer.json'), ('c3', 'c3/d-train.json')])
@reliability.fault_case(FUZZ, lambda file, **_: f"CLUE JSON {file}")
def test_clue_json(clue_dir, prefix, file):
    path = pathlib.Path(clue_dir) / file
    valid = path.read_bytes()

    @CASES
    @given(content=mutated(valid))
    def run(content):
        check(lambda: clue.read_split(prefix, str(clue_dir), 'train'), path, content)

    try:
        run()
    finally:
        path.write_bytes(valid)


# --------------------------------------------------------------------------------------------------- FewCLUE

@pytest.mark.parametrize('prefix', ['eprstmt', 'bustm', 'csldcp', 'tnews', 'iflytek', 'cluewsc', 'chid', 'ocnli',
                                    'csl'])
@reliability.fault_case(FUZZ, lambda prefix, **_: f"FewCLUE JSON lines {prefix}")
def test_fewclue_json_lines(shared_data, tmp_path, prefix):
    lines = (shared_data / 'fewclue' / prefix / fewclue.SPLIT_FILES['train']).read_bytes().split(b'\n')[:4]
    (tmp_path / prefix).mkdir()
    path = tmp_path / prefix / fewclue.SPLIT_FILES['train']
    valid = b'\n'.join(lines) + b'\n'
    path.write_bytes(valid)
    assert len(fewclue.read_split(prefix, str(tmp_path), 'train')) == 4

    @CASES
    @given(content=mutated(valid))
    def run(content):
        check(lambda: fewclue.read_split(prefix, str(tmp_path), 'train'), path, content)

    run()


# ---------------------------------------------------------------------------------- CoNLL-U, text, vocab.txt

CONLLU = ('# sent_id = 1\n# text = The cat sat.\n1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n'
          '2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_\n3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No\n'
          '4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_\n\n1-2\tdon\'t\t_\t_\t_\t_\t_\t_\t_\t_\n1\tdo\tdo\tAUX\tVBP\t_\t0\t'
          'root\t_\t_\n2\tn\'t\tnot\tPART\tRB\t_\t1\tadvmod\t_\t_\n\n').encode()


@reliability.fault_case(FUZZ, "CoNLL-U (fine-tuning)")
def test_ud_conllu(tmp_path):
    path = tmp_path / 'ud.conllu'

    @CASES
    @given(content=mutated(CONLLU))
    def run(content):
        check(lambda: ud.read_sentences(str(path)), path, content)

    run()


@pytest.mark.parametrize('read', [treebank.read_conllu, functools.partial(treebank.read_conllu, max_words=3)])
@reliability.fault_case(FUZZ, lambda read, **_: "CoNLL-U (Perturbed Masking{})".format(
    ", max_words" if isinstance(read, functools.partial) else ""))
def test_perturbed_masking_conllu(tmp_path, read):
    path = tmp_path / 'dev.conllu'

    @CASES
    @given(content=mutated(CONLLU))
    def run(content):
        check(lambda: read(str(path)), path, content, errors=(treebank.TreebankError,))

    run()


@reliability.fault_case(FUZZ, "plain text (Perturbed Masking)")
def test_perturbed_masking_text(tmp_path):
    path = tmp_path / 'sentences.txt'

    @CASES
    @given(content=mutated(b'The cat sat .\nA dog barked loudly .\n'))
    def run(content):
        check(lambda: treebank.read_text(str(path)), path, content, errors=(treebank.TreebankError,))

    run()


@reliability.fault_case(FUZZ, "WordPiece vocab.txt")
def test_wordpiece_vocab_file(tmp_path):
    path = tmp_path / 'vocab.txt'
    valid = '\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat', '##s', 'sat', '.']).encode() + b'\n'

    def read():
        vocabulary = vocabularies.WordPieceVocabulary(str(path))
        return list(vocabulary.encode('the cats sat.'))

    @CASES
    @given(content=mutated(valid))
    def run(content):
        check(read, path, content, errors=(readers.DataFormatError,))

    run()


# ------------------------------------------------------------------------------- pre-training text corpora

@reliability.fault_case(FUZZ, "JSON-lines corpus")
def test_json_lines_corpus(tmp_path):
    path = tmp_path / 'corpus.jsonl'
    valid = b'{"text": "The cat sat."}\n{"text": "A dog barked.", "id": 2}\n'

    @CASES
    @given(content=mutated(valid))
    def run(content):
        check(lambda: corpora.read_json_lines_texts([str(path)], 'text'), path, content)

    run()


@reliability.fault_case(FUZZ, "plain-text corpus")
def test_plain_text_corpus(tmp_path):
    path = tmp_path / 'corpus.txt'

    def read():
        source = sources.text_files_source([str(path)], [str(path)])
        return [ex['text'] for ex in source.get_dataset('train', shuffle=False).as_numpy_iterator()]

    @settings(CASES, max_examples=60)  # each case builds a tf.data pipeline
    @given(content=mutated(b'The cat sat.\nA dog barked.\n'))
    def run(content):
        check(read, path, content)

    run()
