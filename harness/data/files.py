"""Reading data files: gzip or plain, UTF-8, with errors that name the file and the line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from harness.errors import DataError

_GZIP_FIX = "re-create it with gzip, or give the uncompressed file"
_UTF8_FIX = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 old > new)"


def raw_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is `.gz`; a DataError for a broken gzip stream."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        why = {EOFError: "it ends early: truncated", zlib.error: f"its compressed data is damaged: {e}"}.get(
            type(e), str(e)
        )
        raise DataError(f"{path}: not a readable gzip file ({why})", _GZIP_FIX) from None
    except OSError as e:
        raise DataError(
            f"{path}: could not be read ({e.strerror or e})", "check the path and its permissions"
        ) from None


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a DataError naming the line of the first byte that is not UTF-8."""
    raw = raw_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x})", _UTF8_FIX) from None


def json_lines(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines text; a DataError names the first bad line."""
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: line {i} is not valid JSON ({e.msg} at column {e.colno})",
                "fix that line: one JSON object per line",
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}: line {i} is a JSON {type(obj).__name__}, not an object",
                "write one JSON object per line, with the task's fields",
            )
        yield i, obj


def diagnose_file(path: Path) -> Optional[DataError]:
    """Why a data file cannot be read, in words that point at the place: a broken gzip stream, bytes that are not
    UTF-8 (with the line), a line that is not JSON (with its number). None when nothing specific is found."""
    try:
        text = read_text(path)
    except DataError as e:
        return e
    if not text.strip():
        return DataError(f"{path}: the file is empty", "use a file with rows in the task's schema")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        try:
            for _ in json_lines(text, path):
                pass
        except DataError as e:
            return e
    elif name.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return DataError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                "fix the file, or write JSON lines (.jsonl)",
            )
    return None
