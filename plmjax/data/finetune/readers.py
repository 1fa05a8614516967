"""Shared helpers of the benchmark readers: one clear error per bad line, JSON lines, TSV rows, label ids.

Every reader returns a list of example dicts in file order (the normalized schema of `spec.py`); a malformed
line, a missing field or an unknown label raises `DataFormatError` naming the file, the line and the fix.
"""
import json
import os
from typing import Any, Callable, Iterator, Optional, Sequence, Union

DataDir = Union[None, str, Callable[[], Optional[str]]]  # a folder, or a function that finds it when data is read


class DataFormatError(ValueError):
    """A data file that does not follow its benchmark's official format."""


def format_error(path: str, line: Optional[int], problem: str, fix: str) -> DataFormatError:
    where = f"{path}, line {line}" if line is not None else str(path)
    return DataFormatError(f"{where}: {problem}. {fix}")


def resolve_dir(data_dir: DataDir) -> Optional[str]:
    """The folder of a `DataDir` (calls it when it is a function)."""
    return data_dir() if callable(data_dir) else data_dir


def check_file(path: str, what: str, setting: str) -> str:
    """`path` if it is a file, else FileNotFoundError naming the setting (gin macro / env var) to fix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}. {setting}")
    return os.fspath(path)


NOT_UTF8_FIX = "Save the file as UTF-8 (e.g. iconv -f <its encoding> -t utf-8)"


def text_lines(path: str, bom: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) of a UTF-8 text file; a byte that is not UTF-8 raises DataFormatError
    naming the line (never a UnicodeDecodeError). bom: drop a leading byte-order mark (MRPC has one)."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                yield line_number, raw.decode("utf-8-sig" if bom and line_number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise format_error(path, line_number, f"not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                   f"{e.start + 1})", NOT_UTF8_FIX) from None


def read_text(path: str) -> str:
    """A whole UTF-8 text file; a byte that is not UTF-8 raises DataFormatError naming its line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise format_error(path, line, f"not UTF-8 text (byte {data[e.start]:#04x})", NOT_UTF8_FIX) from None


def read_json_lines(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a JSON-lines file."""
    for line_number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise format_error(path, line_number, f"malformed JSON ({e.msg} at column {e.colno})",
                               "Fix or remove the line: every line must be one JSON object") from None
        if not isinstance(record, dict):
            raise format_error(path, line_number, f"a JSON {type(record).__name__}, not an object",
                               "Every line must be one JSON object ({...})")
        yield line_number, record


def read_json(path: str) -> Any:
    """A whole-file JSON document (CMRC2018, C3, CHID answers)."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise format_error(path, e.lineno, f"malformed JSON ({e.msg} at column {e.colno})",
                           "The file must be one JSON document, as the benchmark distributes it") from None
    except RecursionError:
        raise format_error(path, None, "JSON nested too deeply to read",
                           "The file must be one JSON document, as the benchmark distributes it") from None


def field(record: dict, key: str, path: str, line: Optional[int], types: type | tuple = str) -> Any:
    """record[key], checked to exist and to have one of `types`."""
    if key not in record or record[key] is None:
        raise format_error(path, line, f"missing field {key!r} (the line has {sorted(record)})",
                           "Each example needs it in the benchmark's official format; fix or remove the line")
    value = record[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise format_error(path, line, f"field {key!r} is {type(value).__name__} {value!r}, expected {names}",
                           "Fix the line to the benchmark's official format")
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def label_id(value: Any, label_names: Sequence[str], path: str, line: Optional[int], task: str) -> int:
    """The id of an official label (compared as strings: 1 and '1' are the same label)."""
    text = str(value)
    try:
        return tuple(label_names).index(text)
    except ValueError:
        shown = ", ".join(map(repr, label_names[:20])) + (", ..." if len(label_names) > 20 else "")
        raise format_error(path, line, f"unknown label {text!r} for {task} (expected one of {shown})",
                           "Fix the label or remove the line; labels must be the official ones") from None


def example_id(record: dict, keys: Sequence[str], default: int, path: str, line: Optional[int]) -> int:
    """The official numeric id of an example (the first of `keys` present), else `default` (its row index)."""
    for key in keys:
        if key in record and record[key] is not None:
            try:
                return int(record[key])
            except (TypeError, ValueError):
                raise format_error(path, line, f"field {key!r} is {record[key]!r}, not an integer id",
                                   "Example ids must be integers, as in the official files") from None
    return default


def read_tsv(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of a tab-separated file, split on tabs only (GLUE quotes nothing; MRPC has a BOM)."""
    for line_number, line in text_lines(path, bom=True):
        line = line.rstrip("\r\n")
        if line:
            yield line_number, line.split("\t")
