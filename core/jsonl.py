"""Reading a user's JSONL file whole or not at all, with every bad line named as FILE:LINE: field: problem.

The text track reads three kinds of JSONL (prompts, demonstrations, preferences). Each kind only says
how one parsed line becomes a record (`parse`, raising RecordError for the field at fault); this
module does the rest the same way for all of them: missing file, non-UTF-8 bytes, a byte-order mark,
blank lines, invalid JSON, lines longer than `data.max_line_bytes` (refused before they are parsed, and
never held in memory whole: the file is read in chunks), the list of every malformed line (the first 20
shown), and a minimum count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
SHOWN_ERRORS = 20  # malformed lines listed in the message (all are counted)
MAX_LINE_BYTES = 1_000_000
"""The longest line read (data.max_line_bytes; the pipeline sets it from the config with set_max_line_bytes)."""
LINE_END = re.compile(rb"\r\n?|\n")


def set_max_line_bytes(limit: int) -> None:
    global MAX_LINE_BYTES
    MAX_LINE_BYTES = int(limit)


def lines(path: Path, limit: int, chunk_size: int = 1 << 20) -> Iterator[bytes | None]:
    """Each line of the file without its end (\n, \r\n or \r); None in place of a line longer than `limit`
    bytes, which is skipped without being held in memory (the file is read `chunk_size` bytes at a time)."""
    line, over, after_cr = bytearray(), False, False
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            if after_cr and chunk.startswith(b"\n"):  # the \n of a \r\n cut between two chunks
                chunk = chunk[1:]
            after_cr, start = chunk.endswith(b"\r"), 0
            for end in LINE_END.finditer(chunk):
                if not over:
                    line += chunk[start:end.start()]
                yield None if over or len(line) > limit else bytes(line)
                line, over, start = bytearray(), False, end.end()
            if not over:
                line += chunk[start:]
                if len(line) > limit:
                    line, over = bytearray(), True
    if line or over:
        yield None if over else bytes(line)


class RecordError(Exception):
    """One problem in one line: the field it concerns (None for the line as a whole) and what."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field, self.problem = field, problem


def read_jsonl(path: str | Path, key: str, parse: Callable[[Any, int], T], error: type[ValueError],
               minimum: int = 1, needs: str = "", hint: str = "") -> list[T]:
    """Every non-blank line of `path` -> parse(json object, 1-based line number), in file order.

    key: the config key that named the file (e.g. "preference.path"), first in every message.
    error: the ValueError subclass raised, once, listing every malformed line; nothing is returned
      from a file with any bad line, so nothing downstream trains on a part of it.
    minimum, needs: fewer than `minimum` records raises `error` saying the file `needs` them.
    hint: appended to the malformed-lines headline (e.g. where the format is documented).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{key} {path}: no such file")
    records: list[T] = []
    errors: list[str] = []
    for number, raw in enumerate(lines(path, MAX_LINE_BYTES), start=1):
        if raw is None:
            errors.append(f"{path}:{number}: longer than data.max_line_bytes={MAX_LINE_BYTES} bytes (not read)")
            continue
        try:
            text = raw.decode("utf-8").lstrip("\ufeff" if number == 1 else "")
        except UnicodeDecodeError as err:
            errors.append(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})")
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            errors.append(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        try:
            records.append(parse(value, number))
        except RecordError as err:
            where = f"field '{err.field}'" if err.field else "line"
            errors.append(f"{path}:{number}: {where}: {err.problem}")
    if errors:
        shown = "\n  ".join(errors[:SHOWN_ERRORS])
        more = f"\n  ... and {len(errors) - SHOWN_ERRORS} more" if len(errors) > SHOWN_ERRORS else ""
        raise error(f"{key} {path}: {len(errors)} malformed line(s), nothing was read{hint}:\n  {shown}{more}")
    if len(records) < minimum:
        raise error(f"{key} {path}: needs {needs or f'at least {minimum} line(s)'}, has {len(records)}"
                    + (" (the file is empty or only blank lines)" if not records else ""))
    return records


def json_object(value: Any, fields: str) -> dict[str, Any]:
    """value itself if it is a JSON object, else RecordError for the line (`fields` shows its shape)."""
    if not isinstance(value, dict):
        raise RecordError(None, f"must be a JSON object {fields}, got {type(value).__name__}")
    return value


def exact_fields(record: dict[str, Any], required: tuple[str, ...]) -> None:
    """RecordError for the first unknown field, then for the first missing one."""
    unknown = sorted(set(record) - set(required))
    if unknown:
        raise RecordError(unknown[0], f"unknown; a line has {', '.join(required)}")
    for field in required:
        if field not in record:
            raise RecordError(field, "missing")


def text_field(record: dict[str, Any], field: str, allow_empty: bool = False) -> str:
    """record[field] as a string, else RecordError naming the field (missing, not a string, or empty)."""
    if field not in record:
        raise RecordError(field, "missing")
    return check_text(record[field], field, allow_empty)


def check_text(value: Any, field: str, allow_empty: bool = False) -> str:
    """value if it is a (non-empty unless allow_empty) string, else RecordError naming the field."""
    if not isinstance(value, str):
        raise RecordError(field, f"must be a string, got {type(value).__name__} {json.dumps(value)[:40]}")
    if not allow_empty and not value.strip():
        raise RecordError(field, "empty")
    return value
