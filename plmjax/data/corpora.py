"""Plain-text corpora as Python lists: the embedded pydoc corpus, WikiText-2 and user text files.

Everything here is pure Python (no TensorFlow); `sources.py` wraps these as seqio data sources and
`vocabularies.py` trains SentencePiece models on them. Each function returns documents (one string per
document or paragraph) for one split, in a fixed order.
"""
import ast
import functools
import glob
import os
import pathlib
import re
import sysconfig
import zlib
from typing import Optional, Sequence

from plmjax.data.finetune import readers

SPLITS = ("train", "validation")

# ------------------------------------------------------------------------------------- embedded (pydoc)

# reStructuredText heading underlines and rules: lines made only of these characters.
_RULE_LINE = re.compile(r"^[\s*=\-~^#+]+$")
_SKIPPED_STDLIB_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_VALIDATION_BUCKET = 0  # documents whose crc32(doc_id) % 10 == 0 are held out (about 10%)


def prose_paragraphs(text: str, min_words: int = 4) -> list[str]:
    """Splits help/docstring text into prose paragraphs, one line each.

    Blank lines separate paragraphs. Indented blocks (code, grammar rules) and doctest blocks are dropped,
    heading underlines are removed, whitespace is collapsed, and paragraphs of fewer than `min_words`
    words are dropped.
    """
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip() and not _RULE_LINE.match(line)]
        if not lines or lines[0][:1].isspace() or lines[0].lstrip().startswith(">>>"):
            continue
        paragraph = " ".join(" ".join(lines).split())
        if len(paragraph.split()) >= min_words:
            paragraphs.append(paragraph)
    return paragraphs


def _stdlib_docstring_documents() -> list[tuple[str, list[str]]]:
    """One document per standard-library module: its module, class and function docstrings, in order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_STDLIB_DIRS and not d.startswith("config-"))
        for filename in sorted(f for f in filenames if f.endswith(".py")):
            path = pathlib.Path(dirpath, filename)
            try:
                tree = ast.parse(path.read_bytes())  # bytes: honours PEP 263 coding cookies
            except (SyntaxError, ValueError):
                continue  # a few stdlib data files are not Python 3
            paragraphs = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    docstring = ast.get_docstring(node)
                    if docstring:
                        paragraphs.extend(prose_paragraphs(docstring))
            if paragraphs:
                module = ".".join(path.relative_to(root).with_suffix("").parts)
                documents.append((f"module:{module}", paragraphs))
    return documents


@functools.cache
def _pydoc_split_paragraphs() -> dict[str, tuple[tuple[str, ...], ...]]:
    """{split: documents as tuples of paragraphs}; validation is disjoint from train at paragraph level."""
    import pydoc_data.topics  # pylint: disable=import-outside-toplevel

    topics = pydoc_data.topics.topics
    documents = [(f"topic:{key}", prose_paragraphs(topics[key])) for key in sorted(topics)]
    documents += _stdlib_docstring_documents()
    is_validation = lambda doc_id: zlib.crc32(doc_id.encode()) % 10 == _VALIDATION_BUCKET
    splits = {"train": [], "validation": []}
    seen = {"train": set(), "validation": set()}
    for doc_id, paragraphs in sorted(documents, key=lambda d: is_validation(d[0])):  # train first
        split = "validation" if is_validation(doc_id) else "train"
        kept = []
        for paragraph in paragraphs:
            # Boilerplate paragraphs repeat across modules: keep each once, and never one train has.
            if paragraph not in seen[split] and paragraph not in seen["train"]:
                seen[split].add(paragraph)
                kept.append(paragraph)
        if kept:
            splits[split].append(tuple(kept))
    return {split: tuple(docs) for split, docs in splits.items()}


def pydoc_documents(split: str) -> list[str]:
    """The embedded corpus: Python's help topics and standard-library docstrings, no download.

    One string per document (a help topic or a module), its paragraphs joined by newlines. About 1.6 MB of
    English in ~640 train documents and ~180 kB in ~70 held-out validation documents (CPython 3.11).
    """
    _check_split(split)
    return ["\n".join(paragraphs) for paragraphs in _pydoc_split_paragraphs()[split]]


def pydoc_paragraphs(split: str) -> list[str]:
    """The embedded corpus as single paragraphs (what SentencePiece is trained on)."""
    _check_split(split)
    return [p for paragraphs in _pydoc_split_paragraphs()[split] for p in paragraphs]


# ------------------------------------------------------------------------------------------- WikiText-2

WIKITEXT2_FILES = {"train": "valid.txt", "validation": "test.txt"}  # the train split is not shipped
_WIKITEXT_HEADING = re.compile(r"^\s*=.*=\s*$")


def shared_data_dir() -> pathlib.Path:
    """`$PLMJAX_SHARED_DATA`, else `../shared/data` relative to the repository root."""
    if os.environ.get("PLMJAX_SHARED_DATA"):
        return pathlib.Path(os.environ["PLMJAX_SHARED_DATA"])
    return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def wikitext2_dir() -> pathlib.Path:
    """The WikiText-2 folder; raises FileNotFoundError with the fix when it is absent."""
    directory = shared_data_dir() / "wikitext-2"
    missing = [name for name in WIKITEXT2_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"WikiText-2 not found: {directory} lacks {', '.join(missing)}. Point the environment variable "
            "PLMJAX_SHARED_DATA at the folder that holds wikitext-2/ (with valid.txt and test.txt).")
    return directory


def is_wikitext_text_line(line: str) -> bool:
    """True for paragraph lines; False for empty lines and ` = Title = ` headings."""
    return bool(line.strip()) and not _WIKITEXT_HEADING.match(line)


def wikitext2_paragraphs(split: str) -> list[str]:
    """WikiText-2 paragraphs (one per line, headings and empty lines skipped): valid.txt is 'train'."""
    _check_split(split)
    path = wikitext2_dir() / WIKITEXT2_FILES[split]
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if is_wikitext_text_line(line)]


# ------------------------------------------------------------------------------------------- text files


def check_files_exist(files: Sequence[str], binding: str) -> list[str]:
    """Expands globs; raises one FileNotFoundError naming the missing path and the gin binding to fix."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not files:
        raise ValueError(f"No files given: set the gin binding {binding} to a list of text or JSON-lines files.")
    found = []
    for pattern in map(os.fspath, files):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        missing = [path for path in matches if not os.path.isfile(path)]
        if not matches or missing:
            raise FileNotFoundError(f"File not found: {(missing or [pattern])[0]!r}. Fix the gin binding {binding} "
                                    "(or create the file).")
        found.extend(matches)
    return found


def read_json_lines_texts(files: Sequence[str], text_key: str) -> list[str]:
    """The `text_key` field of every JSON line of `files`; a bad line raises ValueError naming file and line."""
    files = tuple(os.fspath(f) for f in files)
    versions = tuple(os.stat(f).st_mtime_ns for f in files)  # a rewritten file is read again
    return list(_read_json_lines_texts(files, versions, text_key))


@functools.lru_cache(maxsize=8)
def _read_json_lines_texts(files: tuple[str, ...], unused_versions, text_key: str) -> tuple[str, ...]:
    texts = []
    for path in files:
        for line_number, record in readers.read_json_lines(path):
            if text_key not in record:
                raise readers.format_error(path, line_number, f"no field {text_key!r} in this JSON line (it has "
                                           f"{sorted(record)[:10]})", "Set the gin binding text_files_task.text_key "
                                           "to the field that holds the text")
            text = readers.field(record, text_key, path, line_number)
            if text.strip():
                texts.append(text)
    return tuple(texts)


def check_utf8_text(files: Sequence[str]) -> list[str]:
    """`files`, after checking that each is UTF-8 text (once per file version): a byte that is not UTF-8 raises
    DataFormatError naming the file and line, here, instead of an error inside TensorFlow's input pipeline."""
    for path in files:
        _check_utf8(os.fspath(path), os.stat(path).st_mtime_ns, os.stat(path).st_size)
    return list(files)


@functools.lru_cache(maxsize=64)
def _check_utf8(path: str, unused_mtime: int, unused_size: int) -> None:
    for _ in readers.text_lines(path):
        pass


def read_plain_texts(files: Sequence[str]) -> list[str]:
    """Non-empty lines of plain-text files (one document or paragraph per line), stripped."""
    texts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts.extend(line.strip() for line in f if line.strip())
    return texts


def read_texts(files: Sequence[str], text_key: Optional[str] = None) -> list[str]:
    """Plain-text lines, or the `text_key` field of JSON lines when `text_key` is given."""
    return read_json_lines_texts(files, text_key) if text_key else read_plain_texts(files)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
