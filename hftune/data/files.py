"""Local data files read exactly as written: JSON / JSON Lines, CSV and plain text, as rows of Python values.

hftune reads these itself rather than through `datasets.load_dataset`, whose type inference rewrites text:
a CSV answer `007` became the number 7 (and trained as "7.0"), a JSON `42` next to a `3.5` became 42.0. Here

- CSV has no types, so every cell is the text as written (`007`, `1e5`, `true`, `NA` and `null` included);
  only an empty cell is missing (None), as it always was.
- JSON keeps its own types, and a JSON number remembers its source text (`JsonInt` / `JsonFloat`): it still
  compares and computes as a number (margins, ranks, scores), and a field the recipe reads as text gets
  the digits as the file wrote them (`3.10` stays "3.10", `1e5` stays "1e5", never "100000.0").
- a plain-text file is one row per document (documents are separated by blank lines; a file without
  a blank line is one document per line), column `text`.

Every file is UTF-8 (a leading byte-order mark is allowed). Anything these readers cannot make sense of is a
`UserError` that names the file and the line: a non-UTF-8 byte, a line that is not JSON, a CSV row with more
or fewer cells than its header. Parquet files, which carry their own types, still go through `datasets`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune.errors import UserError


class _AsWritten:
    """A number from a JSON file that remembers how the file wrote it (`source`), and prints as that."""

    source: str

    def __new__(cls, text: str):
        number = super().__new__(cls, text)  # int's or float's
        number.source = text
        return number

    def __str__(self) -> str:
        return self.source


class JsonInt(_AsWritten, int):
    """An integer from a JSON file, as written."""


class JsonFloat(_AsWritten, float):
    """A float (or NaN / Infinity) from a JSON file, as written."""


_DECODER = json.JSONDecoder(parse_int=JsonInt, parse_float=JsonFloat, parse_constant=JsonFloat)


@dataclass
class Rows:
    """A file's rows (each a dict with every column, None where a row lacks one) and its columns in order."""

    rows: list[dict[str, Any]]
    columns: list[str]


def read_file(path: Path, kind: str) -> Rows:
    """The rows of a local json / csv / text file (`kind`: recipe.LOCAL_BUILDERS' name); UserError if bad."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"could not read data file {path}: {err.strerror or err}") from None
    text = _decode(path, data)
    if not text.strip():
        raise UserError(f"data file {path} is empty: it has no rows")
    reader = {"json": _read_json, "csv": _read_csv, "text": _read_text}[kind]
    return reader(path, text)


def _decode(path: Path, data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        offset = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise UserError(
            f"data file {path} is not UTF-8 text: line {line} has the byte 0x{data[err.start]:02x} at byte "
            f"{offset} of the line ({err.reason}). hftune reads data files as UTF-8; re-save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8 OLD > NEW` for a Latin-1 file)"
        ) from None


def _columns_filled(path: Path, rows: list[tuple[int, Any]], what: str) -> Rows:
    """Rows of objects with every column present (None where a row lacks it), as datasets would give them."""
    columns: dict[str, None] = {}
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(
                f"data file {path}: {what} {where} is {_a(row)}, not an object of column: value "
                '(e.g. {"instruction": "...", "output": "..."})'
            )
        columns.update(dict.fromkeys(row))
    names = list(columns)
    return Rows([{name: row.get(name) for name in names} for _, row in rows], names)


def _a(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return next((name for t, name in kinds.items() if isinstance(value, t)), "a number")


def _parse(path: Path, text: str, line_offset: int = 0) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as err:
        line = err.lineno + line_offset
        raise UserError(
            f"data file {path}: line {line} is not valid JSON: {err.msg} (column {err.colno})"
        ) from None
    except RecursionError:
        raise UserError(f"data file {path}: JSON nested too deeply near line {line_offset + 1}") from None


def _read_json(path: Path, text: str) -> Rows:
    """A JSON array of objects (or of strings, as column `text`), or JSON Lines: one object per line.

    A `.json` file may also hold objects one after another across lines (pretty-printed), as `datasets`
    reads it; a `.jsonl` line is one whole object, so a broken line is named exactly.
    """
    if text.lstrip().startswith("["):
        items = _parse(path, text)  # a list: anything after its closing bracket is an error
        if items and all(isinstance(item, str) for item in items):
            return Rows([{"text": item} for item in items], ["text"])
        return _columns_filled(path, list(enumerate(items)), "array item")
    if path.suffix == ".jsonl":
        lines = text.split("\n")  # a JSON string cannot hold a raw newline, so a line is a record
        return _columns_filled(
            path,
            [(n + 1, _parse(path, line, n)) for n, line in enumerate(lines) if line.strip()],
            "line",
        )
    return _columns_filled(path, list(_objects(path, text)), "the value starting on line")


def _objects(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """JSON values one after another (JSON Lines, or objects spread over several lines each)."""
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos == end:
            return
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise UserError(
                f"data file {path}: line {err.lineno} is not valid JSON: {err.msg} (column {err.colno})"
            ) from None
        except RecursionError:
            raise UserError(f"data file {path}: JSON nested too deeply near line {line}") from None
        yield line, value


def _read_csv(path: Path, text: str) -> Rows:
    """A header line, then one row per record; cells are text as written, an empty cell is None."""
    old_limit = csv.field_size_limit(sys.maxsize)  # the default (128 KiB a cell) is too small for documents
    try:
        # strict: a stray quote (`"x"y`, or one never closed) is an error, not a guess at what was meant.
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        records: list[tuple[int, list[str]]] = []
        start = 1  # the line the next record starts on (a quoted cell may span lines)
        try:
            for record in reader:
                if record:  # a blank line is no row
                    records.append((start, record))
                start = reader.line_num + 1
        except csv.Error as err:
            raise UserError(
                f"data file {path}: the CSV record starting on line {start} is not valid CSV ({err}); a cell "
                'with a quote in it is quoted whole, its quotes doubled: "she said ""hi"""'
            ) from None
    finally:
        csv.field_size_limit(old_limit)
    if not records:
        raise UserError(f"data file {path} is empty: it has no rows")
    (_, header), body = records[0], records[1:]
    # pandas' names for unnamed columns (e.g. an index column a spreadsheet wrote), so mappings keep working.
    names = [name or f"Unnamed: {i}" for i, name in enumerate(header)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(
            f"data file {path}: the header names column(s) {', '.join(f'`{d}`' for d in duplicates)} more "
            "than once; rename them so each column has one name"
        )
    rows = []
    for index, (line, record) in enumerate(body):
        if len(record) != len(names):
            cells = f"{len(record)} cell{'s' if len(record) != 1 else ''}"
            raise UserError(
                f"data file {path}: row {index} (0-based, line {line}) has {cells} but the header has "
                f"{len(names)} ({', '.join(names)}); quote cells that contain commas or line breaks "
                '("like, this")'
            )
        rows.append({name: cell if cell != "" else None for name, cell in zip(names, record, strict=True)})
    return Rows(rows, names)


def _read_text(path: Path, text: str) -> Rows:
    """Documents separated by blank lines, column `text`; a file without a blank line is one per line.

    A plain-text corpus usually holds documents of several lines (paragraphs, articles) separated by a blank
    line, and the held-out split is by document, so a document must not be cut at its line breaks. A file
    with no blank line at all (a line-per-document corpus such as `tiny_corpus`) keeps one document per line,
    as `datasets`' text loader reads it. Line breaks ("\\n", "\\r\\n" or "\\r") inside a document are "\\n";
    a line of only spaces or tabs is blank, and nothing else of a document is changed.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    filled = [n for n, line in enumerate(lines) if line.strip(" \t")]
    # Blank lines before the first or after the last line of text separate nothing.
    if not filled or len(filled) == filled[-1] - filled[0] + 1:
        return Rows([{"text": line} for line in lines], ["text"])
    documents, current = [], []
    for line in [*lines, ""]:
        if line.strip(" \t"):
            current.append(line)
        elif current:
            documents.append("\n".join(current))
            current = []
    return Rows([{"text": document} for document in documents], ["text"])
