"""Parsers for interaction files, and DataError.

`read_user_lines` reads `user item item ...` files (one line per user); `read_log` reads logs with
one `user,item[,rating][,timestamp]` interaction per line. Both return raw ids as int64 pairs
(`Pairs`) with line counts for the report; mapping ids, dropping duplicates and splitting are
dataset.py's job. Every rejection is a DataError naming the file and the 1-based line.

Hot paths are vectorised: user_lines files are tokenised as one numpy byte array, logs go through
pyarrow.csv. A Python per-line scan runs only after the fast path found something wrong, to name
the first bad line precisely. Imports: numpy, pyarrow.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


class DataError(ValueError):
    """Input data is wrong; the message names the file and 1-based line (or the config key) at fault."""


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Raw interactions as read from one file, in file order."""

    users: np.ndarray  # int64 [P] raw user ids
    items: np.ndarray  # int64 [P] raw item ids
    lines: np.ndarray | None  # int64 [P] 1-based line of each pair (user_lines only)
    stats: dict  # line counts for the report (plain ints and strings)


MAX_DIGITS = 18  # every 18-digit decimal fits in int64; longer ids are refused rather than wrapped
USER_LINES_FORMAT = (
    "user_lines files hold `user item item ...` lines of non-negative integer ids separated by spaces or tabs"
)
LOG_COLUMNS = ("user", "item", "rating", "timestamp")
LOG_FORMAT = "a log line is `user,item[,rating][,timestamp]` (tab, comma, pipe or space separated)"
LOG_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
DELIMITER_NAMES = {"\t": "tab", ",": "comma", "|": "pipe", " ": "space"}

# user_lines byte classes: 0 = not allowed, 1 = digit, 2 = separator, 3 = newline.
_USER_LINES_CLASS = np.zeros(256, np.uint8)
_USER_LINES_CLASS[ord("0") : ord("9") + 1] = 1
_USER_LINES_CLASS[[ord(" "), ord("\t"), ord("\r")]] = 2  # \r: files written on Windows
_USER_LINES_CLASS[ord("\n")] = 3

_INT = re.compile(r"\d+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def read_file(path: str | Path, key: str) -> bytes:
    """The bytes of `path`; `key` is the config key that named it, for the error message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (set by {key})")
    return path.read_bytes()


def read_user_lines(path: str | Path, key: str) -> Pairs:
    """Parse a `user item item ...` file; lines with a user and no items are skipped and counted."""
    buf = np.frombuffer(read_file(path, key), np.uint8)
    byte_class = _USER_LINES_CLASS[buf]
    bad = np.flatnonzero(byte_class == 0)
    if bad.size:
        _raise_bad_byte(path, buf, int(bad[0]))
    newlines = np.flatnonzero(byte_class == 3)
    num_lines = newlines.size + int(buf.size > 0 and buf[-1] != ord("\n"))

    # Tokens are the runs of digits: +1 / -1 steps of the digit indicator mark starts and ends.
    step = np.diff((byte_class == 1).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(step == 1)
    lengths = np.flatnonzero(step == -1) - starts
    del step, byte_class
    if starts.size == 0:
        raise DataError(f"{path}:1: the file is empty; {USER_LINES_FORMAT}")
    line_of_token = np.searchsorted(newlines, starts)  # 0-based
    too_long = np.flatnonzero(lengths > MAX_DIGITS)
    if too_long.size:
        t = too_long[0]
        raise DataError(
            f"{path}:{line_of_token[t] + 1}: id {_text(buf, starts[t], lengths[t])} has more than "
            f"{MAX_DIGITS} digits and does not fit in int64"
        )
    values = _token_values(buf, starts, lengths)

    # The first token of a line is its user, the rest are that user's items.
    is_head = np.ones(starts.size, bool)
    is_head[1:] = line_of_token[1:] != line_of_token[:-1]
    heads = np.flatnonzero(is_head)
    items_per_line = np.diff(np.append(heads, starts.size)) - 1
    if not items_per_line.any():
        raise DataError(f"{path}:{line_of_token[0] + 1}: no line lists an item; {USER_LINES_FORMAT}")
    stats = {
        "read": int(num_lines),
        "blank": int(num_lines - heads.size),
        "user_only": int(np.count_nonzero(items_per_line == 0)),
    }
    return Pairs(
        users=np.repeat(values[heads], items_per_line),
        items=values[~is_head],
        lines=np.repeat(line_of_token[heads] + 1, items_per_line),
        stats=stats,
    )


def _token_values(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 [T] values of the digit runs buf[starts[t] : starts[t] + lengths[t]] (Horner's rule).

    Tokens are grouped by length so each group runs a fixed number of whole-array steps: 3x faster
    than masking the shrinking set of unfinished tokens at every digit position.
    """
    values = np.empty(starts.size, np.int64)
    for length in range(1, int(lengths.max()) + 1):
        group = np.flatnonzero(lengths == length)
        if group.size:
            at = starts[group]
            value = buf[at].astype(np.int64) - ord("0")
            for k in range(1, length):
                value *= 10
                value += buf[at + k]
                value -= ord("0")
            values[group] = value
    return values


def _raise_bad_byte(path: str | Path, buf: np.ndarray, pos: int) -> None:
    line = int(np.count_nonzero(buf[:pos] == ord("\n"))) + 1
    byte = int(buf[pos])
    nxt = int(buf[pos + 1]) if pos + 1 < buf.size else -1
    if byte == ord("-") and ord("0") <= nxt <= ord("9"):
        reason = "negative id"
    elif byte == ord("."):
        reason = "ids must be integers, found a decimal point"
    elif 32 <= byte < 127:
        reason = f"unexpected character {chr(byte)!r}"
    else:
        reason = f"unexpected byte 0x{byte:02x}"
    raise DataError(f"{path}:{line}: {reason} in {_line_text(buf, pos)!r}; {USER_LINES_FORMAT}")


def _line_text(buf: np.ndarray, pos: int, width: int = 80) -> str:
    """The line around byte `pos`, cut to `width` characters, for error messages."""
    before = np.flatnonzero(buf[max(0, pos - 4096) : pos] == ord("\n"))
    start = max(0, pos - 4096) + (int(before[-1]) + 1 if before.size else 0)
    after = np.flatnonzero(buf[pos : pos + 4096] == ord("\n"))
    end = pos + (int(after[0]) if after.size else min(4096, buf.size - pos))
    text = bytes(buf[start:end]).decode("utf-8", errors="replace").rstrip("\r")
    return text if len(text) <= width else text[:width] + "..."


def _text(buf: np.ndarray, start: int, length: int) -> str:
    return bytes(buf[start : start + min(int(length), 40)]).decode("ascii")


def read_log(path: str | Path, key: str, delimiter: str | None = None, header: bool | None = None) -> Pairs:
    """Parse a `user,item[,rating][,timestamp]` log; `delimiter` / `header` None means detect."""
    data = read_file(path, key)
    first, first_end, first_no = _first_line(data, 0, 1)
    if first is None:
        raise DataError(f"{path}:1: the file is empty; {LOG_FORMAT}")
    # A header names its columns: a first line whose fields are all non-numeric. A line mixing
    # numbers and text is a malformed data line, reported as such rather than skipped as a header.
    has_header = header if header is not None else not any(
        _NUMBER.fullmatch(f) for f in re.split(r"[\t,| ]+", first.strip()) if f
    )
    body_offset, body_no = (first_end, first_no + 1) if has_header else (0, 1)
    sample, _, sample_no = _first_line(data, body_offset, body_no)
    if sample is None:
        raise DataError(f"{path}:{body_no}: no interactions after the header line; {LOG_FORMAT}")
    delim = delimiter or _detect_delimiter(sample)
    if delim is None:
        raise DataError(f"{path}:{sample_no}: no tab, comma, pipe or space in {sample!r}; {LOG_FORMAT}")
    num_fields = len(sample.split(delim))
    if not 2 <= num_fields <= 4:
        raise DataError(
            f"{path}:{sample_no}: {num_fields} {DELIMITER_NAMES[delim]}-separated fields in {sample!r}; {LOG_FORMAT}"
        )
    names = LOG_COLUMNS[:num_fields]

    body = np.frombuffer(data, np.uint8)[body_offset:]
    allowed = np.zeros(256, bool)
    allowed[[*range(ord("0"), ord("9") + 1), ord(delim), ord("\n"), ord("\r"), ord("."), ord("-")]] = True
    suspicious = not allowed[body].all()  # hex, quotes, letters: pyarrow may accept some of them
    table, error = None, None
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(data).slice(body_offset)),
            read_options=pacsv.ReadOptions(column_names=list(names)),
            parse_options=pacsv.ParseOptions(delimiter=delim, quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={name: LOG_TYPES[name] for name in names},
                null_values=[],
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        error = err
    if table is not None:
        users = table.column("user").to_numpy()
        items = table.column("item").to_numpy()
        suspicious = suspicious or bool((users < 0).any() or (items < 0).any())
    if error is not None or suspicious:
        _diagnose_log(path, data[body_offset:], body_no, delim, names, sample_no)  # raises on the first bad line
    if error is not None:  # pragma: no cover - the scan above names every error pyarrow raises
        raise DataError(f"{path}: {error}")
    num_lines = data.count(b"\n") + int(bool(data) and not data.endswith(b"\n"))
    stats = {
        "read": int(num_lines),
        "header": int(has_header),
        "blank": int(num_lines - int(has_header) - users.size),
        "delimiter": DELIMITER_NAMES[delim],
        "columns": list(names),
    }
    return Pairs(users=users.astype(np.int64), items=items.astype(np.int64), lines=None, stats=stats)


def _first_line(data: bytes, offset: int, line_no: int) -> tuple[str | None, int, int]:
    """(text, end offset past its newline, 1-based number) of the first non-blank line at or after `offset`."""
    while offset < len(data):
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end + 1
        text = data[offset:end].decode("utf-8", errors="replace").rstrip("\r\n")
        if text.strip():
            return text, end, line_no
        offset, line_no = end, line_no + 1
    return None, offset, line_no


def _detect_delimiter(line: str) -> str | None:
    for delim in ("\t", ",", "|"):
        if delim in line:
            return delim
    return " " if " " in line.strip() else None


def _diagnose_log(
    path: str | Path, body: bytes, first_no: int, delim: str, names: tuple[str, ...], sample_no: int
) -> None:
    """Raise DataError for the first line of `body` that breaks the log format (error path only)."""
    for offset, raw in enumerate(body.split(b"\n")):
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text:
            continue
        where = f"{path}:{first_no + offset}"
        fields = text.split(delim)
        if len(fields) != len(names):
            raise DataError(
                f"{where}: expected {len(names)} {DELIMITER_NAMES[delim]}-separated fields "
                f"({', '.join(names)}) like line {sample_no}, got {len(fields)} in {text[:80]!r}"
            )
        for name, field in zip(names, fields):
            value = field.strip() if delim != " " else field  # pyarrow trims spaces around fields
            problem = _field_problem(name, value)
            if problem:
                raise DataError(f"{where}: {problem} in {text[:80]!r}; {LOG_FORMAT}")


def _field_problem(name: str, value: str) -> str | None:
    if name in ("user", "item", "timestamp"):
        digits = value[1:] if name == "timestamp" and value.startswith("-") else value
        if _INT.fullmatch(digits):
            return None if len(digits) <= MAX_DIGITS else f"{name} {value} does not fit in int64"
        if name != "timestamp" and value.startswith("-") and _INT.fullmatch(value[1:]):
            return f"negative {name} id {value}"
        if _NUMBER.fullmatch(value):
            return f"{name} {value!r} is not an integer"
        return f"{name} {value!r} is not a non-negative integer" if value else f"empty {name} field"
    try:
        float(value)
    except ValueError:
        return f"rating {value!r} is not a number"
    return None
