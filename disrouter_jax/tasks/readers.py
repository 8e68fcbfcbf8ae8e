"""Tolerant readers for the release file formats: each yields (where, record) pairs.

`where` names the file and line/row for messages. A record that cannot even be decoded (a bad
JSONL line, a CSV row with the wrong column count) is yielded as a BadRow instead of raising, so
one broken line never stops a long run. A whole file that is not valid JSON raises a DataFileError
naming the file: that is a wrong path, not a bad row.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from disrouter_jax.tasks.example import BadRow, DataFileError

Record = Any  # a decoded source record, or a BadRow
# C0 control characters other than tab/newline/carriage return (some ARC rows carry stray \x02).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Strip surrounding whitespace and stray control characters."""
    return _CONTROL_RE.sub("", text).strip()
Stream = Iterator[tuple[str, Record]]


# "utf-8-sig" reads plain UTF-8 and also files saved with a byte-order mark (common for CSV).


def read_jsonl(path: Path) -> Stream:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, BadRow("invalid JSON", f"{where}: {err.msg}")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err


def read_csv(path: Path, *, columns: int | None = None, header: bool = False) -> Stream:
    """Rows as lists (no header) or dicts keyed by the header; `columns` enforces the width."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        names = next(reader, None) if header else None
        width = len(names) if names else columns
        for row in reader:
            where = f"{path.name}:{reader.line_num}"
            if not row:
                continue
            if width is not None and len(row) != width:
                yield where, BadRow("wrong column count", f"{where}: {len(row)} columns, expected {width}")
                continue
            yield where, dict(zip(names, row)) if names else row


def read_parquet(path: Path) -> Stream:
    """Hub-schema rows from a parquet file (a downloaded Hugging Face snapshot)."""
    import pyarrow.parquet as pq  # a `datasets` dependency; imported lazily as only parquet needs it

    for index, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path.name}:{index}", row


def field(record: Mapping[str, Any], name: str, where: str = "") -> Any:
    """record[name], or BadRow("missing field") when absent or None."""
    if not isinstance(record, Mapping):
        raise BadRow("not an object", f"{where}: got {type(record).__name__}")
    value = record.get(name)
    if value is None:
        raise BadRow("missing field", f"{where}: {name!r}")
    return value


def text_field(record: Mapping[str, Any], name: str, where: str = "") -> str:
    """A non-empty string field (stripped), else BadRow."""
    value = field(record, name, where)
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        else:
            raise BadRow("wrong field type", f"{where}: {name!r} is {type(value).__name__}")
    value = clean_text(value)
    if not value:
        raise BadRow("empty field", f"{where}: {name!r}")
    return value
